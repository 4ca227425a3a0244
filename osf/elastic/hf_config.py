"""Keep a Hugging Face config true to an extracted subnet.

Depth fields are set from the layer lists. Size fields are found, not hard-coded: an int
field (or list element) whose value is the original size of dims that all take one new
size is a candidate; a candidate is kept when building the model class from the changed
config (on the meta device, no memory) gets closer to the subnet's tensor shapes. The
subnet is *expressible* when that build matches every shape: then the saved folder loads
with plain ``from_pretrained``.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from osf.ir.apply import renumber
from osf.space import Config

if TYPE_CHECKING:
    from osf.elastic.supernet import Supernet


def nested_configs(config: Any) -> Iterator[Any]:
    """``config`` and every config nested in it (any attribute that is itself a config), each once."""
    return (c for _, c in _walk(config))


def _walk(config: Any, path: tuple[str, ...] = (), seen: set[int] | None = None) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(attribute path, config)`` for ``config`` and its nested configs, depth-first."""
    from transformers import PretrainedConfig

    seen = set() if seen is None else seen
    if id(config) in seen:
        return
    seen.add(id(config))
    yield path, config
    for key, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            yield from _walk(value, (*path, key), seen)


def _stack_configs(sn: "Supernet", config: Any) -> dict[str, Any]:
    """The config (in ``config``, the subnet's) that each stack's layers are built from.

    That is the ``config`` of the stack's nearest enclosing module in the original model,
    found by its place in the original config; the top config when no module holds one."""
    from transformers import PretrainedConfig

    paths = {id(c): path for path, c in _walk(sn.model.config)}
    here = dict(_walk(config))
    out = {}
    for stack in sn.ir.stacks:
        parts, owner = stack.split("."), None
        for i in range(len(parts), -1, -1):
            c = getattr(sn.model.get_submodule(".".join(parts[:i])), "config", None)
            if isinstance(c, PretrainedConfig):
                owner = c
                break
        out[stack] = here.get(paths.get(id(owner), ()), config)
    return out


