"""Sequential reference implementations: the oracle for every other backend.

Slow (a Python loop over time) but simple; computes in float64 when given float64.
"""
from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch, dim or 1, d_state, L): 3-D input is shared; 4-D groups are repeated to channels."""
    if M.dim() == 3:
        return M.unsqueeze(1)
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Skip connection D*u and gate y * silu(z), shared by the PyTorch backends."""
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = <C_t, h_t> (+ D u_t) (* silu(z_t))."""
    ct = compute_dtype(u.dtype)
    dim = u.shape[1]
    delta = prepare_delta(delta, delta_bias, delta_softplus, ct)
    uf, Af = u.to(ct), A.to(ct)
    Bx, Cx = expand_groups(B.to(ct), dim), expand_groups(C.to(ct), dim)
    h = u.new_zeros(u.shape[0], dim, A.shape[1], dtype=ct)
    ys = []
    for t in range(u.shape[2]):
        d_t = delta[:, :, t, None]
        h = torch.exp(d_t * Af) * h + d_t * Bx[..., t] * uf[:, :, t, None]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(u.shape)
    y = finish(y, u, D, z, ct).to(u.dtype)
    return (y, h) if return_last_state else y


def _act(out, activation):
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Depthwise causal conv as an explicit sum of shifted inputs (no F.conv1d, so it checks it)."""
    ct = compute_dtype(x.dtype)
    width, length = weight.shape[1], x.shape[2]
    xp = F.pad(x.to(ct), (width - 1, 0))
    out = sum(weight[:, k, None].to(ct) * xp[:, :, k:k + length] for k in range(width))
    if bias is not None:
        out = out + bias.to(ct)[:, None]
    return _act(out, activation).to(x.dtype)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    """One (or a few) decode steps: conv over [conv_state | x]; conv_state is rolled in place."""
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(-1)
    length, state_len, width = x.shape[2], conv_state.shape[2], weight.shape[1]
    full = torch.cat([conv_state.to(x.dtype), x], dim=-1)
    conv_state.copy_(full[:, :, -state_len:])
    out = causal_conv1d(full[:, :, -(length + width - 1):], weight, bias, activation)[:, :, -length:]
    return out.squeeze(-1) if squeeze else out


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = False) -> Tensor:
    """One decode step of the scan; updates ``state`` (batch, dim, d_state) in place, returns y (batch, dim)."""
    ct = compute_dtype(state.dtype if state.dtype == torch.float64 else x.dtype)
    dim = state.shape[1]
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    if B.dim() == 3:  # grouped (batch, groups, d_state) -> per channel
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    else:
        B, C = B[:, None], C[:, None]
    new = torch.exp(dt[..., None] * A.to(ct)) * state.to(ct) + dt[..., None] * B.to(ct) * x.to(ct)[..., None]
    state.copy_(new.to(state.dtype))
    y = (new * C.to(ct)).sum(-1)
    if D is not None:
        y = y + x.to(ct) * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)
