"""Tracing on fake tensors (the meta device): the graph and the analysis equal those of a trace on
real tensors, the graph computes the model's outputs on real inputs, a model that decides on
values falls back to real tensors and says where, and a supernet built on a fake trace keeps
its guards (the build check runs real forwards)."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import osf
import osf.ir as oi
from osf.ir.inputs import default_inputs, resize_inputs, static_kwargs_for
from osf.ir.trace import TraceError, flatten_output, normalize_inputs
from oracle_tools import randomise_constants
from zoo import ALL_MODELS, FAMILIES, build, build_family

trace_module = importlib.import_module("osf.ir.trace")  # osf.ir.trace, the attribute, is the function
pytestmark = pytest.mark.filterwarnings("ignore::osf.elastic.importance.RandomInputsWarning")

# families whose Python decides on shapes only: they must trace on fake tensors (the others may
# fall back, e.g. transformers' attention masks read padding values)
MUST_BE_FAKE = {"mamba", "mamba2", "user-patch-mamba", "vit", "swin", "clip", "siglip", "bert", "t5", "wav2vec2",
                "resnet-hf", "convnext", "mobilevit", "segformer", "user-gpt", "user-mlp", "user-resnet",
                "user-two-tower", "user-relpos", "opt", "bloom"}


@pytest.fixture
def fake_by_default(monkeypatch):
    """Trace every model on fake tensors by default, tiny ones included."""
    monkeypatch.setattr(trace_module, "FAKE_FROM_PARAMS", 0)


def _model(name: str):
    model, ex = build(name[4:]) if name.startswith("zoo:") else build_family(name)
    randomise_constants(model, seed=1)
    return model.eval(), ex


def _ir_summary(ir) -> tuple:
    dims = sorted((name, d.size, tuple(sorted(str(m) for m in d.members))) for name, d in ir.dims.items())
    return dims, [b.name for b in ir.blocks], sorted(str(a) for a in ir.attrs) if hasattr(ir, "attrs") else None


def _run(model, args, kwargs):
    with torch.no_grad():
        return flatten_output(model(*args, **kwargs))


@pytest.mark.parametrize("name", list(FAMILIES) + [f"zoo:{n}" for n in ALL_MODELS])
def test_a_fake_trace_gives_the_real_traces_analysis_and_a_graph_exact_on_real_inputs(name, fake_by_default):
    model, ex = _model(name)
    args, kwargs = normalize_inputs(ex if ex is not None else default_inputs(model))
    before = _run(model, args, kwargs)
    gm = oi.trace(model, ex)
    after = _run(model, args, kwargs)  # no fake tensor left behind (module attributes, lru caches)
    for key in before:
        assert torch.equal(after[key], before[key]), f"{name}: the trace changed what the model computes"
    meta = gm.meta["osf"]
    if not meta["fake"]:
        assert name not in MUST_BE_FAKE, f"{name} fell back to real tensors: {meta['real_because']}"
        assert meta["real_because"], "a fallback to real tensors must say why"
        return
    assert meta["example_outputs"] is None  # nothing was computed
    assert _ir_summary(oi.analyze(gm)) == _ir_summary(oi.analyze(oi.trace(model, ex, fake=False)))
    static = {**static_kwargs_for(model), **{n: v for n, v in kwargs.items() if not isinstance(v, torch.Tensor)}}
    tensors = {n: v for n, v in kwargs.items() if isinstance(v, torch.Tensor)}
    other = meta["shape_check"]
    for a, k in [(args, tensors)] + ([other[:2]] if other is not None else []):
        want = _run(model, a, {**k, **static})  # called as the trace called it (use_cache=False...)
        with torch.no_grad():
            got = gm(*a, **k)
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape == want[key].shape
            assert torch.allclose(got[key].float(), want[key].float(), rtol=1e-5, atol=1e-6), (name, key)


def test_the_families_that_must_trace_on_fake_tensors_exist():
    assert MUST_BE_FAKE <= set(FAMILIES)


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # a decision on a value
            return self.a(x)
        return self.b(x)


def test_a_decision_on_a_value_falls_back_to_real_tensors_and_names_the_line(fake_by_default):
    model = ValueBranch().eval()
    gm = oi.trace(model, torch.randn(2, 8), check=False)
    assert not gm.meta["osf"]["fake"]
    why = gm.meta["osf"]["real_because"]
    assert "__bool__" in why and "test_trace_fake.py" in why and "if x.sum() > 0" in why, why
    assert gm.meta["osf"]["example_outputs"] is not None
    with pytest.raises(TraceError, match=r"cannot be traced on fake tensors: .*if x\.sum\(\) > 0"):
        oi.trace(model, torch.randn(2, 8), fake=True)


class CachesInForward(nn.Module):
    """Fills a cache on its first call (as rotary embeddings used to): a fake trace would leave a
    meta tensor on the model."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.scale = None

    def forward(self, x):
        if self.scale is None:
            self.scale = torch.ones(8, device=x.device) * 2
        return self.lin(x) * self.scale


