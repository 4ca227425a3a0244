"""Bad input on the search/CLI side: one clear line (or one clear exception), never a traceback,
never silently accepted; and the search's bookkeeping (ties, canonical configs, the reference).
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import torch.nn as nn
from optuna.trial import TrialState
from typer.testing import CliRunner

import osf.search.run as run_mod
from osf.cli import app
from osf.search import ImageAccuracy, LMEval, Perplexity, SearchResult, search
from osf.search.storage import make_storage
from osf.space import SearchSpace
from tests.search_fakes import AgreementEvaluator, FakeSupernet
from tests.test_evaluators import AlwaysZero, write_cifar

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *needles: str) -> str:
    """The command failed with exactly one ``error: ...`` line holding every needle, and no traceback."""
    assert res.exit_code not in (0, None), res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    d = tmp_path_factory.mktemp("c10") / "c10"
    write_cifar(d, "cifar10", n_test=10, n_train=2)
    return d


def vit_args(cifar, out, *extra):
    return ["search", "tiny-vit", "--task", "cifar10", "--data", cifar, "--trials", "2", "--limit", "6",
            "--out", out, *extra]


@pytest.fixture(scope="module")
def vit_run(cifar, tmp_path_factory):
    """A finished tiny search (copied by tests that change it)."""
    out = tmp_path_factory.mktemp("vitrun") / "run"
    res = invoke(*vit_args(cifar, out, "--max-params-frac", "0.7"))
    assert res.exit_code == 0, res.output
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ options of `osf search`
@pytest.mark.parametrize("value", ["0", "-5"])
def test_limit_must_be_positive(cifar, tmp_path, value):
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--limit", value)), "--limit", "positive", value)
    assert not (tmp_path / "r" / "run.json").exists()


def test_batch_size_zero(cifar, tmp_path):
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--batch-size", "0")), "--batch-size", "positive", "0")


def test_storage_unknown_database(cifar, tmp_path):
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--storage", "foo://bar")), "--storage", "'foo://bar'",
                   "unknown database 'foo'", "sqlite")


def test_storage_driver_not_installed(cifar, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # not importable here, whether installed or not
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--storage", "postgresql://u@localhost/db")),
                   "--storage", "driver 'psycopg'", "pip install")


@pytest.mark.parametrize("value", ["not a url", "sqlite:", "study.db"])
def test_storage_that_is_not_a_url_creates_nothing(cifar, tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--storage", value)), "--storage", repr(value), "not a database URL")
    assert all(p.name == "r" for p in tmp_path.iterdir()), list(tmp_path.iterdir())  # no file named after the value
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_storage_sqlite_in_a_missing_or_wrong_folder(cifar, tmp_path):
    out = tmp_path / "r"
    one_line_error(invoke(*vit_args(cifar, out, "--storage", "sqlite:///nope/study.db")), "--storage", "nope",
                   "does not exist")
    (tmp_path / "adir").mkdir()
    one_line_error(invoke(*vit_args(cifar, out, "--storage", f"sqlite:///{tmp_path / 'adir'}")), "--storage",
                   "names a folder", "study.db")
    assert not (out / "run.json").exists()


def test_storage_api_refuses_non_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("not a url", "sqlite:"):
        with pytest.raises(ValueError, match="storage .* is not a database URL"):
            search(FakeSupernet(), AgreementEvaluator(), n_trials=2, storage=bad, show_progress=False)
    with pytest.raises(ValueError, match="unknown database 'foo'"):
        make_storage("foo://bar", None)
    with pytest.raises(TypeError, match="storage must be"):
        make_storage(42, None)
    assert list(tmp_path.iterdir()) == []


def test_device_cuda_without_cuda(cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--device", "cuda")), "--device cuda", "CUDA is not available",
                   "--device cpu")


def test_device_index_beyond_the_gpus(cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--device", "cuda:3")), "--device cuda:3", "1 CUDA device",
                   "cuda:0..cuda:0")


def test_image_task_combined_with_other_tasks(cifar, tmp_path):
    one_line_error(invoke("search", "tiny-vit", "--task", "cifar10,lambada_openai", "--data", cifar, "--out", tmp_path / "r"),
                   "--task", "'cifar10' cannot be combined", "only lm-eval tasks combine")


def test_unknown_task_lists_builtins_and_suggests(tmp_path):
    line = one_line_error(invoke("search", "tiny-vit", "--task", "cifar-10", "--out", tmp_path / "r"),
                          "unknown task 'cifar-10'", "did you mean cifar10")
    for t in ("cifar10", "cifar100", "imagenet", "perplexity"):
        assert t in line


def test_data_file_where_a_folder_is_expected(tmp_path):
    f = tmp_path / "test_batch"
    f.write_bytes(b"x")
    one_line_error(invoke("search", "tiny-vit", "--task", "cifar10", "--data", f, "--out", tmp_path / "r"),
                   "--data", "is a file", "needs a folder")


def test_out_is_a_file(cifar, tmp_path):
    f = tmp_path / "out.txt"
    f.write_text("keep me")
    one_line_error(invoke(*vit_args(cifar, f)), "--out", "is a file", "folder")
    assert f.read_text() == "keep me"


def test_run_dir_is_a_file_api(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="run_dir .* is a file"):
        search(FakeSupernet(), AgreementEvaluator(), n_trials=2, run_dir=f, show_progress=False)
    with pytest.raises(TypeError, match="run_dir must be a folder path"):
        search(FakeSupernet(), AgreementEvaluator(), n_trials=2, run_dir=3, show_progress=False)


def test_language_task_with_a_model_without_tokenizer(tmp_path, lastword_task):
    one_line_error(invoke("search", "tiny-mamba", "--task", lastword_task[1], "--include-path", lastword_task[0],
                          "--out", tmp_path / "r"), "needs a tokenizer", "hub id")


def test_include_path_is_a_file(tmp_path):
    f = tmp_path / "task.yaml"
    f.write_text("task: x\n")
    one_line_error(invoke("search", "tiny-mamba", "--task", "x", "--include-path", f, "--out", tmp_path / "r"),
                   "--include-path", "is a file", "folder")


def test_num_fewshot_on_an_image_task(cifar, tmp_path):
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", "--num-fewshot", "2")), "--num-fewshot", "lm-eval tasks only")


# ----------------------------------------------------------- a task that does not fit the model
def test_image_task_on_a_language_model(cifar, tmp_path):
    one_line_error(invoke("search", "tiny-mamba", "--task", "cifar10", "--data", cifar, "--out", tmp_path / "r"),
                   "'tiny-mamba'", "cannot be scored on --task cifar10", "image classifier")
    assert not (tmp_path / "r" / "run.json").exists()


def test_clip_on_cifar10(cifar, tmp_path):
    one_line_error(invoke("search", "tiny-clip", "--task", "cifar10", "--data", cifar, "--out", tmp_path / "r"),
                   "'tiny-clip'", "CLIPModel", "image classifier")


def test_language_task_on_an_image_model(tmp_path):
    (tmp_path / "t.txt").write_text("some text " * 50)
    one_line_error(invoke("search", "tiny-vit", "--task", "perplexity", "--data", tmp_path / "t.txt", "--out", tmp_path / "r"),
                   "'tiny-vit'", "not a language model", "perplexity")


def write_cifar100_labels(root: Path, top: int, n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(v) for v in np.linspace(0, top, n).round()]
    for name in ("test", "train"):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": labels}, f)
    return root


def test_labels_outside_the_models_classes_cli(tmp_path):
    data = write_cifar100_labels(tmp_path / "c100", top=99)  # tiny-vit has 10 classes
    one_line_error(invoke("search", "tiny-vit", "--task", "cifar100", "--data", data, "--out", tmp_path / "r"),
                   "labels 0..99", "outputs 10 classes")


def test_labels_outside_the_models_classes_api(tmp_path):
    data = write_cifar100_labels(tmp_path / "c100", top=5)
    ev = ImageAccuracy(f"cifar100:{data}")
    with pytest.raises(ValueError, match=r"labels 0\.\.5 but the model outputs 3 classes"):
        ev(AlwaysZero(n=3))  # silently scored (labels 3..5 always wrong) before
    assert 0 <= ev(AlwaysZero(n=6)) <= 1


# ----------------------------------------------------------------- evaluators (API)
@pytest.mark.parametrize("make", [
    lambda d, tok, task: ImageAccuracy(f"cifar10:{d}", limit=0),
    lambda d, tok, task: ImageAccuracy(f"cifar10:{d}", limit=-5),
    lambda d, tok, task: Perplexity("text " * 500, tok, max_batches=0),
    lambda d, tok, task: LMEval(task[1], tok, include_path=task[0], limit=0),
    lambda d, tok, task: LMEval(task[1], tok, include_path=task[0], limit=-5),
], ids=["image-0", "image-neg", "perplexity-0", "lmeval-0", "lmeval-neg"])
def test_evaluator_limit_must_be_positive(cifar, tokenizer, lastword_task, make):
    with pytest.raises(ValueError, match=r"(limit|max_batches) must be .*>= 1"):
        make(cifar, tokenizer, lastword_task)


def test_evaluator_batch_size_and_fewshot(tokenizer, lastword_task):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        LMEval(lastword_task[1], tokenizer, include_path=lastword_task[0], batch_size=0)
    with pytest.raises(ValueError, match="num_fewshot must be an integer >= 0"):
        LMEval(lastword_task[1], tokenizer, include_path=lastword_task[0], num_fewshot=-1)


def test_lmeval_tokenizer_larger_than_the_embedding(tokenizer, lastword_task):
    from osf.models import load_model

    small = load_model("tiny-mamba")  # 256 embedding rows; the tokenizer has 400 tokens
    ev = LMEval(lastword_task[1], tokenizer, include_path=lastword_task[0], limit=2)
    with pytest.raises(ValueError, match=r"tokenizer has 400 tokens but the model's input embedding has 256 rows"):
        ev(small)
    with pytest.raises(ValueError, match=r"has 256 rows"):
        Perplexity("the cat sat on the mat. " * 40, tokenizer, seq_len=16)(small)


def test_lm_tokenizer_mismatch_cli(tmp_path, monkeypatch, tokenizer, lastword_task):
    from osf.models import load_model

    monkeypatch.setattr(run_mod, "load_model", lambda name: (load_model("tiny-mamba"), tokenizer))
    one_line_error(invoke("search", "tiny-mamba", "--task", lastword_task[1], "--include-path", lastword_task[0],
                          "--out", tmp_path / "r"), "400 tokens", "256 rows")


def test_standard_task_offline_fails_before_the_run_without_traceback(tmp_path, monkeypatch, capfd, optuna_log, tiny_lm,
                                                                     tokenizer):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(run_mod, "load_model", lambda name: (copy.deepcopy(tiny_lm), tokenizer))
    res = invoke("search", "tiny-mamba", "--task", "lambada_openai", "--limit", "2", "--trials", "2", "--out", tmp_path / "r")
    one_line_error(res, "lambada_openai", "--include-path")
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out and not optuna_log
    assert not (tmp_path / "r" / "run.json").exists()


@pytest.fixture
def optuna_log():
    """Warnings optuna logs (its logger does not propagate to pytest's caplog)."""
    import logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_failing_evaluator_logs_no_optuna_traceback(capfd, optuna_log):
    calls = []

    def broken(model):  # scores the full model (the reference), then fails inside a trial
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("the evaluator says no")
        return 1.0

    with pytest.raises(ValueError, match="the evaluator says no"):
        search(FakeSupernet(), broken, n_trials=2, show_progress=False)
    err = capfd.readouterr().err
    assert "Traceback" not in err and not optuna_log  # optuna logged "Trial 0 failed" + traceback


@pytest.mark.parametrize("kw, exc, message", [
    ({"sn": nn.Linear(2, 2)}, TypeError, r"sn must be a supernet \(build one with osf.supernet\(model\)\), got Linear"),
    ({"constraints": 0.5}, TypeError, r"constraints must be a dict of budgets such as \{'max_params_frac': 0.5\}, got float"),
    ({"n_trials": True}, ValueError, "n_trials must be a positive integer, got True"),
    ({"timeout": 0}, ValueError, "timeout must be a positive number of seconds"),
    ({"seed": "1"}, TypeError, "seed must be an integer or None"),
], ids=["module-not-supernet", "constraints-number", "n_trials-bool", "timeout-0", "seed-str"])
def test_search_api_arguments(kw, exc, message):
    args = {"sn": FakeSupernet(), "evaluator": AgreementEvaluator(), "n_trials": 2, "show_progress": False, **kw}
    with pytest.raises(exc, match=message):
        search(**args)


@pytest.mark.parametrize("value, exc, message", [
    (None, TypeError, "returned None; it must return one number"),
    ({"acc": 0.5}, TypeError, "returned dict; it must return one number"),
    (float("inf"), ValueError, "returned inf .* finite"),
])
def test_evaluator_must_return_one_finite_number(value, exc, message):
    with pytest.raises(exc, match=message):
        search(FakeSupernet(), lambda m: value, n_trials=2, show_progress=False)


# ------------------------------------------------------------------------------- Ctrl-C
class InterruptAfter(AgreementEvaluator):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def __call__(self, model):
        if self.calls >= self.n:
            raise KeyboardInterrupt
        return super().__call__(model)


def test_ctrl_c_saves_results_and_resumes(tmp_path, capfd, optuna_log):
    sn = FakeSupernet()
    with pytest.raises(KeyboardInterrupt):
        search(sn, InterruptAfter(4), n_trials=10, run_dir=tmp_path, show_progress=False)
    err = capfd.readouterr().err
    assert "interrupted" in err and "resume" in err and "Traceback" not in err and not optuna_log
    df = pd.read_csv(tmp_path / "trials.csv")
    assert 0 < len(df) < 10 and df["score"].notna().any()
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert pareto["pareto"] and (tmp_path / "pareto.png").is_file()
    storage = make_storage(str(tmp_path / "study.journal"), None)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING,))  # the running trial was abandoned, not left running
    assert sn.config == sn.space.largest()  # the active config was restored
    res = search(sn, AgreementEvaluator(), n_trials=10, run_dir=tmp_path, show_progress=False)
    assert len(res.trials) == 10
    kept = res.trials.set_index("number")["config"].to_dict()
    assert all(kept[n] == c for n, c in df.set_index("number")["config"].items())


