"""Hugging Face ``MambaMixer`` forward through osf.kernels, with every size read from the weights.

``mamba_mixer_forward`` mirrors transformers 5.x ``MambaMixer.forward`` (its non-fused path,
including the cache logic) but never reads size attributes (``intermediate_size``,
``ssm_state_size``, ``time_step_rank``, ...), so it keeps working when a supernet swaps the
mixer's weights for smaller slices. ``patch_mamba`` routes every mixer of a model through it.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import osf.kernels as K

_PATCH_FLAG = "_osf_kernels_patched"


@dataclass
class MixerWeights:
    """The tensors one mixer forward needs; sizes come from their shapes."""

    in_proj_w: torch.Tensor  # (2 * d_inner, hidden)
    in_proj_b: torch.Tensor | None
    conv_w: torch.Tensor  # (d_inner, width)
    conv_b: torch.Tensor | None
    x_proj_w: torch.Tensor  # (dt_rank + 2 * d_state, d_inner)
    dt_proj_w: torch.Tensor  # (d_inner, dt_rank)
    dt_proj_b: torch.Tensor | None
    A_log: torch.Tensor  # (d_inner, d_state)
    D: torch.Tensor  # (d_inner,)
    out_proj_w: torch.Tensor  # (hidden, d_inner)
    out_proj_b: torch.Tensor | None


def mixer_weights(mixer: nn.Module) -> MixerWeights:
    """Collect the weights of an HF-style mixer (a module may provide ``osf_mixer_weights()`` instead)."""
    if hasattr(mixer, "osf_mixer_weights"):
        return mixer.osf_mixer_weights()
    w = MixerWeights(
        mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias,
        mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias, mixer.A_log, mixer.D,
        mixer.out_proj.weight, mixer.out_proj.bias,
    )
    d_inner, d_state = w.A_log.shape
    dt_rank = w.x_proj_w.shape[0] - 2 * d_state
    expected = {"in_proj.weight rows": (w.in_proj_w.shape[0], 2 * d_inner),
                "conv1d.weight channels": (w.conv_w.shape[0], d_inner),
                "x_proj.weight columns": (w.x_proj_w.shape[1], d_inner),
                "dt_proj.weight shape": (tuple(w.dt_proj_w.shape), (d_inner, dt_rank)),
                "D length": (w.D.shape[0], d_inner),
                "out_proj.weight columns": (w.out_proj_w.shape[1], d_inner)}
    for what, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"mixer {what} is {got}, expected {want} from A_log shape {tuple(w.A_log.shape)}")
    return w


def _mask(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padding positions; x is (batch, L, channels), attention_mask (batch, L)."""
    return x if attention_mask is None else (x * attention_mask[:, :, None]).to(x.dtype)


def _activation(name: str | None) -> tuple[str | None, object]:
    """Kernel activation and an extra function for activations the kernels do not fuse."""
    if name in (None, "silu", "swish"):
        return name, None
    from transformers.activations import ACT2FN
    return None, ACT2FN[name]


