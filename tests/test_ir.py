"""Oracles for tracing and coupling analysis, on every supported model."""
from __future__ import annotations

import functools
import random

import pytest
import torch
from torch import nn

import osf.ir as oi
from osf.ir.apply import permute_dims, sliced_copy
from osf.ir.inputs import default_inputs, resize_inputs
from osf.ir.trace import flatten_output, normalize_inputs
from oracle_tools import randomise_constants
from zoo import ALL_MODELS, HF_MODELS, build


@functools.lru_cache(maxsize=None)
def analyzed(name: str):
    """The model with its constant-initialised tensors (biases, norms, Mamba ``D`` and
    ``A_log`` rows...) randomised, so that the permutation oracle sees every member."""
    model, ex = build(name)
    randomise_constants(model, seed=1)
    ir = oi.analyze(model, ex)
    args, kwargs = normalize_inputs(ex if ex is not None else default_inputs(model))
    return model, ir, args, kwargs


def run(model, args, kwargs):
    with torch.no_grad():
        return flatten_output(model(*args, **kwargs))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_trace_reproduces_outputs_on_new_shapes(name):
    model, ir, args, kwargs = analyzed(name)
    gm = ir.graph
    for batch, seq in ((None, None), (3, None), (3, 6)):
        if seq is not None and name not in ("tiny-mamba", "tiny-mamba2", "gpt", "tiny-clip"):
            continue
        a, k = resize_inputs(args, kwargs, batch=batch, seq_len=seq, seed=7) if batch else (args, kwargs)
        expected = run(model, a, k)
        with torch.no_grad():
            got = gm(*a, **k)
        assert set(got) == set(expected)
        for key in expected:
            assert got[key].shape == expected[key].shape
            assert rel_err(got[key], expected[key]) < 1e-5, (name, key, batch, seq)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_permuting_any_dim_preserves_output(name):
    model, ir, args, kwargs = analyzed(name)
    ref = run(model, args, kwargs)
    assert ir.dims, f"{name}: no elastic dims found"
    g = torch.Generator().manual_seed(0)
    for dim in ir.dims.values():
        perm = torch.randperm(dim.size, generator=g)
        permute_dims(ir, {dim.name: perm})
        try:
            out = run(model, args, kwargs)
        finally:
            permute_dims(ir, {dim.name: torch.argsort(perm)})
        for key in ref:
            assert rel_err(out[key], ref[key]) < 1e-5, f"{name}: permuting {dim.name} changed {key}"


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-vit", "gpt", "resnet"])
def test_permutation_oracle_catches_a_missed_member(name):
    """Leaving one member out of a permutation must change the output: the oracle has teeth."""
    model, ir, args, kwargs = analyzed(name)
    ref = run(model, args, kwargs)
    dim = max(ir.dims.values(), key=lambda d: len(d.members))
    missed = [m for m in dim.members if len(m.shape) >= 2][-1]  # (1-D members: tests/test_oracles.py)
    t = dict(model.named_parameters()).get(missed.tensor)
    if t is None:
        t = dict(model.named_buffers())[missed.tensor]
    saved = t.detach().clone()
    perm = torch.roll(torch.arange(dim.size), 1)
    permute_dims(ir, {dim.name: perm})
    with torch.no_grad():
        pos = ir.positions(missed.tensor, missed.axis, {dim.name: torch.argsort(perm)})
        t.copy_(t.index_select(missed.axis, pos))  # undo it on one member only
    try:
        out = run(model, args, kwargs)
        assert any(rel_err(out[k], ref[k]) > 1e-4 for k in ref)
    finally:
        with torch.no_grad():
            permute_dims(ir, {dim.name: torch.argsort(perm)})
            t.copy_(saved)
    assert all(rel_err(run(model, args, kwargs)[k], ref[k]) < 1e-6 for k in ref)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_slicing_any_dim_runs(name):
    model, ir, args, kwargs = analyzed(name)
    ref = run(model, args, kwargs)
    rng = random.Random(0)
    for dim in ir.dims.values():
        k = rng.randint(1, dim.size - 1)
        sub = sliced_copy(ir, {dim.name: k})
        out = run(sub, args, kwargs)
        for key in ref:
            assert out[key].shape == ref[key].shape, f"{name}: slicing {dim.name} to {k}"
            assert torch.isfinite(out[key]).all()
    # all dims at once, and the original is untouched
    sizes = {d.name: rng.randint(1, d.size) for d in ir.dims.values()}
    sub = sliced_copy(ir, sizes)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(rel_err(run(model, args, kwargs)[k], ref[k]) == 0 for k in ref)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_dropping_any_block_runs(name):
    model, ir, args, kwargs = analyzed(name)
    ref = run(model, args, kwargs)
    for block in ir.blocks:
        out = run(sliced_copy(ir, {}, drop=[block.name]), args, kwargs)
        for key in ref:
            assert out[key].shape == ref[key].shape


