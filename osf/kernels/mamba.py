"""Hugging Face Mamba mixers on osf.kernels, through Hugging Face's own forward.

Route (decided after transformers 5.24 renamed the mixer's ``cache_params`` argument to
``cache`` under a copy of its forward that OSF used to keep, which then ran cached
generation with no state and no error): OSF no longer copies ``MambaMixer.forward``.
A patched mixer runs transformers' own ``forward`` unchanged (its argument names, its cache
logic, its masking), and only the five kernel functions that forward calls through its
kernel-function hooks (``mamba_selective_scan``, ``mamba_selective_state_update``,
``causal_conv1d_fn``, ``causal_conv1d_update``, ``mamba_inner_fn``, module globals of the
mixer's modeling file) are routed to :mod:`osf.kernels` while a patched mixer runs. Outside
a patched mixer the hooks call transformers' own implementation, so other models in the
process are untouched. Sizes come from the mixer's attributes (``intermediate_size``,
``ssm_state_size``, ``time_step_rank``), which a supernet updates with every config; the
patched forward checks them against the weights' shapes before each call.

Loud failure instead of silent drift:
- a hook whose name is missing from the modeling file, or a call with an argument OSF does
  not know, raises (a transformers change shows up as an error, never as a wrong output);
- a call that was handed a cache but updated no state in it raises ``RuntimeError``.

Measured (2-core CPU, a 4-layer hidden-768 Mamba, batch 1 x 256 tokens, no grad, medians of
6): 263 ms through transformers' forward with routed hooks against 256 ms through the former
copy (``osf/kernels/mamba.py`` at d6211fc), the same logits to the bit; the 3% is the hook
dispatch and the size and cache checks, the price of following transformers' own forward.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import osf.kernels as K

PATCH_FLAG = "_osf_kernels_patched"
HOOK_NAMES = ("mamba_selective_scan", "mamba_selective_state_update", "causal_conv1d_fn",
              "causal_conv1d_update", "mamba_inner_fn")


@dataclass
class _Call:
    """What one patched mixer call asked of the kernels."""

    backend: str
    state_updates: int = 0  # kernel calls that wrote a cache's recurrent or conv state
    hooks: list[str] = field(default_factory=list)


_ACTIVE: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("osf_mamba_call", default=None)


def _activation(name: str | None) -> tuple[str | None, Callable | None]:
    """Kernel activation and an extra function for activations the kernels do not fuse."""
    if name in (None, "silu", "swish"):
        return name, None
    from transformers.activations import ACT2FN
    return None, ACT2FN[name]


def _reject_unknown(hook: str, kwargs: dict[str, Any], ignorable: tuple[str, ...] = ()) -> None:
    unknown = sorted(k for k, v in kwargs.items() if k not in ignorable and v is not None)
    if unknown:
        raise TypeError(f"transformers called the Mamba kernel hook `{hook}` with {unknown}, which osf.kernels "
                        "does not know; this transformers release is not supported by this OSF version "
                        "(pass kernels=False to osf.supernet to run transformers' own kernels)")


def _scan(call: _Call, hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
          return_last_state=False, use_mambapy=False, use_associative_scan=False, **kwargs):
    _reject_unknown("mamba_selective_scan", kwargs)
    out = K.selective_scan(hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias,
                           delta_softplus=delta_softplus, return_last_state=return_last_state,
                           backend=call.backend)
    call.state_updates += bool(return_last_state)
    return out


def _state_update(call: _Call, state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False,
                  z=None, **kwargs):
    _reject_unknown("mamba_selective_state_update", kwargs)
    call.state_updates += 1
    return K.selective_state_update(state, hidden_states, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                    dt_softplus=dt_softplus, backend=call.backend)


def _conv(call: _Call, hidden_states, weight, bias=None, activation=None, **kwargs):
    _reject_unknown("causal_conv1d_fn", kwargs)
    act, extra = _activation(activation)
    out = K.causal_conv1d(hidden_states.to(weight.dtype), weight, bias, activation=act, backend=call.backend)
    return (out if extra is None else extra(out)).to(hidden_states.dtype)


def _conv_update(call: _Call, hidden_states, conv_state, weight, bias=None, activation=None, **kwargs):
    _reject_unknown("causal_conv1d_update", kwargs)
    act, extra = _activation(activation)
    call.state_updates += 1
    out = K.causal_conv1d_update(hidden_states.to(weight.dtype), conv_state, weight, bias, activation=act,
                                 backend=call.backend)
    return (out if extra is None else extra(out)).to(hidden_states.dtype)


_ROUTES: dict[str, Callable] = {"mamba_selective_scan": _scan, "mamba_selective_state_update": _state_update,
                                "causal_conv1d_fn": _conv, "causal_conv1d_update": _conv_update}


class _Hook:
    """Stands in for one kernel function of a modeling file: osf.kernels inside a patched
    mixer's forward, transformers' own implementation everywhere else."""

    def __init__(self, name: str, original: Callable):
        self.name, self.original = name, original
        self.__wrapped__ = original

    def __call__(self, *args, **kwargs):
        call = _ACTIVE.get()
        if call is None:
            return self.original(*args, **kwargs)
        call.hooks.append(self.name)
        if self.name == "mamba_inner_fn":
            # the fused training path exists only in mamba_ssm; the step-by-step path runs osf.kernels
            return None
        return _ROUTES[self.name](call, *args, **kwargs)


def _install_hooks(modeling: types.ModuleType) -> None:
    """Wrap the kernel functions of ``modeling`` once; a missing one is an unsupported release."""
    if all(isinstance(getattr(modeling, n, None), _Hook) for n in HOOK_NAMES):
        return
    missing = [n for n in HOOK_NAMES if not callable(getattr(modeling, n, None))]
    if missing:
        raise RuntimeError(f"{modeling.__name__} no longer defines the kernel hooks {missing} that OSF routes to "
                           "osf.kernels; this transformers release is not supported by this OSF version "
                           "(pass kernels=False to osf.supernet)")
    for n in HOOK_NAMES:
        fn = getattr(modeling, n)
        if not isinstance(fn, _Hook):
            setattr(modeling, n, _Hook(n, fn))


def check_mixer_sizes(mixer: nn.Module) -> None:
    """Raise ValueError when a mixer's size attributes disagree with its weights' shapes
    (HF's forward splits ``x_proj``'s output by these attributes)."""
    d_inner, d_state = mixer.A_log.shape
    dt_rank = mixer.dt_proj.weight.shape[1]
    expected = {"intermediate_size": d_inner, "ssm_state_size": d_state, "time_step_rank": dt_rank}
    for attr, want in expected.items():
        if getattr(mixer, attr) != want:
            raise ValueError(f"mixer {attr} = {getattr(mixer, attr)} but its weights have {want} "
                             f"(A_log {tuple(mixer.A_log.shape)}, dt_proj {tuple(mixer.dt_proj.weight.shape)})")
    shapes = {"in_proj.weight rows": (mixer.in_proj.weight.shape[0], 2 * d_inner),
              "conv1d.weight channels": (mixer.conv1d.weight.shape[0], d_inner),
              "x_proj.weight": (tuple(mixer.x_proj.weight.shape), (dt_rank + 2 * d_state, d_inner)),
              "D length": (mixer.D.shape[0], d_inner),
              "out_proj.weight columns": (mixer.out_proj.weight.shape[1], d_inner)}
    for what, (got, want) in shapes.items():
        if got != want:
            raise ValueError(f"mixer {what} is {got}, expected {want} from A_log {tuple(mixer.A_log.shape)} "
                             f"and dt_proj {tuple(mixer.dt_proj.weight.shape)}")


def _cache_argument(args: tuple, kwargs: dict) -> Any:
    from transformers.cache_utils import Cache
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, Cache)), None)


def mamba_mixer_forward(mixer: nn.Module, *args, backend: str = "auto", **kwargs) -> torch.Tensor:
    """Run transformers' own forward of ``mixer`` with its kernels routed to :mod:`osf.kernels`.

    Takes the arguments of the mixer class's ``forward`` (``hidden_states``, ``cache``,
    ``attention_mask``...), passed through unchanged. Raises ValueError if the mixer's size
    attributes disagree with its weights, RuntimeError if a cache was handed in and no state
    of it was updated.
    """
    check_mixer_sizes(mixer)
    modeling = sys.modules[type(mixer).__module__]
    _install_hooks(modeling)
    call = _Call(backend)
    token = _ACTIVE.set(call)
    try:
        out = type(mixer).forward(mixer, *args, **kwargs)
    finally:
        _ACTIVE.reset(token)
    if _cache_argument(args, kwargs) is not None and call.state_updates == 0:
        raise RuntimeError(f"{type(mixer).__name__} (layer {getattr(mixer, 'layer_idx', '?')}) was handed a cache "
                           f"and updated no state in it (kernel calls: {call.hooks}); cached generation would be "
                           "wrong. This transformers release is not supported by this OSF version.")
    return out


def is_mamba_mixer(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``MambaMixer`` (what :func:`patch_mamba` routes)."""
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
            if getattr(m, PATCH_FLAG, False):
                del m.forward
                delattr(m, PATCH_FLAG)
        self.mixers = []

    def __enter__(self) -> "MambaPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def patch_mamba(model: nn.Module, backend: str = "auto") -> MambaPatch:
    """Route every HF ``MambaMixer`` in ``model`` through :func:`mamba_mixer_forward`.

    Sets an instance-level ``forward``; use the returned handle's ``remove()``, ``unpatch_mamba``,
    or ``with patch_mamba(model): ...`` to undo. Raises ValueError if the model has no mixer.
    """
    mixers = [m for m in model.modules() if is_mamba_mixer(m)]
    if not mixers:
        raise ValueError(f"{type(model).__name__} contains no transformers MambaMixer to patch")
    for m in mixers:
        _install_hooks(sys.modules[type(m).__module__])  # fail now, not at the first forward

        def forward(self, *args, **kwargs):
            return mamba_mixer_forward(self, *args, backend=backend, **kwargs)
        m.forward = types.MethodType(forward, m)
        setattr(m, PATCH_FLAG, True)
    return MambaPatch(mixers)


def unpatch_mamba(model: nn.Module) -> int:
    """Undo ``patch_mamba`` on every mixer of ``model``; returns how many were unpatched."""
    mixers = [m for m in model.modules() if getattr(m, PATCH_FLAG, False)]
    MambaPatch(mixers).remove()
    return len(mixers)


@contextlib.contextmanager
def unpatched(model: nn.Module):
    """Run a block with ``model``'s mixers on transformers' own kernels, then re-patch them."""
    n = unpatch_mamba(model)
    try:
        yield model
    finally:
        if n:
            patch_mamba(model)
