"""Rebuild a subnet whose sizes differ from layer to layer, with nothing but torch.

One routine, two users: :func:`osf.load_subnet` calls :func:`apply_subnet` on a freshly
built original model, and :func:`osf.save_subnet` copies this very file, unchanged, into
every subnet folder whose Hugging Face config cannot express the subnet. There the
folder's generated ``modeling_osf_subnet.py`` subclasses the original Hugging Face classes
with :class:`SubnetMixin`, so ``AutoModelFor*.from_pretrained(folder,
trust_remote_code=True)`` (and lm-eval's ``--model hf`` with ``trust_remote_code=True``)
load the subnet where osf is not installed.

The subnet is described in ``config.osf_subnet`` (see :data:`SPEC_KEY`), in the original
model's layout:

- ``original``: the config fields whose subnet value differs from the original's (the
  layer counts, ...), with their original values: the model is built at those first;
- ``shapes``: tensor name -> shape, for every tensor the subnet resizes;
- ``attributes``: ``{"module", "attr", "value"}`` size attributes the forward reads
  (a mixer's ``intermediate_size``, an attention's ``num_attention_heads``; a dotted
  ``attr`` such as ``args.d_inner`` is an attribute of an object the module holds);
- ``dropped``: the layers removed (``"<layer list>.<index>"``).

This module must import nothing but torch and the standard library.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

SPEC_KEY = "osf_subnet"  # the config attribute holding the subnet's description
SPEC_FORMAT = 1


def apply_subnet(model: nn.Module, shapes: Mapping[str, Iterable[int]], attributes: Iterable[Mapping[str, Any]],
                 dropped: Iterable[str]) -> nn.Module:
    """Turn a freshly built original ``model`` into the subnet's architecture, in place.

    Resized tensors become uninitialised ones of their new shape (same dtype and device,
    the meta device included), size attributes are set, torch.nn primitives' sizes
    (``in_features``, ``normalized_shape``...) follow their weights, and dropped layers are
    removed from their layer lists. The weights are loaded afterwards.

    Names are in the layout of the model the subnet was extracted from. A model that is
    that model's base (``MambaModel`` for a ``MambaForCausalLM`` subnet) reads them without
    the base prefix, and skips the head's.

    Raises:
        ValueError: a name that is not in ``model``.
    """
    holders = _holders(model)  # tied tensors (one object under several names) stay one
    for name, shape in shapes.items():
        local = _local_name(model, name)
        if local is not None:
            _resize(model, local, tuple(int(s) for s in shape), holders)
    for a in attributes:
        local = _local_name(model, a["module"], module=True)
        if local is not None:
            set_attribute(model.get_submodule(local) if local else model, a["attr"], copy.deepcopy(a["value"]))
    sync_module_attributes(model)
    remove_blocks(model, [local for local in (_local_name(model, b, module=True) for b in dropped)
                          if local is not None])
    return model


def set_attribute(module: nn.Module, attr: str, value: Any) -> None:
    """``module.<attr> = value``; a dotted ``attr`` (``"args.d_inner"``) sets an attribute of
    an object the module holds."""
    owner, _, leaf = attr.rpartition(".")
    obj = _get_path(module, owner)
    if getattr(obj, leaf, _UNKNOWN) != value:  # Module.__setattr__ is slow: a switch sets many unchanged
        setattr(obj, leaf, value)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        obj = getattr(obj, part)
    return obj


def remove_blocks(model: nn.Module, names: Iterable[str]) -> None:
    """Drop the layers named ``names`` (``"<layer list>.<index>"``, in the full model's
    numbering), each list once, with :func:`remove_layers`; inner lists first, since removing
    a layer of an outer list renumbers the paths of the lists inside it."""
    by_stack: dict[str, set[int]] = {}
    for name in names:
        stack, _, index = name.rpartition(".")
        by_stack.setdefault(stack, set()).add(int(index))
    for stack in sorted(by_stack, key=lambda s: -s.count(".") - bool(s)):
        remove_layers(model, stack, by_stack[stack])


def sync_module_attributes(model: nn.Module | Iterable[nn.Module]) -> None:
    """Make torch.nn primitives' size attributes match their (possibly resized or sliced)
    weights: those of ``model`` and its submodules, or of each module of an iterable."""
    for mod in (model.modules() if isinstance(model, nn.Module) else model):
        cls = type(mod)
        sync = _SYNC_BY_CLASS.get(cls, _UNKNOWN)
        if sync is _UNKNOWN:
            sync = _SYNC_BY_CLASS[cls] = next((f for base, f in _SYNC if issubclass(cls, base)), None)
        if sync is not None:
            w = mod._parameters.get("weight")
            sync(mod, w if w is not None else getattr(mod, "weight", None))


def _set_plain(mod: nn.Module, **values: Any) -> None:
    """Set plain (non-tensor, non-module) attributes that changed, past ``Module.__setattr__``'s
    checks: a config switch syncs hundreds of them."""
    state = mod.__dict__
    for name, value in values.items():
        if state.get(name) != value:
            state[name] = value


def _sync_conv(mod: nn.Module, w: torch.Tensor | None) -> None:
    if w is None:
        return
    depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
    groups = w.shape[0] if depthwise else mod.groups
    _set_plain(mod, out_channels=w.shape[0], groups=groups, in_channels=w.shape[1] * groups)


def _sync_batchnorm(mod: nn.Module, w: torch.Tensor | None) -> None:
    ref = w if w is not None else mod._buffers.get("running_mean")
    if ref is not None:
        _set_plain(mod, num_features=ref.shape[0])


_SYNC: list[tuple[type, Callable[[nn.Module, Any], None]]] = [
    (nn.Linear, lambda m, w: w is not None and _set_plain(m, out_features=w.shape[0], in_features=w.shape[1])),
    (nn.modules.conv._ConvNd, _sync_conv),
    ((nn.LayerNorm, nn.RMSNorm), lambda m, w: w is not None and _set_plain(m, normalized_shape=tuple(w.shape))),
    (nn.modules.batchnorm._NormBase, _sync_batchnorm),
    (nn.GroupNorm, lambda m, w: w is not None and _set_plain(m, num_channels=w.shape[0])),
    (nn.Embedding, lambda m, w: w is not None and _set_plain(m, num_embeddings=w.shape[0], embedding_dim=w.shape[1])),
]
_UNKNOWN = object()
_SYNC_BY_CLASS: dict[type, Callable[[nn.Module, Any], None] | None] = {}  # each class looked up once


def remove_layers(model: nn.Module, stack: str, indices: set[int]) -> None:
    """Drop the ``indices`` of the layer list at ``stack`` and renumber ``layer_idx`` attributes
    (what Hugging Face caches index by) of the layers that stay."""
    lst = model.get_submodule(stack) if stack else model
    kept = [m for i, m in enumerate(lst) if i not in indices]
    owner, _, leaf = stack.rpartition(".")
    parent = model.get_submodule(owner) if owner else model
    setattr(parent, leaf, type(lst)(kept) if isinstance(lst, nn.ModuleList) else nn.Sequential(*kept))
    for new_idx, layer in enumerate(kept):
        for mod in layer.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx


@contextlib.contextmanager
def original_fields(config: Any, original: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, ``config`` (and the configs nested in it) hold the ``original``
    values of the fields the subnet changed; afterwards, their subnet values again. The
    config objects themselves stay the same, so every module built from them sees the
    subnet's values."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        _set_fields(config, original, saved)
        yield
    finally:
        for owner, field, value in reversed(saved):
            setattr(owner, field, value)


def _set_fields(config: Any, values: Mapping[str, Any], saved: list[tuple[Any, str, Any]]) -> None:
    for field, value in values.items():
        current = getattr(config, field, None)
        if isinstance(value, Mapping) and hasattr(current, "to_dict"):
            _set_fields(current, value, saved)
        else:
            saved.append((config, field, copy.deepcopy(current)))
            setattr(config, field, copy.deepcopy(value))


def read_spec(config: Any) -> Mapping[str, Any]:
    """``config.osf_subnet``, checked: a clear error for a config edited or written by a newer osf."""
    spec = getattr(config, SPEC_KEY, None)
    if not isinstance(spec, Mapping):
        raise ValueError(f"config has no {SPEC_KEY!r} description (a JSON object): this class loads only subnets "
                         "saved by osf; restore config.json or save the subnet again")
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"config.{SPEC_KEY} has format {spec.get('format')!r}; this file reads format "
                         f"{SPEC_FORMAT}: save the subnet again with the osf that loads it")
    missing = [k for k in ("original", "shapes", "attributes", "dropped") if k not in spec]
    if missing:
        raise ValueError(f"config.{SPEC_KEY} lacks {missing}: restore config.json or save the subnet again")
    return spec


class SubnetMixin:
    """Put first in the bases of a Hugging Face model class: ``__init__`` builds the original
    architecture from the config (at the ``original`` field values of
    ``config.osf_subnet``), then gives it the subnet's shapes with :func:`apply_subnet`.
    ``from_pretrained`` then loads the subnet's weights into it."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        spec = read_spec(config)
        with original_fields(config, spec["original"]):
            super().__init__(config, *args, **kwargs)
        apply_subnet(self, spec["shapes"], spec["attributes"], spec["dropped"])


