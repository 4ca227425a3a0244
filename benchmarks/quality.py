"""Does the search find the best subnet under a budget? OSF against simple pruning baselines.

    python benchmarks/quality.py [--quick] [--seeds 3] [--trials 40] [--models lm,vit] [--out PATH]

Two small trained models, each with explicit train / validation / test splits:

- ``mamba-lm``: the demo Mamba LM (``osf.demo.load_or_train()``, trained once and cached), on the
  English text that ships with Python (``osf.demo.load_corpus()``): its training texts are the train
  split; its held-out texts are split by document into validation and test (``benchmarks/train.py``'s
  ``lm_task``). Score: next-token perplexity (lower is better).
- ``vit-digits``: a small ViT (6 layers, hidden 128, 2x2 patches) trained here, once and cached, on
  scikit-learn's handwritten digits (1797 real 8x8 images shipped with scikit-learn), split by a
  seeded shuffle into train / validation / test. Score: top-1 accuracy.

Budgets: 50% and 75% of the parameters. Methods (none of them trains the subnet):

1. prefix slicing: every dim at one uniform width fraction, channels in their original order
   (the first ones kept), full depth; the largest fraction that fits;
2. magnitude slicing: the same with channels ordered by weight magnitude;
3. layer removal: whole layers dropped greedily, each step the one whose removal gives the lowest
   validation loss, full widths, until the budget fits (``benchmarks/train.py``'s baseline);
4. OSF: ``osf.supernet(model, calibration=evaluator)`` (channels and layers ranked on a sample of the
   TRAIN split), ``osf.search(sn, evaluator, n_trials, seed, constraints={"max_params_frac": f})``
   scored on a subset of the VALIDATION split, the best configs re-ranked on the whole validation
   split, ``best(max_params_frac=f)``, extract, TEST score; seeds 0..N-1;
5. OSF as it was before calibration (``osf.supernet(model)``: magnitude channels, layers by
   ``1 - cos`` on random inputs, no budget repair, no re-ranking), seed 0 only, for reference.

Before the searches, the channel measures (magnitude, activation, Taylor, Fisher) and the layer
orders (greedy by calibration loss, ``1 - cos``) are compared on the VALIDATION split at the
width-only and depth-only configs at each budget. Nothing is chosen on test data.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.train import FRACS, Clock, Task, batches, layer_removal, lm_task, pretrain_vit, stat  # noqa: E402

MEASURES = ("magnitude", "activation", "taylor", "fisher")
FULL = dict(trials=40, search_batches=dict(lm=2, vit=4), eval_batch=64, calibration=8,
            lm=dict(), vit=dict(pretrain_steps=600, pretrain_batch=64, pretrain_lr=2e-3, n_val=400, n_test=400))
QUICK = dict(trials=6, search_batches=dict(lm=1, vit=1), eval_batch=64, calibration=2,
             lm=dict(val_blocks=64), vit=dict(pretrain_steps=60, pretrain_batch=64, pretrain_lr=2e-3, n_val=200,
                                              n_test=200))


# ============================================================================ tasks
def cache_dir() -> Path:
    root = Path(os.environ.get("OSF_CACHE_DIR", Path.home() / ".cache" / "osf"))
    return root / "quality"


def vit_digits_task(cfg: dict[str, Any], eval_batch: int, clock: Clock) -> Task:
    """A small ViT trained on scikit-learn's digits (cached by its settings)."""
    from sklearn.datasets import load_digits
    from transformers import ViTConfig, ViTForImageClassification

    from osf.training import TrainData

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test, n_val = cfg["n_test"], cfg["n_val"]
    te, va, tr = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    mean, std = float(x[tr].mean()), float(x[tr].std())
    x = (x - mean) / std
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=128, num_hidden_layers=6,
                       num_attention_heads=4, intermediate_size=256, num_labels=10)
    key = json.dumps({**cfg, "model": config.to_diff_dict()}, sort_keys=True, default=str)
    path = cache_dir() / f"vit-digits-{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    if path.is_file():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["weights"])
        info = {**state["info"], "cached": True}
    else:
        with clock("vit: train the original model (once, cached)"):
            info = pretrain_vit(model, x[tr], y[tr], cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": model.state_dict(), "info": info}, path)
    model.eval()
    task = Task()
    task.name, task.kind, task.metric, task.model = "vit-digits", "images", "accuracy", model
    task.val = batches({"pixel_values": x[va], "labels": y[va]}, eval_batch)
    task.test = batches({"pixel_values": x[te], "labels": y[te]}, eval_batch)
    task.data = TrainData("images", {"pixel_values": x[tr], "labels": y[tr]}, {"pixel_values": x[va], "labels": y[va]},
                          "sklearn digits")
    task.info = {"model": "ViTForImageClassification (6 layers, hidden 128, 4 heads, MLP 256, 2x2 patches of 8x8 "
                          f"images, {sum(p.numel() for p in model.parameters()):,} params)",
                 "data": "scikit-learn load_digits(): 1797 real 8x8 grey-level handwritten digits, shuffled with "
                         "seed 0 into test / validation / train",
                 "images": {"train": len(tr), "validation": len(va), "test": len(te)}, "training": info}
    return task


def calibration_of(task: Task, n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` calibration batches from the TRAIN split (evenly spread over it)."""
    train = task.data.train
    total = len(next(iter(train.values())))
    size = 8 if task.kind == "lm" else 32
    pick = torch.linspace(0, total - 1, min(total, n * size)).round().long()
    return batches({k: v[pick] for k, v in train.items()}, size)


class ValidationScore:
    """The search's score: minus the validation loss (LM) or validation accuracy (images) on the first
    ``n_batches`` validation batches (``None``: all). ``full_sample()`` scores all of them (the
    re-ranking); ``calibration_batches()`` come from the TRAIN split (never scored)."""

    def __init__(self, task: Task, n_batches: int | None, calibration: list[dict[str, torch.Tensor]]):
        self.task, self.n_batches, self.calibration = task, n_batches, calibration
        self.name = f"{task.name}:validation" + (f"[:{n_batches}]" if n_batches else "")

    def __call__(self, model: torch.nn.Module) -> float:
        m = self.task.metrics(model, self.task.val[: self.n_batches])
        return -m["loss"] if self.task.kind == "lm" else m["accuracy"]

    def calibration_batches(self, n: int = 8) -> list[dict[str, torch.Tensor]]:
        return self.calibration[:n]

    def full_sample(self) -> "ValidationScore | None":
        if self.n_batches is None or self.n_batches >= len(self.task.val):
            return None
        return ValidationScore(self.task, None, self.calibration)

    def describe(self) -> str:
        return ("minus the validation next-token loss (nats)" if self.task.kind == "lm"
                else "validation accuracy") + ", higher is better"


# ======================================================================= methods
def prefix_supernet(model: torch.nn.Module) -> Any:
    """A supernet over a copy of ``model`` with its channels in their original order (no importance)."""
    from osf.elastic.supernet import Supernet, build_space
    from osf.ir import analyze
    from osf.ir.inputs import default_inputs

    model = copy.deepcopy(model).eval()
    ex = default_inputs(model)
    return Supernet(model, analyze(model, ex), build_space(analyze(model, ex)), ex)


def uniform_slicing(task: Task, sn: Any) -> dict[str, Any]:
    """Every dim at one width fraction (its largest choice <= fraction x size), full depth; for each budget the
    largest fraction that fits; extract; test score."""
    space = sn.space
    full = sn.num_params(space.largest())
    fractions = sorted({c / ch[0] for ch in space.dims.values() for c in ch}, reverse=True)

    def uniform(r: float) -> dict[str, Any]:
        cfg = {d: max([c for c in ch if c <= r * ch[0] + 1e-9] or [ch[-1]]) for d, ch in space.dims.items()}
        return {**cfg, **{b: True for b in space.blocks}}

    out: dict[str, Any] = {}
    for f in FRACS:
        fit = next(((r, uniform(r)) for r in fractions if sn.num_params(uniform(r)) <= f * full), None)
        if fit is None:
            out[str(f)] = {"error": "no uniform fraction fits"}
            continue
        r, cfg = fit
        out[str(f)] = {"test": task.test_score(sn.extract(cfg).eval()), "params_frac": sn.num_params(cfg) / full,
                       "width_fraction": r}
    sn.set_config(space.largest())
    return out


def compare_measures(task: Task, calib: list[Any], clock: Clock) -> dict[str, Any]:
    """Validation score of the width-only and depth-only configs at each budget, per channel measure and
    per layer order (the same budget corners the search enqueues)."""
    import osf
    from osf.search.samplers import CostModel, budget_corners

    lm = task.kind == "lm"
    out: dict[str, Any] = {"width_only": {}, "depth_only": {}, "build_s": {}}

    def val(sn: Any, params: dict[str, Any]) -> float:
        with sn.use(sn.space.to_config(params)):
            m = task.metrics(sn.model, task.val)
        return m["perplexity"] if lm else m["accuracy"]

    for measure in MEASURES:
        t = time.perf_counter()
        with clock(f"{task.name}: importance builds"):
            sn = osf.supernet(copy.deepcopy(task.model).eval(), importance=measure, calibration=calib,
                              block_order="cosine")
        out["build_s"][measure] = time.perf_counter() - t
        cost = CostModel(sn.space, sn.num_params)
        full = sn.num_params(sn.space.largest())
        row = {}
        for f in FRACS:
            corners = budget_corners(sn.space, cost, f * full)
            width = [c for c in corners if all(c.get(s + ":depth", 0) == len(b) or s + ":depth" not in c
                                               for s, b in sn.space.stacks.items())]
            row[str(f)] = val(sn, width[-1]) if width else None
        out["width_only"][measure] = row
    for order in ("greedy", "cosine"):
        t = time.perf_counter()
        with clock(f"{task.name}: importance builds"):
            sn = osf.supernet(copy.deepcopy(task.model).eval(), importance="magnitude", calibration=calib,
                              block_order=order)
        out["build_s"]["layers:" + order] = time.perf_counter() - t
        cost = CostModel(sn.space, sn.num_params)
        full = sn.num_params(sn.space.largest())
        row = {}
        for f in FRACS:
            corners = budget_corners(sn.space, cost, f * full)
            depth = [c for c in corners if all(c[d] == ch[0] for d, ch in sn.space.dims.items())]
            row[str(f)] = val(sn, depth[0]) if depth else None
        out["depth_only"][order] = row
    return out


def osf_search(task: Task, sn: Any, evaluator: Any, trials: int, seed: int, **kw: Any) -> dict[str, Any]:
    """One search per budget, ``best(max_params_frac=f)``, extract, test score."""
    import osf

    full = sn.num_params(sn.space.largest())
    out: dict[str, Any] = {}
    for f in FRACS:
        t = time.perf_counter()
        res = osf.search(sn, evaluator, n_trials=trials, seed=seed, constraints={"max_params_frac": f},
                         show_progress=False, **kw)
        df = res.trials
        fr = df["params"] / full
        try:
            row = res.best(max_params_frac=f)
        except ValueError as e:
            out[str(f)] = {"error": str(e)}
            continue
        cfg = json.loads(row["config"])
        sub = sn.extract(cfg).eval()
        out[str(f)] = {"test": task.test_score(sub), "val_score": float(row["score"]),
                       "rerank_score": (None if "rerank_score" not in row or row["rerank_score"] != row["rerank_score"]
                                        else float(row["rerank_score"])),
                       "params_frac": sn.num_params(cfg) / full, "trial": int(row["number"]),
                       "trials_in_band": float(((fr >= 0.9 * f) & (fr <= f + 1e-9)).mean()),
                       "median_trial_params_frac": float(fr.median()),
                       "depths": sn.space.depths(cfg), "search_s": time.perf_counter() - t}
        sn.set_config(sn.space.largest())
    return out


def run_task(task: Task, settings: dict[str, Any], seeds: list[int], clock: Clock) -> dict[str, Any]:
    import osf

    name, lm = task.name, task.kind == "lm"
    res: dict[str, Any] = {"info": task.info, "metric": task.metric, "better": "lower" if lm else "higher"}
    with clock(f"{name}: full model test score"):
        res["full"] = task.test_score(task.model)
    calib = calibration_of(task, settings["calibration"])
    with clock(f"{name}: channel measures and layer orders compared (validation)"):
        res["measures"] = compare_measures(task, calib, clock)
    print(f"  [{name}] measures: {json.dumps(res['measures'])}", flush=True)
    with clock(f"{name}: prefix slicing baseline"):
        res["prefix_slicing"] = uniform_slicing(task, prefix_supernet(task.model))
    with clock(f"{name}: magnitude slicing baseline"):
        res["magnitude_slicing"] = uniform_slicing(
            task, osf.supernet(copy.deepcopy(task.model).eval(), importance="magnitude", block_order="cosine"))
    with clock(f"{name}: layer removal baseline"):
        res["layer_removal"] = layer_removal(task)
    print(f"  [{name}] baselines done", flush=True)
    ev = ValidationScore(task, settings["search_batches"]["lm" if lm else "vit"], calib)
    t = time.perf_counter()
    with clock(f"{name}: osf.supernet(model, calibration=evaluator)"):
        sn = osf.supernet(copy.deepcopy(task.model).eval(), calibration=ev)
    res["osf_build_s"] = time.perf_counter() - t
    res["osf_build_config"] = sn.build_config.to_dict()
    res["seeds"] = {}
    for seed in seeds:
        with clock(f"{name}: OSF searches ({len(FRACS)} x {settings['trials']} trials) + test"):
            res["seeds"][str(seed)] = osf_search(task, sn, ev, settings["trials"], seed)
        print(f"  [{name}] seed {seed}: " + ", ".join(f"{f}: {res['seeds'][str(seed)][str(f)].get('test')}"
                                                      for f in FRACS), flush=True)
    with clock(f"{name}: OSF before (no calibration, no repair, no re-ranking), seed 0"):
        old = osf.supernet(copy.deepcopy(task.model).eval(), importance="magnitude", block_order="cosine",
                           config=osf.SupernetConfig(min_depth=0.5))
        res["osf_before"] = osf_search(task, old, ValidationScore(task, ev.n_batches, calib), settings["trials"],
                                       0, budget_band=None, rerank=0)
    verdicts(res)
    return res


# ======================================================================= summary
def verdicts(res: dict[str, Any]) -> None:
    """Per budget: the best baseline and whether OSF beats it by more than OSF's spread across seeds
    (max - min), in the score's better direction."""
    lower = res["better"] == "lower"
    res["verdict"] = {}
    for f in FRACS:
        base = {k: res[k].get(str(f), {}).get("test") for k in ("prefix_slicing", "magnitude_slicing", "layer_removal")}
        base = {k: v for k, v in base.items() if v is not None}
        osf_vals = [r.get(str(f), {}).get("test") for r in res["seeds"].values()]
        osf_vals = [v for v in osf_vals if v is not None]
        if not base or not osf_vals:
            res["verdict"][str(f)] = {"met": False, "why": "missing results"}
            continue
        best_k = min(base, key=base.get) if lower else max(base, key=base.get)
        mean = statistics.mean(osf_vals)
        margin = (base[best_k] - mean) if lower else (mean - base[best_k])
        spread = max(osf_vals) - min(osf_vals)
        res["verdict"][str(f)] = {"best_baseline": best_k, "baseline": base[best_k], "osf_mean": mean,
                                  "margin": margin, "spread": spread, "met": margin > spread}


def table(res: dict[str, Any]) -> str:
    fmt = "{:.2f}" if res["metric"] == "perplexity" else "{:.4f}"
    head = " | ".join(f"{int(100 * f)}%: params | {int(100 * f)}%: test {res['metric']}" for f in FRACS)
    lines = [f"| method | {head} |", "|---|" + "---|" * (2 * len(FRACS))]

    def row(label: str, per_f: list[dict[str, Any]]) -> str:
        cells = []
        for f in FRACS:
            entries = [d.get(str(f), {}) for d in per_f]
            cells.append(stat([e.get("params_frac") and 100 * e["params_frac"] for e in entries], "{:.1f}%"))
            vals = [e.get("test") for e in entries if e.get("test") is not None]
            cell = stat(vals, fmt)
            if len(vals) > 1:
                cell += f", sd {fmt.format(statistics.stdev(vals))}"
            cells.append(cell)
        return f"| {label} | " + " | ".join(cells) + " |"

    full = fmt.format(res["full"])
    lines.append("| full model | " + " | ".join(f"100% | {full}" for _ in FRACS) + " |")
    lines.append(row("prefix slicing (uniform width, original order)", [res["prefix_slicing"]]))
    lines.append(row("magnitude slicing (uniform width)", [res["magnitude_slicing"]]))
    lines.append(row("layer removal (greedy, validation loss)", [res["layer_removal"]]))
    lines.append(row(f"OSF before this change (seed 0)", [res["osf_before"]]))
    lines.append(row(f"**OSF** ({len(res['seeds'])} seeds: mean (min-max), sd)", list(res["seeds"].values())))
    return "\n".join(lines)


def report(results: dict[str, Any], settings: dict[str, Any], seeds: list[int], clock: Clock, command: str,
           total: dict[str, float]) -> str:
    out = ["# Search quality benchmark: OSF against pruning baselines", "", "```", command, "```", ""]
    out.append(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs while it ran), "
               f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU only. Seeds {seeds}. Total "
               f"{total['wall_s']:.0f} s wall, {total['cpu_s']:.0f} s CPU.")
    out.append("")
    out.append(f"OSF: `osf.supernet(model, calibration=evaluator)` (defaults: channels by "
               f"importance='auto', layers by block_order='auto', i.e. ranked on {settings['calibration']} batches of "
               "the TRAIN split; up to 3/4 of the layers droppable), then per budget f "
               f"`osf.search(sn, evaluator, n_trials={settings['trials']}, seed=seed, "
               "constraints={\"max_params_frac\": f})` (score and params; NSGA-II; samples repaired into "
               "[0.9, 1.0] x budget; depth-only and width-only corners enqueued), scored on the first "
               f"{settings['search_batches']} validation batches of {settings['eval_batch']}; the 5 best re-ranked "
               "on the whole validation split; `best(max_params_frac=f)`, extract, TEST score. Baselines do not "
               "depend on the seed. Params are % of the full model's. None of the subnets is trained.")
    for res in results.values():
        out += ["", f"## {res['info']['model']}", "", f"Test {res['metric']} ({res['better']} is better).", ""]
        out.append(table(res))
        out.append("")
        for f in FRACS:
            v = res["verdict"][str(f)]
            if "best_baseline" not in v:
                out.append(f"- {int(100 * f)}%: {v['why']}.")
                continue
            out.append(f"- {int(100 * f)}%: best baseline {v['best_baseline']} ({v['baseline']:.4g}); OSF mean "
                       f"{v['osf_mean']:.4g}, margin {v['margin']:+.4g}, spread (max-min over seeds) "
                       f"{v['spread']:.4g}: target (margin > spread) **{'met' if v['met'] else 'NOT met'}**.")
        m = res["measures"]
        metric = "perplexity" if res["metric"] == "perplexity" else "accuracy"
        out.append("")
        out.append(f"Channel measures and layer orders, validation {metric} of the width-only / depth-only config "
                   "at each budget (the search's corners):")
        out.append("")
        out.append("| ranking | " + " | ".join(f"{int(100 * f)}%" for f in FRACS) + " | build s |")
        out.append("|---|" + "---|" * (len(FRACS) + 1))
        for k, row in m["width_only"].items():
            out.append(f"| channels: {k} (width only) | " + " | ".join(
                "-" if row[str(f)] is None else f"{row[str(f)]:.4g}" for f in FRACS) + f" | {m['build_s'][k]:.1f} |")
        for k, row in m["depth_only"].items():
            out.append(f"| layers: {k} (depth only) | " + " | ".join(
                "-" if row[str(f)] is None else f"{row[str(f)]:.4g}" for f in FRACS)
                + f" | {m['build_s']['layers:' + k]:.1f} |")
        out.append("")
        seeds_ = list(res["seeds"].values())
        for f in FRACS:
            band = stat([r.get(str(f), {}).get("trials_in_band") and 100 * r[str(f)]["trials_in_band"] for r in seeds_],
                        "{:.0f}%")
            med = stat([r.get(str(f), {}).get("median_trial_params_frac") and 100 * r[str(f)]["median_trial_params_frac"]
                        for r in seeds_], "{:.0f}%")
            old = res["osf_before"].get(str(f), {})
            out.append(f"- {int(100 * f)}%: trials within [0.9, 1.0] x budget {band} (before: "
                       f"{100 * old.get('trials_in_band', float('nan')):.0f}%); median trial params {med} (before: "
                       f"{100 * old.get('median_trial_params_frac', float('nan')):.0f}%); chosen depths "
                       + "; ".join(str(r.get(str(f), {}).get("depths")) for r in seeds_) + ".")
        out.append(f"- OSF supernet build with calibration: {res['osf_build_s']:.1f} s.")
        out.append("- data: " + json.dumps({k: v for k, v in res["info"].items() if k != "model"}))
    out += ["", *clock.table(), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings to check that the script runs; writes no "
                    "files unless --out is given")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds 0..N-1")
    ap.add_argument("--trials", type=int, default=None, help="trials per search")
    ap.add_argument("--models", default="lm,vit", help="comma list of lm, vit")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json (default benchmarks/results/quality "
                    "for a full run)")
    a = ap.parse_args()
    settings = copy.deepcopy(QUICK if a.quick else FULL)
    if a.trials:
        settings["trials"] = a.trials
    out = a.out or (None if a.quick else str(Path(__file__).resolve().parent / "results" / "quality"))
    seeds = list(range(a.seeds))
    command = "OMP_NUM_THREADS=1 python benchmarks/quality.py" + "".join(f" {x}" for x in sys.argv[1:])
    clock = Clock()
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {}
    text = ""
    for key in [m.strip() for m in a.models.split(",") if m.strip()]:
        print(f"== {key}", flush=True)
        if key == "lm":
            task = lm_task(settings["lm"], settings["eval_batch"], clock)
        elif key == "vit":
            task = vit_digits_task(settings["vit"], settings["eval_batch"], clock)
        else:
            raise SystemExit(f"unknown model {key!r}: use lm, vit")
        results[key] = run_task(task, settings, seeds, clock)
        print(table(results[key]), flush=True)
        total = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        text = report(results, settings, seeds, clock, command, total)
        if out:  # after each model: partial results kept
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out + ".md").write_text(text)
            payload = {"command": command, "settings": settings, "seeds": seeds, "total": total,
                       "stages": clock.stages, "results": results}
            Path(out + ".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
            print(f"wrote {out}.md and {out}.json", flush=True)
    print(text)


if __name__ == "__main__":
    main()
