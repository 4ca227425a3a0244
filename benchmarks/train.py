"""Does supernet training make subnets good? Zero-shot vs trained supernets vs baselines.

    python benchmarks/train.py [--quick] [--seeds N] [--trials 30] [--out benchmarks/results/train]

For two models (the demo Mamba LM, ``osf.demo.load_or_train()``; ``tiny-vit`` trained here on a
synthetic CIFAR-like task) and budgets of 50% and 75% of the parameters:

1. the full model's test score;
2. zero-shot: ``osf.supernet(copy)``, ``osf.search`` scored on VALIDATION data, ``best(max_params_frac=f)``,
   extract, TEST score;
3. trained: the same supernet after ``osf.train`` on TRAIN data, the same searches, TEST score; and the
   trained supernet's largest subnet against the original and against the control (target: within 1%);
3b. control for extra training: the original model (no supernet) trained plainly with the same
   TrainConfig settings (AdamW, lr, warm-up + cosine, clipping, batch, steps, batch order), task loss only;
4. baselines without training: layer removal (whole blocks dropped greedily by validation loss, full
   widths, until within the budget) and magnitude slicing (the supernet's magnitude channel order, one
   uniform width fraction for every dim, full depth, the largest fraction within the budget);
5. the share of the zero-shot gap closed by training: (zero_shot - trained) / (zero_shot - full) and
   (zero_shot - trained) / (zero_shot - control), in the score's better direction (target >= 70% at 50%).

Splits: LM: ``load_corpus()``'s train texts train the supernet; its held-out texts are split by a
seeded document hash into validation (the search, layer-removal selection, training's own
validation) and test (final numbers only). ViT: the synthetic data set has separate train /
validation / test draws. Nothing is chosen on test data. One search per budget, supernet and seed (objectives score and
params, ``constraints={"max_params_frac": f}``); ``best(max_params_frac=f)`` picks from it. ``--seeds N``
repeats zero-shot searches, training, the control and trained searches with seeds 0..N-1 (the models, the data splits and
the baselines do not depend on the seed). ``--quick`` uses tiny settings and writes no files.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

FRACS = (0.5, 0.75)
LM_SEQ_LEN = 64
NOISE = 0.42  # between trial settings judged on validation accuracy (sd 0.35: 98.8%, sd 0.5: 59%); never on test
SPLIT_SEED = 0  # the data splits are fixed; --seeds varies search and training only

FULL = dict(trials=30, eval_batch=64,
            lm=dict(steps=80, batch_size=8, lr=2e-3, warmup_steps=8, num_random=2),
            vit=dict(pretrain_steps=400, pretrain_batch=64, pretrain_lr=2e-3, n_train=6000, n_val=1000,
                     n_test=2000, steps=150, batch_size=32, lr=1e-3, warmup_steps=10, num_random=2))
QUICK = dict(trials=4, eval_batch=64,
             lm=dict(steps=2, batch_size=4, lr=1e-3, warmup_steps=0, num_random=1, val_blocks=16),
             vit=dict(pretrain_steps=30, pretrain_batch=64, pretrain_lr=2e-3, n_train=512, n_val=128,
                      n_test=128, steps=3, batch_size=16, lr=1e-3, warmup_steps=0, num_random=1))


class Clock:
    """Wall and process-CPU seconds per stage (CPU time sums all threads)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                s = clock.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
                s["wall_s"] += time.perf_counter() - self.w
                s["cpu_s"] += time.process_time() - self.c
        return _Stage()

    def table(self) -> list[str]:
        """The "Time per stage" section of a report, as markdown lines."""
        return ["## Time per stage", "", "| stage | wall s | CPU s |", "|---|---|---|",
                *(f"| {name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} |" for name, s in self.stages.items())]


