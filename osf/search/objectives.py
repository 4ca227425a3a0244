"""Objectives (score and costs) of one config, and budgets on the costs.

Budgets name their unit: ``max_params`` / ``max_macs`` are absolute counts,
``max_params_frac`` / ``max_macs_frac`` fractions (0, 1] of the largest config's value,
``max_latency_ms`` milliseconds. The same names serve ``search(constraints={...})``,
``SearchResult.best(...)`` and the CLI (``--max-params``, ``--max-params-frac``, ...).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Mapping

import torch

from osf.modes import eval_mode
from osf.space import Config, config_key
from osf.search.protocol import Evaluator, SupernetLike

OBJECTIVES = ("score", "params", "macs", "latency")
COSTS = ("params", "macs", "latency")
DIRECTIONS = {"score": "maximize", "params": "minimize", "macs": "minimize", "latency": "minimize"}
UNITS = {"params": "parameters", "macs": "MACs", "latency": "ms"}


def check_objectives(objectives: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Normalise ``objectives`` ("score,params" or a sequence) and check the names."""
    objs = tuple(o.strip() for o in objectives.split(",")) if isinstance(objectives, str) else tuple(objectives)
    bad = [o for o in objs if o not in OBJECTIVES]
    if bad or not objs:
        raise ValueError(f"unknown objective(s) {bad or objs!r}; choose from {list(OBJECTIVES)}")
    if len(set(objs)) != len(objs):
        raise ValueError(f"objectives repeat a name: {list(objs)}")
    return objs


# budget argument -> (cost, a fraction of the original's cost?)
BUDGETS = {
    "max_params": ("params", False), "max_params_frac": ("params", True),
    "max_macs": ("macs", False), "max_macs_frac": ("macs", True),
    "max_latency_ms": ("latency", False),
}


def option(arg: str, cli: bool) -> str:
    """How a budget argument is spelled: ``max_params`` in Python, ``--max-params`` on the command line."""
    return "--" + arg.replace("_", "-") if cli else arg


def check_budgets(budgets: Mapping[str, Any] | None, *, cli: bool = False) -> dict[str, float]:
    """Budgets checked, ``{argument: value}`` (``None`` values left out).

    Raises ``ValueError`` naming the argument (``--max-params`` style when ``cli``) and what
    it allows: an unknown name, a value of the wrong unit or sign, or a cost given both ways."""
    if budgets is not None and not isinstance(budgets, Mapping):
        raise TypeError(f"constraints must be a dict of budgets such as {{'max_params_frac': 0.5}}, "
                        f"got {type(budgets).__name__}")
    out: dict[str, float] = {}
    for arg, value in (budgets or {}).items():
        if value is None:
            continue
        if arg not in BUDGETS:
            hint = (f"; {arg!r} alone is ambiguous: use max_{arg} (an absolute count) or max_{arg}_frac (a fraction "
                    "of the original)" if arg in ("params", "macs") else
                    "; use max_latency_ms (milliseconds)" if arg == "latency" else "")
            raise ValueError(f"unknown budget {arg!r}; budgets are {', '.join(BUDGETS)}{hint}")
        cost, frac = BUDGETS[arg]
        name = option(arg, cli)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if frac:
            if not number or not 0 < value <= 1:
                more = (f"; for an absolute count use {option(f'max_{cost}', cli)}"
                        if number and value > 1 else "")
                raise ValueError(f"{name} must be a fraction of the original's {UNITS[cost]} in (0, 1], "
                                 f"got {value!r}{more}")
        elif cost == "latency":
            if not number or not value > 0:
                raise ValueError(f"{name} must be a positive number of milliseconds, got {value!r}")
        elif not number or not value >= 1:
            more = (f"; for a fraction of the original use {option(arg + '_frac', cli)}"
                    if number and 0 < value < 1 else "")
            raise ValueError(f"{name} must be a number of {UNITS[cost]} >= 1 (an absolute count), got {value!r}{more}")
        out[arg] = float(value)
    for cost in ("params", "macs"):
        if f"max_{cost}" in out and f"max_{cost}_frac" in out:
            raise ValueError(f"give one of {option(f'max_{cost}', cli)} (a count of {UNITS[cost]}) or "
                             f"{option(f'max_{cost}_frac', cli)} (a fraction of the original), not both")
    return out


