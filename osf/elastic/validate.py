"""Checks of what users hand to OSF, done before any work: bad input gets one clear line.

- :func:`check_supernet_args`: the arguments of :func:`osf.supernet`.
- :func:`check_saved_folder`, :func:`read_meta`, :func:`read_safetensors`: loading what osf
  saved, an extracted subnet (:data:`SUBNET`) or a supernet checkpoint (:data:`SUPERNET`);
  :func:`check_config_matches_weights`: a subnet's edited config (:func:`osf.load_subnet`).
- :func:`prepare_save_folder`: saving one (:func:`osf.save_subnet`) without mixing it with
  another model's files.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from osf.errors import FolderNotEmptyError, InputTypeError

# ------------------------------------------------------------------ osf.supernet(...)


def check_supernet_args(model: Any, example_inputs: Any = None, space: Any = None, calibration: Any = None,
                        **flags: Any) -> None:
    """Refuse what :func:`osf.supernet` cannot use, and warn about a model in training mode.

    Raises:
        InputTypeError: ``model`` is not an ``nn.Module`` (or is already a supernet), or
            ``example_inputs`` / ``space`` / ``calibration`` / a flag has the wrong type.
        ValueError: the model's weights are on the meta device.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module (a Hugging Face model or your own), "
                             f"got {type(model).__name__}")
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ValueError(f"model has weights on the meta device ({_names(meta)}): they hold no values, so there is "
                         "nothing to analyse; load real weights first (e.g. from_pretrained without a meta "
                         "device_map, or load_state_dict(..., assign=True))")
    check_example_inputs(example_inputs)
    if space is not None and not isinstance(space, (Mapping, str, Path)):
        raise InputTypeError(f"space must be a dict of dim pattern -> sizes, or the path of a JSON/YAML file, "
                             f"got {type(space).__name__}")
    if calibration is not None and (isinstance(calibration, (str, bytes, torch.Tensor, Mapping))
                                    or not isinstance(calibration, Iterable)):
        raise InputTypeError(f"calibration must be an iterable (list, DataLoader...) of model inputs, one batch each, "
                             f"got {type(calibration).__name__}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InputTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    warn_if_training(model)


def check_example_inputs(example_inputs: Any) -> None:
    """``example_inputs`` must be a tensor, a tuple/list of tensors, or a dict of keyword inputs
    holding at least one tensor (other values there pass as options, e.g. ``use_cache=False``)."""
    if example_inputs is None or isinstance(example_inputs, torch.Tensor):
        return
    allowed = ("example_inputs must be a tensor, a tuple/list of tensors (positional inputs) or a dict of keyword "
               "inputs")
    if isinstance(example_inputs, (str, bytes)):
        raise InputTypeError(f"{allowed}, got a string: OSF runs the model on tensors, so tokenize text first "
                             "(e.g. tokenizer(text, return_tensors='pt'))")
    if isinstance(example_inputs, Mapping):
        bad_keys = [k for k in example_inputs if not isinstance(k, str)]
        if bad_keys:
            raise InputTypeError(f"{allowed}; the dict's keys must be argument names, got {bad_keys[:3]}")
        if not any(isinstance(v, torch.Tensor) for v in example_inputs.values()):
            kinds = {k: type(v).__name__ for k, v in example_inputs.items()}
            raise InputTypeError(f"{allowed}; this dict holds no tensor ({kinds}): tokenize text or convert "
                                 "arrays to tensors first")
        return
    if isinstance(example_inputs, (tuple, list)):
        if not example_inputs:
            raise InputTypeError(f"{allowed}, got an empty {type(example_inputs).__name__}")
        for i, v in enumerate(example_inputs):
            if not isinstance(v, torch.Tensor):
                hint = (" (text: tokenize it first, e.g. tokenizer(texts, return_tensors='pt'))"
                        if isinstance(v, (str, bytes)) else "; pass non-tensor options in a dict of keyword inputs")
                raise InputTypeError(f"{allowed}; positional input {i} is a {type(v).__name__}{hint}")
        return
    hint = ": convert it with torch.from_numpy(...)" if type(example_inputs).__module__ == "numpy" else ""
    raise InputTypeError(f"{allowed}, got {type(example_inputs).__name__}{hint}")


def warn_if_training(model: nn.Module) -> None:
    """Dropout (and batch-norm statistics) make a model in training mode give different outputs
    on the same inputs; OSF analyses it in eval mode (and puts the mode back afterwards)."""
    name = type(model).__name__
    if model.training:
        warnings.warn(f"osf.supernet: {name} is in training mode; OSF analyses it in eval mode (dropout off, "
                      "batch-norm running statistics) and puts it back in training mode afterwards. Call "
                      "model.eval() first to silence this warning.", UserWarning, stacklevel=3)
        return
    training = [n for n, m in model.named_modules() if m.training]
    if training:
        warnings.warn(f"osf.supernet: {name} is in eval mode but some of its modules are in training mode "
                      f"({_names(training)}); OSF analyses the whole model in eval mode and leaves it in eval mode. "
                      "Call model.eval() first to silence this warning.", UserWarning, stacklevel=3)


def _names(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# ------------------------------------------------------- loading what osf saved
@dataclasses.dataclass(frozen=True)
class SavedKind:
    """A kind of folder osf writes (an extracted subnet, a supernet checkpoint): what its
    loading errors call it and what they tell the user to do."""

    meta_file: str  # the description osf writes last, so a folder cut short has none
    noun: str  # "subnet", "supernet"
    folder: str  # "subnet folder", "supernet checkpoint folder"
    writer: str  # what writes it: "osf.save_subnet", "sn.save_pretrained"
    required: tuple[str, ...]  # keys the description must hold
    version: int = 1


SUBNET = SavedKind("osf_subnet.json", "subnet", "subnet folder", "osf.save_subnet",
                   ("shapes", "attributes", "dropped", "class"))
SUPERNET = SavedKind("osf_supernet.json", "supernet", "supernet checkpoint folder", "sn.save_pretrained",
                     ("format", "model_class", "supernet_config", "space", "dims", "ties", "dtype"))
_KINDS = (SUBNET, SUPERNET)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def check_saved_folder(path: Any, kind: SavedKind) -> Path:
    """The folder ``path`` as a ``Path``, after checking it is a ``kind`` folder osf wrote;
    when it is not, the error says what it looks like instead and how to load that."""
    if not isinstance(path, (str, Path)) or (isinstance(path, str) and not path.strip()):
        raise InputTypeError(f"path must be the folder {kind.writer} wrote (a str or Path), got {path!r}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{kind.folder} {str(path)!r} does not exist; pass the folder {kind.writer} wrote")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file, not a folder; pass the folder {kind.writer} wrote "
                         f"(the one holding {kind.meta_file}), e.g. {str(path.parent)!r}")
    if not (path / kind.meta_file).is_file():
        files = {p.name for p in path.iterdir()}
        other = next((k for k in _KINDS if k is not kind and k.meta_file in files), None)
        if other is not None:
            what = f"a {other.noun} saved by {other.writer}: load it with osf.load_{other.noun}"
        elif "run.json" in files:
            what = ("an osf search run folder: extract a subnet from it with `osf extract` (or "
                    "sn.extract(result.config(n)))")
        elif any(f.endswith((".pt", ".pth", ".ckpt")) for f in files):
            what = (f"a torch checkpoint, not a {kind.noun} folder: load it with torch.load, or save a {kind.noun} "
                    f"with {kind.writer}")
        elif any(f.endswith(".safetensors") for f in files) and "config.json" not in files:
            what = (f"a bare weights file (a checkpoint or state dict), not a {kind.noun} folder: save a "
                    f"{kind.noun} with {kind.writer}")
        elif "config.json" in files:
            what = ("a plain Hugging Face model: load it with AutoModel*.from_pretrained (and make a supernet of it "
                    "with osf.supernet)")
        elif not files:
            what = "an empty folder"
        else:
            what = f"not a {kind.folder} (saved, or cut short?)"
        raise ValueError(f"{str(path)!r} was not written by {kind.writer} (no {kind.meta_file}): it is {what}")
    return path


def read_meta(meta_file: Path, kind: SavedKind) -> dict:
    """The description in ``meta_file``, refusing a damaged, foreign or newer one."""
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is corrupt: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                         f"save the {kind.noun} again") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_file} cannot be read ({one_line(e)}); save the {kind.noun} again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file} must hold a {kind.noun} description (a JSON object), got {type(meta).__name__}")
    fmt = meta.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > kind.version:
        raise ValueError(f"{meta_file} has format {fmt}, written by a newer osf; this osf reads format "
                         f"{kind.version}: upgrade osf (pip install -U osf) to load it")
    if fmt != kind.version:
        raise ValueError(f"{meta_file}: unknown format {fmt!r}; this osf reads format {kind.version}")
    missing = [k for k in kind.required if k not in meta]
    if missing:
        raise ValueError(f"{meta_file} lacks {missing}: it was not written by {kind.writer}, or was cut short or "
                         f"edited; save the {kind.noun} again")
    return meta


