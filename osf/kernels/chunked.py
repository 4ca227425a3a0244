"""Chunked selective scan in plain PyTorch: the CPU default and the GPU fallback.

Within a chunk the recurrence h_t = a_t h_{t-1} + x_t is solved in parallel with the log-space
form h_t = e^{S_t} (h_0 + sum_{s<=t} e^{-S_s} x_s), S_t = cumsum(delta) * A from the chunk start.
Both exponent factors are taken relative to the chunk's midpoint c, so they stay in
[e^{-R/2}, e^{R/2}] where R bounds |sum(delta * A)| over the chunk; chunk boundaries are chosen
from the data so that R <= R_SAFE (no overflow, no 0 * inf). The state is carried across
chunks. With autograd on, each chunk is checkpointed so memory stays bounded by one chunk's
intermediates plus the (batch, d_inner, d_state) states between chunks.
"""
from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import osf.kernels.reference as reference
from osf.kernels.reference import compute_dtype, finish, prepare_delta

DEFAULT_CHUNK = 64
# Bound on |sum(delta*A)| within one chunk. When delta >= 0 and A <= 0 (the Mamba case) S is
# monotone and the factors stay within e^{+-R/2}; otherwise they may reach e^{1.5 R}.
R_SAFE = {torch.float32: 50.0, torch.float64: 400.0}
R_SAFE_MONOTONE = {torch.float32: 100.0, torch.float64: 1000.0}
# Exponent clamp: only reached by a single step whose own decay exceeds R_SAFE (then alone in its
# chunk), where E * 1/E = 1 stays exact and e^{S} h_0 underflows to 0 as it should.
EXP_MAX = {torch.float32: 80.0, torch.float64: 700.0}


def is_available(device: torch.device) -> bool:
    return True


def chunk_bounds(delta: torch.Tensor, A: torch.Tensor, max_chunk: int) -> list[tuple[int, int]]:
    """Greedy split of [0, L) into chunks with sum_t max|delta_t * A| <= R_SAFE and length <= max_chunk."""
    length = delta.shape[-1]
    if delta.is_meta:  # a run for shapes only (osf.ir.trace): the split only guards the numerics
        return [(0, length)]
    with torch.no_grad():
        a_max = A.abs().amax(dim=1)  # (dim,)
        step = (delta.abs().amax(dim=0) * a_max[:, None]).amax(dim=0)  # (L,) per-step bound
        monotone = bool(delta.min() >= 0) and bool(A.max() <= 0) if delta.numel() else True
    limit = (R_SAFE_MONOTONE if monotone else R_SAFE)[compute_dtype(delta.dtype)]
    if float(step.sum()) <= limit and length <= max_chunk:
        return [(0, length)]
    bounds, start, acc = [], 0, 0.0
    for t, s in enumerate(step.tolist()):
        if t > start and (acc + s > limit or t - start >= max_chunk):
            bounds.append((start, t))
            start, acc = t, 0.0
        acc += s
    bounds.append((start, length))
    return bounds


def _chunk(u, delta, A, B, C, h0, clamp: bool = True):
    """One chunk. u, delta: (b, G, P, T); A: (G, P, n); B, C: (b, G, n, T); h0: (b, G, P, n).

    Returns y (b, G, P, T) and the last state (b, G, P, n).
    """
    # A is constant in time, so cumsum(delta * A) = cumsum(delta) * A: the scan runs on the small tensor
    S = delta.cumsum(dim=3).unsqueeze(-1) * A[:, :, None, :]  # (b, G, P, T, n), log decay from chunk start
    c = S[:, :, :, -1:, :] * 0.5  # midpoint of the (monotone) range [S_last, 0]
    S = S - c
    if clamp:
        m = EXP_MAX[S.dtype]
        S = S.clamp(-m, m)
    E = torch.exp(S)
    # exp(-S), not 1/E: the backward of a reciprocal squares it (e^{2|S|} overflows float32)
    X = torch.exp(-S) * (delta * u).unsqueeze(-1) * B.transpose(-1, -2).unsqueeze(2)
    H = E * (X.cumsum(dim=3) + torch.exp(c) * h0.unsqueeze(3))
    y = (H * C.transpose(-1, -2).unsqueeze(2)).sum(-1)
    return y, H[:, :, :, -1]


def _chunk_no_grad(u, delta, A, B, C, h0, clamp: bool = True):
    """Same as ``_chunk`` with in-place ops: two chunk-sized allocations instead of about ten."""
    S = delta.cumsum(dim=3).unsqueeze(-1) * A[:, :, None, :]
    c = S[:, :, :, -1:, :] * 0.5
    S.sub_(c)
    if clamp:
        m = EXP_MAX[S.dtype]
        S.clamp_(-m, m)
    E = S.exp_()
    H = torch.reciprocal(E).mul_((delta * u).unsqueeze(-1)).mul_(B.transpose(-1, -2).unsqueeze(2))
    H.cumsum_(dim=3).add_(torch.exp(c) * h0.unsqueeze(3)).mul_(E)
    last = H[:, :, :, -1].clone()
    y = H.mul_(C.transpose(-1, -2).unsqueeze(2)).sum(-1)
    return y, last


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, chunk_size: int = DEFAULT_CHUNK, use_checkpoint: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked scan with mamba_ssm's ``selective_scan_fn`` semantics (see osf.kernels.selective_scan)."""
    ct = compute_dtype(u.dtype)
    batch, dim, length = u.shape
    n = A.shape[1]
    groups = B.shape[1] if B.dim() == 4 else 1
    per = dim // groups
    d = prepare_delta(delta, delta_bias, delta_softplus, ct)
    Af = A.to(ct)
    # Views grouping channels as (G, P); B/C get a group axis of size 1 when shared.
    ug = u.to(ct).reshape(batch, groups, per, length)
    dg = d.reshape(batch, groups, per, length)
    Ag = Af.reshape(groups, per, n)
    Bg = (B if B.dim() == 4 else B.unsqueeze(1)).to(ct)
    Cg = (C if C.dim() == 4 else C.unsqueeze(1)).to(ct)
    h = u.new_zeros(batch, groups, per, n, dtype=ct)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias))
    bounds = chunk_bounds(d, Af, chunk_size)
    sizes = [e - s for s, e in bounds]
    # One split per input: its backward is a single cat, where per-chunk slicing would
    # allocate a full-length zero gradient for every chunk.
    pieces = zip(*(torch.split(t, sizes, dim=-1) for t in (ug, dg, Bg, Cg)))
    ys = []
    for (u_c, d_c, B_c, C_c), size in zip(pieces, sizes):
        # the clamp only matters for a lone step whose decay alone exceeds the safe range
        args = (u_c, d_c, Ag, B_c, C_c, h, size == 1)
        if not grad:
            y, h = _chunk_no_grad(*args)
        elif use_checkpoint:
            y, h = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            y, h = _chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1).reshape(batch, dim, length) if ys else u.new_zeros(u.shape, dtype=ct)
    y = finish(y, u, D, z, ct).to(u.dtype)
    return (y, h.reshape(batch, dim, n)) if return_last_state else y


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Depthwise causal conv through F.conv1d (left padding width-1)."""
    width = weight.shape[1]
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1).to(x.dtype),
                   None if bias is None else bias.to(x.dtype), groups=x.shape[1])
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    """Decode-step conv; the reference is already vectorised (no time loop)."""
    return reference.causal_conv1d_update(x, conv_state, weight, bias, activation)


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = False) -> Tensor:
    """Decode-step scan; the reference is already vectorised (no time loop)."""
    return reference.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
