"""``osf.train``: make every subnet of a supernet good, with the sandwich rule and in-place
distillation, one persistent AdamW, warm-up and cosine schedule, gradient clipping and
accumulation, bf16 autocast where the device supports it, gradient checkpointing per block,
several processes, and checkpoints that resume exactly."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from osf.training.blocks import checkpoint_blocks
from osf.training.config import TrainConfig
from osf.training.distributed import average_gradients, barrier, rank_and_world
from osf.training.log import MetricsLog
from osf.training.objective import KINDS, distill_loss, evaluate, forward, task_loss
from osf.training.state import load_checkpoint, save_checkpoint

CONFIG_FILE = "train_config.json"


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: the steps run (``start_step`` > 0 when it resumed), the rows
    it logged (train losses per sandwich member, validation metrics) and where it wrote."""

    start_step: int
    steps: int
    history: list[dict[str, float]]
    out_dir: Path | None


def train(supernet: Any, data: Any, config: TrainConfig | None = None, out_dir: str | Path | None = None, *,
          resume: bool = True, progress: bool = True,
          callback: Callable[[int, dict[str, float]], None] | None = None, **overrides: Any) -> TrainResult:
    """Train ``supernet`` in place so that its subnets, not only the largest, are good.

    Args:
        supernet: an :class:`osf.Supernet` (its shared weights are what trains).
        data: a :class:`osf.training.TrainData` (``load_train_data`` makes one from text files,
            JSON, saved ``datasets`` folders, CIFAR pickles or image folders).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields
            (``osf.train(sn, data, steps=200, lr=3e-4)``).
        out_dir: where ``train_config.json``, ``metrics.csv`` (and TensorBoard logs when
            installed) and the resumable ``checkpoint/`` go. Without it nothing is written.
        resume: continue from ``out_dir/checkpoint`` when there is one (the settings that
            shape the run must be unchanged; ``steps`` may grow).
        progress: show a progress bar with each sandwich member's loss.
        callback: called as ``callback(step, metrics)`` after each step.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    kind = _check_data(data)
    rank, world = rank_and_world()
    per_rank = config.batch_size // world
    micro = per_rank // config.grad_accum
    if config.batch_size % (world * config.grad_accum) or micro == 0:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of processes x grad_accum "
                         f"({world} x {config.grad_accum})")
    params = [p for p in supernet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the supernet has no parameter that requires grad: nothing to train")
    optimizer = torch.optim.AdamW(param_groups(supernet, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    out = Path(out_dir) if out_dir is not None else None
    start = _prepare_out_dir(out, config, resume, supernet, optimizer, scheduler, rank) if out else 0
    device = params[0].device
    autocast = _autocast(config.precision, device)
    half = config_at_fraction(supernet, 0.5, seed=config.seed)
    members = {"largest": supernet.space.largest(), "smallest": supernet.space.smallest(), "half": half}
    log = MetricsLog(out, start, enabled=rank == 0) if out else None
    active = supernet.config
    history: list[dict[str, float]] = []
    bar = _progress(config.steps, start, enabled=progress and rank == 0)
    was_training = supernet.training
    supernet.train()
    try:
        with checkpoint_blocks(supernet.blocks, config.gradient_checkpointing):
            for step in range(start + 1, config.steps + 1):
                optimizer.zero_grad(set_to_none=True)
                row = _sandwich_step(supernet, data, config, kind, step, rank, world, micro, device, autocast)
                average_gradients(params)
                if config.clip_grad:
                    row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.clip_grad))
                optimizer.step()
                scheduler.step()
                row["lr"] = optimizer.param_groups[0]["lr"]
                last = step == config.steps
                if config.eval_every and step % config.eval_every == 0 or last:
                    row.update(_validate(supernet, data, kind, members, micro, config.eval_batches, device, rank))
                history.append({"step": step, **row})
                if log is not None:
                    log.log(step, row)
                if out is not None and (config.save_every and step % config.save_every == 0 or last):
                    if rank == 0:
                        save_checkpoint(out, step, supernet, optimizer, scheduler)
                    barrier()
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k.startswith("loss/")}, refresh=False)
                if callback is not None:
                    callback(step, row)
    finally:
        bar.close()
        if log is not None:
            log.close()
        supernet.set_config(active)
        supernet.train(was_training)
    return TrainResult(start, config.steps, history, out)


def sandwich(space: Any, config: TrainConfig, step: int) -> list[tuple[str, Any]]:
    """The subnets of ``step``: the largest, the smallest and ``config.num_random`` random ones,
    drawn from the seed and the step only (so every process and every resumed run agree)."""
    members = [("largest", space.largest()), ("smallest", space.smallest())]
    for i in range(config.num_random):
        members.append((f"random{i}", space.sample(_mix(config.seed, step, i))))
    return members


def config_at_fraction(supernet: Any, fraction: float, seed: int = 0, candidates: int = 256) -> Any:
    """A config holding about ``fraction`` of the parameters: the nearest, from below when it
    can, among ``candidates`` random ones and the smallest."""
    full = supernet.num_params(supernet.space.largest())
    target = fraction * full
    pool = [supernet.space.smallest()] + [supernet.space.sample(_mix(seed, -1, i)) for i in range(candidates)]
    sized = [(supernet.num_params(c), c) for c in pool]
    below = [(n, c) for n, c in sized if n <= target]
    n, cfg = max(below, key=lambda x: x[0]) if below else min(sized, key=lambda x: abs(x[0] - target))
    return cfg


# ---------------------------------------------------------------------------- one step
def _sandwich_step(sn: Any, data: Any, config: TrainConfig, kind: str, step: int, rank: int, world: int,
                   micro: int, device: torch.device, autocast: Any) -> dict[str, float]:
    members = sandwich(sn.space, config, step)
    losses = {f"loss/{label}": 0.0 for label, _ in members}
    for part in range(config.grad_accum):
        batch = batch_for_step(data.train, config, step, part, rank, world, micro, device)
        teacher = None
        for label, cfg in members:
            sn.set_config(cfg)
            with autocast:
                logits = forward(sn, batch, kind)
                if teacher is None:
                    loss = task_loss(logits, batch, kind)
                    teacher = logits.detach() if config.distill else None
                elif config.distill:
                    loss = distill_loss(logits, teacher, config.temperature, kind)
                else:
                    loss = task_loss(logits, batch, kind)
            (loss / config.grad_accum).backward()  # before the next config: checkpointed blocks recompute with this one
            losses[f"loss/{label}"] += float(loss.detach()) / config.grad_accum
    if world > 1:
        values = torch.tensor(list(losses.values()), dtype=torch.float64)
        torch.distributed.all_reduce(values)
        losses = dict(zip(losses, (values / world).tolist()))
    return losses


def batch_for_step(split: Mapping[str, torch.Tensor], config: TrainConfig, step: int, part: int, rank: int,
                   world: int, micro: int, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's micro-batch ``part`` of global batch ``step``: examples are read in a
    seeded random order, reshuffled each epoch; the global batch is split over
    (accumulation step, rank) so any number of processes sees the same global batch."""
    n = len(next(iter(split.values())))
    first = (step - 1) * config.batch_size + (part * world + rank) * micro
    positions = torch.arange(first, first + micro)
    epochs = (positions // n).tolist()
    order = {e: torch.randperm(n, generator=torch.Generator().manual_seed(_mix(config.seed, e, 0)))
             for e in set(epochs)}
    index = torch.stack([order[e][p % n] for e, p in zip(epochs, positions.tolist())])
    return {k: v[index].to(device) for k, v in split.items()}


@torch.no_grad()
def _validate(sn: Any, data: Any, kind: str, members: dict[str, Any], micro: int, max_batches: int | None,
              device: torch.device, rank: int) -> dict[str, float]:
    if rank != 0:
        return {}
    split = data.validation
    n = len(next(iter(split.values())))
    batches = [{k: v[i:i + micro].to(device) for k, v in split.items()} for i in range(0, n, micro)]
    batches = batches[:max_batches] if max_batches else batches
    out = {}
    sn.eval()
    try:
        for label, cfg in members.items():
            sn.set_config(cfg)
            for metric, value in evaluate(sn, batches, kind).items():
                out[f"val/{label}/{metric}"] = value
    finally:
        sn.train()
    return out


# ------------------------------------------------------ set-up (public: benchmarks mirror it)
def _check_data(data: Any) -> str:
    kind = getattr(data, "kind", None)
    if kind not in KINDS or not isinstance(getattr(data, "train", None), Mapping) or not isinstance(
            getattr(data, "validation", None), Mapping):
        raise TypeError(f"data must be an osf.training.TrainData (kind in {KINDS}, train and validation splits), got "
                        f"{type(data).__name__}: make one with osf.training.load_train_data(...)")
    for name, split in (("train", data.train), ("validation", data.validation)):
        if not split or len(next(iter(split.values()))) == 0:
            raise ValueError(f"the {name} split is empty")
    return kind


def param_groups(sn: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices, none on 1-D tensors (biases, norms, Mamba's D and dt_bias)."""
    decay, no_decay = [], []
    for p in sn.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_schedule(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor after ``done`` scheduler steps: linear warm-up to 1, then
    cosine down to ``min_lr_ratio`` (for ``LambdaLR``)."""
    warmup, total, floor = config.warmup_steps, config.steps, config.min_lr_ratio

    def factor(done: int) -> float:  # done: scheduler steps taken so far
        if warmup and done < warmup:
            return (done + 1) / warmup
        progress = (done - warmup) / max(total - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto" and not supported:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _prepare_out_dir(out: Path, config: TrainConfig, resume: bool, sn: Any, optimizer: Any, scheduler: Any,
                     rank: int) -> int:
    saved = out / CONFIG_FILE
    if saved.exists() and resume:
        changed = TrainConfig.load(saved).differences(config)
        if changed and (out / "checkpoint").exists():
            raise ValueError(f"{out} holds a run with other settings ({'; '.join(changed)}): resume with the same "
                             "settings, pass resume=False (--no-resume) to start over, or use another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config.save(saved)
    barrier()
    if not resume:
        return 0
    step = load_checkpoint(out, sn, optimizer, scheduler)
    if step > config.steps:
        raise ValueError(f"{out} holds a checkpoint at step {step}, past steps={config.steps}")
    return step


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers (stable across processes and runs)."""
    return random.Random(repr(values)).getrandbits(63)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="osf train", unit="step", dynamic_ncols=True)
