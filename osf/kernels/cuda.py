"""Fused CUDA kernels from ``mamba_ssm`` and ``causal_conv1d`` (optional extras, CUDA tensors only)."""
from __future__ import annotations

import torch
from torch import Tensor

try:  # optional: these packages build only with CUDA
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _scan_fn
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _scan_fn = None
try:
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _state_update
except Exception:  # noqa: BLE001
    _state_update = None
try:
    from causal_conv1d import causal_conv1d_fn as _conv_fn, causal_conv1d_update as _conv_update
except Exception:  # noqa: BLE001
    _conv_fn = _conv_update = None


def is_available(device: torch.device) -> bool:
    """mamba_ssm and causal_conv1d are importable and the tensors are on CUDA."""
    return device.type == "cuda" and _scan_fn is not None and _conv_fn is not None


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    return _scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    if weight.shape[1] not in (2, 3, 4):  # the fused kernel supports widths 2-4 only
        from osf.kernels import chunked
        return chunked.causal_conv1d(x, weight, bias, activation)
    return _conv_fn(x, weight, bias, activation=activation)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    if weight.shape[1] not in (2, 3, 4):
        from osf.kernels import reference
        return reference.causal_conv1d_update(x, conv_state, weight, bias, activation)
    return _conv_update(x, conv_state, weight, bias, activation)


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = False) -> Tensor:
    if _state_update is None:
        from osf.kernels import reference
        return reference.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
