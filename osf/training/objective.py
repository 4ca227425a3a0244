"""What a supernet learns from: the task loss (next-token or class cross-entropy) and the
in-place distillation loss (the largest subnet's outputs as soft targets)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("lm", "images")


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: ``.logits`` (Hugging Face), a tensor, or the first of a tuple."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if logits is None and isinstance(output, torch.Tensor):
        logits = output
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"cannot find logits in the model's output ({type(output).__name__}): training needs a "
                        "model that returns logits (a tensor, a tuple starting with them, or an object with .logits)")
    return logits


def forward(model: nn.Module, batch: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Run ``model`` on ``batch`` (its main input passed positionally, so Hugging Face and
    plain modules both take it) and return the logits."""
    main = batch["input_ids"] if kind == "lm" else batch["pixel_values"]
    return logits_of(model(main))


def task_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Mean next-token cross-entropy (``lm``) or class cross-entropy (``images``)."""
    if kind == "lm":
        ids = batch["input_ids"]
        if logits.dim() != 3 or logits.shape[:2] != ids.shape:
            raise ValueError(f"an LM must return logits of shape (batch, seq, vocab) = {tuple(ids.shape)} + (vocab,); "
                             f"got {tuple(logits.shape)}")
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    labels = batch["labels"]
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"a classifier must return logits of shape (batch, classes); got {tuple(logits.shape)}")
    return F.cross_entropy(logits.float(), labels)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, times ``temperature ** 2`` (so its
    gradients keep the task loss's scale), averaged over predictions (tokens or images)."""
    if kind == "lm":  # the last position predicts nothing the task scores
        student, teacher = student[:, :-1], teacher[:, :-1]
    s = F.log_softmax(student.flatten(0, -2).float() / temperature, dim=-1)
    t = F.log_softmax(teacher.flatten(0, -2).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Mapping[str, torch.Tensor]], kind: str) -> dict[str, float]:
    """Mean task loss over ``batches`` (weighted by predictions), and accuracy (``images``) or
    perplexity (``lm``)."""
    total, count, correct = 0.0, 0, 0
    for batch in batches:
        logits = forward(model, batch, kind)
        n = batch["input_ids"][:, 1:].numel() if kind == "lm" else batch["labels"].numel()
        total += float(task_loss(logits, batch, kind)) * n
        count += n
        if kind == "images":
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
    loss = total / max(count, 1)
    out = {"loss": loss}
    if kind == "images":
        out["accuracy"] = correct / max(count, 1)
    else:
        out["perplexity"] = float(torch.tensor(loss).exp())
    return out
