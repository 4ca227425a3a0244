"""Triton selective-scan forward; backward recomputes through the chunked PyTorch scan.

One program owns a (BLOCK_D, BLOCK_N) tile of the state for one batch row and walks the
sequence. Every tensor is addressed through its strides, so prefix views of full-size weights
(``u_full[:, :k]``, ``A_full[:k, :n]``) are read in place, without copies. Runs on CUDA, and on
CPU under ``TRITON_INTERPRET=1`` (set before this module is imported) for tests.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor
import triton
import triton.language as tl

import osf.kernels.chunked as chunked
from osf.kernels.reference import compute_dtype


def is_available(device: torch.device) -> bool:
    """CUDA tensors, or CPU tensors when Triton's interpreter is on."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _scan_fwd(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    sD, sz_b, sz_d, sz_l, sbias, sy_b, sy_d, sy_l, sh_b, sh_d, sh_n,
    length, dim, d_state, dim_per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_LAST: tl.constexpr, DTYPE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < d_state)[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn, other=0.0).to(DTYPE)
    group = offs_d // dim_per_group  # shared B/C: dim_per_group = dim and the group stride is 0
    B_base = B_ptr + pid_b * sB_b + group[:, None] * sB_g + offs_n[None, :] * sB_n
    C_base = C_ptr + pid_b * sC_b + group[:, None] * sC_g + offs_n[None, :] * sC_n
    u_base = u_ptr + pid_b * su_b + offs_d * su_d
    dt_base = dt_ptr + pid_b * sdt_b + offs_d * sdt_d
    y_base = y_ptr + pid_b * sy_b + offs_d * sy_d
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * sbias, mask=mask_d, other=0.0).to(DTYPE)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * sD, mask=mask_d, other=0.0).to(DTYPE)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=DTYPE)
    for t in range(0, length):
        u = tl.load(u_base + t * su_l, mask=mask_d, other=0.0).to(DTYPE)
        dt = tl.load(dt_base + t * sdt_l, mask=mask_d, other=0.0).to(DTYPE)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        Bt = tl.load(B_base + t * sB_l, mask=mask_dn, other=0.0).to(DTYPE)
        Ct = tl.load(C_base + t * sC_l, mask=mask_dn, other=0.0).to(DTYPE)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
        y = tl.sum(h * Ct, axis=1)
        if HAS_D:
            y = y + Dv * u
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * sz_b + offs_d * sz_d + t * sz_l, mask=mask_d, other=0.0).to(DTYPE)
            y = y * (zt / (1.0 + tl.exp(-zt)))
        tl.store(y_base + t * sy_l, y, mask=mask_d)
    if STORE_LAST:
        tl.store(last_ptr + pid_b * sh_b + offs_d[:, None] * sh_d + offs_n[None, :] * sh_n, h, mask=mask_dn)


def _strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, store_last: bool = True):
    """Launch the kernel; returns y (u's dtype) and the last state (float32, or float64 for float64 u)."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    ct = compute_dtype(u.dtype)
    y = torch.empty(batch, dim, length, dtype=u.dtype, device=u.device)
    last = torch.empty(batch, dim, d_state, dtype=ct, device=u.device)
    if B.dim() == 3:  # shared B/C: a zero group stride makes every channel read group 0
        Bs, Cs, per = (B.stride(0), 0, *B.stride()[1:]), (C.stride(0), 0, *C.stride()[1:]), dim
    else:
        Bs, Cs, per = B.stride(), C.stride(), dim // B.shape[1]
    block_n = triton.next_power_of_2(max(d_state, 1))
    block_d = max(1, min(triton.next_power_of_2(dim), max(16, 2048 // block_n), 64))
    grid = (batch, triton.cdiv(dim, block_d))
    _scan_fwd[grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, y, last,
        *u.stride(), *delta.stride(), *A.stride(), *Bs, *Cs,
        *_strides(D, 1), *_strides(z, 3), *_strides(delta_bias, 1), *y.stride(), *last.stride(),
        length, dim, d_state, per,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), STORE_LAST=store_last,
        DTYPE=tl.float64 if ct == torch.float64 else tl.float32, BLOCK_D=block_d, BLOCK_N=block_n,
    )
    return y, last


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        y, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        saved = ctx.saved_tensors
        inputs = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(saved, ctx.needs_input_grad)]
        with torch.enable_grad():
            y, last = chunked.selective_scan(*inputs, delta_softplus=ctx.delta_softplus, return_last_state=True)
        outs, grads = [y], [gy]
        if glast is not None:
            outs.append(last)
            grads.append(glast)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(outs, wanted, grads, allow_unused=True)) if wanted else iter(())
        result = [next(got) if t is not None and t.requires_grad else None for t in inputs]
        return (*result, None)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Triton forward, chunked-recompute backward; mamba_ssm ``selective_scan_fn`` semantics."""
    y, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (y, last) if return_last_state else y


causal_conv1d = chunked.causal_conv1d
causal_conv1d_update = chunked.causal_conv1d_update
selective_state_update = chunked.selective_state_update
