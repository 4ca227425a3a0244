"""Channel and block importance, used to reorder a supernet so every subnet is a prefix.

Channel measures (per dim, one score per channel, summed over all the dim's members):

- ``magnitude``: squared weights (no data).
- ``activation``: mean |input activation| x weight norm of each channel entering a Linear
  (Wanda-style), one forward pass over the calibration batches with hooks.
- ``taylor``: first-order Taylor estimate of the loss change when a channel's parameter
  group is removed, ``|sum_batches sum_group w * dL/dw|`` (Molchanov et al. 2019), one
  forward and backward pass per calibration batch.
- ``fisher``: the empirical Fisher of a channel mask, ``mean_batches (sum_group w * dL/dw)^2``
  (Theis et al. 2018), from the same gradients.

Blocks (residual layers) are ordered for dropping greedily by the calibration loss (each step
drops the block whose removal raises it least) or, without data, by ``1 - cos(input, output)``.

The loss of a calibration batch (:func:`calibration_loss`): cross-entropy against its
``labels`` when the batch holds them (popped before the model is called), else next-token
cross-entropy when it holds ``input_ids`` and the model returns sequence logits.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from osf.ir import IR
from osf.ir.apply import SkipBlock, get_tensor
from osf.ir.trace import normalize_inputs

IMPORTANCE_METHODS = ("auto", "magnitude", "activation", "taylor", "fisher")
DATA_METHODS = ("activation", "taylor", "fisher")
#: what ``importance="auto"`` uses when calibration data is given (else magnitude)
AUTO_WITH_DATA = "activation"


class RandomInputsWarning(UserWarning):
    """Importance was ranked on random inputs (no calibration data): the ordering may be poor."""


def channel_labels(ir: IR, tensor: str, axis: int, dim: str) -> torch.Tensor:
    """For each position along ``tensor``'s ``axis``, the channel of ``dim`` there (-1: none)."""
    return ir.alg.labels(ir.tensor_axes[tensor][axis], ir.dims[dim].var)


def split_batch(batch: Any) -> tuple[tuple, dict, torch.Tensor | None]:
    """A calibration batch as (args, kwargs, labels): ``labels`` is taken out of a dict batch
    (the loss is computed here, so the model is never asked for its own)."""
    args, kwargs = normalize_inputs(batch)
    labels = kwargs.pop("labels", None) if isinstance(batch, Mapping) else None
    return args, kwargs, labels


def output_logits(out: Any) -> torch.Tensor | None:
    """The logits of a model output (HF ``.logits``, a tensor, or the first tensor of a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def loss_from_output(out: Any, kwargs: Mapping[str, Any], labels: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy against ``labels``, else next-token cross-entropy on ``input_ids``; None when
    neither applies (no labels, not a language model)."""
    logits = output_logits(out)
    if logits is None:
        return None
    if labels is not None:
        if logits.dim() == 3 and labels.dim() == 2 and labels.shape == logits.shape[:2]:  # causal LM labels
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return F.cross_entropy(logits.flatten(0, -2).float() if logits.dim() > 2 else logits.float(),
                               labels.flatten(), ignore_index=-100)
    ids = kwargs.get("input_ids")
    if isinstance(ids, torch.Tensor) and logits.dim() == 3 and logits.shape[:2] == ids.shape and ids.shape[1] > 1:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return None


def calibration_loss(model: nn.Module, batch: Any) -> torch.Tensor | None:
    """The loss of ``model`` on one calibration batch (see the module doc), or None."""
    args, kwargs, labels = split_batch(batch)
    return loss_from_output(model(*args, **kwargs), kwargs, labels)