def test_ctrl_c_cli_exit_code_files_and_resume_hint(cifar, tmp_path, monkeypatch):
    real = run_mod.build_evaluator

    def interrupting(*a, **kw):
        ev = real(*a, **kw)
        calls = {"n": 0}
        orig = type(ev).__call__

        def call(self, model):
            calls["n"] += 1
            if calls["n"] > 3:
                raise KeyboardInterrupt
            return orig(self, model)

        ev.__class__ = type("Interrupting", (type(ev),), {"__call__": call})
        return ev

    monkeypatch.setattr(run_mod, "build_evaluator", interrupting)
    out = tmp_path / "r"
    res = invoke(*vit_args(cifar, out, "--trials", "6"))
    assert res.exit_code == 130, res.output
    assert "to resume" in res.output and "Traceback" not in res.output
    for f in ("run.json", "trials.csv", "pareto.json"):
        assert (out / f).is_file(), f
    monkeypatch.setattr(run_mod, "build_evaluator", real)
    res = invoke(*vit_args(cifar, out, "--trials", "6"))
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out / "trials.csv")) == 6


# ------------------------------------------------------------ a run folder changed by hand
def test_run_json_deleted(vit_run, cifar, tmp_path):
    out = copy_run(vit_run, tmp_path)
    (out / "run.json").unlink()
    one_line_error(invoke(*vit_args(cifar, out)), "no run.json", "new --out")
    one_line_error(invoke("extract", out, "--best", "--out", tmp_path / "sub"), "no run.json")


