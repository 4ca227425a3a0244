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
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from osf.space import Config

if TYPE_CHECKING:
    from osf.elastic.supernet import Supernet


def _configs(config: Any) -> Iterator[tuple[str, Any]]:
    yield "", config
    for key in ("text_config", "vision_config"):
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            yield key, sub


def update_hf_config(sub: nn.Module, sn: "Supernet", cfg: Config, dropped: list[str]) -> bool:
    """Update ``sub.config`` for ``cfg``; True when the config alone rebuilds the subnet."""
    config = sub.config
    _update_depth(sub, sn, config, dropped)
    from osf.elastic.extract import renumber

    target = {k: tuple(v.shape) for k, v in sub.state_dict().items()}
    recorded = []  # (module path in sub, attribute): sizes the forward pass reads
    for a in sn.ir.attrs:
        if not any(a.module == d or a.module.startswith(d + ".") for d in dropped):
            path = renumber(sn, a.module, dropped)
            recorded.append((path, a.attr, getattr(sub.get_submodule(path) if path else sub, a.attr)))
    by_size: dict[int, set[int]] = {}
    for d in sn.ir.dims.values():
        by_size.setdefault(d.size, set()).add(cfg[d.name])
    candidates = []
    for prefix, c in _configs(config):
        for field, value in c.to_dict().items():
            if field in ("vocab_size", "num_labels", "max_position_embeddings", "image_size", "patch_size",
                         "num_channels", "projection_dim", "num_hidden_layers", "depths"):
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
    pending = list(candidates)
    while pending and best:  # fields interact (x_proj is rank + 2 * state): retry until stable
        still = []
        for c, field, index, new in pending:
            old = getattr(c, field)
            trial = list(old) if index is not None else new
            if index is not None:
                trial[index] = new
            try:
                setattr(c, field, trial)
            except Exception:  # a config class that validates on assignment
                still.append((c, field, index, new))
                continue
            score = _mismatches(sub, config, target, recorded)
            if score < best:
                best = score
            else:
                setattr(c, field, old)
                still.append((c, field, index, new))
        if len(still) == len(pending):
            break
        pending = still
    if best == 0:
        _refresh_stale_attributes(sub, config)
    return best == 0


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


def _update_depth(sub: nn.Module, sn: "Supernet", config: Any, dropped: list[str]) -> None:
    """num_hidden_layers, layer_types and Swin's per-stage depths follow the layer lists."""
    for stack, blocks in sn.ir.stacks.items():
        original = len(sn.model.get_submodule(stack))
        n = len(sub.get_submodule(stack))
        if n == original:
            continue
        removed = {b.index for b in blocks if b.name in dropped}
        for prefix, c in _configs(config):
            if prefix and not stack.startswith(prefix.replace("_config", "_model")):
                continue
            if getattr(c, "num_hidden_layers", None) == original:
                c.num_hidden_layers = n
            layer_types = getattr(c, "layer_types", None)
            if isinstance(layer_types, list) and len(layer_types) == original:
                c.layer_types = [t for i, t in enumerate(layer_types) if i not in removed]
        depths = getattr(config, "depths", None)
        parts = stack.split(".")
        if isinstance(depths, list) and len(parts) >= 2 and parts[-1] == "blocks" and parts[-2].isdigit():
            depths = list(depths)
            depths[int(parts[-2])] = n
            config.depths = depths


def _mismatches(sub: nn.Module, config: Any, target: dict[str, tuple], recorded: list[tuple]) -> int:
    try:
        trial = copy.deepcopy(config)
        for _, c in _configs(trial):
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
