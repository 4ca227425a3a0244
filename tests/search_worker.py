"""A search worker process for the resume / many-worker tests.

python -m tests.search_worker --n N [--run-dir D | --storage URL] [--die-at K --marker F] [--sleep S]

With ``--die-at K`` the process kills itself (``os._exit``) in the middle of its K-th
evaluation, the first time only (``--marker`` records that it happened).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from osf.search import search
from tests.search_fakes import AgreementEvaluator, FakeSupernet


class DyingEvaluator(AgreementEvaluator):
    def __init__(self, die_at: int | None, marker: Path | None, sleep: float):
        super().__init__()
        self.die_at, self.marker, self.sleep = die_at, marker, sleep

    def __call__(self, model):
        score = super().__call__(model)
        time.sleep(self.sleep)
        if self.die_at is not None and self.calls == self.die_at and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(3)  # no cleanup: the trial stays RUNNING in the storage
        return score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--run-dir")
    ap.add_argument("--storage")
    ap.add_argument("--die-at", type=int)
    ap.add_argument("--marker")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ev = DyingEvaluator(a.die_at, Path(a.marker) if a.marker else None, a.sleep)
    res = search(FakeSupernet(), ev, n_trials=a.n, run_dir=a.run_dir, storage=a.storage, study_name="shared" if a.storage else None,
                 seed=a.seed, show_progress=False)
    print(f"done {len(res.trials)} evaluated={ev.calls}")


if __name__ == "__main__":
    main()