def test_run_json_not_json(vit_run, cifar, tmp_path):
    out = copy_run(vit_run, tmp_path)
    (out / "run.json").write_text('{"model": "tiny-vit", ')
    one_line_error(invoke("extract", out, "--best", "--out", tmp_path / "sub"), "run.json", "not valid JSON")
    one_line_error(invoke(*vit_args(cifar, out)), "run.json", "not valid JSON")


def test_run_json_key_deleted(vit_run, tmp_path):
    out = copy_run(vit_run, tmp_path)
    spec = json.loads((out / "run.json").read_text())
    del spec["study_name"]
    (out / "run.json").write_text(json.dumps(spec))
    one_line_error(invoke("extract", out, "--best", "--out", tmp_path / "sub"), "lacks 'study_name'")


def test_study_name_edited(vit_run, tmp_path):
    out = copy_run(vit_run, tmp_path)
    spec = json.loads((out / "run.json").read_text())
    real, spec["study_name"] = spec["study_name"], "osf-renamed"
    (out / "run.json").write_text(json.dumps(spec))
    one_line_error(invoke("extract", out, "--best", "--out", tmp_path / "sub"), "no study 'osf-renamed'", real)


def test_journal_deleted(vit_run, cifar, tmp_path):
    out = copy_run(vit_run, tmp_path)
    (out / "study.journal").unlink()
    one_line_error(invoke("extract", out, "--best", "--out", tmp_path / "sub"), "study.journal", "missing")
    one_line_error(invoke(*vit_args(cifar, out, "--max-params-frac", "0.7")), "study.journal is missing", "new --out")


