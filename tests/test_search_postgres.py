"""Searches shared through a real PostgreSQL server (tests/postgres_server.py starts one).

Worker processes (tests/search_worker.py) share one study on the server. Without the
PostgreSQL binaries these tests fail; ``OSF_SKIP_POSTGRES=1`` skips them.
"""
from __future__ import annotations

import os
import signal
import socket
import time

import optuna
from optuna.trial import TrialState

from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.search_worker import check_complete, check_ok, finish, start_worker

N = 12


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="shared", storage=url)


def test_three_workers_score_each_config_once(postgres_url):
    # one seed for all: the three samplers propose the same configs at the same moments
    procs = [start_worker("--n", str(N), "--storage", postgres_url, "--sleep", "0.3", "--seed", "0")
             for _ in range(3)]
    check_ok([finish(p) for p in procs])
    study = load(postgres_url)
    check_complete(study, N)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert any("cached_from" in t.user_attrs for t in done), "the workers never proposed one config together"
    assert len({t.user_attrs["osf_worker"] for t in done}) >= 2, "one worker ran every trial"
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_worker_killed_mid_trial_is_retried_by_another(postgres_url, tmp_path):
    marker = tmp_path / "hung"
    victim = start_worker("--n", str(N), "--storage", postgres_url, "--sleep", "0.3", "--seed", "1",
                          "--hang-at", "2", "--marker", str(marker))
    others = [start_worker("--n", str(N), "--storage", postgres_url, "--sleep", "0.3", "--seed", str(s))
              for s in (2, 3)]
    deadline = time.time() + 180
    while not marker.exists():
        assert victim.poll() is None, finish(victim)[1]
        assert time.time() < deadline, "the worker to kill never reached its second evaluation"
        time.sleep(0.1)
    pid = int(marker.read_text())
    victim_tag = f"{socket.gethostname()}:{pid}"
    (hung,) = [t for t in load(postgres_url).get_trials(states=(TrialState.RUNNING,))
               if t.user_attrs.get("osf_worker") == victim_tag]
    os.kill(pid, signal.SIGKILL)
    assert finish(victim)[0] == -signal.SIGKILL
    check_ok([finish(p) for p in others])

    study = load(postgres_url)
    check_complete(study, N)
    assert study.trials[hung.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == hung.number]
    assert len(retries) == 1, f"{len(retries)} retries of the killed trial"
    (retry,) = retries
    assert retry.state == TrialState.COMPLETE and retry.params == hung.params
    assert retry.user_attrs["osf_worker"] != victim_tag
    assert retry.user_attrs["config"] == hung.user_attrs["config"]
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