# ----------------------------------------------------------------- names
def _local_name(model: nn.Module, name: str, module: bool = False) -> str | None:
    """Where ``name`` (a tensor, or with ``module`` a module path) is in ``model``: as it is,
    or without the base-model prefix when ``model`` is the base model of the one it names
    (None for the head's names, which such a model lacks)."""
    if _exists(model, name, module):
        return name
    prefix = getattr(model, "base_model_prefix", "")
    is_base = bool(prefix) and not isinstance(getattr(model, prefix, None), nn.Module)
    if is_base:
        if name == prefix:
            return ""
        if name.startswith(prefix + "."):
            stripped = name[len(prefix) + 1:]
            if _exists(model, stripped, module):
                return stripped
        else:
            return None  # the head's: a base model has none
    raise ValueError(f"the subnet description names {'module' if module else 'tensor'} {name!r}, which "
                     f"{type(model).__name__} does not have: it was written for another model (or edited); "
                     "save the subnet again")


def _exists(model: nn.Module, name: str, module: bool) -> bool:
    owner, _, leaf = ("", "", name) if module else name.rpartition(".")
    try:
        mod = model.get_submodule(name if module else owner)
    except AttributeError:
        return False
    return module or leaf in mod._parameters or leaf in mod._buffers or isinstance(getattr(mod, leaf, None),
                                                                                     torch.Tensor)


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """For each parameter and buffer of ``model``: every (module, name) that holds it."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for table in (mod._parameters, mod._buffers):
            for leaf, t in table.items():
                if t is not None:
                    out.setdefault(id(t), []).append((mod, leaf))
    return out


def _resize(model: nn.Module, name: str, shape: tuple[int, ...],
            holders: Mapping[int, list[tuple[nn.Module, str]]]) -> None:
    """Give tensor ``name`` an uninitialised one of ``shape``, under each name that holds it
    (tied weights: the description lists only one of them)."""
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    old = getattr(mod, leaf)
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if leaf in mod._parameters:
        new = nn.Parameter(new, requires_grad=old.requires_grad)
        for holder, key in holders.get(id(old), [(mod, leaf)]):
            holder._parameters[key] = new
    elif leaf in mod._buffers:
        for holder, key in holders.get(id(old), [(mod, leaf)]):
            holder._buffers[key] = new
    else:
        setattr(mod, leaf, new)
