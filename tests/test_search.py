"""osf.search.search on a real (small) sliced supernet double."""
from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

import osf.search
from osf.search import SearchResult, config_key, search
from osf.search.samplers import BudgetSampler
from tests.search_fakes import AgreementEvaluator, FakeSupernet


def run(n=12, **kw) -> tuple[SearchResult, AgreementEvaluator, FakeSupernet]:
    sn, ev = FakeSupernet(), AgreementEvaluator()
    kw.setdefault("show_progress", False)
    return search(sn, ev, n_trials=n, **kw), ev, sn


def test_exact_trials_anchors_first_and_scores_are_real():
    res, ev, sn = run(12)
    df = res.trials
    assert len(df) == 12 and df["number"].is_unique
    assert json.loads(df.iloc[0]["config"]) == sn.space.largest()
    assert json.loads(df.iloc[1]["config"]) == sn.space.smallest()
    assert df.iloc[0]["score"] == 1.0  # the full model reproduces its own labels
    # every recorded score/params is what the supernet gives for that config
    for _, row in df.iterrows():
        cfg = json.loads(row["config"])
        assert row["params"] == sn.num_params(cfg)
        with sn.use(cfg):
            assert row["score"] == pytest.approx(AgreementEvaluator()(sn.model))
    # the active config is restored after the search
    assert sn.config == sn.space.largest()


def test_each_config_is_scored_once():
    res, ev, sn = run(40)  # the space has 3*3*3 = 27 configs: duplicates are certain
    df = res.trials
    assert len(df) == 40
    assert ev.calls == df["config"].nunique()
    fresh = df[df["cached_from"].isna()]
    assert fresh["config"].is_unique
    cached = df[df["cached_from"].notna()]
    assert len(cached) == 40 - len(fresh) > 0
    for _, row in cached.iterrows():
        src = df[df["number"] == row["cached_from"]].iloc[0]
        assert src["config"] == row["config"] and src["score"] == row["score"]


def test_single_objective_tpe_and_random_and_callable():
    res, ev, _ = run(8, objectives=("score",))
    assert isinstance(res.study.sampler, optuna.samplers.TPESampler) and len(res.trials) == 8
    res, _, _ = run(6, sampler="random")
    assert len(res.trials) == 6
    sn = FakeSupernet()
    ev = AgreementEvaluator()
    res = osf.search(sn, lambda m: ev(m), n_trials=5, show_progress=False)  # osf.search is callable
    assert res.trials["score"].max() == 1.0


def test_gp_sampler_runs():
    res, _, _ = run(5, sampler="gp", constraints={"max_params_frac": 0.6})
    sampler = res.study.sampler  # under a parameter budget it proposes through the budget repair
    assert isinstance(sampler, BudgetSampler) and isinstance(sampler.base, optuna.samplers.GPSampler)
    assert len(res.trials) == 5


