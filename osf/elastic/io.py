"""Saving and loading extracted subnets, per-layer sizes included.

A subnet folder holds the weights (``model.safetensors``), for Hugging Face models their
``config.json``, and ``osf_subnet.json``: the config, the tensor shapes, the size attributes
and the dropped layers, all in the original model's layout. Where the Hugging Face config can
express the subnet (uniform sizes), the folder also loads with plain ``from_pretrained``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from osf.elastic.extract import META_ATTR
from osf.elastic.validate import (SUBNET, check_config_matches_weights, check_saved_folder, prepare_save_folder,
                                  read_meta, read_safetensors)
from osf.errors import InputTypeError
from osf.ir.apply import is_non_persistent, remove_blocks, set_tensor, sync_module_attributes, tied_names

META_FILE = SUBNET.meta_file
WEIGHTS_FILE = "model.safetensors"


def save_subnet(model: nn.Module, path: str | Path, *, overwrite: bool = False) -> Path:
    """Save an extracted subnet (see :meth:`osf.Supernet.extract`) to the folder ``path``.

    Args:
        model: a subnet from ``sn.extract(config)`` (or ``osf.load_subnet``).
        path: the folder; created if needed.
        overwrite: replace a model already in ``path``. Without it such a folder is refused:
            its stale tokenizer, generation config or weight shards would load with the subnet.
            With it, the model files there (config.json, ``*.safetensors`` and their index,
            generation_config.json, tokenizer files, README.md, osf_subnet.json) are removed
            first; other files stay.

    Raises:
        osf.errors.FolderNotEmptyError: ``path`` holds a model and ``overwrite`` is false.
        ValueError: ``model`` was not extracted by osf.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a subnet (an nn.Module from sn.extract(config)), "
                             f"got {type(model).__name__}")
    meta = getattr(model, META_ATTR, None)
    if meta is None:
        raise ValueError("this model was not extracted by osf (no subnet description): use "
                         "sn.extract(config) to get a subnet, or save it with save_pretrained")
    path = prepare_save_folder(path, overwrite)
    meta = dict(meta)
    if hasattr(getattr(model, "config", None), "to_dict"):
        meta["hf_config"] = model.config.to_dict()  # lets load_subnet notice a hand-edited config.json
    if hasattr(model, "save_pretrained"):
        # current tensor names, so osf can read them back without transformers' renaming
        type(model).save_pretrained(model, path, save_original_format=False)
    else:
        save_model(model, str(path / WEIGHTS_FILE))  # stores tied tensors once
    (path / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_subnet(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a subnet saved by :func:`save_subnet`.

    Args:
        path: the folder.
        model: for models that are not Hugging Face ones, a freshly built instance of the
            original architecture (its weights are replaced).

    Raises:
        ValueError: the folder is missing, was not written by osf, or is damaged: a truncated
            or corrupt weights file, a tensor of the wrong shape, a ``config.json`` edited so
            that it no longer matches the weights (each named).
    """
    path = check_saved_folder(path, SUBNET)
    meta = read_meta(path / META_FILE, SUBNET)
    if model is None:
        model = _build_original(meta)
    elif not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a fresh instance of the original architecture (an nn.Module), "
                             f"got {type(model).__name__}")
    elif type(model).__qualname__ != str(meta["class"]).rpartition(".")[2]:
        raise ValueError(f"model is a {type(model).__qualname__}, but this subnet comes from a {meta['class']}: "
                         "pass a fresh instance of that architecture")
    for name, shape in meta["shapes"].items():
        set_tensor(model, name, torch.empty(shape))
    for a in meta["attributes"]:
        setattr(model.get_submodule(a["module"]) if a["module"] else model, a["attr"], a["value"])
    sync_module_attributes(model)
    remove_blocks(model, meta["dropped"])
    state = _read_weights(path)
    if (path / "config.json").is_file() and hasattr(model, "config"):
        try:
            saved = type(model.config).from_pretrained(path)
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"{path / 'config.json'} cannot be read ({reason}); save the subnet again") from None
        check_config_matches_weights(model, saved, state, meta, path)
        _copy_fields(model.config, saved)
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, the subnet description says "
                             f"{tuple(expected[k].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = tied_names(model)
    missing = [k for k in missing if k not in tied and not is_non_persistent(model, k)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the subnet: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    setattr(model, META_ATTR, meta)
    return model.eval()


def _build_original(meta: dict[str, Any]) -> nn.Module:
    if not meta.get("original_config"):
        raise ValueError(f"this subnet comes from a {meta.get('class')} that is not a Hugging Face model: "
                         "pass model=<a fresh instance of that architecture> to load_subnet")
    module, _, name = meta["class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    config = cls.config_class.from_dict(meta["original_config"])
    return cls(config)


def _copy_fields(dst: Any, src: Any) -> None:
    """Update config ``dst`` in place from ``src`` (the saved one), keeping runtime settings
    such as the attention implementation that loading from a folder would reset."""
    for key, value in vars(src).items():
        if key.startswith("_"):
            continue
        current = getattr(dst, key, None)
        if hasattr(current, "to_dict") and hasattr(value, "to_dict"):
            _copy_fields(current, value)
        else:
            setattr(dst, key, value)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} holds no weights (*.safetensors): the folder is incomplete; save the subnet again")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f, SUBNET))
    return state
