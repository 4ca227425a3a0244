"""Tests for osf.kernels: every backend against the sequential reference, plus the HF Mamba helper."""
from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU; must be set before triton_scan is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import osf.kernels as K  # noqa: E402
from osf.kernels import chunked, reference  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install osf[triton])")
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(batch=2, dim=6, n=4, L=11, groups=0, dtype=torch.float64, seed=0, D=True, z=True,
                bias=True, softplus=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    bc = (batch, groups, n, L) if groups else (batch, n, L)
    delta = r(batch, dim, L, scale=0.7) if softplus else torch.rand(batch, dim, L, generator=g).to(dtype) * 0.6
    ins = dict(u=r(batch, dim, L), delta=delta, A=-torch.rand(dim, n, generator=g).to(dtype) * 2 - 0.1,
               B=r(*bc), C=r(*bc), D=r(dim) if D else None, z=r(batch, dim, L) if z else None,
               delta_bias=r(dim, scale=0.3) if bias else None)
    return {k: None if v is None else v.to(device) for k, v in ins.items()}


def run(fn, ins, softplus=True, grad=False, seed=1, **kw):
    """Run a scan; with grad=True also return gradients of a random projection of (y, last)."""
    ins = {k: None if v is None else v.detach().clone().requires_grad_(grad) for k, v in ins.items()}
    y, last = fn(**ins, delta_softplus=softplus, return_last_state=True, **kw)
    if not grad:
        return y.detach(), last.detach(), {}
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    wl = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last)
    ((y * wy).sum() + (last * wl).sum()).backward()
    return y.detach(), last.detach(), {k: v.grad for k, v in ins.items() if v is not None}


