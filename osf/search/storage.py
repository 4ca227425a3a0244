"""Where a study lives, its name, and the bookkeeping that makes runs resumable.

Default: an Optuna journal file (``study.journal``) in the run directory. Any Optuna
RDB URL (``sqlite:///runs/x.db``, ``postgresql://...``) lets many processes share one
study. Each running trial records its worker (host, pid) and a heartbeat, so trials
left RUNNING by a killed process are recognised and marked failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

JOURNAL_NAME = "study.journal"
HEARTBEAT_S = 10.0
GRACE_S = 120.0  # a trial of another host with no heartbeat for this long is stale


def make_storage(storage: str | optuna.storages.BaseStorage | None, run_dir: str | Path | None) -> Any:
    """Build the Optuna storage: given object/URL, a journal file in ``run_dir``, or memory."""
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if storage is not None:
        if "://" not in str(storage):
            path = Path(storage)  # a journal file path
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
        return _rdb(str(storage))
    if run_dir is None:
        return optuna.storages.InMemoryStorage()
    path = Path(run_dir) / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _rdb(url: str, tries: int = 10) -> RDBStorage:
    # workers started together race to create the schema of a new database: retry
    for i in range(tries):
        try:
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except Exception:
            if i == tries - 1:
                raise
            time.sleep(0.2 * (i + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict[str, Any]:
    # several processes writing one SQLite file: wait for the lock instead of failing
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def default_study_name(evaluator_name: str, objectives: tuple[str, ...], constraints: dict[str, float], space_json: str) -> str:
    """A name derived from what defines the run, so the same call resumes the same study."""
    key = json.dumps([evaluator_name, list(objectives), sorted(constraints.items()), json.loads(space_json)], sort_keys=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in evaluator_name)[:40]
    return f"osf-{safe}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_stale(trial: FrozenTrial, now: float | None = None) -> bool:
    """True for a RUNNING trial whose worker is gone (dead pid here, or heartbeat too old)."""
    if trial.state != TrialState.RUNNING:
        return False
    worker = trial.user_attrs.get("osf_worker")
    beat = trial.user_attrs.get("osf_heartbeat")
    if worker is None:  # created but not yet tagged: judge by its start time
        start = trial.datetime_start.timestamp() if trial.datetime_start else None
        return start is not None and (now or time.time()) - start > GRACE_S
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname():
        return not _pid_alive(int(pid))
    return beat is not None and (now or time.time()) - float(beat) > GRACE_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead workers as FAIL; return their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t):
            try:
                if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    failed.append(t.number)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # finished meanwhile
    return failed


class Heartbeat:
    """Tags a running trial with this worker and refreshes its heartbeat in a thread."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_S):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.trial.set_user_attr("osf_worker", worker_id())
        self.trial.set_user_attr("osf_heartbeat", time.time())
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr("osf_heartbeat", time.time())
            except Exception:  # the trial finished meanwhile
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