def resolve_budgets(budgets: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """Absolute limit per cost (``{"params": ...}``): fractions are taken of ``reference``."""
    return {BUDGETS[a][0]: v * reference[BUDGETS[a][0]] if BUDGETS[a][1] else v for a, v in budgets.items()}


def check_reachable(budgets: Mapping[str, float], smallest: Mapping[str, float], reference: Mapping[str, float],
                    *, cli: bool = False) -> None:
    """Refuse a budget that even the smallest config (costs ``smallest``) breaks, saying what would do."""
    limits = resolve_budgets(budgets, reference)
    for arg, value in budgets.items():
        cost = BUDGETS[arg][0]
        small, full, limit = smallest[cost], reference[cost], limits[cost]
        if small <= limit:
            continue
        fmt = (lambda v: f"{v:,.0f}") if cost != "latency" else (lambda v: f"{v:.4g}")  # noqa: E731
        least = (f"{option('max_latency_ms', cli)} {fmt(small)}" if cost == "latency" else
                 f"{option(f'max_{cost}', cli)} {fmt(small)} or {option(f'max_{cost}_frac', cli)} {small / full:.3f}")
        raise ValueError(f"{option(arg, cli)} {value:g} ({fmt(limit)} {UNITS[cost]}) is unreachable: the smallest "
                         f"config has {fmt(small)} {UNITS[cost]} ({small / full:.1%} of the original {fmt(full)}); "
                         f"allow at least {least}")


def check_count(value: Any, name: str, *, allow_none: bool = True, minimum: int = 1, what: str = "") -> Any:
    """Refuse a count that is not an integer ``>= minimum`` (``None`` allowed when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None (all)" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}{what}, got {value!r}")
    return value


def model_vocab_size(model: torch.nn.Module) -> int | None:
    """Rows of the model's input embedding (``None`` if it has none)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    return getattr(emb, "num_embeddings", None)


def check_vocab(tokenizer: Any, model: torch.nn.Module, max_id: int | None = None) -> None:
    """Refuse a tokenizer whose token ids do not fit the model's embedding, naming both sizes."""
    rows = model_vocab_size(model)
    if rows is None:
        return
    n = len(tokenizer) if max_id is None else max_id + 1
    if n > rows:
        raise ValueError(
            f"tokenizer has {n:,} tokens but the model's input embedding has {rows:,} rows: token ids >= {rows:,} "
            "cannot be looked up; use the tokenizer the model was trained with"
        )


def _call(model: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: _to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to_device(v, device) for v in inputs)
    return inputs


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def measure_latency_ms(model: torch.nn.Module, inputs: Any, warmup: int = 2, repeats: int = 7,
                       clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time (ms) of one forward pass on the model's own device.

    ``inputs`` (a tensor, or a dict/tuple/list of them) are moved to the device of the
    model's parameters first. ``warmup`` forwards run untimed (kernel selection, caches,
    lazy allocation), then ``repeats`` timed ones; on CUDA each is bracketed by
    ``torch.cuda.synchronize`` so the time covers the kernels, not their launch. ``clock``
    returns seconds (``time.perf_counter``).
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0 (untimed forwards), got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1 (timed forwards), got {repeats!r}")
    device = model_device(model)
    inputs = _to_device(inputs, device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), eval_mode(model):
        for i in range(warmup + repeats):
            sync()
            t0 = clock()
            _call(model, inputs)
            sync()
            if i >= warmup:
                times.append((clock() - t0) * 1e3)
    return float(statistics.median(times))


class CostMeter:
    """Computes the costs of configs of one supernet (params exact, MACs, latency), each once.

    A cost of a config is computed the first time it is asked for and remembered: the
    search asks for the largest config's costs (the reference) and again in its trial, and
    :meth:`remember` takes costs already stored in a study, so a resumed search measures
    no config's latency twice.
    """

    def __init__(self, sn: SupernetLike, evaluator: Evaluator | None, example_inputs: Any = None):
        self.sn = sn
        self._inputs = example_inputs
        self._evaluator = evaluator
        self._known: dict[tuple[str, str], float] = {}

    def inputs(self) -> Any:
        if self._inputs is None:
            fn = getattr(self._evaluator, "example_inputs", None)
            self._inputs = fn() if callable(fn) else None
        if self._inputs is None:
            raise ValueError(
                "MACs/latency need example inputs: pass search(..., example_inputs=...) or use an "
                "evaluator with an example_inputs() method"
            )
        return self._inputs

    def remember(self, cfg: Config | str, costs: Mapping[str, Any]) -> None:
        """Take the costs of ``cfg`` (a config or its ``config_key``) measured before; other keys are ignored."""
        key = cfg if isinstance(cfg, str) else config_key(cfg)
        for name, value in costs.items():
            if name in COSTS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._known[(name, key)] = float(value)

    def cost(self, name: str, cfg: Config) -> float:
        if name not in COSTS:
            raise ValueError(f"unknown cost {name!r}; choose from {list(COSTS)}")
        key = (name, config_key(cfg))
        if key not in self._known:
            self._known[key] = self._compute(name, cfg)
        return self._known[key]

    def _compute(self, name: str, cfg: Config) -> float:
        if name == "params":
            return float(self.sn.num_params(cfg))
        if name == "macs":
            return float(self.sn.macs(cfg, inputs=self.inputs()))
        inputs = self.inputs()
        with self.sn.use(cfg):
            return measure_latency_ms(self.sn.model, inputs)

    def costs(self, names: tuple[str, ...] | list[str], cfg: Config) -> dict[str, float]:
        return {n: self.cost(n, cfg) for n in names}


def evaluate_score(sn: SupernetLike, evaluator: Evaluator, cfg: Config) -> float:
    """The evaluator's score of ``cfg``, computed with that config active."""
    import math

    with sn.use(cfg):
        raw = evaluator(sn.model)
    try:
        if isinstance(raw, bool):
            raise TypeError
        score = float(raw)
    except (TypeError, ValueError):
        shown = type(raw).__name__ if not isinstance(raw, (int, float, str, type(None))) else repr(raw)
        raise TypeError(f"evaluator {evaluator.name!r} returned {shown[:80]}; it must return one number, the score "
                        "(higher is better)") from None
    if not math.isfinite(score):  # NaN or inf: the search could not rank it
        raise ValueError(f"evaluator {evaluator.name!r} returned {score} for config {cfg}; a score must be a finite "
                         "number (higher is better)")
    return score