def read_safetensors(file: Path, kind: SavedKind) -> dict[str, torch.Tensor]:
    """All tensors of ``file``; a missing, truncated or damaged file is named, not a raw traceback."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise ValueError(f"{file.parent} holds no {file.name}: the folder is incomplete; save the {kind.noun} again")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError for I/O
        raise ValueError(f"{file} is truncated or corrupt ({one_line(e)}); save the {kind.noun} again") from None


def check_config_matches_weights(model: nn.Module, config: Any, state: Mapping[str, torch.Tensor], meta: dict,
                                 path: Path) -> None:
    """Refuse a ``config.json`` that no longer describes the weights (a hand edit).

    Built on the meta device (no memory). When the subnet's Hugging Face config alone
    rebuilds it (``config_expresses_subnet``), every tensor must have the shape the config
    gives. When osf recorded the config it saved (``hf_config``), every size field must
    still have that value. Per-layer subnets saved by ``save_pretrained`` carry neither and
    are checked by ``osf_subnet.json`` alone.
    """
    recorded = meta.get("hf_config")
    if recorded is not None:
        edited = _size_fields_changed(recorded, config.to_dict())
        if edited:
            field, now, was = edited[0]
            base = type(config).from_dict(recorded)
            tensor = _first_shape_difference(model, base, config, state)
            detail = (f"; with it, tensor {tensor[0]!r} would have shape {tensor[2]} but the weights hold "
                      f"{tensor[1]}" if tensor else "")
            raise ValueError(f"{path / 'config.json'}: field {field!r} is {now!r}, but the subnet was saved with "
                             f"{was!r}{detail}; the config no longer matches the weights: restore the field (or "
                             "save the subnet again)")
    if not meta.get("config_expresses_subnet"):
        return
    built = _build(model, config)
    if built is None:
        return
    shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    optional = _optional_names(built)
    for k, v in state.items():
        if k in shapes and shapes[k] != tuple(v.shape):
            field = _field_for(model, config, k, tuple(v.shape))
            where = f"field {field!r}" if field else "its size fields"
            raise ValueError(f"{path / 'config.json'} no longer matches the weights: with its {where}, tensor "
                             f"{k!r} would have shape {shapes[k]}, but the saved weights hold {tuple(v.shape)}; "
                             "restore config.json (or save the subnet again)")
    extra = [k for k in state if k not in shapes]
    missing = [k for k in shapes if k not in state and k not in optional]
    if extra or missing:
        depth = {f"{p}.{k}" if p else k: v for p, c in _subconfigs(config) for k, v in c.to_dict().items()
                 if k in ("num_hidden_layers", "depths")}
        problems = ([f"it describes tensors the weights lack ({_names(missing)})"] if missing else []) + (
            [f"the weights hold tensors it does not describe ({_names(extra)})"] if extra else [])
        raise ValueError(f"{path / 'config.json'} no longer matches the weights (layer counts "
                         f"{', '.join(f'{k}={v}' for k, v in depth.items()) or 'unknown'}): {'; '.join(problems)}; "
                         "restore config.json (or save the subnet again)")


def _build(model: nn.Module, config: Any) -> nn.Module | None:
    try:
        with torch.device("meta"):
            return type(model)(copy.deepcopy(config))
    except Exception:
        return None


def _optional_names(model: nn.Module) -> set[str]:
    from osf.ir.apply import is_non_persistent, tied_names

    return tied_names(model) | {k for k in model.state_dict() if is_non_persistent(model, k)}


def _size_fields(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_size_fields(v, f"{prefix}{k}."))
        elif isinstance(v, int) and not isinstance(v, bool):
            out[prefix + k] = v
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            out[prefix + k] = list(v)
    return out


def _size_fields_changed(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    a, b = _size_fields(recorded), _size_fields(now)
    return [(k, b.get(k), v) for k, v in a.items() if k in b and b[k] != v]


def _first_shape_difference(model: nn.Module, base: Any, edited: Any,
                            state: Mapping[str, torch.Tensor]) -> tuple[str, tuple, tuple] | None:
    """A saved tensor that ``base`` builds with its true shape and ``edited`` does not:
    (name, shape in the weights, shape ``edited`` gives)."""
    x, y = _build(model, base), _build(model, edited)
    if x is None or y is None:
        return None
    ys = {k: tuple(v.shape) for k, v in y.state_dict().items()}
    for k, v in x.state_dict().items():
        if k in ys and k in state and ys[k] != tuple(v.shape) == tuple(state[k].shape):
            return k, tuple(v.shape), ys[k]
    return None


def _subconfigs(config: Any) -> list[tuple[str, Any]]:
    """The config and its text/vision sub-configs, with their prefixes ('' for the top)."""
    return [("", config)] + [(k, getattr(config, k)) for k in ("text_config", "vision_config")
                             if hasattr(getattr(config, k, None), "to_dict")]


def _field_for(model: nn.Module, config: Any, tensor: str, want: tuple) -> str | None:
    """The config field whose value makes ``tensor`` come out with the wrong shape: one whose
    value is a size of the wrong shape and whose change to the weights' size mends it."""
    built = _build(model, config)
    if built is None:
        return None
    have = tuple(built.state_dict()[tensor].shape)
    pairs = [(h, w) for h, w in zip(have, want) if h != w]
    for prefix, c in _subconfigs(config):
        for key, value in c.to_dict().items():
            for wrong, right in pairs:
                trial = None
                if isinstance(value, int) and not isinstance(value, bool) and value == wrong:
                    trial = right
                elif isinstance(value, list) and wrong in value and all(isinstance(v, int) for v in value):
                    trial = [right if v == wrong else v for v in value]
                if trial is None:
                    continue
                fixed = copy.deepcopy(config)
                target = getattr(fixed, prefix) if prefix else fixed
                try:
                    setattr(target, key, trial)
                except Exception:
                    continue
                mended = _build(model, fixed)
                if mended is not None and tuple(mended.state_dict()[tensor].shape) == want:
                    return f"{prefix}.{key}" if prefix else key
    return None


