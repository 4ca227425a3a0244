"""Extraction: a supernet config as a real, independent, smaller model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from osf.modes import eval_mode
from osf.elastic.io import keep_description_on_save
from osf.elastic.validate import META_ATTR
from osf.ir.apply import get_tensor, renumber
from osf.ir.portable import remove_blocks  # the very routine a saved folder (and load_subnet) rebuilds with
from osf.space import Config

if TYPE_CHECKING:
    from osf.elastic.supernet import Supernet


def extract(sn: "Supernet", cfg: Config, verify: bool = True) -> nn.Module:
    """Copy the model at ``cfg``: every tensor comes from the supernet, nothing is random.

    With ``verify``, the copy must reproduce the supernet's outputs at ``cfg`` (see
    :mod:`osf.elastic.verify`); a Hugging Face config is only said to express the subnet when
    the class built from it computes the same outputs, whatever ``verify`` says.
    """
    from osf.elastic.verify import Reference, check_extract, run, trace_inputs

    is_hf = hasattr(getattr(sn.model, "config", None), "to_dict")
    inputs = trace_inputs(sn.ir.graph.meta["osf"]) if verify or is_hf else []
    with sn.use(cfg), eval_mode(sn.model):  # the supernet's outputs: what the copy (and its config) must give
        expected = Reference(inputs, [run(sn.model, inp) for inp in inputs])
    with sn.use(cfg):
        memo: dict[int, Any] = {}
        for name in sn.ir.tensor_axes:
            t = sn.current(name)
            full = sn.full(name)
            clone = t.detach().clone().contiguous()
            memo[id(t)] = nn.Parameter(clone, requires_grad=full.requires_grad) if isinstance(
                full, nn.Parameter) else clone
        for skip in sn.skip_blocks:
            memo[id(skip)] = skip  # removed below
        sub = sn.copy_model(memo)
    dropped = [b.name for b in sn.ir.blocks if not cfg.get(b.name, True)]
    remove_blocks(sub, dropped)
    from osf.kernels.mamba import unpatch_mamba

    unpatch_mamba(sub)  # a plain model of its class: patch it again with osf.kernels.mamba.patch_mamba
    _check_all_from_supernet(sub, sn, cfg, dropped)
    meta = {
        "format": 1,
        "config": dict(cfg),
        "dropped": dropped,
        "shapes": _changed_shapes(sn, cfg),
        "attributes": [
            {"module": a.module, "attr": a.attr, "value": sn.ir.eval_expr(a.expr, {d: cfg[d] for d in sn.space.dims})}
            for a in sn.ir.attrs
        ],
        "original_config": sn.model.config.to_dict() if hasattr(getattr(sn.model, "config", None), "to_dict")
        else None,
        "class": f"{type(sn.model).__module__}.{type(sn.model).__qualname__}",
    }
    if is_hf:
        from osf.elastic.hf_config import update_hf_config

        def computes_the_subnet(built: nn.Module) -> bool:
            err, tol, _ = expected.worst(built.eval())
            return err <= tol
        meta["config_expresses_subnet"] = update_hf_config(sub, sn, cfg, dropped, computes_the_subnet)
    if verify:
        with eval_mode(sub):
            check_extract(sn, cfg, sub, expected, lambda c: extract(sn, c, verify=False))
    setattr(sub, META_ATTR, meta)
    keep_description_on_save(sub)
    return sub


def _changed_shapes(sn: "Supernet", cfg: Config) -> dict[str, list[int]]:
    sizes = {d: cfg[d] for d in sn.space.dims}
    out = {}
    for name in sn.sliced_tensors:
        shape = list(sn.ir.new_shape(name, sizes))
        if shape != list(sn.full(name).shape):
            out[name] = shape
    return out


def _check_all_from_supernet(sub: nn.Module, sn: "Supernet", cfg: Config, dropped: list[str]) -> None:
    """Fail loudly if any tensor of the subnet is not the supernet's (shape or value)."""
    sizes = {d: cfg[d] for d in sn.space.dims}
    expected = sn.num_params(cfg)
    got = sum(p.numel() for p in sub.parameters())
    if got != expected:
        raise RuntimeError(f"extracted model has {got} parameters, the supernet counts {expected} for this "
                           "config: some tensor was not sliced consistently")
    for name in sn.ir.tensor_axes:
        if any(name.startswith(b + ".") for b in dropped):
            continue
        shape = tuple(sn.ir.new_shape(name, sizes))
        try:
            t = _get_renumbered(sub, sn, name, dropped)
        except AttributeError as e:
            raise RuntimeError(f"extracted model lacks tensor {name!r}") from e
        if tuple(t.shape) != shape:
            raise RuntimeError(f"extracted tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")


def _get_renumbered(sub: nn.Module, sn: "Supernet", name: str, dropped: list[str]) -> torch.Tensor:
    return get_tensor(sub, renumber(sn.ir, name, dropped))
