"""Resumable training state: one folder per checkpoint, written atomically.

``checkpoint/`` holds the shared weights (``weights.pt``, the supernet's full state dict),
the optimizer, the scheduler, the step and every RNG state. The data order and the sampled
subnets derive from the seed and the step, so nothing else is needed to continue exactly.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save_checkpoint(out_dir: Path, step: int, supernet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> Path:
    """Write the state after ``step`` optimizer steps to ``out_dir/checkpoint`` (replacing it
    only once the new one is complete, so a kill mid-write keeps the previous one)."""
    final = out_dir / CHECKPOINT
    tmp = out_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(supernet.state_dict(), tmp / "weights.pt")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state()}, tmp / "state.pt")
    old = out_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: Path, supernet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> int:
    """Restore the state saved in ``out_dir/checkpoint``; return its step (0 when none)."""
    folder = out_dir / CHECKPOINT
    if not (folder / "state.pt").exists():
        return 0
    supernet.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
