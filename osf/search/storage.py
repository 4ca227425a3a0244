"""Where a study lives, its name, and the bookkeeping that makes runs resumable.

Default: an Optuna journal file (``study.journal``) in the run directory. Any Optuna
RDB URL (``sqlite:///runs/x.db``, ``postgresql+psycopg://user:pass@host/db``) lets many
processes, on many machines, share one study. Each running trial records its worker
(host, pid) and a heartbeat, so trials left RUNNING by a killed process are recognised
(at once on the same host, after ``GRACE_S`` without a heartbeat elsewhere) and marked
failed. With an RDB storage Optuna's own heartbeats (kept by the database's clock) do the
same, and a failed trial is queued again with the same parameters (:class:`RetryStaleTrial`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

JOURNAL_NAME = "study.journal"
JOURNAL_SUFFIXES = (".journal", ".log")
HEARTBEAT_S = 10  # seconds between heartbeats of a running trial
GRACE_S = 120  # a trial of another host with no heartbeat for this long is stale
MAX_RETRY = 3  # a trial whose worker died is queued again at most this often (a config that kills workers)


def make_storage(storage: str | optuna.storages.BaseStorage | None, run_dir: str | Path | None) -> Any:
    """Build the Optuna storage: given object/URL, a journal file in ``run_dir``, or memory."""
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if storage is not None:
        if not isinstance(storage, (str, Path)):
            raise TypeError(f"storage must be a database URL, a journal file path or an Optuna storage, "
                            f"got {type(storage).__name__}")
        if isinstance(storage, Path) or "://" not in storage:
            path = Path(storage)  # a journal file path
            if path.suffix not in JOURNAL_SUFFIXES:
                raise ValueError(
                    f"storage {str(storage)!r} is not a database URL (e.g. sqlite:///runs/study.db, "
                    f"postgresql://user@host/db) nor a journal file path (ending in {' or '.join(JOURNAL_SUFFIXES)})"
                )
            if path.is_dir():
                raise ValueError(f"storage {str(storage)!r} is a folder; a journal storage is a file such as {JOURNAL_NAME}")
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFile(str(path)))
        url = resolve_sqlite(storage, run_dir)
        check_url(url)
        return _rdb(url)
    if run_dir is None:
        return optuna.storages.InMemoryStorage()
    path = Path(run_dir) / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFile(str(path)))


class JournalFile(JournalFileBackend):
    """Optuna's journal file (same format, same lock), without an ``fsync`` after every write.

    A trial writes its storage about 25 times (one per parameter, per user attribute, per
    state change); Optuna's backend forces each write to disk, which made the journal about
    a tenth of the demo search's trial time. Written lines reach the operating system at
    once, so other processes (also over NFS, which flushes on close) read them as before;
    only a crash of the machine itself may lose the last writes, as a killed worker would.
    """

    def __init__(self, path: str):
        self._file = path
        self._file_lock = JournalFileOpenLock(path)
        super().__init__(path, lock_obj=self._file_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        self._file_lock.acquire()
        try:
            with open(self._file, "ab") as f:
                f.write(text.encode("utf-8"))
        finally:
            self._file_lock.release()


def check_url(url: str, option: str = "storage") -> None:
    """Refuse a storage URL that cannot work (unparsable, unknown database, driver missing), naming ``option``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. sqlite:///runs/study.db or postgresql://user:password@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{option} {url!r} is not a database URL; expected DIALECT://..., {example}") from None
    url = parsed.render_as_string(hide_password=True)  # error messages never show a password
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"{option} {url!r}: unknown database {parsed.drivername!r}; "
                         f"use sqlite, postgresql or mysql ({example})") from None
    try:
        dialect.import_dbapi() if hasattr(dialect, "import_dbapi") else dialect.dbapi()
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        raise ValueError(f"{option} {url!r} needs the Python database driver {missing!r}, which is not installed "
                         f"(pip install {_DRIVER_PACKAGES.get(missing, missing)}), or choose another driver in the "
                         f"URL such as postgresql+psycopg2://") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and Path(db).is_dir():
            raise ValueError(f"{option} {url!r} names a folder; give a database file such as {db.rstrip('/')}/study.db")
        if db and db != ":memory:" and not Path(db).parent.is_dir():
            raise ValueError(f"{option} {url!r}: the folder {str(Path(db).parent)!r} of the database file does not exist")


_DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                    "pymysql": "pymysql", "asyncpg": "asyncpg"}


def resolve_sqlite(url: str, run_dir: str | Path | None) -> str:
    """A sqlite URL with a relative file path, made absolute against ``run_dir`` (other URLs unchanged).

    A run folder keeps its database however the command was started, so ``osf extract``
    finds it from any working directory (and never creates an empty one there).
    """
    prefix = "sqlite:///"
    if run_dir is None or not url.startswith(prefix):
        return url
    rest = url[len(prefix):]
    db, sep, query = rest.partition("?")
    if not db or db == ":memory:" or db.startswith("/") or db.startswith("file:"):
        return url
    return prefix + str((Path(run_dir) / db).resolve()) + sep + query


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``None`` for other URLs and memory)."""
    if not url.startswith("sqlite:///"):
        return None
    db = url[len("sqlite:///"):].partition("?")[0]
    return None if not db or db == ":memory:" else Path(db)


def _rdb(url: str, tries: int = 10) -> RDBStorage:
    # workers started together race to create the schema of a new database: retry
    for i in range(tries):
        try:
            with warnings.catch_warnings():  # Optuna calls its heartbeat arguments experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_S,
                                     grace_period=GRACE_S, heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRY))
            if url.startswith("sqlite"):
                _serialize_sqlite(storage.engine)
            return storage
        except Exception as e:
            if i == tries - 1:
                from sqlalchemy.engine import make_url

                shown = make_url(url).render_as_string(hide_password=True)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ValueError(f"cannot open the study storage {shown!r}: {type(e).__name__}: {first}") from e
            time.sleep(0.2 * (i + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict[str, Any]:
    # several processes writing one SQLite file: wait for the lock instead of failing; Python's
    # sqlite3 begins no transactions of its own (isolation_level None): _serialize_sqlite does
    return {"connect_args": {"timeout": 60, "isolation_level": None}} if url.startswith("sqlite") else {}


def _serialize_sqlite(engine: Any) -> None:
    """Make every transaction on a SQLite file take the write lock at its start (``BEGIN IMMEDIATE``).

    SQLite has no ``SELECT ... FOR UPDATE``, and Python's sqlite3 starts a transaction only at
    the first write, so Optuna's read-then-write updates are not atomic between processes: two
    workers could both take the same WAITING trial (both then run it, and the second ``tell``
    fails with "Cannot tell a COMPLETE trial"). With the lock taken first they are serialized,
    as on PostgreSQL or MySQL.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def default_study_name(label: str, objectives: tuple[str, ...] | list[str], budgets: dict[str, float], space_json: str,
                       **settings: Any) -> str:
    """The study name of a run, ``osf-<label>-<hash>``, for ``osf.search`` and ``osf search`` alike.

    The hash covers what defines the run: ``label`` (the evaluator's name, or the CLI's model),
    the objectives, the budgets, the space and any other ``settings`` that change a score
    (the CLI's task, limit, batch size...). So the same call resumes the same study, every
    worker of one run shares it, and workers with other settings never do.
    """
    parts = [label, list(objectives), sorted(budgets.items()), json.loads(space_json)]
    key = json.dumps(parts + ([sorted(settings.items())] if settings else []), sort_keys=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
    return f"osf-{safe}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_stale(trial: FrozenTrial, now: float | None = None) -> bool:
    """True for a RUNNING trial whose worker is gone (dead pid here, or no heartbeat for ``GRACE_S``)."""
    if trial.state != TrialState.RUNNING:
        return False
    worker = trial.user_attrs.get("osf_worker")
    if worker is not None:
        host, _, pid = worker.rpartition(":")
        if host == socket.gethostname():
            return not _pid_alive(int(pid))
    beat = trial.user_attrs.get("osf_heartbeat")
    if beat is None:  # not tagged yet, or no refresh yet: judge by its start time
        beat = trial.datetime_start.timestamp() if trial.datetime_start else None
    return beat is not None and (now or time.time()) - float(beat) > GRACE_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[int]:
    """Mark RUNNING trials of dead workers as FAIL; return their numbers.

    ``trials``: a fresh read of the study's trials to judge (default: read them here). Where the
    storage has a stale-trial callback (an RDB storage: :class:`RetryStaleTrial`), each trial
    failed here is passed to it, as Optuna's heartbeat does; a trial failed by another worker
    meanwhile is skipped, so it is retried once.
    """
    storage = study._storage
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    failed = []
    for t in trials:
        if is_stale(t):
            try:
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    failed.append(t)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # finished meanwhile
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        for t in failed:
            callback(study, storage.get_trial(t._trial_id))
    return [t.number for t in failed]


class RetryStaleTrial:
    """Queues a trial whose worker died again: a WAITING trial with the same parameters.

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` the dead worker's user attributes
    (its worker tag, heartbeat, config claim) are not copied, so the new trial starts clean.
    The system attributes ``failed_trial`` (the first trial) and ``retry_history`` are the same
    as Optuna's. A trial is retried at most ``max_retry`` times.
    """

    def __init__(self, max_retry: int = MAX_RETRY):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            return
        system_attrs = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history}
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                                  distributions=trial.distributions, system_attrs=system_attrs))


