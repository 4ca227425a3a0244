"""Saving and loading extracted subnets, per-layer sizes included.

A subnet folder holds the weights (``model.safetensors``), for Hugging Face models their
``config.json``, and ``osf_subnet.json``: the config, the tensor shapes, the size attributes
and the dropped layers, all in the original model's layout. Where the Hugging Face config can
express the subnet (uniform sizes), the folder also loads with plain ``from_pretrained``.
Where it cannot (sizes that differ from layer to layer), the folder also holds the code that
rebuilds the subnet (:mod:`osf.ir.portable`, copied as ``osf_portable.py``, and a
``modeling_osf_subnet.py`` of subclasses of the original classes), named in the config's
``auto_map``: ``AutoModelFor*.from_pretrained(folder, trust_remote_code=True)`` loads it
without osf.
"""
from __future__ import annotations

import copy
import functools
import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from osf.elastic.validate import (META_ATTR, MODELING_FILE, PORTABLE_FILE, SUBNET, check_config_matches_weights,
                                  check_saved_folder, prepare_save_folder, read_meta, read_safetensors)
from osf.errors import InputTypeError
from osf.ir import portable
from osf.ir.apply import get_tensor, is_non_persistent, tied_names

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
            generation_config.json, tokenizer files, README.md, osf_subnet.json and the
            subnet code files) are removed first; other files stay.

    A subnet whose Hugging Face config cannot express it (sizes that differ from layer to
    layer) is saved with the code that rebuilds it, so the folder also loads with
    ``AutoModelFor*.from_pretrained(path, trust_remote_code=True)`` where osf is not installed.

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
    if hasattr(model, "save_pretrained"):
        # current tensor names, so osf can read them back without transformers' renaming
        type(model).save_pretrained(model, path, save_original_format=False)
    else:
        save_model(model, str(path / WEIGHTS_FILE))  # stores tied tensors once
    describe_saved_subnet(model, path)
    return path


def keep_description_on_save(model: nn.Module) -> None:
    """Make ``model.save_pretrained`` (and ``push_to_hub``, which goes through it) write the
    subnet's description and, where needed, its code, so per-layer sizes survive the plain
    Hugging Face way of saving."""
    if hasattr(model, "save_pretrained"):
        # a partial of a module-level function, not a bound method: the model still pickles
        model.save_pretrained = functools.partial(_save_pretrained_described, model)


def _save_pretrained_described(self: nn.Module, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("save_original_format", False)  # current tensor names, as save_subnet writes them
    out = type(self).save_pretrained(self, save_directory, *args, **kwargs)
    describe_saved_subnet(self, save_directory)
    return out


def describe_saved_subnet(model: nn.Module, path: str | Path) -> None:
    """Complete a folder that ``model`` (an extracted subnet) was just saved into: write its
    description (``osf_subnet.json``) and, when its Hugging Face config cannot express it,
    the code that rebuilds it from ``config.json`` where osf is not installed."""
    path = Path(path)
    meta = dict(getattr(model, META_ATTR))
    if hasattr(getattr(model, "config", None), "to_dict"):
        meta["hf_config"] = model.config.to_dict()  # lets load_subnet notice a hand-edited config.json
        if not meta.get("config_expresses_subnet") and meta.get("original_config"):
            _write_portable_code(model, meta, path)
    (path / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


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
    portable.apply_subnet(model, meta["shapes"], meta["attributes"], meta["dropped"])
    state = _read_weights(path)
    if (path / "config.json").is_file() and hasattr(model, "config"):
        try:
            saved = type(model.config).from_pretrained(path)
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"{path / 'config.json'} cannot be read ({reason}); save the subnet again") from None
        for key in (portable.SPEC_KEY, "auto_map"):  # the loaded model is of the original class: no remote code
            if key in vars(saved):
                delattr(saved, key)
        check_config_matches_weights(model, saved, state, meta, path)
        _copy_fields(model.config, saved)
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, the subnet description says "
                             f"{tuple(expected[k].shape)}")
    groups = _tied_groups(model)  # tied tensors: assign=True below would untie them
    tied = tied_names(model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    covered: set[str] = set()  # every name of a tied tensor the file holds under one of them
    for names in groups:
        loaded = [n for n in names if n in state]
        if loaded:
            covered.update(names)
        if len(loaded) == 1:  # saved once: tie the others to it again (several saved: each keeps its own)
            for alias in names:
                if alias != loaded[0]:
                    _set_parameter(model, alias, get_tensor(model, loaded[0]))
    missing = [k for k in missing if k not in tied and k not in covered and not is_non_persistent(model, k)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the subnet: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    setattr(model, META_ATTR, meta)
    keep_description_on_save(model)
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


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """The names of each parameter held under more than one name."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    (model.get_submodule(owner) if owner else model)._parameters[leaf] = tensor


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} holds no weights (*.safetensors): the folder is incomplete; save the subnet again")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f, SUBNET))
    return state


# ------------------------------------------------------- loading without osf
_SKIP_FIELDS = ("architectures", "auto_map", portable.SPEC_KEY)


def _write_portable_code(model: nn.Module, meta: dict[str, Any], path: Path) -> None:
    """Make the folder load with ``AutoModelFor*.from_pretrained(path, trust_remote_code=True)``:
    write ``osf_portable.py`` (a verbatim copy of :mod:`osf.ir.portable`), a
    ``modeling_osf_subnet.py`` subclassing the original classes, and in ``config.json`` the
    subnet's description (``osf_subnet``) and the ``auto_map`` naming those classes."""
    cls = type(model)
    if cls.__module__ == "__main__" or not _importable(cls):
        warnings.warn(f"{cls.__qualname__} is not importable by name ({cls.__module__}), so the subnet in {path} "
                      "loads only with osf.load_subnet, not with from_pretrained(..., trust_remote_code=True)",
                      UserWarning, stacklevel=3)
        return
    config_file = path / "config.json"
    if not config_file.is_file():  # saved without save_pretrained: nothing for from_pretrained to read
        return
    saved = json.loads(config_file.read_text())
    classes = _loadable_classes(model, meta["original_config"])
    auto_map = {auto: f"{MODELING_FILE[:-3]}.{c.__name__}" for auto, c in classes.items()}
    if not auto_map:
        warnings.warn(f"no transformers Auto class maps config type {model.config.model_type!r} to "
                      f"{cls.__qualname__}: {MODELING_FILE} in {path} defines the class, but no auto_map names it",
                      UserWarning, stacklevel=3)
    saved["auto_map"] = auto_map
    saved[portable.SPEC_KEY] = {"format": portable.SPEC_FORMAT,
                                "original": _changed_fields(meta["original_config"], saved),
                                "shapes": meta["shapes"], "attributes": meta["attributes"],
                                "dropped": meta["dropped"]}
    (path / PORTABLE_FILE).write_text(Path(portable.__file__).read_text())  # verbatim: the code load_subnet runs
    (path / MODELING_FILE).write_text(_modeling_source(cls, sorted({c for c in classes.values()} | {cls},
                                                                   key=lambda c: c.__name__), auto_map))
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True, default=str) + "\n")


