"""Does LoRA fine-tuning (``osf finetune``) recover a 50% subnet? Before vs after N LoRA steps,
with N steps of full fine-tuning as the control.

    python benchmarks/finetune.py [--quick] [--steps N] [--models lm,vit] [--out benchmarks/results/finetune]

Models and data are those of ``benchmarks/train.py``: the demo Mamba LM (``osf.demo.load_or_train()``,
cached) on the demo corpus, and ``tiny-vit`` trained on the synthetic shifted-template images (its
training is cached here under ``osf.demo.cache_dir()/finetune-bench``).

The 50% subnet: ``osf.supernet(model)`` (magnitude order), ``osf.training.config_at_fraction(sn, 0.5)``
(the config nearest 50% of the parameters from below among 256 random ones and the smallest),
``sn.extract``: a zero-shot subnet, no search and no supernet training.

Splits: LM: the corpus's training texts train; its held-out texts are split by document (seeded hash)
into validation (fine-tuning's own validation loss) and test (the numbers below). ViT: independent
train / validation / test draws. Nothing is chosen on test data; learning rates are fixed in advance
(LoRA 2e-3, full 5e-4; the usual higher rate for adapters).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import train as train_bench  # noqa: E402  (benchmarks/train.py: its models, data and helpers)

FULL = dict(eval_batch=64, lm=dict(steps=100, batch_size=8), vit=dict(steps=100, batch_size=32),
            vit_data=dict(pretrain_steps=400, pretrain_batch=64, pretrain_lr=2e-3, n_train=6000, n_val=1000,
                          n_test=2000))
QUICK = dict(eval_batch=64, lm=dict(steps=3, batch_size=4, val_blocks=16), vit=dict(steps=3, batch_size=16),
             vit_data=dict(pretrain_steps=30, pretrain_batch=64, pretrain_lr=2e-3, n_train=512, n_val=128, n_test=128))
METHODS = {"lora": dict(lr=2e-3, lora_r=8, lora_alpha=16.0), "full": dict(lr=5e-4, full=True)}


def vit_task(cfg: dict[str, Any], eval_batch: int, clock: Any) -> Any:
    """benchmarks/train.py's ViT task, with the pretrained weights cached."""
    from osf.demo import cache_dir
    from osf.models import load_model
    from osf.training import TrainData

    g = torch.Generator().manual_seed(1234)
    templates = torch.nn.functional.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=(32, 32), mode="nearest")
    templates = templates / templates.flatten(1).std(1).view(-1, 1, 1, 1)
    xtr, ytr = train_bench.synthetic_images(cfg["n_train"], 1, templates)
    xva, yva = train_bench.synthetic_images(cfg["n_val"], 2, templates)
    xte, yte = train_bench.synthetic_images(cfg["n_test"], 3, templates)
    model = load_model("tiny-vit", seed=0)
    key = hashlib.sha256(json.dumps({**cfg, "noise": train_bench.NOISE}, sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir() / "finetune-bench" / f"vit-{key}.pt"
    if path.is_file():
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        info = {**saved["info"], "cached": True}
    else:
        with clock("vit: plain training of the original model"):
            info = train_bench.pretrain_vit(model, xtr, ytr, cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "info": info}, path)
    model.eval()
    task = train_bench.Task()
    task.name, task.kind, task.metric, task.model = "tiny-vit", "images", "accuracy", model
    task.val = train_bench.batches({"pixel_values": xva, "labels": yva}, eval_batch)
    task.test = train_bench.batches({"pixel_values": xte, "labels": yte}, eval_batch)
    task.data = TrainData("images", {"pixel_values": xtr, "labels": ytr}, {"pixel_values": xva, "labels": yva},
                          "synthetic shifted colour templates")
    task.info = {"model": "osf.models.load_model('tiny-vit') trained as in benchmarks/train.py",
                 "images": {"train": len(ytr), "validation": len(yva), "test": len(yte)}, "pretraining": info}
    return task


def run_task(task: Any, steps: int, batch_size: int, clock: Any) -> dict[str, Any]:
    import osf
    from osf.training.finetune import FinetuneConfig, finetune
    from osf.training.loop import config_at_fraction

    name = task.name
    with clock(f"{name}: full model test score"):
        full_score = task.test_score(task.model)
    sn = osf.supernet(copy.deepcopy(task.model).eval())
    cfg = config_at_fraction(sn, 0.5, seed=0)
    frac = sn.num_params(cfg) / sn.num_params(sn.space.largest())
    sub = sn.extract(cfg).eval()
    del sn
    with clock(f"{name}: 50% subnet test score"):
        rows = {"before": {"test": task.test_score(sub), "val": task.metrics(sub, task.val)[task.metric],
                           "trained_params": 0, "wall_s": 0.0, "cpu_s": 0.0}}
    for method, settings in METHODS.items():
        config = FinetuneConfig(steps=steps, batch_size=batch_size, warmup_steps=max(1, steps // 10) if steps > 1 else 0,
                                eval_batches=4, seed=0, **settings)
        model = copy.deepcopy(sub)
        counted: dict[str, int] = {}

        def count(step: int, row: dict[str, float], model=model, counted=counted) -> None:
            if step == 0:  # adapters (or the whole model) in place: what the optimizer holds
                counted["n"] = sum(p.numel() for p in _trainable(model))
        w, c = time.perf_counter(), time.process_time()
        with clock(f"{name}: {method} fine-tuning ({steps} steps)"):
            tuned = finetune(model, task.data, config, progress=False, callback=count)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        with clock(f"{name}: {method} test score"):
            rows[method] = {"test": task.test_score(tuned), "val": task.metrics(tuned, task.val)[task.metric],
                            "trained_params": counted.get("n", 0), "wall_s": wall, "cpu_s": cpu,
                            "config": config.to_dict()}
        print(f"  [{name}] {method}: test {task.metric} {rows[method]['test']:.4g} (before {rows['before']['test']:.4g})",
              flush=True)
    return {"info": task.info, "metric": task.metric, "better": "lower" if task.lower_is_better else "higher",
            "full": full_score, "subnet_params_frac": frac, "subnet_params": sum(p.numel() for p in sub.parameters()),
            "config": cfg, "rows": rows}


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        if p.requires_grad:
            seen.setdefault(id(p), p)
    return list(seen.values())


def recovered(r: dict[str, Any], method: str) -> float | None:
    """Share of the gap between the subnet before fine-tuning and the full model that ``method`` closes."""
    lower = r["better"] == "lower"
    before, after, full = r["rows"]["before"]["test"], r["rows"][method]["test"], r["full"]
    gap = (before - full) if lower else (full - before)
    if gap <= 0:
        return None
    return ((before - after) if lower else (after - before)) / gap


def table(r: dict[str, Any]) -> str:
    m = r["metric"]
    lines = [f"| model | params | steps | trained params | validation {m} | test {m} | gap to the full model closed "
             "| CPU s |", "|---|---|---|---|---|---|---|---|",
             f"| full model | 100% | - | - | - | {r['full']:.4g} | - | - |"]
    labels = {"before": "50% subnet, before", "lora": "50% subnet + LoRA", "full": "50% subnet + full fine-tuning (control)"}
    for key, label in labels.items():
        row = r["rows"][key]
        steps = row.get("config", {}).get("steps", "-")
        share = recovered(r, key) if key != "before" else None
        total = r["subnet_params"]
        tp = f"{row['trained_params']:,} ({row['trained_params'] / total:.1%})" if row["trained_params"] else "-"
        lines.append(f"| {label} | {r['subnet_params_frac']:.1%} | {steps} | {tp} | {row['val']:.4g} | {row['test']:.4g} "
                     f"| {'-' if share is None else f'{share:.0%}'} | {row['cpu_s']:.0f} |")
    return "\n".join(lines)


def report(results: dict[str, Any], command: str, total: dict[str, float], clock: Any) -> str:
    import subprocess

    load = ""
    try:
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    out = ["# LoRA recovery benchmark (`osf finetune`)", "", "```", command, "```", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads, CPU only. Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
           f"`uptime` at the end: {load}. Total {total['wall_s']:.0f} s wall, {total['cpu_s']:.0f} s CPU.", "",
           "The 50% subnet is zero-shot: `config_at_fraction(osf.supernet(model), 0.5)` (nearest to 50% of the "
           "parameters from below among 256 random configs), extracted. LoRA: `finetune(sub, data, "
           "FinetuneConfig(lora_r=8, lora_alpha=16, lr=2e-3))`, default targets (every Linear but the output head; for "
           "Mamba PEFT refuses `out_proj` and `dt_proj`'s weight is read directly by the forward, so `in_proj` and "
           "`x_proj` are adapted; for the ViT the classifier head trains in full via `modules_to_save`). Control: the "
           "same loop with `full=True` (every weight, lr 5e-4). Both: AdamW, 10% warm-up + cosine, clipping 1.0, "
           "the same seeded batch order. \"gap closed\" = (after - before) / (full model - before) on the test score.",
           ""]
    for r in results.values():
        better = "lower" if r["better"] == "lower" else "higher"
        out += [f"## {r['info']['model']}", "", f"Test {r['metric']} ({better} is better).", "", table(r), ""]
    out += clock.table()
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings to check that the script runs; writes no "
                    "files unless --out is given")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (LoRA and control alike)")
    ap.add_argument("--models", default="lm,vit", help="comma list of lm, vit")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json (default benchmarks/results/finetune)")
    a = ap.parse_args()
    settings = copy.deepcopy(QUICK if a.quick else FULL)
    out = a.out or (None if a.quick else str(HERE / "results" / "finetune"))
    command = "python benchmarks/finetune.py" + "".join(f" {x}" for x in sys.argv[1:])
    clock = train_bench.Clock()
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {}
    for key in [m.strip() for m in a.models.split(",") if m.strip()]:
        print(f"== {key}", flush=True)
        if key == "lm":
            task = train_bench.lm_task(settings["lm"], settings["eval_batch"], clock)
        elif key == "vit":
            task = vit_task(settings["vit_data"], settings["eval_batch"], clock)
        else:
            raise SystemExit(f"unknown model {key!r}: use lm, vit")
        steps = a.steps or settings[key]["steps"]
        results[key] = run_task(task, steps, settings[key]["batch_size"], clock)
        print(table(results[key]), flush=True)
    total = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    text = report(results, command, total, clock)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".md").write_text(text)
        Path(out + ".json").write_text(json.dumps({"command": command, "settings": settings, "total": total,
                                                   "stages": clock.stages, "results": results}, indent=2, default=str))
        print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    main()