def assert_close(a, b, rtol, what):
    """Relative error in norm; tensors that are ~0 (e.g. grad A at L=1) are compared on a 1e-3 floor."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = ((a - b).norm() / max(b.norm().item(), 1e-3 * b.numel() ** 0.5)).item()
    assert err < rtol, f"{what}: relative error {err:.2e} >= {rtol:.0e}"


def compare(fn, ins, softplus, rtol, grad=True, **kw):
    y0, h0, g0 = run(reference.selective_scan, ins, softplus, grad)
    y1, h1, g1 = run(fn, ins, softplus, grad, **kw)
    assert y1.dtype == ins["u"].dtype and y1.shape == ins["u"].shape
    assert_close(y1, y0, rtol, "y")
    assert_close(h1, h0, rtol, "last state")
    for k in g0:
        assert g1[k] is not None, f"no gradient for {k}"
        assert_close(g1[k], g0[k], rtol, f"grad {k}")


CASES = [  # batch, dim, n, L, groups, D, z, bias, softplus
    (1, 4, 3, 1, 0, False, False, False, False),
    (2, 6, 4, 13, 0, True, True, True, True),
    (3, 8, 5, 29, 2, True, False, True, True),
    (2, 6, 16, 23, 3, False, True, False, False),
    (1, 5, 2, 71, 0, True, True, False, True),
]


# ---------------------------------------------------------------- reference itself
def test_reference_matches_transformers_fallback():
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan
    ins = make_inputs(L=9)
    y0, h0 = reference.selective_scan(**ins, delta_softplus=True, return_last_state=True)
    y1, h1 = mamba_selective_scan(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], D=ins["D"], z=ins["z"],
                                  delta_bias=ins["delta_bias"], delta_softplus=True, return_last_state=True)
    # transformers casts B and u to float32 internally, hence float32-level agreement
    assert_close(y0, y1, 1e-6, "y")
    assert_close(h0, h1, 1e-6, "last state")


# ---------------------------------------------------------------- chunked
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [4, 64])
def test_chunked_matches_reference(case, chunk):
    b, d, n, L, g, D, z, bias, sp = case
    ins = make_inputs(b, d, n, L, g, D=D, z=z, bias=bias, softplus=sp, seed=hash(case) % 1000)
    compare(chunked.selective_scan, ins, sp, 1e-10, chunk_size=chunk)


@pytest.mark.parametrize("case", CASES)
def test_chunked_no_grad_matches_reference(case):
    b, d, n, L, g, D, z, bias, sp = case
    ins = make_inputs(b, d, n, L, g, D=D, z=z, bias=bias, softplus=sp, seed=7)
    compare(chunked.selective_scan, ins, sp, 1e-10, grad=False, chunk_size=4)


def test_chunked_float32_long_sequence_public_api():
    ins = make_inputs(2, 8, 16, 150, groups=2, dtype=torch.float32, seed=3)
    compare(lambda **kw: K.selective_scan(**kw, backend="chunked"), ins, True, 2e-5)


def test_chunked_gradcheck():
    ins = make_inputs(2, 4, 3, 7, groups=2, seed=5)
    keys = [k for k in NAMES if ins[k] is not None]
    leaves = [ins[k].clone().requires_grad_() for k in keys]

    def fn(*args):
        y, last = chunked.selective_scan(**dict(zip(keys, args)), delta_softplus=True, return_last_state=True,
                                         chunk_size=3)
        return y, last

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_chunked_stable_under_large_decay():
    # Steps with |delta*A| far beyond exp's float32 range: each becomes its own chunk.
    ins = make_inputs(2, 6, 8, 40, dtype=torch.float32, seed=7)
    ins["delta"] = ins["delta"] * 40
    ins["A"] = ins["A"] * 10
    y, h, g = run(chunked.selective_scan, ins, grad=True)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    y0, h0, g0 = run(reference.selective_scan, {k: None if v is None else v.double() for k, v in ins.items()},
                     grad=True)
    assert_close(y, y0, 1e-5, "y")
    assert_close(h, h0, 1e-5, "last state")
    for k in g0:  # training through such steps: gradients finite and exact too
        assert torch.isfinite(g[k]).all(), f"grad {k} not finite"
        assert_close(g[k], g0[k], 1e-4, f"grad {k}")


def test_chunked_float32_grads_near_the_safe_range():
    # chunks filled up to R_SAFE: exponent factors near e^{+-50}; gradients must stay finite and exact
    ins = make_inputs(2, 6, 8, 60, dtype=torch.float32, seed=7)
    ins["A"] = ins["A"] * 6
    _, _, g = run(chunked.selective_scan, ins, grad=True)
    _, _, g0 = run(reference.selective_scan, {k: v.double() for k, v in ins.items()}, grad=True)
    for k in g0:
        assert_close(g[k], g0[k], 1e-5, f"grad {k}")


def test_chunk_bounds_respect_limit():
    delta = torch.rand(2, 5, 300) * 3
    A = -torch.rand(5, 4) * 8
    bounds = chunked.chunk_bounds(delta, A, max_chunk=32)
    assert bounds[0][0] == 0 and bounds[-1][1] == 300
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(bounds, bounds[1:]))
    step = (delta.amax(0) * A.abs().amax(1)[:, None]).amax(0)
    for s, e in bounds:
        assert 1 <= e - s <= 32
        assert e - s == 1 or step[s:e].sum() <= chunked.R_SAFE_MONOTONE[torch.float32]


# ---------------------------------------------------------------- triton
@needs_triton
@pytest.mark.parametrize("case", CASES[:4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_reference(case, dtype):
    b, d, n, L, g, D, z, bias, sp = case
    ins = make_inputs(b, d, n, L, g, dtype=dtype, D=D, z=z, bias=bias, softplus=sp, device=TRITON_DEVICE)
    compare(lambda **kw: K.selective_scan(**kw, backend="triton"), ins, sp,
            1e-10 if dtype == torch.float64 else 2e-5)


# ---------------------------------------------------------------- non-contiguous prefix views
def _prefix_views(full, k, m):
    """Prefix slices (views, not copies) of full-size tensors: k channels, m states."""
    bc = lambda t: t[:, :, :m] if t.dim() == 4 else t[:, :m]  # noqa: E731
    return dict(u=full["u"][:, :k], delta=full["delta"][:, :k], A=full["A"][:k, :m], B=bc(full["B"]),
                C=bc(full["C"]), D=full["D"][:k], z=full["z"][:, :k], delta_bias=full["delta_bias"][:k])


@pytest.mark.parametrize("backend", ["reference", "chunked",
                                     pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("groups", [0, 2])
def test_prefix_views_equal_contiguous_copies(backend, groups):
    dev = TRITON_DEVICE if backend == "triton" else "cpu"
    full = make_inputs(2, 8, 6, 9, groups, dtype=torch.float32, seed=11, device=dev)
    views = _prefix_views(full, 4, 3)
    assert not views["u"].is_contiguous() and not views["A"].is_contiguous()
    copies = {k: v.contiguous() for k, v in views.items()}
    y0, h0 = K.selective_scan(**copies, delta_softplus=True, return_last_state=True, backend=backend)
    y1, h1 = K.selective_scan(**views, delta_softplus=True, return_last_state=True, backend=backend)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(h1, h0, rtol=0, atol=0)
    y2, h2, _ = run(reference.selective_scan, {k: v.double() for k, v in copies.items()})
    assert_close(y1, y2, 2e-5, "y vs reference")


@needs_triton
def test_triton_reads_transposed_layout():
    # HF passes B/C as (batch, L, n).transpose(1, 2): strided along L.
    ins = make_inputs(2, 6, 4, 10, dtype=torch.float32, seed=2, device=TRITON_DEVICE)
    strided = dict(ins, B=ins["B"].transpose(1, 2).contiguous().transpose(1, 2),
                   u=ins["u"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not strided["B"].is_contiguous()
    y0 = K.selective_scan(**ins, delta_softplus=True, backend="triton")
    y1 = K.selective_scan(**strided, delta_softplus=True, backend="triton")
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)


# ---------------------------------------------------------------- cuda (mamba_ssm)
@pytest.mark.skipif(not (HAS_MAMBA_SSM and torch.cuda.is_available()),
                    reason="mamba_ssm fused kernels need the mamba_ssm package and a CUDA device")
@pytest.mark.parametrize("case", CASES[1:3])
def test_cuda_matches_reference(case):
    b, d, n, L, g, D, z, bias, sp = case
    ins = make_inputs(b, d, n, L, g, dtype=torch.float32, D=D, z=z, bias=bias, softplus=sp, device="cuda")
    compare(lambda **kw: K.selective_scan(**kw, backend="cuda"), ins, sp, 1e-4)


# ---------------------------------------------------------------- conv and decode steps
@pytest.mark.parametrize("width", [2, 4, 5])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv1d_matches_reference_and_transformers(width, activation, bias):
    from transformers.models.mamba.modeling_mamba import causal_conv1d_fn
    g = torch.Generator().manual_seed(width)
    x, w = torch.randn(2, 5, 13, generator=g), torch.randn(5, width, generator=g)
    b = torch.randn(5, generator=g) if bias else None
    ref = reference.causal_conv1d(x.double(), w.double(), None if b is None else b.double(), activation)
    out = K.causal_conv1d(x, w, b, activation)
    assert_close(out, ref, 1e-6, "conv")
    assert_close(causal_conv1d_fn(x, w, b, activation=activation), ref, 1e-6, "transformers conv vs reference")
    # causality: changing the future does not change the past
    x2 = x.clone()
    x2[..., 7:] += 1
    torch.testing.assert_close(K.causal_conv1d(x2, w, b, activation)[..., :7], out[..., :7])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_conv_update_steps_reproduce_full_conv(backend):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 9, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    full = K.causal_conv1d(x, w, b, "silu", backend="reference")
    state = torch.zeros(2, 5, 4)
    steps = [K.causal_conv1d_update(x[..., t], state, w, b, "silu", backend=backend) for t in range(9)]
    torch.testing.assert_close(torch.stack(steps, -1), full)
    torch.testing.assert_close(state, x[..., -4:])


@pytest.mark.parametrize("groups", [0, 2])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_state_update_steps_reproduce_scan(groups, backend):
    ins = make_inputs(2, 6, 4, 12, groups, seed=4)
    y_ref, h_ref = reference.selective_scan(**ins, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 6, 4, dtype=torch.float64)
    ys = [K.selective_state_update(state, ins["u"][..., t], ins["delta"][..., t], ins["A"], ins["B"][..., t],
                                   ins["C"][..., t], D=ins["D"], z=ins["z"][..., t], dt_bias=ins["delta_bias"],
                                   dt_softplus=True, backend=backend) for t in range(12)]
    assert_close(torch.stack(ys, -1), y_ref, 1e-12, "y")
    assert_close(state, h_ref, 1e-12, "state")


def test_scan_then_state_update_continues_sequence():
    ins = make_inputs(2, 6, 4, 10, seed=9, dtype=torch.float32)
    y_all = K.selective_scan(**ins, delta_softplus=True)
    head = {k: (v[..., :7] if v is not None and v.dim() == 3 else v) for k, v in ins.items()}
    _, state = K.selective_scan(**head, delta_softplus=True, return_last_state=True)
    for t in range(7, 10):
        y = K.selective_state_update(state, ins["u"][..., t], ins["delta"][..., t], ins["A"], ins["B"][..., t],
                                     ins["C"][..., t], ins["D"], ins["z"][..., t], ins["delta_bias"], True)
        assert_close(y, y_all[..., t], 1e-5, f"step {t}")


# ---------------------------------------------------------------- dispatch and errors
def test_auto_picks_chunked_on_cpu_and_env_forces(monkeypatch, caplog):
    ins = make_inputs(L=5)
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    with caplog.at_level(logging.DEBUG, logger="osf.kernels"):
        K.selective_scan(**ins)
    assert "backend chunked on cpu" in caplog.text
    assert "cpu: chunked" in K.describe()
    assert K.available_backends("cpu")[0] == "chunked" and "reference" in K.available_backends("cpu")
    caplog.clear()
    monkeypatch.setenv(K.ENV_VAR, "reference")
    with caplog.at_level(logging.DEBUG, logger="osf.kernels"):
        K.selective_scan(**ins)
    assert "backend reference on cpu" in caplog.text
    assert "cpu: reference" in K.describe()
    monkeypatch.setenv(K.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown kernel backend 'fastest'"):
        K.selective_scan(**ins)


def _bad(**changes):
    ins = make_inputs(2, 6, 4, 5, dtype=torch.float32)
    ins.update(changes)
    return ins


@pytest.mark.parametrize("changes,match", [
    (dict(u=torch.randn(6, 5)), r"u has shape \(6, 5\), expected \(batch, d_inner, L\)"),
    (dict(delta=torch.randn(2, 6, 4)), r"delta has shape .*\(2, 6, 5\)"),
    (dict(A=torch.randn(5, 4)), r"A has shape \(5, 4\), expected \(d_inner, d_state\) with d_inner = 6"),
    (dict(B=torch.randn(2, 4, 7)), r"B has shape \(2, 4, 7\).*\(2, 4, 5\)"),
    (dict(C=torch.randn(2, 3, 5)), r"C has shape"),
    (dict(B=torch.randn(2, 4, 4, 5), C=torch.randn(2, 4, 4, 5)), r"4 groups, which must divide d_inner = 6"),
    (dict(D=torch.randn(5)), r"D has shape \(5,\), expected \(d_inner,\)"),
    (dict(z=torch.randn(2, 6, 6)), r"z has shape"),
    (dict(delta_bias=torch.randn(6, 1)), r"delta_bias has shape"),
    (dict(delta=torch.randn(2, 6, 5, dtype=torch.float64)), r"delta has dtype torch.float64 but u has"),
    (dict(A=torch.randn(6, 4, device="meta")), r"A is on meta but u is on cpu"),
    (dict(u=torch.ones(2, 6, 5, dtype=torch.long)), r"u must be a floating-point tensor"),
])
def test_bad_scan_inputs(changes, match):
    with pytest.raises(ValueError, match=match):
        K.selective_scan(**_bad(**changes))


def test_bad_backend_and_unavailable():
    ins = make_inputs(L=5)
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        K.selective_scan(**ins, backend="fast")
    with pytest.raises(RuntimeError, match="backend 'cuda' needs CUDA tensors"):
        K.selective_scan(**ins, backend="cuda")


def test_bad_conv_and_state_inputs():
    x, w = torch.randn(2, 5, 7), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"weight has shape \(4, 4\), expected \(dim, width\) with dim = 5"):
        K.causal_conv1d(x, torch.randn(4, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        K.causal_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match=r"conv_state has shape \(2, 5, 2\)"):
        K.causal_conv1d_update(x[..., 0], torch.zeros(2, 5, 2), w)
    state = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"B has shape \(2, 4\), expected \(batch, d_state\) = \(2, 3\)"):
        K.selective_state_update(state, x[..., 0], x[..., 1], -torch.ones(5, 3), torch.randn(2, 4), torch.randn(2, 4))


# ---------------------------------------------------------------- HF Mamba integration
def _tiny_mamba(seed=0):
    from transformers import MambaConfig, MambaForCausalLM
    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, intermediate_size=64,
                      time_step_rank=4, conv_kernel=4, use_mambapy=False)
    return MambaForCausalLM(cfg).float()


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count calls into the public kernels, to prove the patched path really runs."""
    counts: dict[str, int] = {}
    for name in ("selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update"):
        orig = getattr(K, name)

        def wrapped(*a, _orig=orig, _name=name, **kw):
            counts[_name] = counts.get(_name, 0) + 1
            return _orig(*a, **kw)
        monkeypatch.setattr(K, name, wrapped)
    return counts