def test_a_forward_that_stores_tensors_on_the_model_falls_back_and_leaves_no_fake_tensor(fake_by_default):
    model = CachesInForward().eval()
    x = torch.randn(2, 8)
    gm = oi.trace(model, x)
    assert not gm.meta["osf"]["fake"]
    assert "CachesInForward.scale" in gm.meta["osf"]["real_because"]
    assert isinstance(model.scale, torch.Tensor) and not model.scale.is_meta  # the real trace's cache
    fresh = CachesInForward().eval()
    with pytest.raises(TraceError, match="stores computed tensors on the model"):
        oi.trace(fresh, x, fake=True)
    assert fresh.scale is None  # put back as it was
    torch.testing.assert_close(fresh(x), fresh.lin(x) * 2)


class ConstantBatch(nn.Module):
    """Reads the batch size as a plain int (``int(x.shape[0])``): the graph records it as a constant."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        n = int(x.shape[0])
        return self.lin(x).reshape(n, 2, 4).sum(1)


@pytest.mark.parametrize("fake", [True, None])
def test_the_replay_on_fake_tensors_catches_a_size_recorded_as_a_constant(fake, fake_by_default):
    with pytest.raises(TraceError, match="another shape|replay on the meta device fails"):
        oi.trace(ConstantBatch().eval(), torch.randn(2, 8), fake=fake)


def test_sizes_stay_symbolic_on_fake_tensors(fake_by_default):
    """The same model, its batch size read as a tracked size: traced fake, the graph runs at batch 5."""
    class TrackedBatch(ConstantBatch):
        def forward(self, x):
            return self.lin(x).reshape(x.shape[0], 2, 4).sum(1)

    model = TrackedBatch().eval()
    gm = oi.trace(model, torch.randn(2, 8))
    assert gm.meta["osf"]["fake"]
    x = torch.randn(5, 8)
    torch.testing.assert_close(gm(x)["output"], model(x))


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-vit", "gpt"])
def test_a_supernet_built_on_a_fake_trace_is_exact_and_keeps_its_build_check(name, fake_by_default):
    from zoo import build as build_zoo

    model, ex = build_zoo(name)
    randomise_constants(model, seed=2)
    args, kwargs = normalize_inputs(ex if ex is not None else default_inputs(model))
    want = _run(model, args, kwargs)
    sn = osf.supernet(model, ex)
    assert sn.ir.graph.meta["osf"]["fake"]
    with sn.use(sn.space.largest()):
        got = _run(sn.model, args, kwargs)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    cfg = sn.space.sample(3)
    sub = sn.extract(cfg)  # extract checks the subnet against the supernet itself
    a2, k2 = resize_inputs(args, kwargs, batch=3, seed=5)
    with sn.use(cfg):
        ref = _run(sn.model, a2, k2)
    out = _run(sub, a2, k2)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5)


def test_the_build_check_on_a_fake_trace_compares_with_real_outputs(fake_by_default):
    """The reference of the build check is the original model's real output: corrupting the
    model between trace and check must be caught."""
    from osf.elastic import verify

    model, ex = build("tiny-vit")
    gm = oi.trace(model, ex)
    assert gm.meta["osf"]["fake"] and gm.meta["osf"]["example_outputs"] is None
    reference = verify.Reference.from_trace(gm.meta["osf"])
    err, tol, _ = reference.worst(model)
    assert err <= tol
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("mlp.fc1.weight")).mul_(3.0)
    err, tol, _ = reference.worst(model)
    assert err > tol


def test_a_fake_trace_first_leaves_no_meta_tensor_in_the_models_lru_caches(fake_by_default):
    """BEiT caches its relative-position index in a method ``lru_cache`` (outside the model's
    attributes): traced on fake tensors before any real call, the cache must not keep the meta
    tensor, or every later forward of the user's model would break."""
    model, ex = build_family("beit")
    twin, _ = build_family("beit")  # same seed: the same weights, never traced
    model.eval(), twin.eval()
    oi.trace(model, ex)
    args, kwargs = normalize_inputs(ex if ex is not None else default_inputs(model))
    for key, want in _run(twin, args, kwargs).items():
        torch.testing.assert_close(_run(model, args, kwargs)[key], want)


class InPlaceBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = self.a(x)
        h.add_(self.b(x))  # its result is not used: the tracer follows h itself
        return x + self.c(torch.relu(h))


def test_equal_layers_with_in_place_ops_trace_exactly_on_fake_tensors(fake_by_default):
    """Equal layers repeat the same ops on the same shapes; on fake tensors an in-place op must
    still update the tensor the model goes on using, in every layer."""
    model = nn.Sequential(InPlaceBlock(), InPlaceBlock(), InPlaceBlock()).eval()
    gm = oi.trace(model, torch.randn(2, 8))
    assert gm.meta["osf"]["fake"]
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x)["output"], model(x))
    ir = oi.analyze(gm)
    assert _ir_summary(ir) == _ir_summary(oi.analyze(oi.trace(model, torch.randn(2, 8), fake=False)))
