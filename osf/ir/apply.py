"""Acting on a model through its IR: permute dims, slice dims, drop blocks, sync attributes."""
from __future__ import annotations

import copy
import enum
from typing import Any, Collection, Iterable, Mapping

import torch
from torch import nn

from osf.ir.ir import IR
from osf.ir.portable import set_attribute, sync_module_attributes  # the one copy: subnet folders carry it


def get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    return getattr(mod, leaf)


@torch.no_grad()
def permute_dims(ir: IR, perms: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> None:
    """Reorder the channels of dims in place: channel ``i`` of dim ``d`` becomes ``perms[d][i]``.

    Applied consistently to every member, this leaves the model's function unchanged.
    """
    model = model if model is not None else ir.model
    _check_dims(ir, perms)
    for name, vars_ in ir.tensor_axes.items():
        t = get_tensor(model, name)
        for axis, _ in enumerate(vars_):
            pos = ir.positions(name, axis, dict(perms))
            if pos is not None:
                _permute_in_chunks(t, axis, pos.to(t.device))


def _permute_in_chunks(t: torch.Tensor, axis: int, pos: torch.Tensor, chunk_elems: int = 1 << 22) -> None:
    """``t[..., pos, ...]`` in place, through temporaries of at most ``chunk_elems``."""
    if t.numel() <= chunk_elems or t.dim() == 1:
        t.copy_(t.index_select(axis, pos))
        return
    other = max((a for a in range(t.dim()) if a != axis), key=lambda a: t.shape[a])
    step = max(1, chunk_elems // (t.numel() // t.shape[other]))
    for start in range(0, t.shape[other], step):
        part = t.narrow(other, start, min(step, t.shape[other] - start))
        part.copy_(part.index_select(axis, pos))


def slice_tensors(ir: IR, sizes: Mapping[str, int], model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that change when each dim keeps its first ``sizes[d]`` channels."""
    _check_dims(ir, sizes)
    selection = {d: torch.arange(int(k)) for d, k in sizes.items() if int(k) != ir.dims[d].size}
    out: dict[str, torch.Tensor] = {}
    if not selection:
        return out
    for name, vars_ in ir.tensor_axes.items():
        t = get_tensor(model, name)
        new = t
        for axis in range(len(vars_)):
            pos = ir.positions(name, axis, selection)
            if pos is not None:
                new, _ = select_positions(new, axis, pos)
        if new is not t:
            out[name] = new
    return out


def select_positions(t: torch.Tensor, axis: int, pos: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``t`` keeping ``pos`` along ``axis``, and whether that took a copy.

    The one slicing rule of OSF (the live supernet and every model built from an IR use it):
    a contiguous prefix is a view (``narrow``, shared storage); anything else (both halves of
    a fused projection, heads x a shorter head_dim) is gathered.

    The gather concatenates contiguous runs: unlike ``index_select``, its backward keeps no
    tensor, so a gathered slice can be backpropagated through again (a supernet trains).
    """
    n = pos.numel()
    if n and int(pos[0]) == 0 and int(pos[-1]) == n - 1 and (n == 1 or bool((pos[1:] - pos[:-1] == 1).all())):
        return t.narrow(axis, 0, n), False
    if n == 0:
        return t.narrow(axis, 0, 0), False
    breaks = (torch.nonzero(pos[1:] - pos[:-1] != 1).flatten() + 1).tolist()
    starts = [0] + breaks
    ends = breaks + [n]
    runs = [t.narrow(axis, int(pos[a]), b - a) for a, b in zip(starts, ends)]
    return torch.cat(runs, dim=axis), True


def apply_attributes(ir: IR, sizes: Mapping[str, int], model: nn.Module,
                     modules: Mapping[str, nn.Module] | None = None,
                     sync: Iterable[nn.Module] | None = None) -> None:
    """Set recorded size attributes (``num_heads``, ``intermediate_size``...) for ``sizes``.

    ``modules`` maps module paths to modules (default: looked up in ``model``); the
    primitives among ``sync`` (default: among ``modules``, or all of ``model``'s) get their
    sizes synced from their weights.
    """
    full = {d.name: d.size for d in ir.dims.values()}
    full.update({k: int(v) for k, v in sizes.items()})
    value_of = ir.evaluator(full)
    for b in ir.attrs:
        if modules is not None:
            mod = modules[b.module]
        else:
            mod = model.get_submodule(b.module) if b.module else model
        set_attribute(mod, b.attr, value_of(b.expr))
    sync_module_attributes(sync if sync is not None else model if modules is None else modules.values())


def sliced_copy(ir: IR, sizes: Mapping[str, int], drop: Iterable[str] = ()) -> nn.Module:
    """An independent copy of the model with dims cut to ``sizes`` and blocks ``drop`` removed."""
    memo: dict[int, object] = {}
    new_tensors = slice_tensors(ir, sizes, ir.model)
    for name, t in new_tensors.items():
        old = get_tensor(ir.model, name)
        if isinstance(old, nn.Parameter):
            memo[id(old)] = nn.Parameter(t.detach().clone(), requires_grad=old.requires_grad)
        else:
            memo[id(old)] = t.detach().clone()
    model = copy.deepcopy(ir.model, memo)
    apply_attributes(ir, sizes, model)
    for name in drop:
        drop_block(ir, model, name)
    return model


_PLAIN = (str, int, float, bool, type(None), enum.Enum)


def plain_attributes(module: nn.Module) -> dict[str, Any]:
    """A module's own settings that its parent may read (``layer.attention_type``, ``layer.kind``,
    ``layer.layer_idx``): public attributes holding strings, numbers, enums or tuples of them."""
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)):
            out[k] = v
    return out


class SkipBlock(nn.Module):
    """Stands in for a dropped residual layer: returns its input unchanged. Given ``like`` (the
    layer it replaces), it keeps that layer's plain settings (:func:`plain_attributes`), so a
    parent that reads an attribute of each layer (ModernBERT's ``attention_type``) still finds it."""

    def __init__(self, tuple_len: int = 0, like: nn.Module | None = None):
        super().__init__()
        for k, v in (plain_attributes(like) if like is not None else {}).items():
            setattr(self, k, v)
        self.tuple_len = tuple_len  # 0: the layer returned a tensor; n: a tuple of n

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        return (x,) + (None,) * (self.tuple_len - 1) if self.tuple_len else x


def drop_block(ir: IR, model: nn.Module, name: str) -> None:
    """Replace block ``name`` of ``model`` by a :class:`SkipBlock`."""
    block = next((b for b in ir.blocks if b.name == name), None)
    if block is None:
        raise ValueError(f"unknown block {name!r}; blocks: {[b.name for b in ir.blocks]}")
    parent = model.get_submodule(block.stack) if block.stack else model
    tuple_len = ir.graph.meta["osf"].get("module_outputs", {}).get("model." + name, 0)
    parent[block.index] = SkipBlock(tuple_len, like=parent[block.index])


def renumber(ir: IR, name: str, dropped: Collection[str]) -> str:
    """Where ``name`` (a module or tensor path of the full model) sits once ``dropped`` are gone."""
    # inner lists first, as portable.remove_blocks removes them: an outer list's prefix is unchanged by them
    for stack in sorted(ir.stacks, key=lambda s: -s.count(".") - bool(s)):
        prefix = f"{stack}." if stack else ""
        if name.startswith(prefix):
            idx, _, tail = name[len(prefix):].partition(".")
            if idx.isdigit():
                removed = sum(1 for b in ir.stacks[stack] if b.name in dropped and b.index < int(idx))
                name = f"{prefix}{int(idx) - removed}" + (f".{tail}" if tail else "")
    return name


def _check_dims(ir: IR, values: Mapping[str, object]) -> None:
    unknown = [d for d in values if d not in ir.dims]
    if unknown:
        raise ValueError(f"unknown dim(s) {unknown}; dims: {list(ir.dims)}")


def tied_names(model: nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (tied weights), and the model's declared ties."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    keys = getattr(model, "_tied_weights_keys", None) or {}
    tied.update(keys if isinstance(keys, (list, set, tuple)) else keys.keys())
    return tied


def is_non_persistent(model: nn.Module, key: str) -> bool:
    """Whether state-dict ``key`` names a buffer the model does not save."""
    owner, _, leaf = key.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    return leaf in getattr(mod, "_non_persistent_buffers_set", set())
