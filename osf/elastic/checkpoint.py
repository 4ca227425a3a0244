"""Supernet checkpoints: ``sn.save_pretrained(folder)`` and ``osf.load_supernet(folder)``.

A checkpoint folder holds:

- ``model.safetensors``: the shared full weights, already in importance order, under the
  model's own names (tied tensors stored once; the ties are recorded);
- ``config.json``: the model's Hugging Face config (Hugging Face models only);
- the tokenizer's files, when one was given;
- ``example_inputs.safetensors``: the inputs the supernet was analysed on (when they are tensors);
- ``osf_supernet.json``: the format version, the :class:`osf.SupernetConfig`, the search space
  (the stacks list their blocks in drop order), the dims (name, size, kind), the model class
  and the weights' dtype.

Loading rebuilds the model (from ``config.json``, or a fresh instance given as ``model=``),
loads the weights strictly and builds the supernet with the saved space and **no** importance
pass or permutation; the re-analysed dims must equal the saved ones.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from osf.elastic.validate import SUPERNET, check_saved_folder, one_line, read_meta, read_safetensors
from osf.errors import FolderNotEmptyError, InputTypeError

FORMAT = SUPERNET.version
META_FILE = SUPERNET.meta_file
WEIGHTS_FILE = "model.safetensors"
INPUTS_FILE = "example_inputs.safetensors"
_MAX_INPUT_BYTES = 64 << 20  # example inputs bigger than this are not saved


# ----------------------------------------------------------------------------- saving
def save_supernet(sn: Any, path: str | Path, tokenizer: Any = None, *, overwrite: bool = False) -> Path:
    """Write the supernet ``sn`` as a checkpoint folder (see the module docstring).

    The full weights are saved whatever config is active. A supernet checkpoint already in the
    folder is replaced (its files removed first, a stale tokenizer included); another model there
    (a Hugging Face model, a subnet) is refused unless ``overwrite`` is true.

    Raises:
        osf.errors.FolderNotEmptyError: ``path`` holds another model and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    import osf
    from osf.elastic.config import SupernetConfig
    from osf.elastic.supernet import Supernet
    from osf.elastic.validate import prepare_save_folder

    if not isinstance(sn, Supernet):
        raise InputTypeError(f"save_supernet takes an osf Supernet (from osf.supernet(model)), got {type(sn).__name__}")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise InputTypeError(f"tokenizer must have save_pretrained (a Hugging Face tokenizer or processor), "
                             f"got {type(tokenizer).__name__}")
    if isinstance(path, (str, Path)) and is_checkpoint(path) and overwrite is False:
        overwrite = True  # a supernet checkpoint is replaced (saving one again, as training does); other models are not
    try:
        path = prepare_save_folder(path, overwrite)
    except FolderNotEmptyError as e:
        raise FolderNotEmptyError(str(e).replace("with the subnet's", "with the supernet's")) from None
    (path / META_FILE).unlink(missing_ok=True)  # written last: a folder cut short has none
    model = sn.model
    with sn._at_largest():
        state = dict(model.state_dict())
        # a sliced tensor that state_dict leaves out (a non-persistent buffer) was permuted too
        extra = {n: sn.full(n) for n in sn.ir.tensor_axes if n not in state}
        state.update(extra)
        ties = tie_map(state)
        save_file(_storable({k: v for k, v in state.items() if k not in ties}), str(path / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        hf = hasattr(getattr(model, "config", None), "save_pretrained") and hasattr(model.config, "to_dict")
        if hf:
            model.config.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    inputs = _pack_inputs(sn.example_inputs)
    if inputs is not None:
        save_file(_storable(inputs[0]), str(path / INPUTS_FILE), metadata={"format": "pt"})
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    cls = type(model)
    config = sn.build_config if sn.build_config is not None else SupernetConfig()
    meta = {
        "format": FORMAT,
        "osf_version": osf.__version__,
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "hf_config": bool(hf),
        "dtype": str(floats[0]).removeprefix("torch.") if floats else None,
        "supernet_config": config.to_dict(),
        "space": json.loads(sn.space.to_json()),
        "dims": [{"name": d.name, "size": d.size, "kind": d.kind} for d in sn.ir.dims.values()],
        "ties": ties,
        "extra_tensors": sorted(extra),
        "example_inputs": inputs[1] if inputs is not None else None,
        "tokenizer": tokenizer is not None,
    }
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path / META_FILE)
    return path


def tie_map(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: canonical}`` for the entries of ``state`` that are the same tensor as an earlier one."""
    seen: dict[tuple, str] = {}
    ties: dict[str, str] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            ties[name] = seen[key]
        else:
            seen[key] = name
    return ties


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory with another (what safetensors can store)."""
    out: dict[str, torch.Tensor] = {}
    used: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in used or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        used.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _pack_inputs(inputs: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(tensors, structure)`` for example inputs made of tensors (and JSON options in a dict)."""
    if isinstance(inputs, torch.Tensor):
        tensors, structure = {"input": inputs}, {"kind": "tensor"}
    elif isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        tensors = {str(i): t for i, t in enumerate(inputs)}
        structure = {"kind": type(inputs).__name__ if type(inputs) in (tuple, list) else "tuple", "n": len(inputs)}
    elif isinstance(inputs, Mapping) and all(isinstance(k, str) for k in inputs):
        tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        options = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in options.values()):
            return None
        structure = {"kind": "dict", "keys": list(inputs), "options": options}
    else:
        return None
    if sum(t.numel() * t.element_size() for t in tensors.values()) > _MAX_INPUT_BYTES:
        return None
    return tensors, structure


def _unpack_inputs(path: Path, structure: Mapping[str, Any] | None) -> Any:
    if not structure:
        return None
    tensors = read_safetensors(path / INPUTS_FILE, SUPERNET)
    try:
        kind = structure["kind"]
        if kind == "tensor":
            return tensors["input"]
        if kind in ("tuple", "list"):
            items = [tensors[str(i)] for i in range(int(structure["n"]))]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict":
            options = structure.get("options", {})
            return {k: tensors[k] if k in tensors else options[k] for k in structure["keys"]}
    except (KeyError, TypeError, ValueError):
        pass
    raise ValueError(f"{path / INPUTS_FILE} does not match the example inputs {path / META_FILE} describes (edited?); "
                     "save the supernet again, or pass example_inputs=")


# ----------------------------------------------------------------------------- loading
def load_supernet(path: str | Path, model: nn.Module | None = None, example_inputs: Any = None) -> Any:
    """Restore a supernet saved by ``sn.save_pretrained(path)``, exactly.

    Args:
        path: the checkpoint folder.
        model: a fresh instance of the original architecture (its weights are replaced);
            required for models that are not Hugging Face ones, optional otherwise (by default
            the model is rebuilt from ``config.json`` with the recorded class).
        example_inputs: inputs to analyse the model on; by default the saved ones (else, for
            Hugging Face models, defaults from their config).

    Returns:
        The :class:`osf.Supernet`, built with the saved space (block drop order included) and
        without any importance pass; ``sn.build_config`` is the saved :class:`osf.SupernetConfig`.

    Raises:
        ValueError: the folder is missing, not a checkpoint, damaged, from a newer osf; ``model``
            is another architecture; the re-analysed dims differ from the saved ones (each in one line).
    """
    from osf.elastic.config import SupernetConfig
    from osf.elastic.supernet import Supernet, _build
    from osf.elastic.validate import check_example_inputs
    from osf.space import SearchSpace

    path = check_saved_folder(path, SUPERNET)
    meta = _read_meta(path)
    try:
        config = SupernetConfig.from_dict(meta["supernet_config"])
        space = SearchSpace.from_json(json.dumps(meta["space"]))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{path / META_FILE}: its supernet config or space is damaged ({one_line(e)}); "
                         "save the supernet again") from None
    if model is None:
        model = _build_model(path, meta)
    elif isinstance(model, Supernet):
        raise InputTypeError("model must be a fresh instance of the original architecture, not a Supernet")
    elif not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a fresh instance of the original architecture (an nn.Module), "
                             f"got {type(model).__name__}")
    elif type(model).__qualname__ != str(meta["model_class"]).rpartition(".")[2]:
        raise ValueError(f"model is a {type(model).__qualname__}, but the supernet in {str(path)!r} was saved from a "
                         f"{meta['model_class']}: pass a fresh instance of that architecture")
    state = read_safetensors(path / WEIGHTS_FILE, SUPERNET)
    _to_dtype(model, meta.get("dtype"))
    _load_weights(model, state, meta, path)
    model.eval()
    if example_inputs is None:
        example_inputs = _unpack_inputs(path, meta.get("example_inputs"))
    else:
        check_example_inputs(example_inputs)
    return _build(model, example_inputs, config, restore=space, check_ir=lambda ir: _check_ir(ir, meta, space, path))


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a supernet checkpoint (``osf_supernet.json``)."""
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_meta(path / META_FILE, SUPERNET)
    if not isinstance(meta["ties"], dict) or not isinstance(meta["dims"], list):
        raise ValueError(f"{path / META_FILE} has malformed 'ties' or 'dims' (edited?); save the supernet again")
    return meta


def _import_class(path: str) -> type:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if isinstance(obj, type):
            return obj
        break
    raise ImportError(path)


def _build_model(path: Path, meta: Mapping[str, Any]) -> nn.Module:
    cls_path = str(meta["model_class"])
    if not meta.get("hf_config") or not (path / "config.json").is_file():
        if meta.get("hf_config"):
            raise ValueError(f"{path} lacks the config.json of its {cls_path}: the checkpoint is incomplete; save the "
                             "supernet again, or pass model=<a fresh instance of that architecture>")
        raise ValueError(f"the supernet in {str(path)!r} comes from a {cls_path}, not a Hugging Face model, so it "
                         "cannot be rebuilt from a config: pass model=<a fresh instance of that architecture> to "
                         "load_supernet")
    try:
        cls = _import_class(cls_path)
    except ImportError:
        raise ValueError(f"the supernet in {str(path)!r} comes from a {cls_path}, which cannot be imported here "
                         "(another transformers version?): install it, or pass model=<a fresh instance>") from None
    try:
        config = cls.config_class.from_pretrained(str(path))
    except Exception as e:
        raise ValueError(f"{path / 'config.json'} cannot be read ({one_line(e)}); save the supernet again") from None
    return cls(config)


def _to_dtype(model: nn.Module, dtype: Any) -> None:
    want = getattr(torch, str(dtype), None) if dtype else None
    if isinstance(want, torch.dtype) and any(p.is_floating_point() and p.dtype != want for p in model.parameters()):
        model.to(want)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], meta: Mapping[str, Any], path: Path) -> None:
    """Load the saved weights into ``model`` strictly (every name, shape and tie must match)."""
    from osf.ir.apply import get_tensor

    what = f"model {type(model).__qualname__} does not match the checkpoint {str(path)!r}"
    for alias, canonical in meta["ties"].items():
        if canonical not in state:
            raise ValueError(f"{path / WEIGHTS_FILE} lacks {canonical!r} (tied to {alias!r}): the checkpoint is "
                             "damaged; save the supernet again")
        state[alias] = state[canonical]
    extras = set(meta.get("extra_tensors") or [])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in extras]
    if missing or unexpected:
        parts = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {unexpected[:3]}"] if unexpected else [])
        raise ValueError(f"{what}: weights {', '.join(parts)}; load it with the architecture and config it was saved "
                         "from")
    for k, v in state.items():
        want = tuple(expected[k].shape) if k in expected else tuple(get_tensor(model, k).shape)
        if tuple(v.shape) != want:
            raise ValueError(f"{what}: tensor {k!r} has shape {tuple(v.shape)} in the checkpoint, {want} in the model; "
                             "load it with the architecture and config it was saved from")
    saved_groups = _groups(meta["ties"])
    model_groups = _groups(tie_map(expected))
    if saved_groups != model_groups:
        diff = sorted(saved_groups ^ model_groups, key=sorted)[0]
        side = "the checkpoint" if diff in saved_groups else "the model"
        raise ValueError(f"{what}: {side} ties {sorted(diff)} and the other does not; load it with the architecture "
                         "and config (tie_word_embeddings...) it was saved from")
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    with torch.no_grad():
        for name in extras:
            get_tensor(model, name).copy_(state[name])


