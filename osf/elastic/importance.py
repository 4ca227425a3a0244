"""Channel and block importance, used to reorder a supernet so every subnet is a prefix."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from osf.ir import IR
from osf.modes import eval_mode  # noqa: F401  (re-exported: osf.elastic uses it from here)
from osf.ir.apply import get_tensor
from osf.ir.trace import normalize_inputs

IMPORTANCE_METHODS = ("magnitude", "activation")


def channel_labels(ir: IR, tensor: str, axis: int, dim: str) -> torch.Tensor:
    """For each position along ``tensor``'s ``axis``, the channel of ``dim`` there (-1: none)."""
    return ir.alg.labels(ir.tensor_axes[tensor][axis], ir.dims[dim].var)


@torch.no_grad()
def magnitude_importance(ir: IR, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per dim, the summed squared weight of each channel over all its members."""
    model = model if model is not None else ir.model
    scores: dict[str, torch.Tensor] = {}
    for dim in ir.dims.values():
        total = torch.zeros(dim.size, dtype=torch.float64)
        for m in dim.members:
            t = get_tensor(model, m.tensor).detach()
            other = [a for a in range(t.dim()) if a != m.axis]
            # a reduction kernel: no full-size temporary, even for an embedding matrix
            norms = torch.linalg.vector_norm(t, dim=other).double().pow(2) if other else t.double().pow(2)
            norms = norms / max(1, t.numel() // t.shape[m.axis])  # members weigh alike
            labels = channel_labels(ir, m.tensor, m.axis, dim.name)
            keep = labels >= 0
            total.index_add_(0, labels[keep], norms.cpu()[keep])
        scores[dim.name] = total
    return scores


@torch.no_grad()
def activation_importance(ir: IR, calibration: Iterable[Any], model: nn.Module | None = None
                          ) -> dict[str, torch.Tensor]:
    """Mean |activation| x weight norm of each channel entering a Linear (Wanda-style).

    Dims that never enter a Linear's input fall back to :func:`magnitude_importance`.
    """
    model = model if model is not None else ir.model
    scores = magnitude_importance(ir, model)
    linear_inputs: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for dim in ir.dims.values():
        for m in dim.members:
            owner = m.tensor.rpartition(".")[0]
            mod = model.get_submodule(owner) if owner else model
            if isinstance(mod, nn.Linear) and m.tensor.endswith("weight") and m.axis == 1:
                linear_inputs.setdefault(owner, []).append((dim.name, channel_labels(ir, m.tensor, 1, dim.name)))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook(name):
        def fn(mod, args):
            x = args[0].detach().abs().double()
            sums[name] = sums.get(name, 0) + x.reshape(-1, x.shape[-1]).sum(0)
            counts[name] = counts.get(name, 0) + x.reshape(-1, x.shape[-1]).shape[0]
        return fn

    for owner in linear_inputs:
        handles.append(model.get_submodule(owner).register_forward_pre_hook(hook(owner)))
    try:
        n = 0
        for batch in calibration:
            args, kwargs = normalize_inputs(batch)
            model(*args, **kwargs)
            n += 1
        if n == 0:
            raise ValueError("calibration yielded no batches; pass an iterable of model inputs")
    finally:
        for h in handles:
            h.remove()
    acc: dict[str, torch.Tensor] = {}
    for owner, entries in linear_inputs.items():
        if owner not in sums:
            continue
        mean_act = sums[owner] / counts[owner]
        w_norm = model.get_submodule(owner).weight.detach().double().pow(2).sum(0).sqrt().cpu()
        for dim_name, labels in entries:
            keep = labels >= 0
            a = acc.setdefault(dim_name, torch.zeros(ir.dims[dim_name].size, dtype=torch.float64))
            a.index_add_(0, labels[keep], (mean_act.cpu() * w_norm)[keep])
    scores.update(acc)
    return scores


@torch.no_grad()
def block_importance(ir: IR, batches: Iterable[Any], model: nn.Module | None = None) -> dict[str, float]:
    """1 - cosine(input, output) of each block, averaged over ``batches``: low = droppable."""
    model = model if model is not None else ir.model
    scores = {b.name: 0.0 for b in ir.blocks}
    counts = {b.name: 0 for b in ir.blocks}
    handles = []

    def hook(name):
        def fn(mod, args, kwargs, out):
            x = args[0] if args else kwargs.get("hidden_states")
            y = out[0] if isinstance(out, tuple) else out
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
                cos = torch.nn.functional.cosine_similarity(x.flatten(1).double(), y.flatten(1).double(), dim=-1)
                scores[name] += float((1 - cos).mean())
                counts[name] += 1
        return fn

    for b in ir.blocks:
        handles.append(model.get_submodule(b.name).register_forward_hook(hook(b.name), with_kwargs=True))
    try:
        for batch in batches:
            args, kwargs = normalize_inputs(batch)
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {k: scores[k] / counts[k] if counts[k] else 0.0 for k in scores}
