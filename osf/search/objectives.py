"""Objectives (score and costs) of one config, and budgets on the costs.

Budget rule: a budget value ``<= 1`` is a fraction of the largest config's value
(``{"params": 0.5}`` = at most half the original parameters); a value ``> 1`` is an
absolute limit (parameters, MACs, or milliseconds for latency).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping

import torch

from osf.modes import eval_mode
from osf.space import Config
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


def check_constraints(constraints: Mapping[str, float] | None) -> dict[str, float]:
    """Check budget names and values (see the module docstring for the rule)."""
    out: dict[str, float] = {}
    if constraints is not None and not isinstance(constraints, Mapping):
        raise TypeError(f"constraints must be a dict of budgets such as {{'params': 0.5}}, got {type(constraints).__name__}")
    for name, value in (constraints or {}).items():
        if name not in COSTS:
            raise ValueError(f"unknown budget {name!r}; budgets can be set on {list(COSTS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"budget {name!r} must be a positive number (<= 1: fraction of the original), got {value!r}")
        out[name] = float(value)
    return out


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


def resolve_limit(value: float, reference: float) -> float:
    """Absolute limit for a budget ``value``: a fraction of ``reference`` when ``<= 1``."""
    return value * reference if value <= 1.0 else value


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


def measure_latency_ms(model: torch.nn.Module, inputs: Any, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time (ms) of one forward pass on the model's own device."""
    device = model_device(model)
    inputs = _to_device(inputs, device)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), eval_mode(model):
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            _call(model, inputs)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


class CostMeter:
    """Computes the costs of configs of one supernet (params exact, MACs, latency)."""

    def __init__(self, sn: SupernetLike, evaluator: Evaluator | None, example_inputs: Any = None):
        self.sn = sn
        self._inputs = example_inputs
        self._evaluator = evaluator

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

    def cost(self, name: str, cfg: Config) -> float:
        if name == "params":
            return float(self.sn.num_params(cfg))
        if name == "macs":
            return float(self.sn.macs(cfg, inputs=self.inputs()))
        if name == "latency":
            inputs = self.inputs()
            with self.sn.use(cfg):
                return measure_latency_ms(self.sn.model, inputs)
        raise ValueError(f"unknown cost {name!r}; choose from {list(COSTS)}")

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