def _importable(cls: type) -> bool:
    try:
        return getattr(importlib.import_module(cls.__module__), cls.__name__, None) is cls
    except Exception:  # a module that fails to import again is no place to load from
        return False


def _modeling_source(saved: type, classes: list[type], auto_map: dict[str, str]) -> str:
    loads = "\n".join(f"    {auto}.from_pretrained(folder, trust_remote_code=True)" for auto in sorted(auto_map))
    lines = [
        f'"""The {saved.__name__} subnet saved by osf, whose sizes differ from layer to layer.',
        "",
        "Each class below is the transformers class of the same name, built with the per-layer sizes",
        "in ``config.osf_subnet`` by osf_portable.py. It loads without osf installed:",
        "",
        loads or f"    {saved.__name__}.from_pretrained(folder)  # this file's class",
        '"""',
    ]
    lines += [f"from {c.__module__} import {c.__name__} as _{c.__name__}" for c in classes]
    lines += ["", "from .osf_portable import SubnetMixin", ""]
    for c in classes:
        lines += ["", f"class {c.__name__}(SubnetMixin, _{c.__name__}):",
                  f'    """``{c.__name__}`` with the subnet\'s sizes (``config.osf_subnet``)."""', ""]
    return "\n".join(lines)


def _loadable_classes(model: nn.Module, original_config: dict[str, Any]) -> dict[str, type]:
    """Auto class name -> the class it builds for this config type, for the classes that hold
    the subnet: the subnet's own class, and others of its family (its base model) whose
    tensors are all among the subnet's, so the description rebuilds them too."""
    from transformers.models.auto import modeling_auto

    cls, model_type = type(model), getattr(model.config, "model_type", None)
    family = importlib.import_module(cls.__module__)
    out: dict[str, type] = {}
    reference: dict[str, tuple[int, ...]] | None = None
    for auto_name in sorted(n for n in dir(modeling_auto) if n.startswith("AutoModel")):
        mapping = getattr(getattr(getattr(modeling_auto, auto_name), "_model_mapping", None), "_model_mapping", None)
        names = mapping.get(model_type) if isinstance(mapping, dict) else None
        for name in [names] if isinstance(names, str) else list(names or ()):
            other = getattr(family, name, None)
            if other is cls:
                out[auto_name] = cls
            elif isinstance(other, type) and issubclass(other, nn.Module):
                if reference is None:
                    reference = _meta_shapes(cls, original_config) or {}
                if reference and _holds_only(other, original_config, reference):
                    out[auto_name] = other
    return out


def _meta_shapes(cls: type, original_config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The state-dict shapes of ``cls`` built from ``original_config`` on the meta device
    (None if it does not build)."""
    try:
        config = cls.config_class.from_dict(copy.deepcopy(original_config))
        with torch.device("meta"):
            built = cls(config)
    except Exception:  # a class of the family that this config cannot build
        return None
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


def _holds_only(other: type, original_config: dict[str, Any], reference: dict[str, tuple[int, ...]]) -> bool:
    """Whether every tensor of ``other`` is one of ``reference``'s (as is, or under the base prefix),
    with the same shape: then the subnet's description resizes all of them."""
    shapes = _meta_shapes(other, original_config)
    if not shapes:
        return False
    prefix = getattr(other, "base_model_prefix", "")
    for k, s in shapes.items():
        ref = reference.get(k, reference.get(f"{prefix}.{k}") if prefix else None)
        if ref != s:
            return False
    return True


def _changed_fields(original: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """The size and layer fields (ints, lists of ints or of strings such as ``layer_types``;
    nested configs recursed) whose saved value differs from the original's, with the original
    value: the original architecture is built at these first."""
    out: dict[str, Any] = {}
    for key, value in original.items():
        if key in _SKIP_FIELDS or key not in saved:
            continue
        now = saved[key]
        if isinstance(value, dict) and isinstance(now, dict):
            nested = _changed_fields(value, now)
            if nested:
                out[key] = nested
        elif _is_layout(value) and value != now:
            out[key] = value
    return out


def _is_layout(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(
            isinstance(v, str) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)
