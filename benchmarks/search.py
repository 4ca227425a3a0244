"""Search throughput on the demo model: trials per minute and the share of time in forward passes.

    python benchmarks/search.py [--trials 20] [--limit 50] [--supernet osf|depth] [--evaluator lm-eval|perplexity]

Forward time is measured with forward pre/post hooks on the live model (with a CUDA
sync on GPU); everything else (Optuna sampling and storage, lm-eval's bookkeeping and
log-softmax of the scored positions, config switches, cost metrics) is overhead. Target:
>= 90% of trial time in forward passes. ``--evaluator perplexity`` scores the demo's
held-out text with :class:`osf.search.perplexity.Perplexity` (``--limit`` batches of 8
blocks of 128 tokens) instead of the last-word lm-eval task.
``--supernet depth`` uses the depth-only test double (tests/search_fakes.py), usable
before ``osf.supernet`` exists.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import Any  # noqa: E402

import optuna  # noqa: E402
import torch  # noqa: E402
from optuna.trial import TrialState  # noqa: E402


class ForwardTimer:
    """Records the wall-clock intervals spent inside ``model.forward`` (outermost calls only)."""

    def __init__(self, model: torch.nn.Module):
        self.intervals: list[tuple[float, float]] = []
        self._t0, self._depth = 0.0, 0
        self._sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, *_):
        if self._depth == 0:
            self._sync()
            self._t0 = time.time()  # wall clock: comparable with the trials' start/complete times
        self._depth += 1

    def _post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.intervals.append((self._t0, time.time()))

    def remove(self):
        for h in self._handles:
            h.remove()


class StorageTimer:
    """Wraps an Optuna storage's public methods and records the intervals spent in them."""

    def __init__(self, storage: Any):
        self.intervals: list[tuple[float, float]] = []
        self.calls: dict[str, int] = {}
        self._local = threading.local()
        for name in dir(optuna.storages.BaseStorage):
            if not name.startswith("_") and callable(getattr(storage, name, None)):
                setattr(storage, name, self._wrap(name, getattr(storage, name)))

    def _wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                self._local.depth = depth
                if depth == 0:  # outermost calls only: a method may call another
                    self.intervals.append((t0, time.time()))
                    self.calls[name] = self.calls.get(name, 0) + 1
        return timed


def within(intervals: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    """Seconds of ``intervals`` that fall inside ``windows`` (the trials' start..complete)."""
    total = 0.0
    for a, b in intervals:
        for lo, hi in windows:
            total += max(0.0, min(b, hi) - max(a, lo))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None, help="task documents per evaluation")
    ap.add_argument("--passages", type=int, default=100)
    ap.add_argument("--sampler", default="auto")
    ap.add_argument("--supernet", choices=("osf", "depth"), default="osf")
    ap.add_argument("--train-seconds", type=float, default=90.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--evaluator", choices=("lm-eval", "perplexity"), default="lm-eval")
    a = ap.parse_args()

    from osf.demo import load_corpus, load_or_train
    from osf.search import search
    from osf.search.lmeval import LMEval
    from osf.search.tasks import make_lastword_task

    model, tok, _ = load_or_train(a.train_seconds, show_progress=False)
    model.to(a.device)
    if a.supernet == "depth":
        from tests.search_fakes import DepthSupernet

        sn = DepthSupernet(model)
    else:
        import osf

        sn = osf.supernet(model)
    work = Path(tempfile.mkdtemp(prefix="osf-bench-"))
    if a.evaluator == "perplexity":
        from osf.search.perplexity import Perplexity

        ev = Perplexity(load_corpus()[1], tok, max_batches=a.limit)
    else:
        make_lastword_task(load_corpus()[1], work / "task", name="osf_bench_lastword", n=a.passages)
        ev = LMEval("osf_bench_lastword", tok, include_path=work / "task", limit=a.limit, batch_size=32)
    ev(sn.model)  # warm-up: builds HFLM, loads the task, first forward passes

    import inspect

    from osf.search.storage import make_storage

    storage = make_storage(None, work / "run")  # the journal file osf search keeps in its run folder
    stimer = StorageTimer(storage)
    extra = {"rerank": 0} if "rerank" in inspect.signature(search).parameters else {}  # trials only
    timer = ForwardTimer(sn.model)
    t0 = time.perf_counter()
    res = search(sn, ev, n_trials=a.trials, sampler=a.sampler, storage=storage, run_dir=work / "run",
                 show_progress=False, **extra)
    wall = time.perf_counter() - t0
    timer.remove()
    trials = res.study.get_trials(states=(TrialState.COMPLETE,))
    windows = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in trials]
    trial_time = sum(hi - lo for lo, hi in windows)
    fwd, sto = within(timer.intervals, windows), within(stimer.intervals, windows)
    fresh = sum("cached_from" not in t.user_attrs for t in trials)
    calls = sum(stimer.calls.values())
    rows = [
        ("device", a.device),
        ("evaluator", ev.name),
        ("supernet", a.supernet),
        ("trials (evaluated / cached)", f"{len(trials)} ({fresh} / {len(trials) - fresh})"),
        ("wall time (s)", f"{wall:.1f}"),
        ("trials per minute", f"{60 * len(trials) / wall:.2f}"),
        ("evaluated trials per minute", f"{60 * fresh / wall:.2f}"),
        ("forward calls", f"{len(timer.intervals)}"),
        ("trial time (s)", f"{trial_time:.1f}"),
        ("forward share of trial time", f"{100 * fwd / max(trial_time, 1e-9):.1f}%  (target >= 90%)"),
        ("storage share of trial time", f"{100 * sto / max(trial_time, 1e-9):.1f}%  ({calls} storage calls, "
                                        f"{calls / max(len(trials), 1):.1f} per trial)"),
        ("other share of trial time", f"{100 * (trial_time - fwd - sto) / max(trial_time, 1e-9):.1f}%  "
                                      "(evaluator bookkeeping, sampler, config switches, costs)"),
    ]
    busiest = sorted(stimer.calls.items(), key=lambda kv: -kv[1])[:6]
    rows.append(("storage calls by method", ", ".join(f"{k} {v}" for k, v in busiest)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
