"""Optuna samplers by name, and the budget-aware wrapper that keeps trials near a budget."""
from __future__ import annotations

import random
from typing import Any, Callable, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial

from osf.space import DEPTH_SUFFIX, Config, SearchSpace, config_key

SAMPLERS = ("auto", "nsga2", "tpe", "random", "gp")
#: by default, repaired trials land within [BAND[0], BAND[1]] x the parameter budget
BAND = (0.9, 1.0)


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


class CostModel:
    """The parameter count of sampler parameters (see :meth:`SearchSpace.parameters`), memoised."""

    def __init__(self, space: SearchSpace, count: Callable[[Config], float]):
        self.space, self.count = space, count
        self.choices = space.parameters()
        self._memo: dict[str, float] = {}

    def __call__(self, params: Mapping[str, Any]) -> float:
        cfg = self.space.canonical(self.space.to_config(params))
        key = config_key(cfg)
        if key not in self._memo:
            self._memo[key] = float(self.count(cfg))
        return self._memo[key]


def repair(params: Mapping[str, Any], cost: CostModel, limit: float, band: tuple[float, float] = BAND,
           rng: random.Random | None = None) -> dict[str, Any]:
    """``params`` moved into ``[band[0], band[1]] x limit`` of ``cost``, one choice step at a time.

    Over the budget, a random parameter (a dim's width or a stack's depth) that can still shrink
    takes its next smaller choice until the cost fits; under ``band[0] x limit``, random
    parameters take their next larger choice as long as the cost stays within the budget, and
    when every such step overshoots (a layer costs more than the band is wide), one parameter
    steps up while random others step down until the cost fits. The
    result is as close to the sample as the band allows, so the sampler's proposal still
    decides the shape; when the band cannot be reached the nearest config within the budget
    (or the smallest one) is returned.
    """
    rng = rng or random.Random(0)
    choices = cost.choices
    idx = {n: list(c).index(params[n]) for n, c in choices.items()}
    movable = [n for n, c in choices.items() if len(c) > 1]
    lo, hi = band[0] * limit, band[1] * limit

    def current() -> dict[str, Any]:
        return {n: choices[n][i] for n, i in idx.items()}

    value = cost(current())
    while value > hi:
        can = [n for n in movable if idx[n] < len(choices[n]) - 1]
        if not can:
            break
        n = rng.choice(can)
        idx[n] += 1
        value = cost(current())
    tried: set[str] = set()
    while value < lo:
        can = [n for n in movable if idx[n] > 0 and n not in tried]
        if not can:
            break
        n = rng.choice(can)
        idx[n] -= 1
        grown = cost(current())
        if grown > hi:
            idx[n] += 1
            tried.add(n)
        else:
            value = grown
    if value < lo:  # every single step up overshoots: step one up (a layer back) and others down to fit
        for n in rng.sample(sorted(tried), len(tried)):
            trial = dict(idx)
            trial[n] -= 1
            others = [m for m in movable if m != n]
            v = cost({m: choices[m][i] for m, i in trial.items()})
            while v > hi:
                can = [m for m in others if trial[m] < len(choices[m]) - 1]
                if not can:
                    break
                m = rng.choice(can)
                trial[m] += 1
                v = cost({k: choices[k][i] for k, i in trial.items()})
            if lo <= v <= hi:
                idx, value = trial, v
                break
    return current()


def budget_corners(space: SearchSpace, cost: CostModel, limit: float) -> list[dict[str, Any]]:
    """Sampler parameters of the two extreme subnets at the budget: depth only (full widths, the
    least important layers dropped, stacks shortened in turn, the one keeping the largest share
    first) and width only (full depth, every dim at the same largest fraction of its size that
    fits). Each corner is left out when it cannot fit the budget."""
    largest = {n: c[0] for n, c in cost.choices.items()}
    out: list[dict[str, Any]] = []
    depth = dict(largest)
    stacks = [s for s in space.stacks if s + DEPTH_SUFFIX in cost.choices]
    while stacks and cost(depth) > limit:
        can = [s for s in stacks if depth[s + DEPTH_SUFFIX] > cost.choices[s + DEPTH_SUFFIX][-1]]
        if not can:
            break
        s = max(can, key=lambda s: (depth[s + DEPTH_SUFFIX] / len(space.stacks[s]), s))
        depth[s + DEPTH_SUFFIX] -= 1
    if stacks and cost(depth) <= limit:
        out.append(depth)
    fractions = sorted({c / ch[0] for ch in space.dims.values() for c in ch if ch[0]}, reverse=True)
    for r in fractions:
        width = dict(largest)
        for d, ch in space.dims.items():
            width[d] = max([c for c in ch if c <= r * ch[0] + 1e-9] or [ch[-1]])
        if cost(width) <= limit:
            if width not in out:
                out.append(width)
            break
    return out


class BudgetSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler so that its trials land near a parameter budget.

    Each trial's parameters are the base sampler's proposal (its relative sample, completed
    by its independent samples) passed through :func:`repair`, returned as the trial's relative
    parameters: Optuna records the repaired values as the trial's parameters, so the base
    sampler learns from what was actually scored, and one config is one set of parameters (the
    search's cache of scored configs is unaffected). Enqueued parameters are kept as given.

    Args:
        base: the sampler that proposes (NSGA-II, TPE, ...).
        space: the supernet's space.
        count: the parameter count of a config (``sn.num_params``).
        limit: the budget (parameters).
        band: the target window, as fractions of ``limit``.
        seed: seeds the choice of which widths/depths the repair moves (with the trial number).
    """

    def __init__(self, base: optuna.samplers.BaseSampler, space: SearchSpace, count: Callable[[Config], float],
                 limit: float, band: tuple[float, float] = BAND, seed: int | None = None):
        if not 0.0 < band[0] <= band[1]:
            raise ValueError(f"band must be two fractions 0 < low <= high, got {band!r}")
        self.base, self.limit, self.band, self.seed = base, float(limit), band, seed
        self.cost = CostModel(space, count)
        self._space = {n: CategoricalDistribution(c) for n, c in self.cost.choices.items()}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        inner = self.base.infer_relative_search_space(study, trial)
        proposal = dict(self.base.sample_relative(study, trial, inner)) if inner else {}
        for name, dist in self._space.items():
            if name not in proposal:
                proposal[name] = self.base.sample_independent(study, trial, name, dist)
        rng = random.Random(f"{self.seed}:{trial.number}")
        return repair(proposal, self.cost, self.limit, self.band, rng)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
