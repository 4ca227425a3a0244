"""Peak memory of supernet training with and without gradient checkpointing per block.

    python benchmarks/train_memory.py [--quick]

A random-init Mamba LM (hidden 256, vocabulary 1024) trained on long sequences (batch 1,
4096 tokens; 1024 with --quick) for 2 sandwich steps (largest, smallest, 1 random subnet),
at 6, 12 and 24 layers. Two measures, each in a fresh process: the tensors autograd keeps
for the backward pass after one forward of the largest subnet (counted with
``saved_tensors_hooks``, each storage once; weights included), and the peak RSS (VmHWM) of
the training steps above the RSS after building the supernet (activations, gradients,
AdamW state, and whatever the allocator keeps). With checkpointing, what is kept is each
block's input instead of every block's activations.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024
    raise KeyError(key)


def child(layers: int, checkpointing: bool, seq: int) -> None:
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    import osf
    from osf.training import TrainConfig, TrainData, train

    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=1024, hidden_size=256, state_size=16, num_hidden_layers=layers,
                                         expand=2, use_cache=False)).eval()
    sn = osf.supernet(model, {"input_ids": torch.randint(0, 1024, (1, 32))})
    ids = torch.randint(0, 1024, (4, seq))
    data = TrainData("lm", {"input_ids": ids}, {"input_ids": ids[:1]}, "random tokens")
    params_mb = sum(p.numel() * p.element_size() for p in sn.parameters()) / 2**20
    kept = saved_mib(sn, ids[:1], checkpointing)
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    train(sn, data, TrainConfig(steps=2, batch_size=1, num_random=1, eval_every=0, save_every=0, lr=1e-4,
                                gradient_checkpointing=checkpointing), progress=False)
    seconds = (time.perf_counter() - t0) / 2
    print(f"{params_mb:.1f} {kept:.1f} {_status('VmHWM') - base:.1f} {seconds:.2f}")


def saved_mib(sn, ids, checkpointing: bool) -> float:
    """MiB of the tensors autograd keeps for backward after one training forward."""
    import torch

    from osf.training.blocks import checkpoint_blocks

    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    sn.train()
    with checkpoint_blocks(sn.blocks, checkpointing), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sn(ids).logits
    del out
    sn.eval()
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, default=None)
    args = parser.parse_args()
    seq = 1024 if args.quick else 4096
    if args.child:
        child(int(args.child[0]), args.child[1] == "1", seq)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training memory (MiB), Mamba hidden 256, 1 x {seq} tokens, gradient checkpointing off / on")
    for col in ("layers", "weights MiB", "kept for backward: off", "on", "peak RSS: off", "on", "ratio",
                "s/step off", "s/step on"):
        table.add_column(col, justify="right")
    for layers in (6, 12, 24):
        rows = []
        for on in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--child", str(layers), on] + (["--quick"] if args.quick
                                 else []), capture_output=True, text=True, check=True).stdout.split()
            rows.append([float(x) for x in out[-4:]])
        (mb, kept_off, off, t_off), (_, kept_on, on_, t_on) = rows
        table.add_row(str(layers), f"{mb:.0f}", f"{kept_off:.0f}", f"{kept_on:.0f}", f"{off:.0f}", f"{on_:.0f}",
                      f"{on_ / off:.2f}", f"{t_off:.1f}", f"{t_on:.1f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