def mamba_mixer_forward(mixer: nn.Module, hidden_states: torch.Tensor, cache_params=None,
                        attention_mask: torch.Tensor | None = None, backend: str = "auto", **kwargs) -> torch.Tensor:
    """Functional HF ``MambaMixer.forward`` (non-fused path) running scan and conv through osf.kernels.

    Args:
        mixer: an HF ``MambaMixer`` (or any module with the same parameter names).
        hidden_states: (batch, L, hidden).
        cache_params: transformers' Mamba cache (``DynamicCache``) or None.
        attention_mask: (batch, L) 0/1 padding mask or None.
        backend: kernel backend, see ``osf.kernels.selective_scan``.
    """
    w = mixer_weights(mixer)
    d_inner, d_state = w.A_log.shape
    dt_rank = w.x_proj_w.shape[0] - 2 * d_state
    width = w.conv_w.shape[1]
    seq_len, dtype = hidden_states.shape[1], hidden_states.dtype
    layer_idx = mixer.layer_idx
    if cache_params is not None:
        conv_state = cache_params.get_conv_state(layer_idx, state_idx=0)
        recurrent_state = cache_params.get_recurrent_state(layer_idx, state_idx=0)
    else:
        conv_state = recurrent_state = None

    hidden_states = _mask(hidden_states, attention_mask)
    projected = F.linear(hidden_states, w.in_proj_w, w.in_proj_b).transpose(1, 2)
    A = -torch.exp(w.A_log.float())
    x, gate = projected[:, :d_inner], projected[:, d_inner:]
    act, extra_act = _activation(getattr(mixer, "activation", "silu"))

    if conv_state is not None and seq_len == 1 and not cache_params.is_recording_past(layer_idx):
        x = K.causal_conv1d_update(x, conv_state, w.conv_w, w.conv_b, activation=act, backend=backend)
    else:
        if cache_params is not None:
            x = cache_params.update_conv_state(x, layer_idx, conv_kernel_size=width)
        x = K.causal_conv1d(x.to(w.conv_w.dtype), w.conv_w, w.conv_b, activation=act, backend=backend).to(x.dtype)
        if cache_params is not None:
            x = x[:, :, -seq_len:]
    if extra_act is not None:
        x = extra_act(x)

    x = _mask(x.transpose(1, 2), attention_mask)  # (batch, L, d_inner)
    time_step, B, C = torch.split(F.linear(x, w.x_proj_w), [dt_rank, d_state, d_state], dim=-1)
    time_step = w.dt_proj_w @ time_step.transpose(1, 2)
    dt_bias = w.dt_proj_b.float() if w.dt_proj_b is not None else None

    if recurrent_state is not None and seq_len == 1:
        y = K.selective_state_update(recurrent_state, x[:, 0], time_step[..., 0], A, B[:, 0], C[:, 0], w.D,
                                     z=gate[..., 0], dt_bias=dt_bias, dt_softplus=True,
                                     backend=backend).unsqueeze(-1)
    else:
        want_state = cache_params is not None
        result = K.selective_scan(x.transpose(1, 2), time_step, A, B.transpose(1, 2), C.transpose(1, 2),
                                  D=w.D.float(), z=gate, delta_bias=dt_bias, delta_softplus=True,
                                  return_last_state=want_state, backend=backend)
        if want_state:
            y, last = result
            cache_params.update_recurrent_state(last, layer_idx)
        else:
            y = result
    return F.linear(y.transpose(1, 2).to(dtype), w.out_proj_w, w.out_proj_b)


def _is_mamba_mixer(module: nn.Module) -> bool:
    try:
        from transformers.models.mamba.modeling_mamba import MambaMixer
    except ImportError:
        return False
    return isinstance(module, MambaMixer)


class MambaPatch:
    """Handle returned by ``patch_mamba``; ``remove()`` or leaving a ``with`` block unpatches."""

    def __init__(self, mixers: list[nn.Module]):
        self.mixers = mixers

    def remove(self) -> None:
        for m in self.mixers:
            if getattr(m, _PATCH_FLAG, False):
                del m.forward
                delattr(m, _PATCH_FLAG)
        self.mixers = []

    def __enter__(self) -> "MambaPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def patch_mamba(model: nn.Module, backend: str = "auto") -> MambaPatch:
    """Route every HF ``MambaMixer`` in ``model`` through ``mamba_mixer_forward``.

    Sets an instance-level ``forward``; use the returned handle's ``remove()``, ``unpatch_mamba``,
    or ``with patch_mamba(model): ...`` to undo. Raises ValueError if the model has no mixer.
    """
    mixers = [m for m in model.modules() if _is_mamba_mixer(m)]
    if not mixers:
        raise ValueError(f"{type(model).__name__} contains no transformers MambaMixer to patch")
    for m in mixers:
        def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
            return mamba_mixer_forward(self, hidden_states, cache_params, attention_mask, backend=backend)
        m.forward = types.MethodType(forward, m)
        setattr(m, _PATCH_FLAG, True)
    return MambaPatch(mixers)


def unpatch_mamba(model: nn.Module) -> int:
    """Undo ``patch_mamba`` on every mixer of ``model``; returns how many were unpatched."""
    mixers = [m for m in model.modules() if getattr(m, _PATCH_FLAG, False)]
    MambaPatch(mixers).remove()
    return len(mixers)
