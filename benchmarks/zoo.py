"""Generality: does OSF give exact subnets for every family of standard models, or refuse clearly?

    OMP_NUM_THREADS=1 python benchmarks/zoo.py [--only NAME ...] [--out benchmarks/results/zoo]

For each tiny random-init model of ``tests/zoo.py``'s :data:`FAMILIES` (Hugging Face classes
built from configs, and users' own modules), weights sharpened and constants randomised so no
missed member can hide, it builds ``osf.supernet`` and, at the smallest config and two sampled
ones, checks the live supernet against an independent slicer (``tests/oracle_tools.py``'s
``reference_subnet``), extracts the subnet, and saves and reloads it. A model is

* ``exact``: built, largest config equal to the original, every config equal to the reference,
  extracted and reloaded equal to the supernet;
* ``refused``: ``osf.supernet`` (or ``extract``) raised :class:`osf.VerificationError` naming
  what is unsupported, before any wrong model left OSF;
* ``crash``: another exception (not wrong output, but not a clear refusal either);
* ``wrong``: a model left OSF and computes something else than it must. Must be 0.

Results: a table on stdout, ``<out>.md`` and ``<out>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo and the oracles

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import osf  # noqa: E402
from osf.ir.inputs import default_inputs  # noqa: E402
from osf.ir.trace import flatten_output, normalize_inputs  # noqa: E402
from oracle_tools import randomise_constants, reference_subnet, sharpen_weights  # noqa: E402
from zoo import FAMILIES, build_family  # noqa: E402

TOL = 1e-4


def rel_err(out: dict, ref: dict) -> float:
    worst = 0.0
    for k, b in ref.items():
        a = out.get(k)
        if not isinstance(b, torch.Tensor) or not b.is_floating_point():
            continue
        if a is None or a.shape != b.shape:
            return float("inf")
        a, b = a.double(), b.double()
        fin = torch.isfinite(b)
        if not torch.equal(torch.isfinite(a), fin):
            return float("inf")
        worst = max(worst, ((a[fin] - b[fin]).norm() / b[fin].norm().clamp_min(1e-12)).item())
    return worst


def outputs(model, inputs) -> dict:
    args, kwargs = inputs
    with torch.no_grad():
        return flatten_output(model(*args, **kwargs))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def fixture(name: str):
    model, ex = build_family(name)
    randomise_constants(sharpen_weights(model, seed=1), seed=1)
    return model, ex, normalize_inputs(ex if ex is not None else default_inputs(model))


def check(name: str) -> dict:
    family = FAMILIES[name][0]
    rec = {"model": name, "family": family, "verdict": "", "build_s": None, "dims": {}, "stacks": {}, "detail": ""}
    model, ex, inputs = fixture(name)
    rec["params"] = sum(p.numel() for p in model.parameters())
    original = outputs(model, inputs)
    t0 = time.perf_counter()
    try:
        sn = osf.supernet(model, ex)
    except osf.VerificationError as e:
        rec.update(verdict="refused", build_s=time.perf_counter() - t0, detail="build: " + first_line(e))
        return rec
    except Exception as e:  # noqa: BLE001
        rec.update(verdict="crash", build_s=time.perf_counter() - t0, detail="build: " + first_line(e))
        rec["trace"] = traceback.format_exc(limit=-4)
        return rec
    rec["build_s"] = time.perf_counter() - t0
    rec["dims"] = {d: sn.ir.dims[d].kind for d in sn.space.dims}
    rec["stacks"] = {g: len(b) for g, b in sn.ir.depth_groups.items()}  # one depth choice per kind of layer
    stage = "largest"
    try:
        with sn.use(sn.space.largest()):
            err = rel_err(outputs(sn, inputs), original)
        if err > TOL:
            rec.update(verdict="wrong", detail=f"largest config differs from the original ({err:.2e})")
            return rec
        for label, cfg in [("smallest", sn.space.smallest()), ("sample(0)", sn.space.sample(0)),
                           ("sample(1)", sn.space.sample(1))]:
            stage = f"{label} reference"
            ref = reference_subnet(sn, cfg, build_family(name)[0].eval(), inputs)
            with sn.use(cfg):
                live = outputs(sn, inputs)
            err = rel_err(live, outputs(ref, inputs))
            if err > TOL:
                rec.update(verdict="wrong", detail=f"{label}: supernet differs from the reference slicer ({err:.2e})")
                return rec
            stage = f"{label} extract"
            try:
                sub = sn.extract(cfg)
            except osf.VerificationError as e:
                rec.update(verdict="refused", detail=f"extract {label}: " + first_line(e))
                return rec
            err = rel_err(outputs(sub, inputs), live)
            if err > TOL:
                rec.update(verdict="wrong", detail=f"{label}: extracted model differs from the supernet ({err:.2e})")
                return rec
            if sum(p.numel() for p in sub.parameters()) != sn.num_params(cfg):
                rec.update(verdict="wrong", detail=f"{label}: extracted parameter count != sn.num_params")
                return rec
            stage = f"{label} save/load"
            with tempfile.TemporaryDirectory() as tmp:
                osf.save_subnet(sub, tmp)
                fresh = None if hasattr(model, "config") else build_family(name)[0]
                loaded = osf.load_subnet(tmp, model=fresh).eval()
            err = rel_err(outputs(loaded, inputs), live)
            if err > TOL:
                rec.update(verdict="wrong", detail=f"{label}: reloaded subnet differs ({err:.2e})")
                return rec
    except Exception as e:  # noqa: BLE001
        rec.update(verdict="crash", detail=f"{stage}: " + first_line(e))
        rec["trace"] = traceback.format_exc(limit=-4)
        return rec
    rec["verdict"] = "exact"
    return rec


def dims_summary(rec: dict) -> str:
    kinds: dict[str, int] = {}
    for k in rec["dims"].values():
        kinds[k] = kinds.get(k, 0) + 1
    parts = [f"{k} x{n}" if n > 1 else k for k, n in sorted(kinds.items())]
    if rec["stacks"]:
        parts.append("depth: " + ", ".join(f"{s or '(top)'}[{n}]" for s, n in rec["stacks"].items()))
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names (default: the whole zoo)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    names = a.only or list(FAMILIES)
    console = Console()
    recs = []
    for n in names:
        t0 = time.perf_counter()
        rec = check(n)
        rec["total_s"] = time.perf_counter() - t0
        recs.append(rec)
        console.print(f"{n:18s} {rec['verdict']:8s} {rec['total_s']:6.1f}s  {rec['detail']}")
        if a.only and rec.get("trace"):
            console.print(rec["trace"], markup=False, highlight=False)
    counts = {v: sum(r["verdict"] == v for r in recs) for v in ("exact", "refused", "crash", "wrong")}
    table = Table(title=f"OSF zoo: {len(recs)} tiny models, " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for col in ("model", "family", "params", "verdict", "build s", "dims found", "detail"):
        table.add_column(col)
    for r in recs:
        table.add_row(r["model"], r["family"], str(r["params"]), r["verdict"],
                      f"{r['build_s']:.2f}" if r["build_s"] is not None else "-", dims_summary(r), r["detail"])
    console.print(table)
    if a.only:
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"counts": counts, "models": recs}, indent=1))
    lines = [f"# OSF zoo: {len(recs)} tiny models",
             "",
             "`OMP_NUM_THREADS=1 python benchmarks/zoo.py` on CPU (2 shared cores); random-init models, weights "
             "sharpened and constants randomised; each checked at the smallest config and two sampled ones against "
             "an independent slicer, extracted, saved and reloaded.",
             "",
             "| verdict | models |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()] + [
             "", "| model | family | params | verdict | build s | dims found | detail |", "|---|---|---|---|---|---|---|"]
    for r in recs:
        b = f"{r['build_s']:.2f}" if r["build_s"] is not None else "-"
        lines.append(f"| {r['model']} | {r['family']} | {r['params']} | {r['verdict']} | {b} | {dims_summary(r)} | "
                     f"{r['detail'].replace('|', '/')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