def _groups(ties: Mapping[str, str]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for alias, canonical in ties.items():
        groups.setdefault(canonical, {canonical}).add(alias)
    return {frozenset(g) for g in groups.values()}


def _check_ir(ir: Any, meta: Mapping[str, Any], space: Any, path: Path) -> None:
    """The re-analysed model must have the saved dims (names, sizes, kinds) and blocks."""
    where = f"the model re-analysed from {str(path)!r} differs from the saved supernet"
    hint = "load it with the model it was saved from (and the osf version that saved it)"
    saved = {d["name"]: d for d in meta["dims"]}
    now = ir.dims
    for name, d in saved.items():
        if name not in now:
            raise ValueError(f"{where}: it has no dim {name!r} (size {d['size']} when saved); {hint}")
        if now[name].size != d["size"]:
            raise ValueError(f"{where}: dim {name!r} has size {now[name].size}, {d['size']} when saved; {hint}")
        if now[name].kind != d.get("kind", now[name].kind):
            raise ValueError(f"{where}: dim {name!r} is of kind {now[name].kind!r}, {d['kind']!r} when saved; {hint}")
    for name, d in now.items():
        if name not in saved:
            raise ValueError(f"{where}: it has a dim {name!r} (size {d.size}) the saved supernet lacks; {hint}")
    if list(space.dims) != list(saved) and set(space.dims) != set(saved):
        raise ValueError(f"{path / META_FILE}: its space and dims disagree (edited?); save the supernet again")
    blocks = {b.name for b in ir.blocks}
    for b in space.blocks:
        if b not in blocks:
            raise ValueError(f"{where}: it has no droppable block {b!r}; {hint}")
    for s in space.stacks:
        if s not in ir.depth_groups or {b.name for b in ir.depth_groups[s]} != set(space.stacks[s]):
            raise ValueError(f"{where}: the blocks of stack {s!r} differ; {hint}")
