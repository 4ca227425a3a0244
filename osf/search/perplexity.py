"""Language-model perplexity as a score."""
from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from osf.modes import eval_mode
from osf.search.objectives import check_count, check_vocab, model_device


class Perplexity:
    """Score = ``-log(perplexity)`` = minus the mean next-token cross-entropy (nats).

    Higher is better, and unlike ``1/ppl`` it is linear in the loss, so differences
    between subnets stay readable (``math.exp(-score)`` gives the perplexity back).

    Args:
        texts_or_dataset: a string, a list of strings, or a ``datasets.Dataset``
            (its ``text_column``).
        tokenizer: a ``transformers`` tokenizer.
        seq_len: tokens per block (texts are joined with EOS and cut into blocks).
        max_batches: evaluate at most this many batches (``None``: all).
        batch_size: blocks per forward pass.
        calibration_share: the share of the blocks (the last ones) held out of the score to rank
            a supernet's channels and layers on (:meth:`calibration_batches`); none when fewer
            than 10 blocks; 0 holds out nothing.

    ``blocks`` are the scored token blocks, ``calibration_blocks`` the held-out ones.
    """

    def __init__(self, texts_or_dataset: Any, tokenizer: Any, seq_len: int = 128, max_batches: int | None = None,
                 batch_size: int = 8, text_column: str = "text", name: str = "perplexity",
                 calibration_share: float = 0.1):
        check_count(max_batches, "max_batches", what=" (batches to evaluate; the CLI's --limit)")
        check_count(batch_size, "batch_size", allow_none=False)
        check_count(seq_len, "seq_len", allow_none=False, minimum=2)
        self.tokenizer = tokenizer
        texts = _texts(texts_or_dataset, text_column)
        ids: list[int] = []
        eos = tokenizer.eos_token_id
        for t in texts:
            ids.extend(tokenizer(t)["input_ids"] + ([eos] if eos is not None else []))
        n = len(ids) // seq_len
        if n == 0:
            raise ValueError(f"the texts give {len(ids)} tokens, fewer than one block of seq_len={seq_len}")
        if isinstance(calibration_share, bool) or not isinstance(calibration_share, (int, float)) \
                or not 0.0 <= calibration_share < 1.0:
            raise ValueError(f"calibration_share must be a fraction in [0, 1) (the share of blocks held out for "
                             f"calibration), got {calibration_share!r}")
        blocks = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
        n_cal = int(n * calibration_share) if n >= 10 else 0
        self.blocks, self.calibration_blocks = blocks[: n - n_cal], blocks[n - n_cal:]
        self._max_id = int(self.blocks.max())  # checked against each model's embedding
        self.batch_size, self.max_batches, self.name = batch_size, max_batches, name

    @torch.no_grad()
    def nll(self, model: nn.Module) -> float:
        """Mean next-token negative log-likelihood (nats)."""
        check_vocab(self.tokenizer, model, self._max_id)
        device = model_device(model)
        total, count = 0.0, 0
        with eval_mode(model):
            for i, start in enumerate(range(0, len(self.blocks), self.batch_size)):
                if self.max_batches is not None and i >= self.max_batches:
                    break
                batch = self.blocks[start: start + self.batch_size].to(device)
                out = model(input_ids=batch)
                logits = out.logits if hasattr(out, "logits") else out
                total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"))
                count += batch[:, 1:].numel()
        return total / count

    def __call__(self, model: nn.Module) -> float:
        return -self.nll(model)

    def calibration_batches(self, n: int = 8) -> list[dict[str, torch.Tensor]] | None:
        """Up to ``n`` batches of the held-out blocks (never scored), for ``osf.supernet(model,
        calibration=evaluator)``; None when none were held out."""
        if not len(self.calibration_blocks):
            return None
        blocks = self.calibration_blocks[: n * self.batch_size]
        return [{"input_ids": blocks[i: i + self.batch_size]} for i in range(0, len(blocks), self.batch_size)]

    def full_sample(self) -> "Perplexity | None":
        """The same score on all the scored blocks, when ``max_batches`` scores fewer (the search
        re-ranks its best subnets with it); None when it already scores them all."""
        if self.max_batches is None or self.max_batches * self.batch_size >= len(self.blocks):
            return None
        full = copy.copy(self)
        full.max_batches = None
        return full

    def describe(self) -> str:
        return "-log(perplexity): minus the mean next-token cross-entropy in nats, higher is better (perplexity = exp(-score))"

    @staticmethod
    def to_perplexity(score: float) -> float:
        return math.exp(-score)

    def example_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[:1]}


def _texts(src: Any, column: str) -> list[str]:
    if isinstance(src, str):
        return [src]
    if hasattr(src, "column_names"):  # datasets.Dataset
        if column not in src.column_names:
            raise ValueError(f"dataset has no column {column!r}; columns: {src.column_names}")
        return [t for t in src[column] if t]
    if isinstance(src, Iterable):
        out = list(src)
        if not all(isinstance(t, str) for t in out):
            raise ValueError("Perplexity needs strings, a list of strings or a datasets.Dataset")
        return out
    raise ValueError(f"Perplexity needs strings or a datasets.Dataset, got {type(src).__name__}")
