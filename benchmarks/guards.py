"""What the guards cost: the share of ``osf.supernet(...)`` spent in the build check and of
``sn.extract(cfg)`` spent in the extract check, timed inside the same call (so other load on
the machine shifts both alike), on CPU, random-init models, default example inputs.

    python benchmarks/guards.py [--repeats 3]

Extraction is timed at a config with every width at its middle choice and the first layer of
each stack dropped. Target: the build check costs <= 10% of the build.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import osf  # noqa: E402
from reference_models import mamba_130m, vit_base  # noqa: E402  (benchmarks/, the script's folder)


def models():
    yield "Mamba-130M config", mamba_130m
    yield "ViT-Base", vit_base
    yield "Llama GQA (8 layers, hidden 512, 8/2 heads)", lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2))


def middle_config(sn):
    cfg = sn.space.largest()
    for d, choices in sn.space.dims.items():
        cfg[d] = choices[len(choices) // 2]
    for names in sn.space.stacks.values():
        cfg[names[0]] = False
    return cfg


class Timed:
    """Wraps a function and adds up the seconds spent in it."""

    def __init__(self, module, name):
        self.module, self.name, self.original, self.seconds = module, name, getattr(module, name), 0.0
        setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def main() -> None:
    import osf.elastic.verify as verify

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    table = Table(title=f"guard cost on CPU ({torch.get_num_threads()} threads), medians of {args.repeats}")
    for col in ("model", "build s", "build check s", "check share", "extract s", "extract check s", "check share "):
        table.add_column(col, justify="left" if col == "model" else "right")
    build_check, extract_check = Timed(verify, "check_build"), Timed(verify, "check_extract")
    for name, make in models():
        original = make().eval()
        builds, extracts = [], []
        for _ in range(args.repeats):
            model = copy.deepcopy(original)
            build_check.seconds = 0.0
            t0 = time.perf_counter()
            sn = osf.supernet(model)
            builds.append((time.perf_counter() - t0, build_check.seconds))
            cfg = middle_config(sn)
            extract_check.seconds = 0.0
            t0 = time.perf_counter()
            sn.extract(cfg)
            extracts.append((time.perf_counter() - t0, extract_check.seconds))
        b, bc = (statistics.median(x[i] for x in builds) for i in (0, 1))
        e, ec = (statistics.median(x[i] for x in extracts) for i in (0, 1))
        table.add_row(name, f"{b:.2f}", f"{bc:.2f}", f"{bc / b:.0%}", f"{e:.2f}", f"{ec:.2f}", f"{ec / e:.0%}")
        del sn, original
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
