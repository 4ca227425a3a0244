"""Input validation shared by all backends: clear errors naming the tensor and the expected shape."""
from __future__ import annotations

from dataclasses import dataclass

import torch

ACTIVATIONS = (None, "silu", "swish")


@dataclass(frozen=True)
class ScanDims:
    """Sizes of one selective-scan call."""

    batch: int
    dim: int
    d_state: int
    length: int
    groups: int  # 0 means B/C are shared by all channels (3-D B/C)


def _shape(name: str, t: torch.Tensor, expected: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {what} = {tuple(expected)}")


def _same_device_dtype(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put all inputs on one device")


def _floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> ScanDims:
    """Validate selective_scan inputs (mamba_ssm layout) and return their sizes."""
    for name, t in dict(u=u, delta=delta, A=A, B=B, C=C).items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 3:
        raise ValueError(f"u has shape {tuple(u.shape)}, expected (batch, d_inner, L)")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A has shape {tuple(A.shape)}, expected (d_inner, d_state) with d_inner = {dim}")
    d_state = A.shape[1]
    _shape("delta", delta, (batch, dim, length), "(batch, d_inner, L)")
    if B.dim() == 3:
        groups = 0
        _shape("B", B, (batch, d_state, length), "(batch, d_state, L)")
        _shape("C", C, (batch, d_state, length), "(batch, d_state, L)")
    elif B.dim() == 4:
        groups = B.shape[1]
        if groups < 1 or dim % groups:
            raise ValueError(f"B has {groups} groups, which must divide d_inner = {dim}")
        _shape("B", B, (batch, groups, d_state, length), "(batch, groups, d_state, L)")
        _shape("C", C, (batch, groups, d_state, length), "(batch, groups, d_state, L)")
    else:
        raise ValueError(
            f"B has shape {tuple(B.shape)}, expected (batch, d_state, L) or (batch, groups, d_state, L)"
        )
    if D is not None:
        _shape("D", D, (dim,), "(d_inner,)")
    if z is not None:
        _shape("z", z, (batch, dim, length), "(batch, d_inner, L)")
    if delta_bias is not None:
        _shape("delta_bias", delta_bias, (dim,), "(d_inner,)")
    _same_device_dtype("u", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, t in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias).items():
        if t is not None:
            _floating(name, t)
    if delta.dtype != u.dtype:
        raise ValueError(f"delta has dtype {delta.dtype} but u has {u.dtype}; they must match")
    if z is not None and z.dtype != u.dtype:
        raise ValueError(f"z has dtype {z.dtype} but u has {u.dtype}; they must match")
    if B.dtype != C.dtype:
        raise ValueError(f"B has dtype {B.dtype} but C has {C.dtype}; they must match")
    return ScanDims(batch, dim, d_state, length, groups)


def check_conv(x, weight, bias=None, activation=None) -> None:
    """Validate causal_conv1d inputs: x (batch, dim, L), weight (dim, width), bias (dim,)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x has shape {tuple(getattr(x, 'shape', ()))}, expected (batch, dim, L)")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"weight has shape {tuple(getattr(weight, 'shape', ()))}, expected (dim, width) with dim = {x.shape[1]}"
        )
    if bias is not None:
        _shape("bias", bias, (x.shape[1],), "(dim,)")
    _same_device_dtype("x", x, weight=weight, bias=bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_conv_update(x, conv_state, weight, bias=None, activation=None) -> None:
    """Validate causal_conv1d_update inputs: x (batch, dim) or (batch, dim, L), conv_state (batch, dim, state_len)."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"x has shape {tuple(getattr(x, 'shape', ()))}, expected (batch, dim) or (batch, dim, L)")
    batch, dim = x.shape[:2]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"weight has shape {tuple(getattr(weight, 'shape', ()))}, expected (dim, width), dim = {dim}")
    width = weight.shape[1]
    if conv_state.dim() != 3 or conv_state.shape[:2] != (batch, dim) or conv_state.shape[2] < width - 1:
        raise ValueError(
            f"conv_state has shape {tuple(conv_state.shape)}, expected (batch, dim, state_len >= width - 1)"
            f" = ({batch}, {dim}, >= {width - 1})"
        )
    if bias is not None:
        _shape("bias", bias, (dim,), "(dim,)")
    _same_device_dtype("x", x, conv_state=conv_state, weight=weight, bias=bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None) -> int:
    """Validate selective_state_update inputs; return the number of B/C groups (0 = shared)."""
    if not isinstance(state, torch.Tensor) or state.dim() != 3:
        raise ValueError(f"state has shape {tuple(getattr(state, 'shape', ()))}, expected (batch, dim, d_state)")
    batch, dim, d_state = state.shape
    _shape("x", x, (batch, dim), "(batch, dim)")
    _shape("dt", dt, (batch, dim), "(batch, dim)")
    _shape("A", A, (dim, d_state), "(dim, d_state)")
    if B.dim() == 2:
        groups = 0
        _shape("B", B, (batch, d_state), "(batch, d_state)")
        _shape("C", C, (batch, d_state), "(batch, d_state)")
    elif B.dim() == 3:
        groups = B.shape[1]
        if groups < 1 or dim % groups:
            raise ValueError(f"B has {groups} groups, which must divide dim = {dim}")
        _shape("B", B, (batch, groups, d_state), "(batch, groups, d_state)")
        _shape("C", C, (batch, groups, d_state), "(batch, groups, d_state)")
    else:
        raise ValueError(f"B has shape {tuple(B.shape)}, expected (batch, d_state) or (batch, groups, d_state)")
    if D is not None:
        _shape("D", D, (dim,), "(dim,)")
    if z is not None:
        _shape("z", z, (batch, dim), "(batch, dim)")
    if dt_bias is not None:
        _shape("dt_bias", dt_bias, (dim,), "(dim,)")
    _same_device_dtype("state", state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return groups