def _weigh(model: nn.Module, ir: IR, per_tensor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per dim, the sum over its members of a per-element tensor (``per_tensor[name]``, the shape
    of the member), reduced to one value per channel."""
    scores: dict[str, torch.Tensor] = {}
    for dim in ir.dims.values():
        total = torch.zeros(dim.size, dtype=torch.float64)
        for m in dim.members:
            t = per_tensor.get(m.tensor)
            if t is None:
                continue
            other = [a for a in range(t.dim()) if a != m.axis]
            sums = t.sum(dim=other) if other else t
            labels = channel_labels(ir, m.tensor, m.axis, dim.name)
            keep = labels >= 0
            total.index_add_(0, labels[keep], sums.cpu()[keep])
        scores[dim.name] = total
    return scores


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

    All dims are measured in one pass over the batches (forward pre-hooks on the Linears);
    dims that never enter a Linear's input fall back to :func:`magnitude_importance`.
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
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1])
            # sum of |x| in the activation's dtype per channel, accumulated in float64
            s = x.abs().sum(0, dtype=torch.float32 if x.dtype != torch.float64 else torch.float64).double()
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for owner in linear_inputs:
        handles.append(model.get_submodule(owner).register_forward_pre_hook(hook(owner)))
    try:
        n = 0
        for batch in calibration:
            args, kwargs, _ = split_batch(batch)
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


def gradient_importance(ir: IR, calibration: Iterable[Any], model: nn.Module | None = None,
                        kind: str = "taylor") -> dict[str, torch.Tensor]:
    """First-order Taylor (``kind="taylor"``) or Fisher (``kind="fisher"``) channel importance.

    For each batch ``b`` and channel ``c`` of a dim, ``s_c(b) = sum over the dim's members of
    w * dL/dw`` at the channel's positions: the first-order change of the loss when the
    channel's whole parameter group is zeroed. Taylor: ``|mean_b s_c(b)|``; Fisher:
    ``mean_b s_c(b)^2``. The loss is :func:`calibration_loss` (labels or next-token).

    Raises:
        ValueError: ``kind`` is unknown, no batches, or a batch gives no loss (no labels and
            not a language model).
    """
    if kind not in ("taylor", "fisher"):
        raise ValueError(f"gradient importance kind must be 'taylor' or 'fisher', got {kind!r}")
    model = model if model is not None else ir.model
    names = sorted({m.tensor for d in ir.dims.values() for m in d.members})
    tensors = {n: get_tensor(model, n) for n in names}
    params = {n: t for n, t in tensors.items() if isinstance(t, nn.Parameter)}
    saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    others = [(p, p.grad) for p in model.parameters()]  # the backward reaches them too: restored after
    first = {id(p): n for n, p in params.items()}  # tied tensors: the gradient once
    acc: dict[str, torch.Tensor] | None = None
    n = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for batch in calibration:
            with torch.enable_grad():
                loss = calibration_loss(model, batch)
                if loss is None:
                    raise ValueError(f"importance={kind!r} needs a loss on the calibration batches: give them "
                                     "'labels' (a dict batch), or language-model 'input_ids'")
                loss.backward()
            per = {}
            for name, p in params.items():
                if first[id(p)] == name and p.grad is not None:
                    per[name] = (p.detach().double() * p.grad.double())
                    p.grad = None
            s = _weigh(model, ir, per)
            if acc is None:
                acc = {d: (v if kind == "taylor" else v.pow(2)) for d, v in s.items()}
            else:
                for d, v in s.items():
                    acc[d] += v if kind == "taylor" else v.pow(2)
            n += 1
    finally:
        for p, grad in others:
            p.grad = grad
        for name, p in params.items():
            p.requires_grad_(saved[name][0])
            p.grad = saved[name][1]
    if n == 0 or acc is None:
        raise ValueError("calibration yielded no batches; pass an iterable of model inputs")
    return {d: (v / n).abs() if kind == "taylor" else v / n for d, v in acc.items()}


def channel_importance(ir: IR, method: str, calibration: list[Any] | None, model: nn.Module | None = None
                       ) -> dict[str, torch.Tensor]:
    """Per dim, one score per channel by ``method`` (see the module doc; ``"auto"``:
    :data:`AUTO_WITH_DATA` with calibration data, magnitude without)."""
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"importance must be one of {IMPORTANCE_METHODS}, got {method!r}")
    if method == "auto":
        method = AUTO_WITH_DATA if calibration else "magnitude"
    if method == "magnitude":
        return magnitude_importance(ir, model)
    if not calibration:
        raise ValueError(f"importance={method!r} needs calibration batches (an iterable of model inputs)")
    if method == "activation":
        return activation_importance(ir, calibration, model)
    return gradient_importance(ir, calibration, model, kind=method)


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
            args, kwargs, _ = split_batch(batch)
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {k: scores[k] / counts[k] if counts[k] else 0.0 for k in scores}


def _divergence(reference: Any, out: Any) -> torch.Tensor:
    """KL(reference || out) of softmaxed logits, a stand-in loss when batches have no labels."""
    p, q = output_logits(reference), output_logits(out)
    return F.kl_div(F.log_softmax(q.double(), -1), F.log_softmax(p.double(), -1), log_target=True,
                    reduction="batchmean")


@torch.no_grad()
def greedy_block_order(ir: IR, batches: list[Any], model: nn.Module | None = None,
                       max_drops: Mapping[str, int] | None = None) -> list[str]:
    """Blocks in drop order, chosen greedily by the loss on ``batches``: each step drops the
    block (of a stack that may still lose one) whose removal raises the loss least, with the
    blocks chosen before already dropped. The loss is :func:`calibration_loss`; batches without
    labels or token ids use the KL divergence from the full model's outputs.

    ``max_drops`` (stack -> count, default all but one) bounds the greedy steps per stack; the
    remaining blocks follow by ``1 - cos`` (:func:`block_importance`), least important first.
    """
    model = model if model is not None else ir.model
    if not batches:
        raise ValueError("greedy_block_order needs at least one calibration batch")
    fmt = ir.graph.meta["osf"].get("module_outputs", {})
    stacks: dict[str, list[Any]] = {}
    for b in ir.blocks:
        stacks.setdefault(b.group, []).append(b)
    limit = {s: min(len(bs) - 1, (max_drops or {}).get(s, len(bs) - 1)) for s, bs in stacks.items()}
    split = [split_batch(b) for b in batches]
    references = [model(*a, **k) for a, k, _ in split]

    def loss() -> float:
        total = 0.0
        for (a, k, labels), ref in zip(split, references):
            out = model(*a, **k)
            value = loss_from_output(out, k, labels)
            total += float(value if value is not None else _divergence(ref, out))
        return total / len(split)

    order: list[str] = []
    dropped: dict[str, Any] = {}
    try:
        while True:
            options = []
            for s, bs in stacks.items():
                if sum(b.name in dropped for b in bs) >= limit[s]:
                    continue
                for b in bs:
                    if b.name in dropped:
                        continue
                    parent = model.get_submodule(b.stack) if b.stack else model
                    layer = parent[b.index]
                    parent[b.index] = SkipBlock(fmt.get("model." + b.name, 0))
                    try:
                        options.append((loss(), b))
                    finally:
                        parent[b.index] = layer
            if not options:
                break
            _, best = min(options, key=lambda o: o[0])
            parent = model.get_submodule(best.stack) if best.stack else model
            dropped[best.name] = (parent, best.index, parent[best.index])
            parent[best.index] = SkipBlock(fmt.get("model." + best.name, 0))
            order.append(best.name)
    finally:
        for parent, index, layer in dropped.values():
            parent[index] = layer
    rest = [b.name for b in ir.blocks if b.name not in dropped]
    if rest:
        cos = block_importance(ir, batches[:1], model)
        rest.sort(key=lambda n: cos[n])
    return order + rest


def warn_random_inputs(what: str) -> None:
    """Warn that ``what`` was ranked on random inputs, and how to give data instead."""
    warnings.warn(f"{what} ranked on random example inputs (no calibration data): the least useful layers and "
                  "channels may not go first. Pass calibration=<your evaluator or a list of batches> to "
                  "osf.supernet, or call sn.calibrate(evaluator)", RandomInputsWarning, stacklevel=3)


def resolve_calibration(source: Any, n_batches: int | None = None) -> list[Any] | None:
    """Calibration batches from ``source``: an evaluator offering ``calibration_batches(n)`` (data
    drawn from its own, disjoint from what it scores), or an iterable of model inputs (listed).
    None stays None; an evaluator without held-out data gives None."""
    if source is None:
        return None
    draw = getattr(source, "calibration_batches", None)
    if callable(draw):
        batches = draw() if n_batches is None else draw(n_batches)
        return list(batches) if batches is not None else None
    return source