def test_mamba_eval_logits_match(kernel_calls):
    from osf.kernels.mamba import patch_mamba
    model = _tiny_mamba().eval()
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        with patch_mamba(model) as handle:
            out = model(ids).logits
        assert len(handle.mixers) == 0  # removed on exit
    assert kernel_calls["selective_scan"] == 2 and kernel_calls["causal_conv1d"] == 2
    assert_close(out, ref, 1e-5, "logits")
    assert all("forward" not in vars(m) for m in model.modules())


def test_mamba_train_logits_and_grads_match(kernel_calls):
    from osf.kernels.mamba import patch_mamba, unpatch_mamba
    model = _tiny_mamba(1).train()
    ids = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(1))

    def loss_and_grads():
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_logits, ref_grads = loss_and_grads()
    patch_mamba(model)
    logits, grads = loss_and_grads()
    assert unpatch_mamba(model) == 2
    assert kernel_calls["selective_scan"] == 2
    assert_close(logits, ref_logits, 1e-5, "logits")
    assert set(grads) == set(ref_grads) and any("A_log" in n for n in grads)
    for n in ref_grads:
        assert_close(grads[n], ref_grads[n], 1e-4, f"grad {n}")


@pytest.mark.parametrize("prompt_len", [2, 6])  # shorter and longer than the conv kernel (4)
def test_mamba_generate_with_cache_matches(kernel_calls, prompt_len):
    from osf.kernels.mamba import patch_mamba
    model = _tiny_mamba(2).eval()
    ids = torch.randint(0, 64, (2, prompt_len), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=10, do_sample=False, return_dict_in_generate=True, output_logits=True,
              attention_mask=torch.ones_like(ids))
    ref = model.generate(ids, **kw)
    with patch_mamba(model):
        out = model.generate(ids, **kw)
    assert out.sequences.shape == (2, prompt_len + 10)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        assert_close(a, b, 1e-5, "step logits")
    # prefill via the scan, then 9 cached single-token steps per layer via the decode kernels
    assert kernel_calls["selective_scan"] == 2
    assert kernel_calls["selective_state_update"] == 2 * 9 and kernel_calls["causal_conv1d_update"] == 2 * 9


