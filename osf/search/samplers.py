"""Optuna samplers by name."""
from __future__ import annotations

import optuna

SAMPLERS = ("auto", "nsga2", "tpe", "random", "gp")


def make_sampler(name: str | optuna.samplers.BaseSampler, n_objectives: int, n_trials: int,
                 seed: int | None) -> optuna.samplers.BaseSampler:
    """``auto``: NSGA-II for several objectives, TPE for one. Also ``random`` and ``gp``.

    Budgets reach the samplers through ``trial.set_constraint`` (Optuna >= 5), which
    NSGA-II, TPE and GP read; the random sampler ignores them.

    NSGA-II's population is scaled to the trial budget (``n_trials // 4``, 4..50) so
    small searches still evolve instead of staying random.
    """
    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "auto":
        name = "nsga2" if n_objectives > 1 else "tpe"
    if name == "nsga2":
        pop = max(4, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, n_trials // 5)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError as e:
            raise ValueError(f"sampler 'gp' needs scipy and torch ({e}); install scipy or use nsga2/tpe/random") from e
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {list(SAMPLERS)}")
