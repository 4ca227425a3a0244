"""Resume after a crash, and several worker processes sharing one study."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from osf.search.storage import JOURNAL_NAME, make_storage

ROOT = Path(__file__).resolve().parents[1]


def worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.search_worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    out, _ = p.communicate(timeout=300)
    return p.returncode, out


def only_study(storage) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def check_complete(study: optuna.Study, n: int) -> None:
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == n
    fresh = [t.user_attrs["config"] for t in done if "cached_from" not in t.user_attrs]
    assert len(fresh) == len(set(fresh)), "a config was evaluated twice"
    for t in done:
        if "cached_from" in t.user_attrs:
            src = study.trials[t.user_attrs["cached_from"]]
            assert src.state == TrialState.COMPLETE and src.user_attrs["config"] == t.user_attrs["config"]
            assert src.user_attrs["score"] == t.user_attrs["score"]


def test_killed_mid_trial_then_resumed(tmp_path):
    marker = tmp_path / "died"
    rc, out = finish(worker("--n", "12", "--run-dir", str(tmp_path), "--die-at", "5", "--marker", str(marker)))
    assert rc == 3 and marker.exists(), out
    storage = make_storage(str(tmp_path / JOURNAL_NAME), None)
    study = only_study(storage)
    before = study.get_trials(states=(TrialState.COMPLETE,))
    assert 0 < len(before) < 12
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1  # the killed trial
    rc, out = finish(worker("--n", "12", "--run-dir", str(tmp_path), "--die-at", "5", "--marker", str(marker)))
    assert rc == 0, out
    study = only_study(make_storage(str(tmp_path / JOURNAL_NAME), None))
    check_complete(study, 12)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1  # the killed one, marked failed on resume
    # trials finished before the crash are kept as they were
    kept = {t.number: t.user_attrs["config"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(kept[t.number] == t.user_attrs["config"] for t in before)


def test_two_workers_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    n = 14
    procs = [worker("--n", str(n), "--storage", url, "--sleep", "0.2", "--seed", str(s)) for s in (1, 2)]
    results = [finish(p) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    study = optuna.load_study(study_name="shared", storage=url)
    check_complete(study, n)
    workers = {t.user_attrs["osf_worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(workers) == 2, "both processes should have run trials"
