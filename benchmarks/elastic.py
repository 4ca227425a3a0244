"""Supernet overheads on CPU, measured as ratios within one run.

    python benchmarks/elastic.py [--quick]

For a random-init Mamba at the 130M configuration (batch 1, 256 tokens) and ViT-Base
(batch 8): forward time of the supernet at a config / forward time of the extracted
subnet (largest, smallest, 3 random configs), without gradients and as a training step
(forward + backward; the supernet's gradients flow into its shared full weights), config
switch time (``sn.set_config`` over 20 sampled configs, each visited once before timing; also
with ``sn.split_views = False``, the former path that gathers Mamba's ``[x | z]`` slices into
copies, in the same run), extraction time, and peak memory of building the supernet / memory
of the model.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def make(name: str, quick: bool):
    from reference_models import mamba_130m, vit_base  # benchmarks/, the script's folder

    torch.manual_seed(0)
    if name == "mamba":
        model = mamba_130m(4 if quick else 24)
        inputs = {"input_ids": torch.randint(0, 50280, (1, 64 if quick else 256))}
    else:
        model = vit_base(2 if quick else 12, num_labels=2)  # transformers' default head, as measured
        inputs = {"pixel_values": torch.randn(2 if quick else 8, 3, 224, 224)}
    return model.eval(), inputs


def timed_pair(f, g, repeats: int) -> tuple[float, float]:
    """Median times of ``f`` and ``g``, interleaved so that machine noise hits both alike."""
    f(), g()  # warm-up
    tf, tg = [], []
    for _ in range(repeats):
        for fn, acc in ((f, tf), (g, tg)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(tf), statistics.median(tg)


def train_step(model, inputs) -> None:
    """Forward and backward (gradients kept from step to step: no optimizer in the timing)."""
    model(**inputs).logits.float().mean().backward()


def _proc_status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024  # MiB
    raise KeyError(key)


def memory_child(name: str, quick: bool) -> None:
    """Prints 'model_mb rss_of_model_mb build_peak_above_start_mb' (run in a fresh process)."""
    import osf

    start = _proc_status("VmRSS")
    model, inputs = make(name, quick)
    model_rss = _proc_status("VmRSS") - start
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    osf.supernet(model, inputs)
    peak = _proc_status("VmHWM") - start
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"{model_mb:.1f} {model_rss:.1f} {peak:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller models, for a fast check")
    parser.add_argument("--memory-child", default=None)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.quick)
        return
    import osf

    console = Console(width=150)
    fwd = Table(title=f"forward: supernet at config / extracted subnet (CPU, {torch.get_num_threads()} threads)")
    for col in ("model", "config", "params", "supernet ms", "extracted ms", "ratio", "train: supernet ms",
                "extracted ms", "ratio "):
        fwd.add_column(col, justify="left" if col in ("model", "config") else "right")
    ops = Table(title="switch, extraction and memory")
    for col in ("model", "switch ms", "switch ms (gathered)", "extract s", "model MB",
                "peak RSS while building / model RSS"):
        ops.add_column(col, justify="left" if col == "model" else "right")
    repeats = 3 if args.quick else 5
    for name in ("mamba", "vit"):
        model, inputs = make(name, args.quick)
        sn = osf.supernet(model, inputs)
        configs = [("largest", sn.space.largest()), ("smallest", sn.space.smallest())]
        configs += [(f"random {s}", sn.space.sample(s)) for s in range(3)]
        for label, cfg in configs:
            sn.set_config(cfg)
            sub = sn.extract(cfg)
            if name == "mamba":  # same scan kernels on both sides
                from osf.kernels.mamba import patch_mamba

                patch_mamba(sub)
            with torch.no_grad():
                t_sn, t_sub = timed_pair(lambda: sn(**inputs), lambda: sub(**inputs), repeats)
            g_sn, g_sub = timed_pair(lambda: train_step(sn, inputs), lambda: train_step(sub, inputs), repeats)
            fwd.add_row(name, label, f"{sn.num_params(cfg) / 1e6:.1f}M", f"{t_sn * 1e3:.1f}", f"{t_sub * 1e3:.1f}",
                        f"{t_sn / t_sub:.3f}", f"{g_sn * 1e3:.1f}", f"{g_sub * 1e3:.1f}", f"{g_sn / g_sub:.3f}")
            del sub
            gc.collect()
        cfgs = [sn.space.sample(100 + s) for s in range(20)]
        switch_ms = {}
        for split in (False, True):
            sn.split_views = split
            for c in cfgs:  # first visit fills the view cache
                sn.set_config(c)
            t0 = time.perf_counter()
            for _ in range(5):
                for c in cfgs:
                    sn.set_config(c)
            switch_ms[split] = (time.perf_counter() - t0) / (5 * len(cfgs)) * 1e3
        t0 = time.perf_counter()
        sn.extract(sn.space.sample(7))
        extract_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--memory-child", name] + (["--quick"] if args.quick else []),
                             capture_output=True, text=True, check=True).stdout.split()
        model_mb, model_rss, build_rss = (float(x) for x in out[-3:])
        ops.add_row(name, f"{switch_ms[True]:.2f}", f"{switch_ms[False]:.2f}", f"{extract_s:.2f}", f"{model_mb:.0f}",
                    f"{build_rss / model_rss:.2f}")
        del sn, model
        gc.collect()
    console.print(fwd)
    console.print(ops)


if __name__ == "__main__":
    main()
