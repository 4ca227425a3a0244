"""The latency objective: timed forwards after warm-up, on the model's device, measured once per config."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import osf.search.objectives as objectives
from osf.search import search
from osf.search.objectives import CostMeter, measure_latency_ms
from osf.space import config_key
from tests.search_fakes import AgreementEvaluator, FakeSupernet


class Ticking(nn.Module):
    """Each forward advances a fake clock by the next of ``durations_ms`` and records its input's device."""

    def __init__(self, durations_ms: list[float]):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.durations, self.now, self.seen, self.modes = list(durations_ms), 0.0, [], []

    def clock(self) -> float:
        return self.now

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append((x.device.type, None if scale is None else scale.device.type))
        self.modes.append(self.training)
        self.now += self.durations[len(self.seen) - 1] / 1e3
        return self.lin(x)


def test_median_of_timed_passes_after_untimed_warmup():
    model = Ticking([100.0, 90.0, 3.0, 1.0, 2.0, 5.0, 4.0]).train()
    ms = measure_latency_ms(model, torch.randn(2, 4), warmup=2, repeats=5, clock=model.clock)
    assert ms == pytest.approx(3.0)  # median of the 5 timed passes; with the warm-up it would be 4
    assert len(model.seen) == 7
    assert model.modes == [False] * 7 and model.training  # timed in eval mode, mode restored
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        measure_latency_ms(model, torch.randn(2, 4), repeats=0)
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        measure_latency_ms(model, torch.randn(2, 4), warmup=-1)


@pytest.mark.parametrize("pack", ["tensor", "tuple", "dict"])
def test_inputs_move_to_the_model_device(pack):
    model = Ticking([1.0] * 3).to("meta")  # a device the CPU inputs are not on: a forward there fails unless moved
    x = torch.randn(2, 4)
    inputs = {"tensor": x, "tuple": (x,), "dict": {"x": x, "scale": torch.ones(1)}}[pack]
    measure_latency_ms(model, inputs, warmup=1, repeats=2, clock=model.clock)
    assert {d for d, _ in model.seen} == {"meta"} and len(model.seen) == 3
    if pack == "dict":
        assert {s for _, s in model.seen} == {"meta"}
    assert x.device.type == "cpu"  # the caller's inputs are left where they were


def test_cost_meter_measures_a_config_once():
    sn, ev = FakeSupernet(), AgreementEvaluator()
    forwards = []
    sn.model.register_forward_hook(lambda *_: forwards.append(dict(sn.config)))
    meter = CostMeter(sn, ev)
    small, large = sn.space.smallest(), sn.space.largest()
    first = meter.cost("latency", small)
    assert len(forwards) == 9 and all(c == sn.space.validate(small) for c in forwards)  # 2 warm-up + 7 timed
    assert meter.cost("latency", small) == first and len(forwards) == 9  # cached: the model does not run
    assert meter.costs(["params", "latency"], small) == {"params": float(sn.num_params(small)), "latency": first}
    assert len(forwards) == 9
    meter.cost("latency", large)
    assert len(forwards) == 18  # another config is measured
    meter.remember(config_key(sn.space.canonical({**large, "width": 12})), {"latency": 0.5, "score": 1.0})
    assert meter.cost("latency", sn.space.canonical({**large, "width": 12})) == 0.5 and len(forwards) == 18
    with pytest.raises(ValueError, match="unknown cost 'flops'"):
        meter.cost("flops", small)


def test_resumed_search_measures_no_config_twice(tmp_path, monkeypatch):
    sn, ev = FakeSupernet(), AgreementEvaluator()
    measured: list[str] = []
    real = objectives.measure_latency_ms

    def counting(model, inputs):
        measured.append(config_key(sn.config))
        return real(model, inputs)

    monkeypatch.setattr(objectives, "measure_latency_ms", counting)
    kw = dict(objectives=("score", "latency"), constraints={"max_latency_ms": 1e6}, run_dir=tmp_path,
              show_progress=False)
    search(sn, ev, n_trials=4, **kw)
    first = list(measured)
    res = search(sn, ev, n_trials=9, **kw)
    configs = set(res.trials["config"])
    assert len(measured) == len(set(measured)), "a config's latency was measured twice"
    assert set(measured) == configs  # every trial's config measured, once, over both runs
    assert len(measured) > len(first)  # the resumed run measured its new configs only
    done = res.study.get_trials()
    assert all(t.user_attrs["latency"] > 0 for t in done if t.state.name == "COMPLETE")