# ============================================================================ tasks
class Task:
    """A model with its splits: ``val`` / ``test`` are lists of batches for
    ``osf.training.objective.evaluate``; ``data`` is the TrainData for ``osf.train``."""

    name: str
    kind: str
    metric: str  # "perplexity" (lower is better) or "accuracy" (higher is better)
    model: torch.nn.Module
    val: list[dict[str, torch.Tensor]]
    test: list[dict[str, torch.Tensor]]
    data: Any
    info: dict[str, Any]

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "perplexity"

    def metrics(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        from osf.modes import eval_mode
        from osf.training.objective import evaluate

        with eval_mode(model):
            return evaluate(model, batches, self.kind)

    def test_score(self, model: torch.nn.Module) -> float:
        return self.metrics(model, self.test)[self.metric]

    def search_evaluator(self) -> Callable[[torch.nn.Module], float]:
        """Validation score, higher is better: -loss (nats) for the LM, accuracy for images."""
        task = self

        class ValScore:
            name = f"{task.name}:validation"

            def __call__(self, model: torch.nn.Module) -> float:
                m = task.metrics(model, task.val)
                return -m["loss"] if task.kind == "lm" else m["accuracy"]

            def describe(self) -> str:
                return ("minus the validation next-token loss (nats)" if task.kind == "lm"
                        else "validation accuracy") + ", higher is better"
        return ValScore()


def batches(split: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = len(next(iter(split.values())))
    return [{k: v[i:i + size] for k, v in split.items()} for i in range(0, n, size)]


def split_held_out(texts: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Validation / test by document: documents in the order of a seeded hash, each to the split
    with fewer characters so far (a balanced, reproducible document-level split)."""
    order = sorted(texts, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    val, test, nv, nt = [], [], 0, 0
    for t in order:
        if nv <= nt:
            val.append(t)
            nv += len(t)
        else:
            test.append(t)
            nt += len(t)
    return val, test


def lm_task(cfg: dict[str, Any], eval_batch: int, clock: Clock) -> Task:
    from osf.demo import load_corpus, load_or_train
    from osf.training import TrainData, lm_blocks

    with clock("lm: load/train the demo model"):
        model, tok, info = load_or_train(show_progress=False)
    model.eval()
    train_texts, held_out = load_corpus()
    val_texts, test_texts = split_held_out(held_out, SPLIT_SEED)
    train_b, val_b, test_b = (lm_blocks(t, tok, LM_SEQ_LEN) for t in (train_texts, val_texts, test_texts))
    if cfg.get("val_blocks"):
        val_b, test_b = val_b[:cfg["val_blocks"]], test_b[:cfg["val_blocks"]]
    task = Task()
    task.name, task.kind, task.metric, task.model = "mamba-lm", "lm", "perplexity", model
    task.val, task.test = batches({"input_ids": val_b}, eval_batch), batches({"input_ids": test_b}, eval_batch)
    task.data = TrainData("lm", {"input_ids": train_b}, {"input_ids": val_b}, "osf.demo.load_corpus()")
    task.info = {"model": "osf.demo.load_or_train() (MambaForCausalLM, 4 layers, hidden 128, 1k BPE vocab)",
                 "demo_training": {k: v for k, v in info.items()}, "seq_len": LM_SEQ_LEN,
                 "documents": {"train": len(train_texts), "validation": len(val_texts), "test": len(test_texts)},
                 "blocks": {"train": len(train_b), "validation": len(val_b), "test": len(test_b)}}
    return task


def synthetic_images(n: int, seed: int, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images in [0, 1] (3x32x32) and labels: label y's smooth colour template (8x8-pixel
    cells), circularly shifted by up to 7 px each way, at a random contrast, under Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(len(templates), (n,), generator=g)
    x = templates[y]
    sx, sy = torch.randint(8, (n,), generator=g), torch.randint(8, (n,), generator=g)
    x = torch.stack([torch.roll(img, shifts=(int(a), int(b)), dims=(1, 2)) for img, a, b in zip(x, sx, sy)])
    contrast = 0.10 + 0.15 * torch.rand(n, 1, 1, 1, generator=g)
    bright = 0.5 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = bright + contrast * x + NOISE * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), y


def vit_task(cfg: dict[str, Any], eval_batch: int, clock: Clock) -> Task:
    from osf.models import load_model
    from osf.training import TrainData

    g = torch.Generator().manual_seed(1234)
    templates = torch.nn.functional.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=(32, 32), mode="nearest")
    templates = templates / templates.flatten(1).std(1).view(-1, 1, 1, 1)
    xtr, ytr = synthetic_images(cfg["n_train"], 1, templates)
    xva, yva = synthetic_images(cfg["n_val"], 2, templates)
    xte, yte = synthetic_images(cfg["n_test"], 3, templates)
    model = load_model("tiny-vit", seed=0)
    with clock("vit: plain training of the original model"):
        info = pretrain_vit(model, xtr, ytr, cfg)
    task = Task()
    task.name, task.kind, task.metric, task.model = "tiny-vit", "images", "accuracy", model
    task.val = batches({"pixel_values": xva, "labels": yva}, eval_batch)
    task.test = batches({"pixel_values": xte, "labels": yte}, eval_batch)
    task.data = TrainData("images", {"pixel_values": xtr, "labels": ytr}, {"pixel_values": xva, "labels": yva},
                          "synthetic shifted colour templates")
    task.info = {"model": "osf.models.load_model('tiny-vit') (ViT, 4 layers, hidden 64, 4 heads, patch 8, 32 px)",
                 "data": f"10 classes: a smooth random colour template per class (4x4 cells of 8 px), circularly "
                         f"shifted by 0..7 px in x and y, on a grey level U(0.45, 0.55) at contrast U(0.10, 0.25), Gaussian noise sd {NOISE}, "
                         "clamped to [0, 1]; train / validation / test are independent draws (seeds 1 / 2 / 3)",
                 "images": {"train": len(ytr), "validation": len(yva), "test": len(yte)}, "pretraining": info}
    return task


def pretrain_vit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any]) -> dict[str, Any]:
    """Plain training: AdamW, a fixed number of steps, seeded batches, cosine decay."""
    torch.manual_seed(0)
    steps, bs = cfg["pretrain_steps"], cfg["pretrain_batch"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["pretrain_lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    g = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(y), (bs,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]).logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"steps": steps, "batch_size": bs, "lr": cfg["pretrain_lr"], "final_train_loss": sum(losses[-20:]) / 20}


# ======================================================================= methods
def make_supernet(model: torch.nn.Module, **kw: Any) -> Any:
    import osf

    return osf.supernet(copy.deepcopy(model).eval(), **kw)


def searched(task: Task, sn: Any, trials: int, seed: int) -> dict[str, Any]:
    """One search per budget (score on validation and params, ``constraints={"max_params_frac": f}``),
    then ``best(max_params_frac=f)``, extract, test score."""
    import osf

    sn.eval()
    full = sn.num_params(sn.space.largest())
    out: dict[str, Any] = {}
    for f in FRACS:
        res = osf.search(sn, task.search_evaluator(), n_trials=trials, seed=seed, constraints={"max_params_frac": f},
                         show_progress=False)
        feasible = int(res.trials["feasible"].sum()) if not res.trials.empty else 0
        try:
            row = res.best(max_params_frac=f)
        except ValueError as e:
            out[str(f)] = {"error": str(e), "feasible_trials": feasible}
            continue
        cfg = json.loads(row["config"])
        sub = sn.extract(cfg).eval()
        out[str(f)] = {"test": task.test_score(sub), "val_score": float(row["score"]),
                       "params_frac": sn.num_params(cfg) / full, "trial": int(row["number"]),
                       "feasible_trials": feasible, "config": cfg}
        sn.set_config(sn.space.largest())
    sn.set_config(sn.space.largest())
    return out


def train_control(task: Task, config: Any) -> dict[str, Any]:
    """The control for extra training: a copy of the ORIGINAL model (no supernet) trained plainly
    with the settings of ``config`` (a TrainConfig): the same AdamW (weight decay on matrices only),
    lr, warm-up + cosine to ``lr * min_lr_ratio``, gradient clipping, batch size, steps, and the
    same seeded batch order as ``osf.train`` (its own batch and schedule helpers); task loss only,
    one model per step (no sandwich, no distillation). Returns the model and a summary."""
    from osf.training.loop import batch_for_step, lr_schedule
    from osf.training.objective import forward, task_loss

    model = copy.deepcopy(task.model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(config))
    model.train()
    losses = []
    for step in range(1, config.steps + 1):
        opt.zero_grad(set_to_none=True)
        batch = batch_for_step(task.data.train, config, step, 0, 0, 1, config.batch_size, torch.device("cpu"))
        loss = task_loss(forward(model, batch, task.kind), batch, task.kind)
        loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    k = min(10, len(losses))
    return {"model": model, "final_train_loss": sum(losses[-k:]) / k}


def layer_removal(task: Task) -> dict[str, Any]:
    """Drop whole blocks greedily (each step the block whose removal gives the lowest validation
    loss), full widths, until within each budget. Built on a supernet whose space allows
    dropping all but one block of each stack (``space={"depth": 0.25}``)."""
    sn = make_supernet(task.model, space={"depth": 0.25})
    full = sn.num_params(sn.space.largest())
    cfg = sn.space.largest()
    path = [(cfg, full, None)]
    floor = {s: sn.space.min_depth.get(s, len(b)) for s, b in sn.space.stacks.items()}
    while path[-1][1] > min(FRACS) * full:
        options = []
        for stack, names in sn.space.stacks.items():
            kept = [b for b in names if cfg[b]]
            if len(kept) <= floor[stack]:
                continue
            for b in kept:
                c = {**cfg, b: False}
                with sn.use(c):
                    options.append((task.metrics(sn.model, task.val)["loss"], b, c))
        if not options:
            break
        loss, _, cfg = min(options, key=lambda o: o[0])
        path.append((cfg, sn.num_params(cfg), loss))
    out: dict[str, Any] = {}
    for f in FRACS:
        fit = next(((c, n) for c, n, _ in path if n <= f * full), None)
        if fit is None:
            out[str(f)] = {"error": "no block-dropped config fits"}
            continue
        c, n = fit
        sub = sn.extract(c).eval()
        out[str(f)] = {"test": task.test_score(sub), "params_frac": n / full,
                       "dropped": [b for b in sn.space.blocks if not c[b]]}
    return out


def magnitude_slicing(task: Task, sn: Any) -> dict[str, Any]:
    """One uniform width fraction for every dim (each dim's largest choice <= fraction x its size),
    full depth, in the supernet's default (magnitude) channel order; the largest fraction that fits."""
    from osf.elastic.supernet import FRACTIONS

    space = sn.space
    full = sn.num_params(space.largest())

    def uniform(r: float) -> dict[str, Any]:
        cfg = {d: max([c for c in ch if c <= r * ch[0] + 1e-9] or [min(ch)]) for d, ch in space.dims.items()}
        return {**cfg, **{b: True for b in space.blocks}}

    out: dict[str, Any] = {}
    for f in FRACS:
        fit = next(((r, uniform(r)) for r in FRACTIONS if sn.num_params(uniform(r)) <= f * full), None)
        if fit is None:
            out[str(f)] = {"error": "no uniform fraction fits"}
            continue
        r, cfg = fit
        sub = sn.extract(cfg).eval()
        out[str(f)] = {"test": task.test_score(sub), "params_frac": sn.num_params(cfg) / full, "width_fraction": r}
    sn.set_config(space.largest())
    return out


def run_task(task: Task, settings: dict[str, Any], tcfg: dict[str, Any], seeds: list[int], clock: Clock) -> dict[str, Any]:
    from osf.training import TrainConfig, train

    name = task.name
    result: dict[str, Any] = {"info": task.info, "metric": task.metric,
                              "better": "lower" if task.lower_is_better else "higher"}
    with clock(f"{name}: full model test score"):
        result["full"] = task.test_score(task.model)
    with clock(f"{name}: layer removal baseline"):
        result["layer_removal"] = layer_removal(task)
    result["seeds"] = {}
    for seed in seeds:
        r: dict[str, Any] = {}
        sn = make_supernet(task.model)
        if seed == seeds[0]:
            with clock(f"{name}: magnitude slicing baseline"):
                result["magnitude_slicing"] = magnitude_slicing(task, sn)
        with clock(f"{name}: zero-shot searches ({len(FRACS)} x {settings['trials']} trials) + test"):
            r["zero_shot"] = searched(task, sn, settings["trials"], seed)
        config = TrainConfig(steps=tcfg["steps"], batch_size=tcfg["batch_size"], lr=tcfg["lr"],
                             warmup_steps=tcfg["warmup_steps"], num_random=tcfg["num_random"], eval_every=0,
                             save_every=0, eval_batches=4, seed=seed)
        w, c = time.perf_counter(), time.process_time()
        with clock(f"{name}: osf.train ({tcfg['steps']} steps)"):
            hist = train(sn, task.data, config, progress=False).history
        r["train"] = {"config": config.to_dict(), "wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                      "last": hist[-1], "first": hist[0]}
        w, c = time.perf_counter(), time.process_time()
        with clock(f"{name}: control: plain training of the original ({tcfg['steps']} steps)"):
            ctrl = train_control(task, config)
        r["control_train"] = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                              "final_train_loss": ctrl["final_train_loss"]}
        with clock(f"{name}: control test score"):
            r["control"] = task.test_score(ctrl["model"])
        del ctrl
        sn.eval()
        with clock(f"{name}: trained largest subnet test score"):
            r["trained_largest"] = task.test_score(sn.extract(sn.space.largest()).eval())
        with clock(f"{name}: trained searches ({len(FRACS)} x {settings['trials']} trials) + test"):
            r["trained"] = searched(task, sn, settings["trials"], seed)
        result["seeds"][str(seed)] = r
        print(f"  [{name}] seed {seed} done: " + ", ".join(
            f"{k}@{f}={r[k][str(f)].get('test', float('nan')):.4g}" for k in ("zero_shot", "trained") for f in FRACS)
            + f", trained largest {r['trained_largest']:.4g}, control {r['control']:.4g}, full {result['full']:.4g}",
            flush=True)
    summarize(result)
    return result


# ======================================================================= summary
def gap_closed(full: float, zs: float, tr: float, lower: bool) -> float | None:
    gap = (zs - full) if lower else (full - zs)
    if gap <= 0:
        return None
    return ((zs - tr) if lower else (tr - zs)) / gap


def summarize(res: dict[str, Any]) -> None:
    """Gap closed at each budget against the original full model and against the control (the
    original trained plainly as long); the trained largest subnet against both."""
    lower, full = res["better"] == "lower", res["full"]
    res["gap_closed"], res["gap_closed_vs_control"] = {}, {}
    for f in FRACS:
        g_full, g_ctrl = [], []
        for r in res["seeds"].values():
            zs, tr = r["zero_shot"].get(str(f), {}).get("test"), r["trained"].get(str(f), {}).get("test")
            ok = zs is not None and tr is not None
            g_full.append(gap_closed(full, zs, tr, lower) if ok else None)
            g_ctrl.append(gap_closed(r["control"], zs, tr, lower) if ok else None)
        res["gap_closed"][str(f)], res["gap_closed_vs_control"][str(f)] = g_full, g_ctrl
    res["gap_closed_50"] = res["gap_closed"]["0.5"]
    res["largest_rel_change"] = [(r["trained_largest"] - full) / full for r in res["seeds"].values()]
    res["largest_rel_to_control"] = [(r["trained_largest"] - r["control"]) / r["control"]
                                     for r in res["seeds"].values()]
    res["control_rel_change"] = [(r["control"] - full) / full for r in res["seeds"].values()]

    def mean_ok(gaps: list[float | None]) -> bool:
        ok = [g for g in gaps if g is not None]
        return len(ok) == len(gaps) and bool(ok) and statistics.mean(ok) >= 0.70
    res["target_gap_met"] = mean_ok(res["gap_closed"]["0.5"])
    res["target_gap_met_vs_control"] = mean_ok(res["gap_closed_vs_control"]["0.5"])
    # within 1% (relative), in the direction that matters: no more than 1% worse
    within = (lambda x: x <= 0.01) if lower else (lambda x: x >= -0.01)
    res["target_largest_met"] = all(within(x) for x in res["largest_rel_change"])
    res["target_largest_met_vs_control"] = all(within(x) for x in res["largest_rel_to_control"])
    res["largest_abs_within_1pct_of_control"] = all(abs(x) <= 0.01 for x in res["largest_rel_to_control"])


def stat(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(res: dict[str, Any]) -> str:
    fmt = "{:.2f}" if res["metric"] == "perplexity" else "{:.3f}"
    lines = [f"| method | 50%: params | 50%: test {res['metric']} | 75%: params | 75%: test {res['metric']} |",
             "|---|---|---|---|---|"]

    def row(label: str, per_f: list[dict[str, Any]]) -> str:
        cells = []
        for f in FRACS:
            entries = [d.get(str(f), {}) for d in per_f]
            cells.append(stat([e.get("params_frac") and 100 * e["params_frac"] for e in entries], "{:.1f}%"))
            cells.append(stat([e.get("test") for e in entries], fmt))
        return f"| {label} | " + " | ".join(cells) + " |"

    seeds = list(res["seeds"].values())
    lines.append(f"| full model | 100% | {fmt.format(res['full'])} | 100% | {fmt.format(res['full'])} |")
    ctrl = stat([r["control"] for r in seeds], fmt)
    lines.append(f"| full model, trained as long (control) | 100% | {ctrl} | 100% | {ctrl} |")
    lines.append(row("layer removal (no training)", [res["layer_removal"]]))
    lines.append(row("magnitude slicing, uniform width (no training)", [res["magnitude_slicing"]]))
    lines.append(row("zero-shot supernet + search", [r["zero_shot"] for r in seeds]))
    lines.append(row("trained supernet + search", [r["trained"] for r in seeds]))
    big = stat([r["trained_largest"] for r in seeds], fmt)
    lines.append(f"| trained supernet, largest subnet | 100% | {big} | 100% | {big} |")
    return "\n".join(lines)


def report(results: dict[str, Any], settings: dict[str, Any], seeds: list[int], clock: Clock, command: str,
           total: dict[str, float]) -> str:
    out = [f"# Supernet training benchmark", "", "```", command, "```", ""]
    out.append(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs while it ran), "
               f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU only. Seeds: {seeds} "
               f"(seed of the search and of the supernet training). Total: {total['wall_s']:.0f} s wall, "
               f"{total['cpu_s']:.0f} s CPU.")
    out.append("")
    out.append(f"Search: per budget f, `osf.search(sn, validation_score, n_trials={settings['trials']}, seed=seed, "
               "constraints={\"max_params_frac\": f})` (objectives score and params; NSGA-II; over-budget trials are "
               "not scored), then `best(max_params_frac=f)`, `sn.extract`, test score. Same trials for zero-shot and "
               "trained. Params are % of the full model's. With several seeds a cell is `mean (min-max)`; the "
               "baselines and the original full model do not depend on the seed. The control (\"full model, trained "
               "as long\") is the original model, no supernet, trained plainly with the same TrainConfig as "
               "`osf.train` (AdamW with the same weight-decay groups, lr, warm-up + cosine, clipping, batch, steps, "
               "seeded batch order), task loss only, with each seed.")
    for key, res in results.items():
        out += ["", f"## {res['info']['model']}", ""]
        lower = res["better"] == "lower"
        out.append(f"Test {res['metric']} ({res['better']} is better).")
        out.append("")
        out.append(table(res))
        out.append("")
        tr = next(iter(res["seeds"].values()))["train"]["config"]
        secs = [r["train"] for r in res["seeds"].values()]
        out.append(f"- supernet training: `TrainConfig(steps={tr['steps']}, batch_size={tr['batch_size']}, "
                   f"lr={tr['lr']:g}, warmup_steps={tr['warmup_steps']}, num_random={tr['num_random']})` "
                   f"(sandwich: largest, smallest, {tr['num_random']} random; in-place distillation; AdamW; cosine), "
                   f"{stat([s['cpu_s'] for s in secs], '{:.0f}')} s CPU / "
                   f"{stat([s['wall_s'] for s in secs], '{:.0f}')} s wall per run.")
        ctr = [r["control_train"] for r in res["seeds"].values()]
        out.append(f"- control training (plain, same settings): {stat([s['cpu_s'] for s in ctr], '{:.0f}')} s CPU per run.")
        for f in FRACS:
            gf = stat([None if g is None else 100 * g for g in res["gap_closed"][str(f)]], "{:.0f}%")
            gc = stat([None if g is None else 100 * g for g in res["gap_closed_vs_control"][str(f)]], "{:.0f}%")
            extra = ""
            if f == 0.5:
                extra = (f" (target >= 70%: vs original **{'met' if res['target_gap_met'] else 'NOT met'}**, "
                         f"vs control **{'met' if res['target_gap_met_vs_control'] else 'NOT met'}**)")
            out.append(f"- gap closed at {int(f * 100)}%: (zero_shot - trained) / (zero_shot - original full) = {gf}; "
                       f"(zero_shot - trained) / (zero_shot - control) = {gc}{extra}.")
        rel = stat([100 * x for x in res["largest_rel_change"]], "{:+.2f}%")
        relc = stat([100 * x for x in res["largest_rel_to_control"]], "{:+.2f}%")
        crel = stat([100 * x for x in res["control_rel_change"]], "{:+.2f}%")
        worse = "higher" if lower else "lower"
        out.append(f"- the control vs the original: {crel} relative change of the test {res['metric']}.")
        out.append(f"- trained largest subnet vs the original: {rel}; vs the control: {relc} (relative change of the "
                   f"test {res['metric']}). Within 1% of the control (no more than 1% {worse}): "
                   f"**{'yes' if res['target_largest_met_vs_control'] else 'NO'}**; within 1% either way: "
                   f"**{'yes' if res['largest_abs_within_1pct_of_control'] else 'NO'}**.")
        feas = []
        for f in FRACS:
            feas.append(f"{int(f * 100)}%: zero-shot " + stat([r["zero_shot"].get(str(f), {}).get("feasible_trials")
                                                              for r in res["seeds"].values()], "{:.0f}")
                        + ", trained " + stat([r["trained"].get(str(f), {}).get("feasible_trials")
                                               for r in res["seeds"].values()], "{:.0f}"))
        out.append(f"- within-budget (scored) trials of {settings['trials']}: " + "; ".join(feas) + ".")
        details = []
        for f in FRACS:
            lr = res["layer_removal"].get(str(f), {})
            ms = res["magnitude_slicing"].get(str(f), {})
            details.append(f"{int(f * 100)}%: layer removal drops {lr.get('dropped')}, magnitude slicing width "
                           f"fraction {ms.get('width_fraction')}")
        out.append("- baselines: " + "; ".join(details) + ".")
        out.append("- data: " + json.dumps({k: v for k, v in res["info"].items() if k not in ("model",)}))
    out += ["", *clock.table(), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings (< 2 min) to check that the script runs; "
                    "writes no files unless --out is given")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for search and supernet training")
    ap.add_argument("--trials", type=int, default=None, help="search trials (zero-shot and trained alike)")
    ap.add_argument("--lm-steps", type=int, default=None, help="osf.train steps for the Mamba LM")
    ap.add_argument("--vit-steps", type=int, default=None, help="osf.train steps for the ViT")
    ap.add_argument("--models", default="lm,vit", help="comma list of lm, vit")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json (default benchmarks/results/train "
                    "for a full run)")
    a = ap.parse_args()
    settings = copy.deepcopy(QUICK if a.quick else FULL)
    if a.trials:
        settings["trials"] = a.trials
    if a.lm_steps:
        settings["lm"]["steps"] = a.lm_steps
    if a.vit_steps:
        settings["vit"]["steps"] = a.vit_steps
    out = a.out or (None if a.quick else str(Path(__file__).resolve().parent / "results" / "train"))
    seeds = list(range(a.seeds))
    command = "python benchmarks/train.py" + ("".join(f" {x}" for x in sys.argv[1:]))
    clock = Clock()
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {}
    for key in [m.strip() for m in a.models.split(",") if m.strip()]:
        print(f"== {key}", flush=True)
        if key == "lm":
            task = lm_task(settings["lm"], settings["eval_batch"], clock)
        elif key == "vit":
            task = vit_task(settings["vit"], settings["eval_batch"], clock)
        else:
            raise SystemExit(f"unknown model {key!r}: use lm, vit")
        results[key] = run_task(task, settings, settings[key], seeds, clock)
        print(table(results[key]), flush=True)
        total = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        text = report(results, settings, seeds, clock, command, total)
        write(out, text, command, settings, seeds, total, clock, results)  # after each model: partial results kept
    print(text)


def write(out, text, command, settings, seeds, total, clock, results) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".md").write_text(text)
        payload = {"command": command, "settings": settings, "seeds": seeds, "total": total,
                   "stages": clock.stages, "results": results}
        Path(out + ".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    main()
