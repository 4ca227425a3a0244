"""Several processes (``torchrun``): who am I, which examples are mine, and averaging gradients.

Every rank samples the same subnets (they derive from the seed and the step), takes its own
share of each global batch, and averages gradients with one all-reduce per step, so N
processes compute what one process computes on the whole global batch.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPU, nccl on
    GPU); False when not launched by torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks, in one flat buffer.

    Ranks run the same subnets, so the same parameters hold gradients on every rank."""
    _, world = rank_and_world()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
