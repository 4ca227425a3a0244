"""A search worker process for the resume / many-worker tests.

python -m tests.search_worker --n N [--run-dir D | --storage URL] [--die-at K --marker F]
                              [--hang-at K --marker F] [--sleep S]

With ``--die-at K`` the process kills itself (``os._exit``) in the middle of its K-th
evaluation, the first time only (``--marker`` records that it happened). With ``--hang-at K``
it writes ``--marker`` (its pid) in the middle of its K-th evaluation, the first time only,
and then waits forever: the test kills it there (SIGKILL).

The tests start workers with :func:`start_worker` and check the study with :func:`check_complete`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from osf.search import search
from tests.search_fakes import AgreementEvaluator, FakeSupernet

ROOT = Path(__file__).resolve().parents[1]


def start_worker(*args: str) -> subprocess.Popen:
    """``python -m tests.search_worker ARGS`` in the background, output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.search_worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for a worker; its exit code and output."""
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def check_ok(results: list[tuple[int, str]]) -> None:
    """Every worker exited 0; else fail showing the output of those that did not."""
    bad = [f"worker {i} exited {rc}:\n{out[-3000:]}" for i, (rc, out) in enumerate(results) if rc != 0]
    assert not bad, "\n".join(bad)


def check_complete(study: optuna.Study, n: int) -> None:
    """Exactly ``n`` COMPLETE trials, each config scored once; a reused score is its source's."""
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == n
    fresh = [t.user_attrs["config"] for t in done if "cached_from" not in t.user_attrs]
    assert len(fresh) == len(set(fresh)), "a config was evaluated twice"
    for t in done:
        if "cached_from" in t.user_attrs:
            src = study.trials[t.user_attrs["cached_from"]]
            assert src.state == TrialState.COMPLETE and src.user_attrs["config"] == t.user_attrs["config"]
            assert "cached_from" not in src.user_attrs
            assert src.user_attrs["score"] == t.user_attrs["score"]


class DyingEvaluator(AgreementEvaluator):
    def __init__(self, die_at: int | None, hang_at: int | None, marker: Path | None, sleep: float):
        super().__init__()
        self.die_at, self.hang_at, self.marker, self.sleep = die_at, hang_at, marker, sleep

    def __call__(self, model):
        score = super().__call__(model)
        time.sleep(self.sleep)
        if self.calls in (self.die_at, self.hang_at) and not self.marker.exists():
            tmp = self.marker.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.rename(self.marker)  # whole or absent, for the test polling it
            if self.calls == self.die_at:
                os._exit(3)  # no cleanup: the trial stays RUNNING in the storage
            while True:
                time.sleep(60)  # mid-trial, heartbeats going, until the test kills this process
        return score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--run-dir")
    ap.add_argument("--storage")
    ap.add_argument("--die-at", type=int)
    ap.add_argument("--hang-at", type=int)
    ap.add_argument("--marker")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ev = DyingEvaluator(a.die_at, a.hang_at, Path(a.marker) if a.marker else None, a.sleep)
    res = search(FakeSupernet(), ev, n_trials=a.n, run_dir=a.run_dir, storage=a.storage, study_name="shared" if a.storage else None,
                 seed=a.seed, show_progress=False)
    print(f"done {len(res.trials)} evaluated={ev.calls}")


if __name__ == "__main__":
    main()