def test_unreachable_budget_raises_before_any_trial(tmp_path):
    sn, ev = FakeSupernet(), AgreementEvaluator()
    smallest = sn.num_params(sn.space.smallest())
    with pytest.raises(ValueError, match=f"smallest config has {smallest:,}"):
        search(sn, ev, constraints={"max_params": smallest - 1}, run_dir=tmp_path, show_progress=False)
    frac = (smallest - 1) / sn.num_params(sn.space.largest())
    with pytest.raises(ValueError, match="unreachable"):
        search(sn, ev, constraints={"max_params_frac": frac}, run_dir=tmp_path, show_progress=False)
    assert ev.calls == 0
    for s in optuna.get_all_study_summaries(optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal")))):
        assert s.n_trials == 0


def test_budget_feasibility_pareto_and_best():
    res, _, sn = run(25, constraints={"max_params_frac": 0.4})
    full = sn.num_params(sn.space.largest())
    df = res.trials
    assert (df["feasible"] == (df["params"] <= 0.4 * full)).all()
    assert not df.iloc[0]["feasible"]  # the full model is over budget
    assert len(res.pareto) > 0 and (res.pareto["params"] <= 0.4 * full).all()
    # the Pareto front is non-dominated and covers every feasible trial
    front = res.pareto
    for _, r in df[df["feasible"]].iterrows():
        assert ((front["score"] >= r["score"]) & (front["params"] <= r["params"])).any()
    b = res.best(max_params_frac=0.25)
    assert b["params"] <= 0.25 * full
    ok = df[df["feasible"] & (df["params"] <= 0.25 * full)]
    assert b["score"] == ok["score"].max()
    b_abs = res.best(max_params=int(0.25 * full) + 1)  # an absolute count
    assert b_abs["params"] <= 0.25 * full + 1
    with pytest.raises(ValueError, match="no feasible trial"):
        res.best(max_params=10)


def test_absolute_params_budget_is_a_count():
    sn0 = FakeSupernet()
    full, small = sn0.num_params(sn0.space.largest()), sn0.num_params(sn0.space.smallest())
    count = small + (full - small) // 3  # a count well under the full model, above the smallest
    res, _, sn = run(20, constraints={"max_params": count})
    assert res.limits == {"params": count}
    df = res.trials
    assert (df["feasible"] == (df["params"] <= count)).all() and df["feasible"].any() and not df["feasible"].all()
    assert (res.pareto["params"] <= count).all()
    b = res.best(max_params=count)
    assert b["params"] <= count and b["score"] == df[df["params"] <= count]["score"].max()
    # the same limit as a fraction selects the same trial
    assert int(res.best(max_params_frac=count / full)["number"]) == int(b["number"])
    cfg = res.config(int(b["number"]))
    assert sn.num_params(cfg) <= count


def test_sub_millisecond_latency_budget(monkeypatch):
    """0.8 means 0.8 ms (under the old rule it meant 80% of the full model's latency)."""
    import osf.search.objectives as objectives

    sn, ev = FakeSupernet(), AgreementEvaluator()
    full = sn.num_params(sn.space.largest())
    fake_ms = lambda model, inputs: 2.0 * sn.num_params(sn.config) / full  # noqa: E731  (full model: 2 ms)
    monkeypatch.setattr(objectives, "measure_latency_ms", fake_ms)
    res = search(sn, ev, n_trials=20, objectives=("score", "latency"), constraints={"max_latency_ms": 0.8},
                 show_progress=False)
    assert res.limits == {"latency": 0.8} and res.reference["latency"] == pytest.approx(2.0)
    df = res.trials
    assert (df["feasible"] == (df["latency"] <= 0.8)).all() and df["feasible"].any()
    assert df["latency"].max() > 0.8 * 2.0  # some trials lie between 0.8 ms and 80% of the full model's
    b = res.best(max_latency_ms=0.8)
    assert b["latency"] <= 0.8
    loose = res.best(max_latency_ms=1.9)
    assert loose["latency"] <= 1.9 and loose["score"] >= b["score"]
    with pytest.raises(ValueError, match="max_latency_ms 0.01 .* is unreachable: .* allow at least max_latency_ms"):
        search(FakeSupernet(), ev, n_trials=2, constraints={"max_latency_ms": 0.01}, show_progress=False)


def test_best_budget_arguments_are_checked():
    res, _, _ = run(4)
    with pytest.raises(ValueError, match="max_params_frac must be a fraction .* got 2; for an absolute count use max_params"):
        res.best(max_params_frac=2)
    with pytest.raises(ValueError, match="give one of max_params .* or max_params_frac .* not both"):
        res.best(max_params=100, max_params_frac=0.5)
    with pytest.raises(ValueError, match="max_latency_ms: no latency were recorded"):
        res.best(max_latency_ms=0.8)
    with pytest.raises(ValueError, match="max_macs must be a number of MACs >= 1"):
        res.best(max_macs=True)


def test_infeasible_configs_can_be_scored_on_request():
    # sampling the whole space (no repair into the budget), so some trials are over budget
    res, ev, _ = run(10, constraints={"max_params_frac": 0.4}, evaluate_infeasible=True, budget_band=None)
    assert res.trials["score"].notna().all()
    res2, ev2, _ = run(10, constraints={"max_params_frac": 0.4}, budget_band=None)
    over = res2.trials[~res2.trials["feasible"]]
    assert ev2.calls < ev.calls and len(over) > 0 and over["score"].isna().all()
    assert all(res2.study.trials[n].values[0] == float("-inf") for n in over["number"])


def test_macs_and_latency_objectives():
    res, ev, sn = run(6, objectives=("score", "macs", "latency"), constraints={"max_latency_ms": 1e6})
    df = res.trials
    assert (df["latency"] > 0).all()
    for _, r in df.iterrows():
        assert r["macs"] == sn.macs(json.loads(r["config"]), inputs=ev.example_inputs())
    with pytest.raises(ValueError, match="example inputs"):
        search(FakeSupernet(), lambda m: 1.0, objectives=("score", "latency"), n_trials=2, show_progress=False)


def test_resume_in_process_runs_only_the_rest(tmp_path):
    sn, ev = FakeSupernet(), AgreementEvaluator()
    r1 = search(sn, ev, n_trials=6, run_dir=tmp_path, show_progress=False)
    calls = ev.calls
    first = r1.trials.set_index("number")["config"].to_dict()
    r2 = search(sn, ev, n_trials=10, run_dir=tmp_path, show_progress=False)
    df = r2.trials
    assert len(df) == 10 and r2.study.study_name == r1.study.study_name
    assert df[df["number"].isin(first)].set_index("number")["config"].to_dict() == first
    assert ev.calls - calls == df[~df["number"].isin(first) & df["cached_from"].isna()].shape[0]
    r3 = search(sn, ev, n_trials=10, run_dir=tmp_path, show_progress=False)  # nothing left to do
    assert len(r3.trials) == 10 and len(r3.study.trials) == len(r2.study.trials)


def test_result_files_and_plot(tmp_path):
    res, _, sn = run(10, constraints={"max_params_frac": 0.5})
    res.save(tmp_path)
    assert SearchResultSpace(tmp_path) == sn.space.to_json()
    df = pd.read_csv(tmp_path / "trials.csv")
    assert len(df) == 10 and {"number", "config", "score", "params", "feasible"} <= set(df.columns)
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert [p["number"] for p in pareto["pareto"]] == list(res.pareto["number"])
    assert all(isinstance(p["config"], dict) for p in pareto["pareto"])
    png = res.plot_pareto(tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "params %" in res.table()


def SearchResultSpace(d):
    return (d / "space.json").read_text()


@pytest.mark.parametrize("kw, msg", [
    ({"objectives": ("score", "flops")}, "unknown objective"),
    ({"sampler": "cma"}, "unknown sampler"),
    ({"constraints": {"memory": 0.5}}, "unknown budget"),
    ({"constraints": {"max_params": -1}}, "max_params must be a number of parameters >= 1"),
    ({"constraints": {"params": 0.5}}, "'params' alone is ambiguous: use max_params .* or max_params_frac"),
    ({"constraints": {"max_params_frac": 1.5}}, r"max_params_frac must be a fraction .* in \(0, 1\], got 1.5; for an "
                                                "absolute count use max_params"),
    ({"constraints": {"max_params": 0.5}}, "max_params must be a number .*; for a fraction of the original use "
                                           "max_params_frac"),
    ({"constraints": {"max_params": 100, "max_params_frac": 0.5}}, "give one of max_params .* or max_params_frac"),
    ({"constraints": {"max_latency_ms": 0}}, "max_latency_ms must be a positive number of milliseconds, got 0"),
    ({"constraints": {"max_macs_frac": float("nan")}}, "max_macs_frac must be a fraction"),
    ({"n_trials": 0}, "n_trials"),
])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        search(FakeSupernet(), AgreementEvaluator(), show_progress=False, **kw)


def test_config_key_is_canonical():
    assert config_key({"b": 1, "a": True}) == config_key({"a": True, "b": 1}) == '{"a":true,"b":1}'


def test_one_heartbeat_thread_beats_for_whichever_trial_is_running():
    import threading
    import time as time_module

    from osf.search.storage import Heartbeat

    study = optuna.create_study()
    with Heartbeat(interval=0.02) as hb:
        threads_before = threading.active_count()
        for _ in range(3):
            trial = study.ask()
            with hb.beating(trial):
                time_module.sleep(0.15)
            beat = study.trials[-1].user_attrs.get("osf_heartbeat")
            assert beat is not None and study.trials[-1].user_attrs.get("osf_worker")
            time_module.sleep(0.1)  # between trials: no beat lands on the finished one
            assert study.trials[-1].user_attrs["osf_heartbeat"] == beat
            study.tell(trial, 0.0)
        assert threading.active_count() <= threads_before + 1  # one thread for the search, not one per trial
    assert threading.active_count() <= threads_before  # and it ends with the search


def test_a_claim_does_not_wait_for_trials_that_start_after_it():
    """Workers that keep starting trials (and pruning them, once N trials exist) must not starve a
    claimed config: only trials already choosing when the claim was stored may hold a smaller
    ticket. Each read of the study here starts a new unclaimed trial and prunes the previous one."""
    from optuna.trial import TrialState

    from osf.search.storage import await_config_turn, claim_config, next_ticket

    study = optuna.create_study()
    mine = study.ask()
    ticket = next_ticket(study.get_trials(deepcopy=False))
    claim_config(mine, "cfg", ticket)
    choosers = [study.ask()]  # running, not claimed yet: it may take a ticket as small as mine
    reads = []

    def lookup(trials):
        reads.append(len(trials))
        study.tell(choosers[-1], state=TrialState.PRUNED)
        choosers.append(study.ask())  # another worker's next trial, started after my claim
        return None

    assert await_config_turn(study, mine.number, "cfg", ticket, lookup, timeout=60.0) is None
    assert len(reads) == 2  # waited for the chooser that ran at my claim, not for the later ones