def update_hf_config(sub: nn.Module, sn: "Supernet", cfg: Config, dropped: list[str],
                     computes_the_subnet: Callable[[nn.Module], bool] | None = None) -> bool:
    """Update ``sub.config`` for ``cfg``; True when the config alone rebuilds the subnet.

    Shapes and the size attributes the forward reads must match; then, if given,
    ``computes_the_subnet(model)`` must accept the class built from the config with the
    subnet's weights (equal shapes do not prove equal functions: a per-head size the
    analysis could not bind may still differ)."""
    config = sub.config
    target = {k: tuple(v.shape) for k, v in sub.state_dict().items()}
    in_dropped = lambda path: any(path == d or path.startswith(d + ".") for d in dropped)  # noqa: E731
    recorded = []  # (module path in sub, attribute): sizes the forward pass reads, elastic or not
    for a in sn.ir.read_attrs:
        if not in_dropped(a.module):
            path = renumber(sn.ir, a.module, dropped)
            owner = sub.get_submodule(path) if path else sub
            if isinstance(getattr(owner, a.attr, None), int):
                recorded.append((path, a.attr, getattr(owner, a.attr)))
    depth_fields = _update_depth(sub, sn, config, dropped, lambda: _mismatches(sub, config, target, recorded))
    # a dropped layer's widths describe nothing in the subnet
    live = {d.name for d in sn.ir.dims.values()
            if not (d.members and all(in_dropped(m.tensor.rpartition(".")[0]) for m in d.members))}
    by_size: dict[int, set[int]] = {}
    for name in live:
        by_size.setdefault(sn.ir.dims[name].size, set()).add(cfg[name])
    for original, new in _products(sn, cfg, live).items():
        if original not in by_size:  # e.g. query heads = kv heads x queries per kv head
            by_size[original] = new
    candidates = []
    for c in nested_configs(config):
        for field, value in c.to_dict().items():
            if field in ("vocab_size", "num_labels", "max_position_embeddings", "image_size", "patch_size",
                         "num_channels", "projection_dim", "num_hidden_layers") or (id(c), field) in depth_fields:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                new = by_size.get(value)
                if new and len(new) == 1 and next(iter(new)) != value:
                    candidates.append((c, field, None, next(iter(new))))
            elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                for i, v in enumerate(value):
                    new = by_size.get(v)
                    if new and len(new) == 1 and next(iter(new)) != v:
                        candidates.append((c, field, i, next(iter(new))))
    best = _mismatches(sub, config, target, recorded)
    applied: set[int] = set()

    originals: dict[tuple[int, str], tuple[Any, str, Any]] = {}

    def apply(k: int) -> tuple[bool, Any]:
        c, field, index, new = candidates[k]
        old = getattr(c, field)
        originals.setdefault((id(c), field), (c, field, copy.deepcopy(old)))
        trial = list(old) if index is not None else new
        if index is not None:
            trial[index] = new
        try:
            setattr(c, field, trial)
        except Exception:  # a config class that validates on assignment
            return False, old
        return True, old

    pending = list(range(len(candidates)))
    while pending and best:  # fields interact (x_proj is rank + 2 * state): retry until stable
        still = []
        for k in pending:
            ok, old = apply(k)
            score = _mismatches(sub, config, target, recorded) if ok else best
            if score < best:
                best = score
                applied.add(k)
            else:
                if ok:
                    setattr(candidates[k][0], candidates[k][1], old)
                still.append(k)
        if len(still) == len(pending):
            break
        pending = still
    def computes() -> bool:
        if computes_the_subnet is None:
            return True
        try:
            return computes_the_subnet(_built_with_weights(sub, config))
        except Exception:  # the class built from this config does not even load or run the weights
            return False
    expressed = best == 0 and computes()
    if best == 0 and not expressed:
        # equal shapes cannot tell 4 heads of 2 from 1 head of 8: also take the size fields
        # that keep every shape, then let the computation decide
        for k in range(len(candidates)):
            if k not in applied:
                ok, old = apply(k)
                if ok and _mismatches(sub, config, target, recorded):
                    setattr(candidates[k][0], candidates[k][1], old)
        expressed = computes()
    if expressed:
        _refresh_stale_attributes(sub, config)
    else:
        # a config that only half describes the subnet could load into a model of the right
        # shapes that computes something else (a head_dim subnet keeps its attention scale):
        # keep the original sizes, so plain from_pretrained refuses the folder on its shapes
        for c, field, value in originals.values():
            try:
                setattr(c, field, value)
            except Exception:  # a config class that validates on assignment: it took no change either
                pass
    return expressed


def _built_with_weights(sub: nn.Module, config: Any) -> nn.Module:
    """The class built from ``config`` and given ``sub``'s weights, as ``from_pretrained`` would."""
    with torch.device("meta"):
        built = type(sub)(copy.deepcopy(config))
    built.load_state_dict(sub.state_dict(), strict=True, assign=True)
    for name, buf in sub.named_buffers():  # non-persistent buffers too (built on meta, not in the state dict)
        owner, _, leaf = name.rpartition(".")
        (built.get_submodule(owner) if owner else built)._buffers[leaf] = buf
    return built


def _products(sn: "Supernet", cfg: Config, live: set[str]) -> dict[int, set[int]]:
    """Sizes that are products of ``live`` dims (structured axes such as heads x per-head
    groups): original size -> the new sizes they take."""
    alg, leaf_dim = sn.ir.alg, {d.var: d.name for d in sn.ir.dims.values()}
    out: dict[int, set[int]] = {}
    for root, struct in alg.defn.items():
        if struct.kind != "prod" or alg.find(root) != root:
            continue
        dims = {leaf_dim[leaf] for leaf in alg.leaves(root) if leaf in leaf_dim}
        if not dims or not dims <= live:
            continue
        sizes = {sn.ir.dims[d].var: cfg[d] for d in dims}
        out.setdefault(alg.size[root], set()).add(alg.new_size(root, sizes))
    return out


def _refresh_stale_attributes(sub: nn.Module, config: Any) -> None:
    """Int attributes the forward never reads (``mixer.hidden_size``...) as the class would set them."""
    with torch.device("meta"):
        built = type(sub)(copy.deepcopy(config))
    built_modules = dict(built.named_modules())
    for name, mod in sub.named_modules():
        other = built_modules.get(name)
        if other is None:
            continue
        for key, value in list(vars(mod).items()):
            if key.startswith("_") or isinstance(value, bool) or not isinstance(value, int):
                continue
            new = getattr(other, key, None)
            if isinstance(new, int) and not isinstance(new, bool) and new != value:
                setattr(mod, key, new)


