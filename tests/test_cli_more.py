"""``osf --version``, ``osf show``, ``osf eval`` and the supernet-building options of ``osf search``
(``--tokenizer``, ``--space``, ``--importance``, ``--block-order``, ``--calibration``, ``--depth``)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

import osf
from tests.cli_tools import invoke, ok, one_line_error
from tests.test_evaluators import write_cifar



@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_more") / "c10"
    write_cifar(root, "cifar10", n_test=20, n_train=8)
    return root


@pytest.fixture(scope="module")
def vit_run(cifar) -> Path:
    """tiny-vit searched with a restricted space (YAML file) and every layer kept (--depth 1)."""
    run = cifar.parent / "run"
    space = cifar.parent / "space.yaml"
    space.write_text("'*mlp:hidden': [128, 64, 32]\n'*:heads': [4, 2]\n")
    ok(invoke("search", "tiny-vit", "--task", "cifar10", "--data", cifar, "--trials", "5", "--objectives",
              "score,params,macs", "--max-params-frac", "0.7", "--space", space, "--depth", "1", "--out", run))
    return run


def test_version():
    assert ok(invoke("--version")).strip() == f"osf {osf.__version__}"


def test_space_and_depth_shape_the_searched_space(vit_run):
    spec = json.loads((vit_run / "run.json").read_text())
    dims = spec["space"]["dims"]
    mlp = [d for d in dims if d.endswith("mlp:hidden")]
    heads = [d for d in dims if d.endswith(":heads")]
    assert mlp and heads and all(dims[d] == [128, 64, 32] for d in mlp) and all(dims[d] == [4, 2] for d in heads)
    stacks = spec["space"]["stacks"]
    assert all(spec["space"]["min_depth"][s] == len(blocks) for s, blocks in stacks.items())  # --depth 1
    assert spec["supernet_config"]["min_depth"] == 1.0
    for cfg in pd.read_csv(vit_run / "trials.csv")["config"]:
        cfg = json.loads(cfg)
        assert all(cfg[b] for blocks in stacks.values() for b in blocks)  # no layer dropped
        assert all(cfg[d] in (128, 64, 32) for d in mlp) and all(cfg[d] in (4, 2) for d in heads)


def test_show_prints_the_pareto_front_and_best_per_budget(vit_run):
    trials = pd.read_csv(vit_run / "trials.csv")
    pareto = json.loads((vit_run / "pareto.json").read_text())
    out = ok(invoke("show", vit_run))
    for p in pareto["pareto"]:
        assert f"{int(p['params']):,}" in out
    shown = json.loads(ok(invoke("show", vit_run, "--json")))
    assert [p["number"] for p in shown["pareto"]] == [p["number"] for p in pareto["pareto"]]
    full = pareto["reference"]["params"]
    scored = trials[trials["feasible"] & trials["score"].notna()]
    for b in shown["best_per_budget"]:  # the best trial, recomputed here from trials.csv
        frac = float(b["budget"].split("=")[1])
        fits = scored[scored["params"] <= frac * full]
        if fits.empty:
            assert b["trial"] is None
            continue
        top = fits.sort_values(["score", "params"], ascending=[False, True]).iloc[0]
        assert b["trial"] == int(top["number"]) and b["score"] == pytest.approx(top["score"])
        assert f"{b['budget']:>20}" in out or b["budget"] in out
    assert {b["budget"] for b in shown["best_per_budget"]} >= {"max_params_frac=0.7", "max_params_frac=0.5"}


def test_eval_scores_as_the_search_did(vit_run, cifar, tmp_path):
    trials = pd.read_csv(vit_run / "trials.csv")
    ok(invoke("extract", vit_run, "--best", "--max-params-frac", "0.7", "--out", tmp_path / "sub"))
    number = json.loads((tmp_path / "sub" / "osf_search.json").read_text())["trial"]
    row = trials[trials["number"] == number].iloc[0]
    got = json.loads(ok(invoke("eval", tmp_path / "sub", "--task", "cifar10", "--data", cifar, "--json")))
    # the real extracted model, scored and counted outside the supernet, gives the search's numbers
    assert got["score"] == pytest.approx(row["score"]) and got["params"] == row["params"] and got["macs"] == row["macs"]
    text = ok(invoke("eval", tmp_path / "sub", "--task", "cifar10", "--data", cifar))
    assert f"params {int(row['params']):,}" in text and f"MACs {int(row['macs']):,}" in text
    # the original model gives the search's reference (its supernet at the largest config)
    reference = json.loads((vit_run / "pareto.json").read_text())["reference"]
    full = json.loads(ok(invoke("eval", "tiny-vit", "--task", "cifar10", "--data", cifar, "--json")))
    assert full["score"] == pytest.approx(reference["score"]) and full["params"] == reference["params"]
    one_line_error(invoke("eval", tmp_path / "sub", "--task", "cifar10", "--data", cifar, "--limit", "0"), "--limit")
    one_line_error(invoke("eval", tmp_path / "sub", "--task", "cifar10"), "needs --data")


def test_search_ranks_on_the_tasks_held_out_data_by_default(vit_run, tmp_path):
    from osf.search.cli import DEFAULT_CALIBRATION

    spec = json.loads((vit_run / "run.json").read_text())
    assert spec["calibration"] is None  # the option was left out...
    assert 0 < spec["supernet_config"]["calibration_batches"] <= DEFAULT_CALIBRATION  # ...and training images ranked it
    # extract draws the same batches again: the rebuilt supernet passes the checksum guard
    ok(invoke("extract", vit_run, "--trial", "0", "--out", tmp_path / "sub"))


def test_importance_with_calibration_is_recorded_and_extracts_the_same_supernet(cifar, tmp_path):
    run = tmp_path / "run"
    base = ["search", "tiny-vit", "--task", "cifar10", "--data", cifar, "--trials", "3", "--out", run]
    ok(invoke(*base, "--importance", "taylor", "--calibration", "2"))
    spec = json.loads((run / "run.json").read_text())
    assert spec["supernet_config"]["importance"] == "taylor" and spec["supernet_config"]["calibration_batches"] == 2
    assert spec["calibration"] == 2
    # the channels were ranked on the task's training images: not the order magnitude gives
    from osf.models import load_model
    from osf.search.run import weights_checksum

    assert weights_checksum(osf.supernet(load_model("tiny-vit")).model) != spec["supernet_sha256"]
    # extract rebuilds the same supernet from the same held-out batches (its checksum guard passes)
    ok(invoke("extract", run, "--trial", "2", "--out", tmp_path / "sub"))
    params = pd.read_csv(run / "trials.csv").set_index("number").loc[2, "params"]
    assert sum(p.numel() for p in osf.load_subnet(tmp_path / "sub").parameters()) == params
    # resuming with another ranking would mix scores of other subnets
    one_line_error(invoke(*base, "--importance", "magnitude", "--calibration", "2"), "holds another run", "importance")
    one_line_error(invoke(*base, "--importance", "taylor", "--calibration", "1"), "holds another run", "--calibration")


def test_tokenizer_option_for_a_model_without_one(tmp_path, tiny_lm, tokenizer, lastword_task):
    model_dir, tok_dir = tmp_path / "lm", tmp_path / "tok"
    copy.deepcopy(tiny_lm).save_pretrained(model_dir)  # no tokenizer files
    tokenizer.save_pretrained(tok_dir)
    task_dir, name = lastword_task
    args = ["--task", name, "--include-path", task_dir, "--limit", "3"]
    one_line_error(invoke("search", model_dir, *args, "--trials", "2", "--out", tmp_path / "r0"),
                   "needs a tokenizer", "ships without one", "--tokenizer")
    ok(invoke("search", model_dir, *args, "--trials", "2", "--tokenizer", tok_dir, "--out", tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["tokenizer"] == str(tok_dir)
    ok(invoke("extract", tmp_path / "run", "--trial", "0", "--out", tmp_path / "sub"))
    assert (tmp_path / "sub" / "tokenizer.json").is_file()  # saved with the subnet: eval needs no --tokenizer
    sub = json.loads(ok(invoke("eval", tmp_path / "sub", *args, "--json")))
    full = json.loads(ok(invoke("eval", model_dir, *args, "--tokenizer", tok_dir, "--json")))
    trial0 = pd.read_csv(tmp_path / "run" / "trials.csv").set_index("number").loc[0]
    assert sub["score"] == pytest.approx(trial0["score"]) == pytest.approx(full["score"])  # trial 0: the full model
    one_line_error(invoke("eval", model_dir, *args, "--tokenizer", tmp_path / "nope"), "--tokenizer", "does not exist")
    one_line_error(invoke("search", model_dir, *args, "--tokenizer", model_dir, "--out", tmp_path / "r1"),
                   "--tokenizer", "holds no tokenizer files")


@pytest.mark.parametrize("args, needles", [
    (["--importance", "weird"], ["--importance weird", "magnitude"]),
    (["--block-order", "random"], ["--block-order random", "greedy"]),
    (["--depth", "0"], ["--depth 0", "(0, 1]"]),
    (["--depth", "1.5"], ["--depth 1.5", "(0, 1]"]),
    (["--calibration", "-1"], ["--calibration must be a number of batches >= 0"]),
    (["--space", "{bad json"], ["--space is not valid inline JSON"]),
    (["--space", "[1, 2]"], ["neither inline JSON"]),
    (["--space", "missing.yaml"], ["neither inline JSON", "missing.yaml"]),
])
def test_bad_build_options_are_refused_before_loading(tmp_path, args, needles):
    res = invoke("search", "no-such-model", "--task", "cifar10", "--data", tmp_path, "--out", tmp_path / "r", *args)
    one_line_error(res, *needles)  # "no-such-model" was never loaded: the option is checked first


def test_build_options_that_need_the_model(cifar, tmp_path):
    base = ["search", "tiny-vit", "--task", "cifar10", "--data", cifar, "--trials", "1", "--out", tmp_path / "r"]
    one_line_error(invoke(*base, "--space", '{"*:no_such_dim": [4]}'), "matches no dim")
    one_line_error(invoke(*base, "--importance", "taylor", "--calibration", "0"), "needs calibration data")
    test_only = tmp_path / "test_only"  # no training batches: nothing held out to calibrate on
    test_only.mkdir()
    (test_only / "test_batch").write_bytes((cifar / "test_batch").read_bytes())
    one_line_error(invoke("search", "tiny-vit", "--task", "cifar10", "--data", test_only, "--trials", "1",
                          "--calibration", "2", "--out", tmp_path / "r2"), "--calibration 2", "no held-out data")
    ckpt = tmp_path / "ckpt"
    from osf.models import load_model

    osf.supernet(load_model("tiny-vit")).save_pretrained(ckpt)
    one_line_error(invoke("search", ckpt, "--task", "cifar10", "--data", cifar, "--trials", "1", "--out", tmp_path / "r3",
                          "--importance", "magnitude"), "supernet checkpoint", "--importance")
    # --space restricts a checkpoint's restored space; extract restricts it the same way
    run = tmp_path / "ckpt_run"
    ok(invoke("search", ckpt, "--task", "cifar10", "--data", cifar, "--trials", "3", "--out", run,
              "--space", '{"*:heads": [4, 1]}'))
    dims = json.loads((run / "run.json").read_text())["space"]["dims"]
    assert all(c == [4, 1] for d, c in dims.items() if d.endswith(":heads"))
    ok(invoke("extract", run, "--trial", "1", "--out", tmp_path / "ckpt_sub"))
    params = pd.read_csv(run / "trials.csv").set_index("number").loc[1, "params"]
    assert sum(p.numel() for p in osf.load_subnet(tmp_path / "ckpt_sub").parameters()) == params
    # a checkpoint is scored at its largest config: the original model's numbers
    scored = [json.loads(ok(invoke("eval", m, "--task", "cifar10", "--data", cifar, "--json"))) for m in (ckpt, "tiny-vit")]
    assert scored[0]["score"] == pytest.approx(scored[1]["score"]) and scored[0]["params"] == scored[1]["params"]
    assert scored[0]["macs"] == scored[1]["macs"] > 0


def test_best_per_budget_is_the_best_trial_within_each_budget():
    """Known trials: the best score within each budget, the cheaper on a tie, none when nothing fits."""
    import optuna

    from osf.search.card import best_per_budget
    from osf.search.result import SearchResult

    study = optuna.create_study(directions=["maximize", "minimize"])
    rows = [(0.9, 1000, True), (0.5, 200, True), (0.7, 600, True), (0.7, 550, True), (0.95, 700, False), (0.6, 300, True)]
    for i, (score, params, feasible) in enumerate(rows):
        study.add_trial(optuna.trial.create_trial(values=[score, params], user_attrs={
            "config": json.dumps({"w": i}), "score": score, "params": params, "feasible": feasible}))
    result = SearchResult(study=study, space=None, objectives=("score", "params"), reference={"params": 1000.0})
    got = {b["budget"]: b["trial"] for b in best_per_budget(result, {"max_params_frac": 0.65})}
    # 0.65 and 0.75: trials 2 and 3 tie at 0.7, 3 is cheaper (4 scores more but is infeasible); 0.5: trial 5;
    # 0.25: trial 1; 1.0: trial 0
    assert got == {"max_params_frac=0.65": 3, "max_params_frac=0.25": 1, "max_params_frac=0.5": 5,
                   "max_params_frac=0.75": 3, "max_params_frac=1": 0}
    assert best_per_budget(SearchResult(study=study, space=None, objectives=("score", "params"),
                                        reference={"params": 1000.0}), {"max_params": 100})[0] == \
        {"budget": "max_params=100", "trial": None}