EXPECTED_DIMS = {
    "tiny-mamba": ["hidden"] + [f"backbone.layers.{i}.mixer:{k}" for i in range(4)
                                for k in ("d_inner", "d_state", "dt_rank")],
    "tiny-mamba2": ["hidden"] + [f"backbone.layers.{i}.mixer:{k}" for i in range(4)
                                 for k in ("heads", "head_dim", "d_state")],
    "tiny-vit": ["hidden"] + [f"vit.layers.{i}.{k}" for i in range(4) for k in ("attention:heads", "mlp:hidden")],
    "tiny-swin": [f"swin.encoder.layers.{s}:hidden" for s in range(2)]
    + [f"swin.encoder.layers.{s}.blocks.{b}.{k}" for s in range(2) for b in range(2)
       for k in ("attention:heads", "mlp:hidden")],
    "tiny-swinv2": [f"swinv2.encoder.layers.{s}:hidden" for s in range(2)]
    + [f"swinv2.encoder.layers.{s}.blocks.{b}.attention.self:heads" for s in range(2) for b in range(2)],
    "tiny-clip": ["text_model.encoder:hidden", "vision_model.encoder:hidden"]
    + [f"{t}_model.encoder.layers.{i}.{k}" for t in ("text", "vision") for i in range(2)
       for k in ("self_attn:heads", "mlp:hidden")],
    "patch-mamba": ["hidden"] + [f"layers.{i}.mixer:{k}" for i in range(2) for k in ("d_inner", "d_state", "dt_rank")],
    "gpt": ["heads", "head_dim", "h.0:hidden", "h.1:hidden"],
    "mlp": ["net.0:hidden", "net.2:hidden"],
}
EXPECTED_BLOCKS = {"tiny-mamba": 4, "tiny-mamba2": 4, "tiny-vit": 4, "tiny-swin": 4, "tiny-swinv2": 4,
                   "tiny-clip": 4, "patch-mamba": 2, "gpt": 2, "resnet": 3, "mlp": 0}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_expected_dims_blocks_and_coverage(name):
    _, ir, _, _ = analyzed(name)
    missing = [d for d in EXPECTED_DIMS.get(name, []) if d not in ir.dims]
    assert not missing, f"{name}: missing {missing}; found {list(ir.dims)}"
    assert len(ir.blocks) == EXPECTED_BLOCKS[name], [b.name for b in ir.blocks]
    if name in HF_MODELS or name in ("gpt", "patch-mamba"):
        assert ir.param_coverage(exclude_embeddings=True) >= 0.9
    assert not ir.unhandled_ops


def test_mamba_mixer_rule_slices_fused_projection_by_sub_range():
    """d_inner lives in both halves of in_proj ([x | z]), never in a prefix of the whole."""
    _, ir, _, _ = analyzed("tiny-mamba")
    dim = ir.dims["backbone.layers.0.mixer:d_inner"]
    pos = ir.positions("backbone.layers.0.mixer.in_proj.weight", 0, {dim.name: torch.arange(3)})
    assert pos.tolist() == [0, 1, 2, dim.size, dim.size + 1, dim.size + 2]
    d_state = ir.dims["backbone.layers.0.mixer:d_state"]
    r = ir.dims["backbone.layers.0.mixer:dt_rank"].size
    pos = ir.positions("backbone.layers.0.mixer.x_proj.weight", 0, {d_state.name: torch.arange(2)})
    assert pos.tolist() == list(range(r)) + [r, r + 1, r + d_state.size, r + d_state.size + 1]


def test_size_attributes_are_recorded_and_updated():
    model, ir, args, kwargs = analyzed("tiny-mamba2")
    recorded = {(a.module, a.attr) for a in ir.attrs}
    assert ("backbone.layers.0.mixer", "num_heads") in recorded
    assert ("backbone.layers.0.mixer", "conv_dim") in recorded
    sub = sliced_copy(ir, {"backbone.layers.0.mixer:heads": 4, "backbone.layers.0.mixer:d_state": 8})
    mixer = sub.backbone.layers[0].mixer
    assert (mixer.num_heads, mixer.ssm_state_size, mixer.intermediate_size) == (4, 8, 4 * mixer.head_dim)
    assert mixer.conv1d.groups == mixer.conv1d.out_channels == mixer.conv_dim
    assert model.backbone.layers[0].mixer.num_heads == 8


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        if x.mean() > 0:  # a Python decision on tensor values
            return self.a(x)
        return self.b(x)


def test_untraceable_model_names_module_and_line():
    x = torch.ones(2, 4)
    with pytest.raises(oi.TraceError) as e:
        oi.trace(DataDependent(), x)
    msg = str(e.value)
    assert "test_ir.py" in msg and "x.mean() > 0" in msg and "register_leaf" in msg


def test_tracing_error_names_the_module():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 4))

        def forward(self, x):
            return self.inner(x).view(3, 5)

    with pytest.raises(oi.TraceError, match="view"):
        oi.trace(Broken(), torch.ones(2, 4))


def test_model_without_elastic_dims_and_non_hf_model_without_inputs():
    ir = oi.analyze(nn.Linear(4, 3), torch.ones(2, 4))
    assert ir.dims == {}
    with pytest.raises(ValueError, match="example_inputs"):
        oi.trace(nn.Linear(4, 3))
