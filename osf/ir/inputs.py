"""Example inputs: defaults for Hugging Face models, and random look-alikes for checks."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULT_BATCH = 2
DEFAULT_SEQ_LEN = 8


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _image_size(cfg: Any) -> tuple[int, int, int]:
    size = getattr(cfg, "image_size", 224)
    if isinstance(size, (tuple, list)):
        h, w = int(size[0]), int(size[1])
    else:
        h = w = int(size)
    return int(getattr(cfg, "num_channels", 3)), h, w


def default_inputs(model: nn.Module, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN) -> dict:
    """Inputs a Hugging Face model accepts, built from its config.

    Causal LMs and text encoders get ``input_ids``; image models ``pixel_values``; models
    with both a text and a vision config (CLIP) get both.

    Raises:
        ValueError: for a model without a Hugging Face config; pass ``example_inputs``.
    """
    cfg = _config(model)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise ValueError(
            f"{type(model).__name__} is not a Hugging Face model, so OSF cannot guess its inputs: "
            "pass example_inputs (a tensor, a tuple of tensors, or a dict of keyword tensors)"
        )
    g = torch.Generator().manual_seed(0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs: dict[str, torch.Tensor] = {}
    text_cfg = getattr(cfg, "text_config", None)
    vision_cfg = getattr(cfg, "vision_config", None)
    if text_cfg is not None or (vision_cfg is None and hasattr(cfg, "vocab_size") and not hasattr(cfg, "image_size")):
        tcfg = text_cfg or cfg
        vocab = int(tcfg.vocab_size)
        max_pos = int(getattr(tcfg, "max_position_embeddings", seq_len) or seq_len)
        n = min(seq_len, max_pos)
        ids = torch.randint(3, max(4, vocab), (batch, n), generator=g)
        eos = getattr(tcfg, "eos_token_id", None)
        if text_cfg is not None and isinstance(eos, int) and 0 <= eos < vocab:
            ids[:, -1] = eos  # text towers pool at the end-of-sequence token
        inputs["input_ids"] = ids.to(device)
    if vision_cfg is not None or hasattr(cfg, "image_size"):
        c, h, w = _image_size(vision_cfg or cfg)
        inputs["pixel_values"] = torch.randn(batch, c, h, w, generator=g).to(device)
    if not inputs:
        raise ValueError(
            f"cannot build default inputs for {type(model).__name__} ({type(cfg).__name__}): "
            "pass example_inputs"
        )
    return inputs


def static_kwargs_for(model: nn.Module) -> dict:
    """Non-tensor keyword options used while tracing (no caches, plain outputs)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    out = {}
    if "use_cache" in params:
        out["use_cache"] = False
    if "return_dict" in params:
        out["return_dict"] = True
    return out


def random_like_inputs(args: tuple, kwargs: dict, seed: int = 0) -> tuple[tuple, dict]:
    """Fresh random tensors with the shapes, dtypes and value ranges of the given inputs."""
    g = torch.Generator().manual_seed(seed)

    def fresh(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
        if t.dtype == torch.bool:
            return t.clone()
        lo, hi = int(t.min()), int(t.max())
        if lo == hi:
            return t.clone()
        out = torch.randint(lo, hi + 1, t.shape, generator=g, dtype=t.dtype).to(t.device)
        return out

    return tuple(fresh(a) for a in args), {k: fresh(v) for k, v in kwargs.items()}


def resize_inputs(args: tuple, kwargs: dict, batch: int | None = None, seq_len: int | None = None,
                  seed: int = 0) -> tuple[tuple, dict]:
    """Random inputs like the given ones with another batch size and (for ids) sequence length."""
    g = torch.Generator().manual_seed(seed)

    def resize(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        shape = list(t.shape)
        if batch is not None:
            shape[0] = batch
        if seq_len is not None and not t.is_floating_point() and t.dim() == 2:
            shape[1] = seq_len
        if t.is_floating_point():
            return torch.randn(shape, generator=g, dtype=t.dtype)
        lo, hi = int(t.min()), int(t.max())
        out = torch.randint(lo, hi + 1, shape, generator=g, dtype=t.dtype)
        if t.dim() == 2 and (t[:, -1] == t[0, -1]).all():
            out[:, -1] = t[0, -1]  # keep an end-of-sequence marker in place
        return out

    return tuple(resize(a) for a in args), {k: resize(v) for k, v in kwargs.items()}
