"""Resume after a crash, and several worker processes sharing one study."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading

import optuna
from optuna.trial import TrialState

from osf.search.storage import JOURNAL_NAME, await_config_turn, claim_config, make_storage, next_ticket, worker_id
from tests.search_worker import check_complete, check_ok, finish, start_worker as worker


def only_study(storage) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


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
    check_ok([finish(p) for p in procs])
    study = optuna.load_study(study_name="shared", storage=url)
    check_complete(study, n)
    workers = {t.user_attrs["osf_worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(workers) == 2, "both processes should have run trials"


def _scored(key: str):
    """lookup for await_config_turn: the number of a COMPLETE trial of ``key``."""
    return lambda trials: next((t.number for t in trials if t.state == TrialState.COMPLETE
                                and t.user_attrs.get("config") == key), None)


def _waiting(study, trial, key, ticket, timeout=60.0) -> tuple[threading.Thread, dict]:
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(got=await_config_turn(study, trial.number, key, ticket,
                                                                          _scored(key), timeout)), daemon=True)
    th.start()
    return th, box


def test_config_turn_waits_for_a_trial_still_choosing():
    """The interleaving a check-then-claim cache loses: both trials read the tickets before either
    claims, the later one claims first. It must wait until the earlier one has claimed, then for it."""
    study = optuna.create_study()
    a, b = study.ask(), study.ask()
    for t in (a, b):
        t.set_user_attr("osf_worker", worker_id())
    ta, tb = next_ticket(study.get_trials(deepcopy=False)), next_ticket(study.get_trials(deepcopy=False))
    assert ta == tb == 1
    claim_config(b, "K", tb)
    th, box = _waiting(study, b, "K", tb)
    th.join(0.5)
    assert th.is_alive(), "b went on while a, RUNNING, had not yet said which config it scores"
    claim_config(a, "K", ta)
    assert await_config_turn(study, a.number, "K", ta, _scored("K"), 60.0) is None  # (1, a) < (1, b): a scores K
    th.join(0.5)
    assert th.is_alive(), "b scores K while a does"
    study.tell(a, 1.0)
    th.join(30)
    assert not th.is_alive() and box["got"] == a.number  # b reuses a's values


def test_config_turn_other_configs_dead_workers_and_timeout():
    study = optuna.create_study()
    a, b, c = study.ask(), study.ask(), study.ask()
    for t in (a, b, c):
        t.set_user_attr("osf_worker", worker_id())
    claim_config(a, "K", 1)
    claim_config(c, "J", 2)
    claim_config(b, "K", 3)
    assert await_config_turn(study, c.number, "J", 2, _scored("J"), 60.0) is None  # no one else scores J
    assert await_config_turn(study, b.number, "K", 3, _scored("K"), 0.3) is None  # a scores K, b gives up after 0.3 s
    th, box = _waiting(study, b, "K", 3)
    th.join(0.5)
    assert th.is_alive()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    a.set_user_attr("osf_worker", f"{socket.gethostname()}:{dead.pid}")  # a's worker died: b takes K over
    th.join(30)
    assert not th.is_alive() and box["got"] is None


def test_config_turn_goes_by_ticket_not_trial_number():
    """A trial that starts late (an enqueued or retried one has an early number) waits for claims made before it."""
    study = optuna.create_study()
    a, b = study.ask(), study.ask()
    for t in (a, b):
        t.set_user_attr("osf_worker", worker_id())
    claim_config(b, "K", next_ticket(study.get_trials(deepcopy=False)))
    ta = next_ticket(study.get_trials(deepcopy=False))  # read after b claimed: a larger ticket
    claim_config(a, "K", ta)
    th, box = _waiting(study, a, "K", ta)
    tb, got_b = _waiting(study, b, "K", 1)
    tb.join(20)
    assert not tb.is_alive() and got_b["got"] is None, "b, which claimed K first, should score it"
    th.join(0.5)
    assert th.is_alive(), "a scores K while b does"
    study.tell(b, 1.0)
    th.join(30)
    assert not th.is_alive() and box["got"] == b.number


def test_sqlite_waiting_trial_is_taken_once(tmp_path):
    """SQLite has no SELECT ... FOR UPDATE: without BEGIN IMMEDIATE two workers could both take one
    enqueued trial (both run it; the second tell fails: "Cannot tell a COMPLETE trial")."""
    url = f"sqlite:///{tmp_path / 'pop.db'}"
    study = optuna.create_study(storage=make_storage(url, None), study_name="pop")
    for i in range(100):
        study.enqueue_trial({"x": i})
    ids = [t._trial_id for t in study.get_trials()]
    taken: list[int] = []

    def take(k: int) -> None:
        storage = make_storage(url, None)  # a worker of its own: its own connections
        for tid in ids if k % 2 else ids[::-1]:
            if storage.set_trial_state_values(tid, TrialState.RUNNING):
                taken.append(tid)

    threads = [threading.Thread(target=take, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(taken) == sorted(ids), "an enqueued trial was taken by two workers (or by none)"


def test_journal_file_reads_back_with_optunas_own_backend(tmp_path):
    """The run folder's journal (written without an fsync per line) is Optuna's format: optuna-dashboard
    and Optuna's JournalFileBackend read it, and two processes appending to it interleave whole lines."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    procs = [worker("--n", "10", "--run-dir", str(tmp_path), "--seed", str(s)) for s in (1, 2)]
    check_ok([finish(p) for p in procs])
    ours = only_study(make_storage(str(tmp_path / JOURNAL_NAME), None))
    stock = only_study(JournalStorage(JournalFileBackend(str(tmp_path / JOURNAL_NAME))))
    check_complete(stock, 10)
    assert [(t.number, t.state, t.params, t.values, t.user_attrs) for t in stock.trials] == \
           [(t.number, t.state, t.params, t.values, t.user_attrs) for t in ours.trials]
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in lines)
