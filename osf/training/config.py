"""``TrainConfig``: every setting of a supernet training run, JSON-serialisable."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "bf16", "fp32")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`osf.train` (saved as ``train_config.json`` in the output folder).

    Each optimizer step follows the sandwich rule: the largest subnet, the smallest and
    ``num_random`` random ones run on the same batch; the largest learns from the task loss,
    the others from the largest's outputs (in-place distillation) when ``distill`` is on.

    Attributes:
        steps: optimizer steps in all.
        batch_size: examples per optimizer step, over all processes and accumulation steps.
        grad_accum: micro-batches per process and step (``batch_size`` must divide evenly).
        lr: peak learning rate of AdamW, reached after ``warmup_steps``, then cosine to
            ``lr * min_lr_ratio``.
        num_random: random subnets per step besides the largest and the smallest.
        distill: in-place distillation (KL to the largest's outputs at ``temperature``).
        clip_grad: gradient-norm clipping (0: none).
        precision: ``"auto"`` (bf16 autocast on a GPU that supports it, else fp32), ``"bf16"``, ``"fp32"``.
        gradient_checkpointing: recompute each block in the backward pass (memory nearly
            independent of depth).
        eval_every / save_every: validation and checkpoint period in steps (0: only at the end).
        eval_batches: validation batches per subnet (None: the whole validation split).
        seed: the data order and the stream of sampled subnets derive from it and the step.
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    num_random: int = 2
    distill: bool = True
    temperature: float = 1.0
    clip_grad: float = 1.0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    eval_every: int = 100
    save_every: int = 100
    eval_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum, "lr": self.lr,
                    "temperature": self.temperature}
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {value!r}")
        non_negative = {"warmup_steps": self.warmup_steps, "num_random": self.num_random,
                        "clip_grad": self.clip_grad, "eval_every": self.eval_every, "save_every": self.save_every,
                        "weight_decay": self.weight_decay}
        for name, value in non_negative.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {value!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps >= self.steps and self.warmup_steps:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.eval_batches is not None and not (isinstance(self.eval_batches, int) and self.eval_batches > 0):
            raise ValueError(f"TrainConfig.eval_batches must be a positive int or None, got {self.eval_batches!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def differences(self, other: "TrainConfig", ignore: tuple[str, ...] = ("steps", "eval_every", "save_every",
                                                                            "eval_batches")) -> list[str]:
        """Fields (outside ``ignore``) whose values differ: a resumed run must keep them."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]