def _update_depth(sub: nn.Module, sn: "Supernet", config: Any, dropped: list[str],
                  mismatches: Callable[[], int]) -> set[tuple[int, str]]:
    """Depth fields follow the layer lists; returns them as ``(id(config), field)``.

    Per config, over the stacks built from it (in module order): ``num_hidden_layers`` when it
    builds one stack, layer-index and per-layer lists, and a per-stack depth list: an int list
    with one entry per stack, each entry that stack's length (when several lists look so, the
    one whose change best matches the subnet's shapes)."""
    order = {name: i for i, (name, _) in enumerate(sn.model.named_modules())}
    owner = _stack_configs(sn, config)
    stacks = sorted(sn.ir.stacks, key=lambda s: order.get(s, len(order)))
    fields: set[tuple[int, str]] = set()
    for c in nested_configs(config):
        mine = [s for s in stacks if owner[s] is c]
        if not mine:
            continue
        lengths = [len(sn.model.get_submodule(s)) for s in mine]
        new = [_length_in(sub, sn, s, dropped) for s in mine]
        lists = [f for f, v in c.to_dict().items() if v == lengths and _is_int_list(v)]
        if new != lengths and len(lists) > 1:  # one of them is the depths: the one the shapes confirm
            scores = {}
            for f in lists:
                old = getattr(c, f)
                setattr(c, f, list(new))
                scores[f] = mismatches()
                setattr(c, f, old)
            lists = [min(lists, key=lambda f: scores[f])]
        if len(lists) == 1:
            fields.add((id(c), lists[0]))
            if new != lengths:
                setattr(c, lists[0], list(new))
        for stack, original, n in zip(mine, lengths, new):
            if n == original:
                continue
            removed = {b.index for b in sn.ir.stacks[stack] if b.name in dropped}
            if len(mine) == 1 and getattr(c, "num_hidden_layers", None) == original:
                c.num_hidden_layers = n
            # layer-index lists (a hybrid's attention layers) are renumbered first: per-layer
            # type lists may be derived from them
            for field, value in c.to_dict().items():
                if _is_layer_index_list(field, value, original):
                    kept = [i for i in range(original) if i not in removed]
                    setattr(c, field, [kept.index(i) for i in value if i in kept])
            layer_types = getattr(c, "layer_types", None)
            if isinstance(layer_types, list) and len(layer_types) == original:
                try:
                    c.layer_types = [t for i, t in enumerate(layer_types) if i not in removed]
                except AttributeError:  # derived from an index list, renumbered above
                    pass
    return fields


def _length_in(sub: nn.Module, sn: "Supernet", stack: str, dropped: list[str]) -> int:
    """Length of layer list ``stack`` (a path of the full model) in the subnet; the full length
    when the list went with an enclosing layer that was dropped."""
    if any(stack.startswith(b + ".") for b in dropped):
        return len(sn.model.get_submodule(stack))
    return len(sub.get_submodule(renumber(sn.ir, stack, dropped)))


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _is_layer_index_list(field: str, value: Any, n_layers: int) -> bool:
    """A config field listing some layers by index (``attn_layer_indices``...)."""
    return ("layer" in field and isinstance(value, list) and 0 < len(value) < n_layers
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layers for i in value)
            and value == sorted(set(value)))


def _mismatches(sub: nn.Module, config: Any, target: dict[str, tuple], recorded: list[tuple]) -> int:
    try:
        trial = copy.deepcopy(config)
        for c in nested_configs(trial):
            if callable(getattr(c, "validate", None)):
                c.validate()  # a config transformers would refuse to save or load is no match
        with torch.device("meta"):
            built = type(sub)(trial)
    except Exception:
        return 1 << 30  # never better than a config that builds
    shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    bad = sum(1 for k, s in target.items() if shapes.get(k) != s)
    bad += sum(1 for k in shapes if k not in target)
    # equal shapes are not enough (4 heads of 12 and 3 heads of 16 look alike): the sizes
    # the forward pass reads from module attributes must agree too
    built_modules = dict(built.named_modules())
    for path, attr, value in recorded:
        other = built_modules.get(path)
        if other is None or getattr(other, attr, None) != value:
            bad += 1
    return bad