def test_study_name_edited_then_search_resumed(vit_run, cifar, tmp_path):
    out = copy_run(vit_run, tmp_path)
    spec = json.loads((out / "run.json").read_text())
    real, spec["study_name"] = spec["study_name"], "osf-renamed"
    (out / "run.json").write_text(json.dumps(spec))
    one_line_error(invoke(*vit_args(cifar, out, "--max-params-frac", "0.7")), "names study 'osf-renamed'", real)


def test_relative_sqlite_url_and_extract_from_another_directory(cifar, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    res = invoke(*vit_args(cifar, "run", "--storage", "sqlite:///study.db"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "run" / "study.db").is_file() and not (tmp_path / "a" / "study.db").exists()
    monkeypatch.chdir(tmp_path / "b")
    res = invoke("extract", "../a/run", "--trial", "0", "--out", "sub")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "b" / "study.db").exists()
    assert (tmp_path / "b" / "sub" / "README.md").is_file()


def test_extract_sqlite_database_deleted(cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke(*vit_args(cifar, "run", "--storage", "sqlite:///study.db")).exit_code == 0
    (tmp_path / "run" / "study.db").unlink()
    one_line_error(invoke("extract", "run", "--best", "--out", "sub"), "study.db", "does not exist")
    assert not (tmp_path / "run" / "study.db").exists()  # not re-created empty


# ----------------------------------------------------------------------- osf extract
def test_extract_trial_with_max_params_is_refused(vit_run, tmp_path):
    one_line_error(invoke("extract", vit_run, "--trial", "0", "--max-params-frac", "0.5", "--out", tmp_path / "s"),
                   "--max-params-frac", "--trial", "--best")
    assert not (tmp_path / "s").exists()


def test_extract_best_with_an_unmet_max_params(vit_run, tmp_path):
    one_line_error(invoke("extract", vit_run, "--best", "--max-params-frac", "0.001", "--out", tmp_path / "s"),
                   "no feasible trial within max_params_frac=0.001", "the cheapest scored trial has")
    one_line_error(invoke("extract", vit_run, "--best", "--max-params", "0.5", "--out", tmp_path / "s"),
                   "--max-params must be a number of parameters >= 1", "use --max-params-frac")
    one_line_error(invoke("extract", vit_run, "--best", "--max-params", "9e9", "--max-params-frac", "0.5", "--out",
                          tmp_path / "s"), "give one of --max-params", "or --max-params-frac", "not both")
    assert not (tmp_path / "s" / "config.json").exists()
    with pytest.raises(ValueError, match="max_macs must be a number of MACs >= 1"):
        constructed_result([{"score": 0.5, "params": 10, "macs": 1}], {"params": 10, "macs": 1}).best(max_macs=-1)


def test_extract_out_or_run_dir_is_a_file(vit_run, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    one_line_error(invoke("extract", vit_run, "--best", "--out", f), "--out", "is a file")
    one_line_error(invoke("extract", f, "--best", "--out", tmp_path / "s"), "is a file", "osf search --out")


def test_extract_trial_that_did_not_complete(vit_run, tmp_path):
    one_line_error(invoke("extract", vit_run, "--trial", "-1", "--out", tmp_path / "s"), "trial -1 does not exist",
                   "completed trials: 0..1")


def test_extract_refuses_changed_weights(vit_run, tmp_path, monkeypatch):
    from osf.models import load_model

    def perturbed(name):
        m = load_model(name)
        with torch.no_grad():
            next(m.parameters()).add_(0.01)
        return m, None

    monkeypatch.setattr(run_mod, "load_model", perturbed)
    one_line_error(invoke("extract", vit_run, "--best", "--out", tmp_path / "s"), "weights", "changed since the search")
    spec = json.loads((vit_run / "run.json").read_text())
    assert len(spec["weights_sha256"]) == 64


# --------------------------------------------------------------- the identity of a run
@pytest.mark.parametrize("option, value, old", [
    ("--limit", "5", "6"),
    ("--batch-size", "4", "16"),
    ("--max-params-frac", "0.6", "0.7"),
])
def test_rerun_with_other_settings_is_refused(vit_run, cifar, tmp_path, option, value, old):
    out = copy_run(vit_run, tmp_path)
    args = vit_args(cifar, out, "--max-params-frac", "0.7")
    i = args.index(option) if option in args else None
    if i is not None:
        args[i + 1] = value
    else:
        args += [option, value]
    line = one_line_error(invoke(*args), "holds another run", option, old, value, "new --out")
    assert f"{option} {old!r}" in line or f"{option} {float(old)!r}" in line or f"{option} {int(old)!r}" in line


def test_run_made_before_budgets_named_their_unit_resumes(vit_run, cifar, tmp_path):
    """An older run.json has one max_params (0.7: a fraction) and a study name of the older scheme."""
    out = copy_run(vit_run, tmp_path)
    spec = json.loads((out / "run.json").read_text())
    for key in ("max_params_frac", "max_macs", "max_macs_frac", "max_latency_ms"):
        del spec[key]
    spec["max_params"] = 0.7
    (out / "run.json").write_text(json.dumps(spec))
    one_line_error(invoke(*vit_args(cifar, out, "--max-params", "7000")), "holds another run",
                   "made with --max-params (not given)", "has --max-params 7000")  # its 0.7 was a fraction
    res = invoke(*[a if a != "2" else "3" for a in vit_args(cifar, out, "--max-params-frac", "0.7")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out / "trials.csv")) == 3  # resumed: 2 trials before, one more now
    after = json.loads((out / "run.json").read_text())
    assert after["study_name"] == spec["study_name"] and after["max_params_frac"] == 0.7 and after["max_params"] is None


def test_rerun_with_other_data_is_refused(vit_run, cifar, tmp_path):
    other = tmp_path / "other"
    write_cifar(other, "cifar10", n_test=10, n_train=2, seed=1)
    out = copy_run(vit_run, tmp_path)
    one_line_error(invoke(*vit_args(other, out, "--max-params-frac", "0.7")), "holds another run", "--data", str(cifar), str(other))


def test_rerun_with_other_num_fewshot_is_refused(tmp_path, monkeypatch, tiny_lm, tokenizer, lastword_task):
    monkeypatch.setattr(run_mod, "load_model", lambda name: (copy.deepcopy(tiny_lm), tokenizer))
    args = ["search", "tiny-mamba", "--task", lastword_task[1], "--include-path", lastword_task[0], "--limit", "2",
            "--trials", "2", "--out", tmp_path / "r"]
    assert invoke(*args).exit_code == 0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["num_fewshot"] == 0
    one_line_error(invoke(*args, "--num-fewshot", "1"), "holds another run", "--num-fewshot 0", "--num-fewshot 1")


def test_rerun_with_other_storage_is_refused(vit_run, cifar, tmp_path):
    out = copy_run(vit_run, tmp_path)
    one_line_error(invoke(*vit_args(cifar, out, "--max-params-frac", "0.7", "--storage", "sqlite:///study.db")),
                   "holds another run", "--storage (not given)", "--storage 'sqlite:///study.db'")
    assert not (out / "study.db").exists()


def test_rerun_with_changed_weights_is_refused(vit_run, cifar, tmp_path, monkeypatch):
    from osf.models import load_model

    def perturbed(name):
        m = load_model(name)
        with torch.no_grad():
            next(m.parameters()).mul_(1.5)
        return m, None

    out = copy_run(vit_run, tmp_path)
    monkeypatch.setattr(run_mod, "load_model", perturbed)
    one_line_error(invoke(*vit_args(cifar, out, "--max-params-frac", "0.7")), "holds another run", "the model's weights changed")


@pytest.mark.parametrize("args, needles", [
    (["--max-params", "0"], ["--max-params must be a number of parameters >= 1", "got 0.0"]),
    (["--max-params", "0.5"], ["--max-params must be a number of parameters >= 1", "use --max-params-frac"]),
    (["--max-params-frac", "1.5"], ["--max-params-frac must be a fraction", "in (0, 1]", "use --max-params"]),
    (["--max-params-frac", "0"], ["--max-params-frac must be a fraction", "in (0, 1]"]),
    (["--max-macs", "0.5"], ["--max-macs must be a number of MACs >= 1", "use --max-macs-frac"]),
    (["--max-macs", "1e9", "--max-macs-frac", "0.5"], ["give one of --max-macs", "or --max-macs-frac", "not both"]),
    (["--max-latency-ms", "-1"], ["--max-latency-ms must be a positive number of milliseconds"]),
], ids=["params-0", "params-fraction", "frac-over-1", "frac-0", "macs-fraction", "macs-both", "latency-negative"])
def test_budget_options_name_their_unit(cifar, tmp_path, args, needles):
    one_line_error(invoke(*vit_args(cifar, tmp_path / "r", *args)), *needles)
    assert not (tmp_path / "r" / "run.json").exists()


def test_perplexity_data_not_text(tmp_path, monkeypatch, tiny_lm, tokenizer):
    monkeypatch.setattr(run_mod, "load_model", lambda name: (copy.deepcopy(tiny_lm), tokenizer))
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 4)
    one_line_error(invoke("search", "tiny-mamba", "--task", "perplexity", "--data", tmp_path / "t.txt", "--out", tmp_path / "r"),
                   "--data", "t.txt", "not UTF-8 text")
    (tmp_path / "short.txt").write_text("too short")
    one_line_error(invoke("search", "tiny-mamba", "--task", "perplexity", "--data", tmp_path / "short.txt", "--out",
                          tmp_path / "r"), "--data", "short.txt", "fewer than one block")


def test_failed_command_leaves_nothing_that_blocks_the_corrected_one(cifar, tmp_path):
    out = tmp_path / "r"
    one_line_error(invoke(*vit_args(cifar, out, "--max-params-frac", "0.01")), "--max-params-frac 0.01", "unreachable",
                   "allow at least --max-params ")
    assert not (out / "run.json").exists() and not (out / "study.journal").exists()
    one_line_error(invoke(*vit_args(cifar, out, "--max-params", "100")), "--max-params 100", "unreachable",
                   "allow at least --max-params ", "or --max-params-frac ")
    assert not (out / "run.json").exists() and not (out / "study.journal").exists()
    res = invoke(*vit_args(cifar, out, "--max-params-frac", "0.7"))
    assert res.exit_code == 0, res.output


def test_search_failing_at_its_start_leaves_nothing_behind(cifar, tmp_path, monkeypatch):
    real = run_mod.build_evaluator

    def failing(*a, **kw):
        ev = real(*a, **kw)
        ev.__class__ = type("Failing", (type(ev),), {"__call__": lambda self, m: (_ for _ in ()).throw(
            ValueError("the data server went away"))})
        return ev

    monkeypatch.setattr(run_mod, "build_evaluator", failing)
    out = tmp_path / "r"
    one_line_error(invoke(*vit_args(cifar, out)), "the data server went away")
    assert not (out / "run.json").exists() and not (out / "study.journal").exists()
    monkeypatch.setattr(run_mod, "build_evaluator", real)
    res = invoke(*vit_args(cifar, out, "--limit", "5"))  # another --limit is not "another run": none was made
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------ search bookkeeping
def constructed_result(rows: list[dict], reference: dict) -> SearchResult:
    space = SearchSpace(dims={"w": [4, 2]})
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, r in enumerate(rows):
        attrs = {"config": json.dumps({"w": 4, "i": i}), "feasible": True, **r}
        study.add_trial(optuna.trial.create_trial(values=[r["score"], r["params"]], user_attrs=attrs,
                                                  params={}, distributions={}))
    return SearchResult(study=study, space=space, objectives=("score", "params"), reference=reference)


def test_best_breaks_ties_by_params_then_macs_not_trial_number():
    res = constructed_result([
        {"score": 0.9, "params": 100, "macs": 10},
        {"score": 0.9, "params": 60, "macs": 30},
        {"score": 0.9, "params": 60, "macs": 20},
        {"score": 0.5, "params": 10, "macs": 1},
    ], reference={"params": 100, "macs": 30})
    assert int(res.best()["number"]) == 2  # the earliest of the tied scores (trial 0) is dominated
    assert int(res.best(max_params_frac=0.7)["number"]) == 2
    assert int(res.best(max_params_frac=0.5)["number"]) == 3
    assert int(res.best(max_params=70)["number"]) == 2  # a count: the same limits
    assert int(res.best(max_params=50)["number"]) == 3


def test_space_canonical_sets_dims_of_dropped_blocks_to_their_largest():
    space = SearchSpace(dims={"hidden": [8, 4], "layers.0:ffn": [16, 8], "layers.1.attn:heads": [4, 2],
                              "layers.10:ffn": [16, 8]},
                        stacks={"layers": ["layers.0", "layers.1", "layers.10"]}, min_depth={"layers": 1})
    a = {"hidden": 4, "layers.0:ffn": 8, "layers.1.attn:heads": 2, "layers.10:ffn": 8,
         "layers.0": False, "layers.1": False, "layers.10": True}
    b = {**a, "layers.0:ffn": 16, "layers.1.attn:heads": 4}
    assert space.canonical(a) == space.canonical(b)
    assert space.canonical(a)["layers.10:ffn"] == 8 and space.canonical(a)["hidden"] == 4  # kept blocks unchanged
    assert space.canonical({**a, "layers.0": True}) != space.canonical({**b, "layers.0": True})


class PerBlockSupernet(FakeSupernet):
    """FakeSupernet whose hidden width is per block (``blocks.i:hidden``), as real supernets have."""

    def __init__(self):
        super().__init__()
        self.space = SearchSpace(dims={"width": [16, 8], **{f"blocks.{i}:hidden": [32, 16, 8] for i in range(3)}},
                                 stacks={"blocks": ["blocks.0", "blocks.1", "blocks.2"]}, min_depth={"blocks": 1})
        self.config = self.space.largest()

    def subnet(self, cfg) -> tuple:
        cfg = self.space.validate(cfg)
        return (cfg["width"], *[(cfg[f"blocks.{i}:hidden"] if cfg[f"blocks.{i}"] else None) for i in range(3)])

    def set_config(self, cfg):
        cfg = self.space.validate(cfg)
        self.config = cfg
        hidden = min(cfg[f"blocks.{i}:hidden"] for i in range(3))  # the ResMLP double has one hidden width
        self.model.active = {"width": cfg["width"], "hidden": hidden, "keep": [cfg[b] for b in self.space.stacks["blocks"]]}

    def num_params(self, cfg=None):
        w, *hs = self.subnet(cfg if cfg is not None else self.config)
        return 8 * w + w + sum(2 * w * h + h + w for h in hs if h) + 4 * w + 4

    def macs(self, cfg=None, inputs=None):
        return self.num_params(cfg)


def test_configs_of_one_subnet_are_scored_once_and_shown_once():
    sn = PerBlockSupernet()
    seen = []

    def evaluator(model):
        seen.append(sn.subnet(sn.config))
        return float(AgreementEvaluator()(model))

    res = search(sn, evaluator, n_trials=60, sampler="random", seed=3, show_progress=False)
    assert len(seen) == len(set(seen)), "one subnet was scored twice under different configs"
    subnets = [sn.subnet(json.loads(c)) for c in res.pareto["config"]]
    assert len(subnets) == len(set(subnets))
    for c in res.trials["config"]:  # stored configs are canonical
        assert json.loads(c) == sn.space.canonical(json.loads(c))


def test_pareto_shows_one_row_per_subnet_for_stored_non_canonical_configs():
    space = SearchSpace(dims={"b.0:h": [4, 2], "b.1:h": [4, 2]}, stacks={"b": ["b.0", "b.1"]}, min_depth={"b": 1})
    study = optuna.create_study(directions=["maximize", "minimize"])
    for h in (4, 2):  # an older run stored both: block b.0 is dropped, so they are one subnet
        cfg = {"b.0": False, "b.1": True, "b.0:h": h, "b.1:h": 2}
        study.add_trial(optuna.trial.create_trial(values=[0.7, 10], params={}, distributions={}, user_attrs={
            "config": json.dumps(cfg, sort_keys=True), "score": 0.7, "params": 10, "feasible": True}))
    res = SearchResult(study=study, space=space, objectives=("score", "params"))
    assert len(res.trials) == 2 and len(res.pareto) == 1


def test_full_model_is_the_reference_even_over_budget(tmp_path, monkeypatch):
    res = search(FakeSupernet(), AgreementEvaluator(), n_trials=8, constraints={"max_params_frac": 0.4}, show_progress=False)
    assert res.reference["score"] == 1.0  # scored although over the budget
    assert not res.trials.iloc[0]["feasible"] and pd.isna(res.trials.iloc[0]["score"])
    table = res.table()
    assert "full model" in table.splitlines()[1] and "100.0" in table.splitlines()[1]
    res.save(tmp_path)
    assert json.loads((tmp_path / "pareto.json").read_text())["reference"]["score"] == 1.0
    import matplotlib.figure

    labels = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):
        labels.extend(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
        return real(fig, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    res.plot_pareto(tmp_path / "p.png")
    assert "full model" in labels


def test_model_card_names_metric_reference_and_loading(vit_run, tmp_path):
    res = invoke("extract", vit_run, "--best", "--out", tmp_path / "sub")
    assert res.exit_code == 0, res.output
    card = (tmp_path / "sub" / "README.md").read_text()
    for needle in ("top-1 accuracy", "higher is better", "full model", "cifar10", "limit: 6", "from_pretrained", "| macs |",
                   str(json.loads((vit_run / "run.json").read_text())["data"])):
        assert needle in card, needle
    full = json.loads((vit_run / "pareto.json").read_text())["reference"]
    assert f"{full['params']:,.0f}" in card and f"{full['score']:.4g}" in card


def test_perplexity_card_names_the_metric_not_a_bare_score():
    assert "perplexity = exp(-score)" in Perplexity.describe(None) and "higher is better" in Perplexity.describe(None)


def test_inspect_module_does_not_shadow_the_standard_library():
    out = subprocess.run([sys.executable, "-c", "import inspect, sys; print(inspect.__file__)"], cwd=ROOT / "osf",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(ROOT / "osf")), out.stdout
    assert not (ROOT / "osf" / "inspect.py").exists()
