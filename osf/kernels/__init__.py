"""Selective-scan and causal-conv kernels behind one dispatcher.

Backends: ``reference`` (sequential oracle), ``chunked`` (PyTorch, CPU default / GPU fallback),
``triton`` (GPU forward kernel), ``cuda`` (mamba_ssm / causal_conv1d when installed).
``backend="auto"`` picks cuda > triton > chunked on GPU and chunked on CPU; the argument or the
``OSF_SCAN_BACKEND`` environment variable forces one.
"""
from __future__ import annotations

import torch

from osf.kernels import checks
from osf.kernels.dispatch import BACKENDS, ENV_VAR, available_backends, describe, resolve

__all__ = ["selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update",
           "available_backends", "describe", "BACKENDS", "ENV_VAR"]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str = "auto"):
    """Mamba selective scan, same semantics as mamba_ssm's ``selective_scan_fn``.

    Args:
        u, delta: (batch, d_inner, L).  A: (d_inner, d_state).
        B, C: (batch, d_state, L), or (batch, groups, d_state, L) with d_inner split evenly in groups.
        D, delta_bias: (d_inner,).  z: (batch, d_inner, L) gate, output is multiplied by silu(z).
        delta_softplus: apply softplus to delta (+ delta_bias).
        return_last_state: also return the final state (batch, d_inner, d_state), float32
            (float64 for float64 inputs).
        backend: "auto", "reference", "chunked", "triton" or "cuda".

    Returns:
        y (batch, d_inner, L) in u's dtype, or ``(y, last_state)``.
    """
    checks.check_scan(u, delta, A, B, C, D, z, delta_bias)
    mod = resolve(backend, u.device, "selective_scan")
    return mod.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, backend: str = "auto") -> torch.Tensor:
    """Depthwise causal conv like ``causal_conv1d_fn``: x (batch, dim, L), weight (dim, width), bias (dim,).

    ``activation`` is None, "silu" or "swish". Returns (batch, dim, L).
    """
    checks.check_conv(x, weight, bias, activation)
    return resolve(backend, x.device, "causal_conv1d").causal_conv1d(x, weight, bias, activation)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """Decode-time conv like ``causal_conv1d_update``: x (batch, dim) or (batch, dim, L).

    ``conv_state`` (batch, dim, state_len >= width - 1) holds the last inputs and is updated in place.
    """
    checks.check_conv_update(x, conv_state, weight, bias, activation)
    mod = resolve(backend, x.device, "causal_conv1d_update")
    return mod.causal_conv1d_update(x, conv_state, weight, bias, activation)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                           z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                           dt_softplus: bool = False, backend: str = "auto") -> torch.Tensor:
    """One decode step of the scan, like mamba_ssm's ``selective_state_update``.

    state (batch, dim, d_state) is updated in place; x, dt, z: (batch, dim); A: (dim, d_state);
    B, C: (batch, d_state) or (batch, groups, d_state). Returns y (batch, dim).
    """
    checks.check_state_update(state, x, dt, A, B, C, D, z, dt_bias)
    mod = resolve(backend, state.device, "selective_state_update")
    return mod.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