# ------------------------------------------------------------------ saving a subnet
META_ATTR = "_osf_subnet"  # an extracted subnet's description, written next to its weights by save_subnet
MODELING_FILE = "modeling_osf_subnet.py"  # a per-layer subnet's classes, for from_pretrained(trust_remote_code=True)
PORTABLE_FILE = "osf_portable.py"  # the code they rebuild the subnet with: a copy of osf.ir.portable
#: What osf and Hugging Face write into a model folder (and what a stale copy would leave).
MODEL_FILES = ("config.json", "generation_config.json", "osf_subnet.json", MODELING_FILE, PORTABLE_FILE,
               "README.md", "osf_search.json", "pareto.png", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
               "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
               "preprocessor_config.json", "processor_config.json", "image_processor_config.json")
MODEL_GLOBS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


def model_files(path: Path) -> list[Path]:
    """The model files in folder ``path`` (weights, configs, tokenizer, card)."""
    found = {path / n for n in MODEL_FILES if (path / n).is_file()}
    for pattern in MODEL_GLOBS:
        found.update(p for p in path.glob(pattern) if p.is_file())
    return sorted(found)


def prepare_save_folder(path: Any, overwrite: Any) -> Path:
    """The folder to save into: created if needed; one holding another model is refused
    unless ``overwrite=True``, which removes that model's files (and nothing else)."""
    if not isinstance(path, (str, Path)) or (isinstance(path, str) and not path.strip()):
        raise InputTypeError(f"path must be a folder (a str or Path), got {path!r}")
    if not isinstance(overwrite, bool):
        raise InputTypeError(f"overwrite must be True or False, got {type(overwrite).__name__} {overwrite!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; save_subnet writes a folder: pass a folder path")
    if path.is_dir():
        stale = model_files(path)
        if stale and not overwrite:
            raise FolderNotEmptyError(
                f"{str(path)!r} already holds a model ({_names([p.name for p in stale], 4)}); its files would mix "
                "with the subnet's (a stale tokenizer or generation config would load with it): choose an empty "
                "folder, or pass overwrite=True to remove them first")
        for p in stale:
            p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path