def test_mixer_forward_with_sliced_weights_matches_smaller_mixer():
    """Weights replaced by sub-range slices, attributes updated, equal a genuinely smaller mixer;
    stale attributes are refused before the forward runs."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from osf.kernels.mamba import mamba_mixer_forward
    torch.manual_seed(3)
    big_cfg = MambaConfig(hidden_size=16, state_size=8, intermediate_size=32, time_step_rank=4)
    big = MambaMixer(big_cfg, layer_idx=0)
    k, n, r = 20, 5, 3  # d_inner, d_state, dt_rank of the slice
    small = MambaMixer(MambaConfig(hidden_size=16, state_size=n, intermediate_size=k, time_step_rank=r), 0)
    P = torch.nn.Parameter
    with torch.no_grad():
        for t in (big.D, big.conv1d.bias, big.dt_proj.bias, big.A_log):
            t.copy_(torch.randn_like(t))
        W = big.in_proj.weight
        xp = big.x_proj.weight
        big.in_proj.weight = P(torch.cat([W[:k], W[32:32 + k]]))
        big.x_proj.weight = P(torch.cat([xp[:r, :k], xp[4:4 + n, :k], xp[4 + 8:4 + 8 + n, :k]]))
        big.conv1d.weight = P(big.conv1d.weight[:k].clone())
        big.conv1d.bias = P(big.conv1d.bias[:k].clone())
        big.dt_proj.weight = P(big.dt_proj.weight[:k, :r].clone())
        big.dt_proj.bias = P(big.dt_proj.bias[:k].clone())
        big.A_log = P(big.A_log[:k, :n].clone())
        big.D = P(big.D[:k].clone())
        big.out_proj.weight = P(big.out_proj.weight[:, :k].clone())
        small.load_state_dict(big.state_dict())
    h = torch.randn(2, 9, 16)
    with torch.no_grad(), pytest.raises(ValueError, match="intermediate_size = 32 but its weights have 20"):
        mamba_mixer_forward(big, h)
    big.intermediate_size, big.ssm_state_size, big.time_step_rank = k, n, r
    with torch.no_grad():
        assert_close(mamba_mixer_forward(big, h), small(h), 1e-5, "sliced mixer")
    with pytest.raises(ValueError, match="time_step_rank = 3 but its weights have 4"):
        big.dt_proj.weight = P(torch.randn(k, r + 1))
        mamba_mixer_forward(big, h)


def test_patched_mixer_refuses_a_cache_it_does_not_use(monkeypatch):
    """The drift that broke cached generation (a renamed cache argument, the cache dropped):
    a patched mixer handed a cache that updates no state raises instead of generating wrong tokens."""
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from osf.kernels.mamba import patch_mamba
    model = _tiny_mamba(4).eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(4))
    original = MambaMixer.forward

    def forward_that_drops_the_cache(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        return original(self, hidden_states, None, attention_mask)
    monkeypatch.setattr(MambaMixer, "forward", forward_that_drops_the_cache)
    with patch_mamba(model), pytest.raises(RuntimeError, match="was handed a cache and updated no state"):
        model.generate(ids, max_new_tokens=2, do_sample=False)
    with patch_mamba(model), torch.no_grad():
        model(ids, use_cache=False)  # no cache handed: fine


def test_kernel_hook_with_an_unknown_argument_raises(monkeypatch):
    """A transformers release that passes new arguments to a kernel hook fails loudly."""
    import transformers.models.mamba.modeling_mamba as modeling
    from osf.kernels.mamba import patch_mamba
    model = _tiny_mamba(5).eval()
    with patch_mamba(model):
        hook = modeling.mamba_selective_scan
        original = modeling.MambaMixer.forward

        def forward_with_new_argument(self, hidden_states, *args, **kwargs):
            x = torch.zeros(1, self.intermediate_size, 3)
            hook(x, x, -torch.ones(self.intermediate_size, self.ssm_state_size),
                 torch.zeros(1, self.ssm_state_size, 3), torch.zeros(1, self.ssm_state_size, 3), chunk_size=64)
            return original(self, hidden_states, *args, **kwargs)
        monkeypatch.setattr(modeling.MambaMixer, "forward", forward_with_new_argument)
        with pytest.raises(TypeError, match=r"mamba_selective_scan` with \['chunk_size'\]"):
            model(torch.zeros(1, 3, dtype=torch.long))


def test_hooks_leave_unpatched_models_on_transformers_kernels(kernel_calls):
    """Routing is scoped to patched mixers: another Mamba model in the process runs HF's own kernels."""
    from osf.kernels.mamba import patch_mamba
    patched, plain = _tiny_mamba(6).eval(), _tiny_mamba(6).eval()
    ids = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(6))
    with patch_mamba(patched), torch.no_grad():
        plain(ids)
        assert kernel_calls.get("selective_scan", 0) == 0
        patched(ids)
        assert kernel_calls["selective_scan"] == 2


def test_patch_mamba_rejects_model_without_mixer():
    from osf.kernels.mamba import patch_mamba
    with pytest.raises(ValueError, match="no transformers MambaMixer"):
        patch_mamba(torch.nn.Linear(2, 2))
