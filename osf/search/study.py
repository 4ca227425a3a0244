"""``osf.search.search``: an Optuna study over a supernet's configs.

One trial = one config. The study lives in Optuna storage, so the same call resumes
where it stopped, and many workers can share an RDB storage; the study always ends
with exactly ``n_trials`` COMPLETE trials. A config is scored once per study: repeated
configs reuse the stored values of an earlier trial.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from osf.space import Config, SearchSpace, config_key
from osf.search.objectives import (
    BUDGETS, DIRECTIONS, CostMeter, check_budgets, check_objectives, check_reachable, evaluate_score, resolve_budgets,
)
from osf.search.protocol import Evaluator, SupernetLike, as_evaluator
from osf.search.result import SearchResult
from osf.search.samplers import BudgetSampler, budget_corners, make_sampler
from osf.search.storage import (
    Heartbeat, await_config_turn, claim_config, default_study_name, fail_stale_trials, is_stale, make_storage, next_ticket,
)

METRICS = ("score", "params", "macs", "latency")
PRUNING = "osf_pruning"  # user attr of a running trial its worker is about to prune (the study has N)
IN_FLIGHT_WAIT_S = 600.0  # longest wait for another worker scoring the same config, then score it here


def _space_params(space: SearchSpace, which: str) -> dict[str, int]:
    """Sampler parameters of the largest or smallest config."""
    out = {}
    for name, choices in space.parameters().items():
        out[name] = choices[0] if which == "largest" else choices[-1]
    return out


def check_run_dir(run_dir: str | Path, option: str = "run_dir") -> Path:
    if not isinstance(run_dir, (str, Path)):
        raise TypeError(f"{option} must be a folder path (str or Path), got {type(run_dir).__name__}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{option} {str(run_dir)!r} is a file; give a folder (it is created if missing)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".osf-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"run directory {str(run_dir)!r} is not writable ({e.strerror or e}); choose another {option}") from e
    return run_dir


def search(
    sn: SupernetLike,
    evaluator: Evaluator | Any,
    *,
    objectives: tuple[str, ...] | list[str] | str = ("score", "params"),
    n_trials: int = 100,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    constraints: Mapping[str, float] | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    timeout: float | None = None,
    run_dir: str | Path | None = None,
    show_progress: bool = True,
    example_inputs: Any = None,
    evaluate_infeasible: bool = False,
    budget_band: tuple[float, float] | None = (0.9, 1.0),
    rerank: int = 5,
    rerank_evaluator: Evaluator | Any = None,
) -> SearchResult:
    """Search ``sn`` for the best subnets.

    Args:
        sn: a supernet (``osf.supernet(model)``), see :class:`SupernetLike`.
        evaluator: ``evaluator(model) -> float``, higher is better (``LMEval``,
            ``Perplexity``, ``ImageAccuracy`` or any callable); run with the config active.
        objectives: any of ``score`` (maximised), ``params`` (exact), ``macs``,
            ``latency`` (ms, median of repeated forwards on the model's device).
        n_trials: COMPLETE trials the study ends with (a resumed study runs only the rest).
        sampler: ``auto`` (NSGA-II for several objectives, TPE for one), ``nsga2``,
            ``tpe``, ``random``, ``gp``, or an Optuna sampler.
        constraints: budgets, any of ``max_params`` / ``max_macs`` (absolute counts),
            ``max_params_frac`` / ``max_macs_frac`` (fractions in (0, 1] of the largest
            config's value) and ``max_latency_ms`` (milliseconds), e.g.
            ``{"max_params_frac": 0.5}`` or ``{"max_latency_ms": 0.8}``.
        storage: Optuna storage or URL (``sqlite:///x.db`` to share a study between
            processes); default a journal file in ``run_dir`` (in memory without one).
        study_name: default derived from the evaluator, objectives, budgets and space.
        seed: sampler seed.
        timeout: stop starting new trials after this many seconds.
        run_dir: where the study and the result files go.
        example_inputs: model inputs for MACs/latency (else ``evaluator.example_inputs()``).
        evaluate_infeasible: also score configs over budget (costs time). By default they
            are not scored: the sampler sees ``-inf``, the trials table NaN.
        budget_band: with a parameter budget and a named sampler, each sampled config is
            repaired into ``[low, high] x budget`` (widths and depths moved one choice at a
            time; :class:`osf.search.samplers.BudgetSampler`), and the depth-only and width-only
            configs at the budget are enqueued; ``None`` samples the whole space.
        rerank: after the trials, score the ``rerank`` best configs within the budget again on
            ``rerank_evaluator`` (default ``evaluator.full_sample()``, when the evaluator offers a
            larger sample than it scores), and let :meth:`SearchResult.best` pick among them by
            that score; 0 turns it off.
        rerank_evaluator: the larger-sample evaluator for ``rerank``.

    Raises:
        ValueError: bad arguments, or a budget that even the smallest config breaks.
    """
    objectives = check_objectives(objectives)
    budgets = check_budgets(constraints)
    evaluator = as_evaluator(evaluator)
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be a number of configs >= 0 (0: off), got {rerank!r}")
    if budget_band is not None and not (isinstance(budget_band, (tuple, list)) and len(budget_band) == 2
                                        and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in budget_band) and 0 < budget_band[0] <= budget_band[1] <= 1):
        raise ValueError(f"budget_band must be None or two fractions (low, high) with 0 < low <= high <= 1, "
                         f"got {budget_band!r}")
    if rerank and rerank_evaluator is None:
        full_sample = getattr(evaluator, "full_sample", None)
        rerank_evaluator = full_sample() if callable(full_sample) else None
    rerank_evaluator = as_evaluator(rerank_evaluator) if rerank_evaluator is not None else None
    _warn_uncalibrated(sn, evaluator)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")
    _check_supernet(sn)
    if run_dir is not None:
        run_dir = check_run_dir(run_dir)
    space: SearchSpace = sn.space
    costs = tuple(dict.fromkeys(["params", *[o for o in objectives if o != "score"], *[BUDGETS[b][0] for b in budgets]]))
    meter = CostMeter(sn, evaluator, example_inputs)

    name = study_name or default_study_name(evaluator.name, objectives, budgets, space.to_json())
    quiet = optuna.logging.get_verbosity()
    # errors of a trial propagate to the caller; optuna would log each one with its traceback first
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        result = _run(sn, evaluator, space, meter, objectives, budgets, costs, n_trials, sampler, storage, run_dir,
                      name, seed, timeout, show_progress, evaluate_infeasible, budget_band)
        if rerank and rerank_evaluator is not None:
            result.rerank(sn, rerank_evaluator, k=rerank,
                          **{b: v for b, v in budgets.items() if BUDGETS[b][0] in result.trials.columns})
    finally:
        optuna.logging.set_verbosity(quiet)
    return result


def _warn_uncalibrated(sn: Any, evaluator: Any) -> None:
    """Warn when the supernet ranked its layers on random inputs though the evaluator has data."""
    import warnings

    from osf.elastic.importance import RandomInputsWarning

    built = getattr(sn, "build_config", None)
    if built is None or getattr(built, "calibration_batches", 0) is not None or not getattr(sn, "can_calibrate", False):
        return  # ranked on data, or a restored/trained supernet whose order must stay
    if callable(getattr(evaluator, "calibration_batches", None)):
        warnings.warn(f"the supernet was built without calibration data, so its channels and layers were ranked "
                      f"without data; evaluator {evaluator.name!r} has a held-out calibration sample: build with "
                      "osf.supernet(model, calibration=evaluator), or call sn.calibrate(evaluator) before searching "
                      "(osf search does this unless --calibration 0)",
                      RandomInputsWarning, stacklevel=3)


def _check_supernet(sn: Any) -> None:
    missing = [a for a in ("space", "use", "num_params", "model") if not hasattr(sn, a)]
    if missing or not isinstance(sn.space, SearchSpace):
        hint = " (build one with osf.supernet(model))" if isinstance(sn, torch.nn.Module) or missing else ""
        raise TypeError(f"sn must be a supernet{hint}, got {type(sn).__name__}"
                        + (f" without {', '.join(missing)}" if missing and not isinstance(sn, torch.nn.Module) else ""))


def _run(sn, evaluator, space, meter, objectives, budgets, costs, n_trials, sampler, storage, run_dir, name, seed,
         timeout, show_progress, evaluate_infeasible, budget_band=None) -> SearchResult:
    study = optuna.create_study(
        storage=make_storage(storage, run_dir),
        study_name=name,
        directions=[DIRECTIONS[o] for o in objectives],
        sampler=make_sampler(sampler, len(objectives), n_trials, seed),
        load_if_exists=True,
    )
    want = [optuna.study.StudyDirection.MAXIMIZE if DIRECTIONS[o] == "maximize" else optuna.study.StudyDirection.MINIMIZE for o in objectives]
    if list(study.directions) != want:
        raise ValueError(f"study {name!r} exists with other objectives; use another study_name or run_dir")

    reference = study.user_attrs.get("osf_reference") or {}
    meter.remember(space.largest(), reference)  # costs measured before (a resumed study): not again
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "config" in t.user_attrs:
            meter.remember(t.user_attrs["config"], t.user_attrs)
    missing = [c for c in costs if c not in reference]
    if missing:
        reference.update(meter.costs(missing, space.largest()))
        study.set_user_attr("osf_reference", reference)
    limits = resolve_budgets(budgets, reference)
    if budgets:
        check_reachable(budgets, meter.costs(list(limits), space.smallest()), reference)
    study.set_user_attr("osf_space", space.to_json())
    study.set_user_attr("osf_objectives", list(objectives))
    study.set_user_attr("osf_limits", limits)

    budget_aware = budget_band is not None and "params" in limits and isinstance(sampler, str)
    if budget_aware:  # trials near the budget; the named sampler proposes, a repair moves into the band
        study.sampler = BudgetSampler(study.sampler, space, sn.num_params, limits["params"], tuple(budget_band), seed)
    fail_stale_trials(study)
    if not study.get_trials(deepcopy=False):  # fresh study: anchor both ends of the front
        study.enqueue_trial(_space_params(space, "largest"), skip_if_exists=True)  # workers starting together
        study.enqueue_trial(_space_params(space, "smallest"), skip_if_exists=True)
        if budget_aware:  # and the depth-only and width-only subnets at the budget
            for corner in budget_corners(space, study.sampler.cost, limits["params"]):
                study.enqueue_trial(corner, skip_if_exists=True)
    if "score" not in reference:  # the full model is the reference of every table and plot, budget or not
        reference["score"] = evaluate_score(sn, evaluator, space.largest())
        study.set_user_attr("osf_reference", reference)
    describe = getattr(evaluator, "describe", None)
    study.set_user_attr("osf_metric", describe() if callable(describe) else f"{evaluator.name} (higher is better)")

    gp = isinstance(study.sampler, optuna.samplers.GPSampler)
    runner = _Objective(sn, evaluator, space, meter, objectives, costs, limits, n_trials,
                        evaluate_infeasible or gp, reference)
    result = SearchResult(study=study, space=space, objectives=objectives, limits=limits, reference=reference)
    done = _n_complete(study)
    if done >= n_trials:
        return result

    bar = tqdm(total=n_trials, initial=done, desc="search", unit="trial", disable=not show_progress)
    try:
        study.optimize(
            runner,
            n_trials=None,
            timeout=timeout,
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,)), _Progress(bar, n_trials)],
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        bar.close()
        _abandon_running(study)
        _interrupted(result, run_dir, n_trials, resumable=storage is not None or run_dir is not None)
        raise
    finally:
        bar.close()
        runner.heartbeat.close()
    if runner.interrupted:
        _interrupted(result, run_dir, n_trials, resumable=storage is not None or run_dir is not None)
        raise KeyboardInterrupt
    return result


def _abandon_running(study: optuna.Study) -> None:
    """Mark this worker's RUNNING trials as FAIL (abandoned; a resume runs them again)."""
    from osf.search.storage import worker_id

    me = worker_id()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("osf_worker") in (me, None):
            try:
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass


def _interrupted(result: SearchResult, run_dir: Path | None, n_trials: int, resumable: bool) -> None:
    """After Ctrl-C: write what is done and say how to go on."""
    import sys

    done = _n_complete(result.study)
    where = ""
    if run_dir is not None:
        result.save(run_dir)
        result.plot_pareto(Path(run_dir) / "pareto.png")
        where = f"; trials.csv, pareto.json and pareto.png in {run_dir} hold them"
    how = ("Run the same search again (same run folder/storage) to resume: finished trials are kept."
           if resumable else "The study was in memory and cannot be resumed; pass run_dir= (or storage=) to make it resumable.")
    sys.stderr.write(f"search interrupted: {done} of {n_trials} trials complete (the running one was abandoned){where}. {how}\n")


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class _Objective:
    """Evaluates one trial; reuses stored values for a config already scored."""

    def __init__(self, sn, evaluator, space, meter, objectives, costs, limits, n_trials, evaluate_infeasible,
                 reference=None):
        self.sn, self.evaluator, self.space, self.meter = sn, evaluator, space, meter
        self.objectives, self.costs, self.limits = objectives, costs, limits
        self.n_trials, self.evaluate_infeasible = n_trials, evaluate_infeasible
        self.reference = reference or {}
        self.largest_key = config_key(space.largest())
        self.interrupted = False
        self.heartbeat = Heartbeat()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._trial(trial)
        except KeyboardInterrupt:
            # abandon this trial without optuna's failure log; the search then stops and saves
            self.interrupted = True
            trial.set_user_attr("osf_interrupted", True)
            trial.study.stop()
            raise optuna.TrialPruned("interrupted") from None

    def _trial(self, trial: optuna.Trial) -> tuple[float, ...]:
        with self.heartbeat.beating(trial):
            ticket = self._admit(trial)
            params = {n: trial.suggest_categorical(n, c) for n, c in self.space.parameters().items()}
            cfg = self.space.canonical(self.space.to_config(params))
            key = config_key(cfg)
            claim_config(trial, key, ticket)
            # scored once per study: wait for another worker scoring this config, or reuse its values
            metrics = await_config_turn(trial.study, trial.number, key, ticket, lambda ts: self._cached(ts, key),
                                        IN_FLIGHT_WAIT_S)
            if metrics is not None:
                trial.set_user_attr("cached_from", metrics.pop("_from"))
            else:
                metrics = self._measure(cfg, key)
            for k, v in metrics.items():
                trial.set_user_attr(k, v)
            for c, v in zip(self.limits, metrics["violations"]):
                trial.set_constraint(c, v)
            score = metrics.get("score")
            return tuple((float("-inf") if score is None else score) if o == "score" else metrics[o] for o in self.objectives)

    def _admit(self, trial: optuna.Trial) -> int:
        """Prune the trial when N trials are already complete or running (exact N total); else
        return its ticket for :func:`await_config_turn`. Fails the trials of dead workers."""
        study = trial.study
        live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        stale = [t for t in live if is_stale(t)]
        if stale:
            fail_stale_trials(study, stale)
        gone = {t.number for t in stale}
        # a trial another worker is pruning will not complete: counting it pruned the trials that
        # would have (a retried one), while the workers took turns pruning each other's
        ahead = [t for t in live if t.number < trial.number and t.number not in gone and PRUNING not in t.user_attrs]
        if len(ahead) < self.n_trials:
            return next_ticket(live)  # read after this trial became RUNNING, as a ticket must be
        if sum(t.state == TrialState.COMPLETE for t in ahead) >= self.n_trials:
            study.stop()
        else:
            trial.set_user_attr(PRUNING, True)
            time.sleep(1.0)  # others are finishing the last trials; one of them may fail
        raise optuna.TrialPruned("the study already has its trials")

    def _cached(self, trials: list[FrozenTrial], key: str) -> dict[str, Any] | None:
        for t in trials:
            if t.state == TrialState.COMPLETE and t.user_attrs.get("config") == key:
                m = {k: t.user_attrs[k] for k in (*METRICS, "feasible", "violations") if k in t.user_attrs}
                if all(c in m for c in self.costs):
                    m["_from"] = t.user_attrs.get("cached_from", t.number)
                    return m
        return None

    def _measure(self, cfg: Config, key: str) -> dict[str, Any]:
        metrics: dict[str, Any] = self.meter.costs(self.costs, cfg)
        violations = [metrics[c] - lim for c, lim in self.limits.items()]
        feasible = all(v <= 0 for v in violations)
        metrics["violations"] = violations
        metrics["feasible"] = feasible
        if feasible or self.evaluate_infeasible:
            if key == self.largest_key and self.reference.get("score") is not None:
                metrics["score"] = self.reference["score"]  # the full model, scored once as the reference
            else:
                metrics["score"] = evaluate_score(self.sn, self.evaluator, cfg)
        return metrics


class _Progress:
    def __init__(self, bar: tqdm, n_trials: int):
        self.bar, self.n_trials = bar, n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        scores = [t.user_attrs["score"] for t in done if t.user_attrs.get("feasible", True) and "score" in t.user_attrs]
        self.bar.n = min(len(done), self.n_trials)
        if scores:
            self.bar.set_postfix(best=f"{max(scores):.4g}")
        self.bar.refresh()
