"""Analysis speed and memory on CPU, beside Torch-Pruning's dependency graph, in one run.

    python benchmarks/ir.py [--tp PATH] [--skip-large] [--out benchmarks/results/ir]

Models (random init, the same inputs for both tools: ``osf.ir.default_inputs``): a Mamba-130M
configuration, ViT-Base, and a Mamba-1.4B configuration (48 layers, hidden 2048). Each model is
measured in a fresh process: ``osf.ir.trace`` + ``osf.ir.analyze`` (on fake tensors: the meta
device), Torch-Pruning's ``DependencyGraph().build_dependency`` (median of 3, interleaved with
OSF's), the whole ``osf.supernet`` build (its guards run real forwards), and the peak RSS of the
process while analysing, over the model's own RSS.

Torch-Pruning is not an OSF dependency: install it beside the benchmark, e.g.
``pip install --target /tmp/tp torch-pruning==1.6.1 --no-deps`` and pass ``--tp /tmp/tp``
(without it, its columns say "not installed").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

MODELS = {
    "mamba-130m": "Mamba-130M config (24 layers, hidden 768)",
    "vit-base": "ViT-Base (12 layers, hidden 768, 224 px)",
    "mamba-1.4b": "Mamba-1.4B config (48 layers, hidden 2048)",
}


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024  # MiB
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again at the current RSS
        f.write("5")


def _make(name: str) -> torch.nn.Module:
    from reference_models import mamba_130m, vit_base  # benchmarks/, the script's folder

    torch.manual_seed(0)
    if name == "mamba-130m":
        return mamba_130m()
    if name == "vit-base":
        return vit_base()
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=50280, hidden_size=2048, state_size=16, num_hidden_layers=48, expand=2,
                      conv_kernel=4)
    with torch.device("meta"):  # HF's init of 1.4B parameters takes minutes on 2 cores: fill them directly
        model = MambaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.tie_weights()
    return model


def _tp_build(model, inputs):
    import torch_pruning as tp

    mamba = "input_ids" in inputs
    tp.DependencyGraph().build_dependency(
        model, example_inputs=inputs, output_transform=lambda out: out.logits,
        forward_fn=lambda m, x: m(**x, use_cache=False) if mamba else m(**x))


def child(name: str, tp_path: str | None, with_build: bool) -> None:
    """Measures one model; prints one JSON line."""
    import warnings

    import osf
    import osf.ir as oi
    from osf.ir.inputs import default_inputs

    warnings.simplefilter("ignore")
    start = _status("VmRSS")
    model = _make(name).eval()
    model_rss = _status("VmRSS") - start
    inputs = default_inputs(model)
    rec = {"name": name, "params": sum(p.numel() for p in model.parameters()),
           "model_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, "model_rss": model_rss}
    _reset_peak()
    t0 = time.perf_counter()
    gm = oi.trace(model, inputs)
    t1 = time.perf_counter()
    ir = oi.analyze(gm)
    t2 = time.perf_counter()
    rec.update(trace_s=t1 - t0, analyze_s=t2 - t1, peak_analysis=_status("VmHWM") - start,
               fake=gm.meta["osf"]["fake"], real_because=gm.meta["osf"]["real_because"], dims=len(ir.dims),
               blocks=len(ir.blocks))
    del gm, ir
    ours, theirs = [rec["trace_s"] + rec["analyze_s"]], []
    have_tp = False
    if tp_path:
        sys.path.insert(0, tp_path)
        try:
            import torch_pruning  # noqa: F401
            have_tp = True
        except ImportError:
            pass
    for _ in range(2):
        if have_tp:
            t = time.perf_counter()
            _tp_build(model, inputs)
            theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        oi.analyze(oi.trace(model, inputs))
        ours.append(time.perf_counter() - t)
    if have_tp:
        t = time.perf_counter()
        _tp_build(model, inputs)
        theirs.append(time.perf_counter() - t)
    rec["osf_s"] = statistics.median(ours)
    rec["tp_s"] = statistics.median(theirs) if theirs else None
    if with_build:
        t = time.perf_counter()
        osf.supernet(model, inputs)
        rec["build_s"] = time.perf_counter() - t
    print(json.dumps(rec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tp", default=None, help="a folder holding torch_pruning (not an OSF dependency)")
    parser.add_argument("--skip-large", action="store_true", help="leave out the Mamba-1.4B configuration")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tp, args.build)
        return
    from rich.console import Console
    from rich.table import Table

    records = []
    for name in MODELS:
        if args.skip_large and name == "mamba-1.4b":
            continue
        cmd = [sys.executable, __file__, "--child", name] + (["--tp", args.tp] if args.tp else [])
        cmd += [] if name == "mamba-1.4b" else ["--build"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
        records.append(json.loads(out[-1]))
    table = Table(title=f"analysis on CPU ({torch.get_num_threads()} threads), beside Torch-Pruning's build_dependency")
    cols = ("model", "params", "fake", "OSF trace+analyze s", "Torch-Pruning s", "TP / OSF", "osf.supernet s",
            "supernet / TP", "peak RSS analysing / model")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = []
    for r in records:
        tp = r["tp_s"]
        row = (MODELS[r["name"]], f"{r['params'] / 1e6:.0f}M", "yes" if r["fake"] else f"no: {r['real_because']}",
               f"{r['osf_s']:.2f}", f"{tp:.2f}" if tp else "not installed", f"{tp / r['osf_s']:.1f}x" if tp else "-",
               f"{r['build_s']:.2f}" if "build_s" in r else "-",
               f"{r['build_s'] / tp:.2f}" if tp and "build_s" in r else "-",
               f"{r['peak_analysis'] / r['model_rss']:.2f}")
        rows.append(row)
        table.add_row(*row)
    Console(width=160).print(table)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(records, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(f"`python benchmarks/ir.py {' '.join(sys.argv[1:])}`\n\n| " + " | ".join(cols) + " |\n|"
                    + "---|" * len(cols) + "\n")
            for row in rows:
                f.write("| " + " | ".join(row) + " |\n")


if __name__ == "__main__":
    main()