CLAIM = "osf_claim"  # user attr of a running trial: its ticket for the config (user attr "config") it scores
T = TypeVar("T")


def next_ticket(trials: Iterable[FrozenTrial]) -> int:
    """A new ticket: 1 + the largest claimed. Read the trials after this trial became RUNNING."""
    return 1 + max((t.user_attrs.get(CLAIM, 0) for t in trials), default=0)


def claim_config(trial: optuna.Trial, key: str, ticket: int) -> None:
    """Record that ``trial`` scores config ``key`` with ``ticket`` (ends its "choosing")."""
    trial.set_user_attr("config", key)
    trial.set_user_attr(CLAIM, ticket)  # second: a claim always names its config


def await_config_turn(study: optuna.Study, number: int, key: str, ticket: int,
                      lookup: Callable[[list[FrozenTrial]], T | None], timeout: float) -> T | None:
    """Wait until trial ``number`` may score config ``key``, or its values are stored.

    Mutual exclusion per config by Lamport's bakery algorithm over the shared storage, so
    two workers never score one config at once and there is no window between check and
    claim. A trial takes a ticket (:func:`next_ticket`), claims its config
    (:func:`claim_config`), then waits while another live RUNNING trial that was running when
    this claim was stored has not claimed yet ("choosing": its ticket and config could be this
    one's) or claims the same config with a smaller ``(ticket, number)``. The smallest live claimant scores; the others get its values once
    it completes, or take over if its worker dies (:func:`is_stale`).

    ``lookup(trials)`` finds the stored values of ``key`` in a read of the COMPLETE and
    RUNNING trials. Returns them, or ``None``: this trial scores ``key`` (also after
    ``timeout`` seconds of waiting).
    """
    me = (ticket, number)
    deadline = time.time() + timeout
    # only trials choosing at the first read (after this claim was stored) may take a ticket as
    # small as this one: a trial that starts later reads this claim. Waiting for later ones too
    # starved a claim while other workers kept starting trials (and pruning them at N).
    earlier_choosers: set[int] | None = None
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        found = lookup(trials)
        if found is not None:
            return found
        ahead = False
        choosers = set()
        for t in trials:
            if t.state != TrialState.RUNNING or t.number == number or is_stale(t):
                continue
            claim = t.user_attrs.get(CLAIM)
            if claim is None:
                choosers.add(t.number)
            elif t.user_attrs.get("config") == key and (claim, t.number) < me:
                ahead = True
        if earlier_choosers is None:
            earlier_choosers = choosers
        choosing = bool(choosers & earlier_choosers)
        if not (ahead or choosing) or time.time() > deadline:
            return None
        time.sleep(0.2 if ahead else 0.05)


class Heartbeat:
    """Tags each running trial with this worker and refreshes its heartbeat, from one thread per
    search (a thread per trial cost ~2 ms of every trial). Use ``with hb.beating(trial):`` per
    trial and :meth:`close` (or ``with Heartbeat() as hb:``) at the end of the search."""

    def __init__(self, interval: float = HEARTBEAT_S):
        self.interval = interval
        self._trial: optuna.Trial | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        trial.set_user_attr("osf_worker", worker_id())  # until the first refresh, the start time is the beat
        with self._lock:
            self._trial = trial
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            with self._lock:  # no beat lands on a finished trial
                self._trial = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._trial is not None:
                    try:
                        self._trial.set_user_attr("osf_heartbeat", time.time())
                    except Exception:  # a storage hiccup: the next beat tries again
                        pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
