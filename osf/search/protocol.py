"""The interfaces the search relies on: a supernet and an evaluator.

The search never imports the supernet implementation; anything that follows
:class:`SupernetLike` can be searched (the real ``osf.supernet`` object, or a test double).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol, runtime_checkable

import torch.nn as nn

from osf.space import Config, SearchSpace


@runtime_checkable
class SupernetLike(Protocol):
    """What the search needs from a supernet (see ``osf.supernet``)."""

    model: nn.Module
    space: SearchSpace
    config: Config

    def set_config(self, cfg: Config) -> None: ...

    def use(self, cfg: Config) -> AbstractContextManager[Any]: ...

    def num_params(self, cfg: Config | None = None) -> int: ...

    def macs(self, cfg: Config | None = None, inputs: Any = None) -> int: ...

    def extract(self, cfg: Config) -> nn.Module: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Evaluator(Protocol):
    """A score to maximise: ``evaluator(model) -> float``, with a ``name``.

    Evaluators may also offer:

    - ``example_inputs()`` (a tensor, tuple or dict of model inputs) so MACs and latency can be
      measured;
    - ``calibration_batches(n)``: up to ``n`` batches of model inputs (dicts may hold ``labels``)
      drawn from the evaluator's data but never scored, to rank a supernet's channels and layers
      (``osf.supernet(model, calibration=evaluator)``, ``sn.calibrate(evaluator)``); None when it
      has none;
    - ``full_sample()``: the same score on a larger sample of its data (the search re-ranks its
      best subnets with it before ``best()``), or None.
    """

    name: str

    def __call__(self, model: nn.Module) -> float: ...


class CallableEvaluator:
    """Wrap any ``model -> float`` callable as an :class:`Evaluator`."""

    def __init__(self, fn: Callable[[nn.Module], float], name: str | None = None, example_inputs: Any = None):
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)
        self._example_inputs = example_inputs if example_inputs is not None else getattr(fn, "example_inputs", None)

    def __call__(self, model: nn.Module) -> float:
        return self.fn(model)  # evaluate_score checks that it is one finite number

    def example_inputs(self) -> Any:
        ex = self._example_inputs
        return ex() if callable(ex) else ex


def as_evaluator(obj: Any) -> Evaluator:
    """Return ``obj`` if it already is an evaluator, else wrap the callable."""
    if not callable(obj):
        raise ValueError(f"an evaluator must be callable as evaluator(model) -> float, got {type(obj).__name__}")
    if isinstance(getattr(obj, "name", None), str):
        return obj
    return CallableEvaluator(obj)
