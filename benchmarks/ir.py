"""Trace + analyze time on CPU for a random-init Mamba-130M configuration and ViT-Base.

    python benchmarks/ir.py

Prints a table: model, parameters, trace seconds, analyze seconds, dims, blocks.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import osf.ir as oi  # noqa: E402
from reference_models import mamba_130m, vit_base  # noqa: E402  (benchmarks/, the script's folder)


def models():
    yield "Mamba-130M config (24 layers, hidden 768)", mamba_130m
    yield "ViT-Base (12 layers, hidden 768)", vit_base


def main() -> None:
    torch.manual_seed(0)
    table = Table(title=f"trace + analyze on CPU ({torch.get_num_threads()} threads)")
    for col in ("model", "params", "trace s", "analyze s", "total s", "dims", "blocks"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, make in models():
        model = make().eval()
        t0 = time.perf_counter()
        gm = oi.trace(model)
        t1 = time.perf_counter()
        ir = oi.analyze(gm)
        t2 = time.perf_counter()
        table.add_row(name, f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M", f"{t1 - t0:.2f}",
                      f"{t2 - t1:.2f}", f"{t2 - t0:.2f}", str(len(ir.dims)), str(len(ir.blocks)))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
