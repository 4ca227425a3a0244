"""``osf search`` / ``osf extract`` through typer's CliRunner."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import osf
import osf.search.run as run_mod
from osf.cli import app
from tests.test_evaluators import write_cifar

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_unknown_lm_task_suggests_close_names(tmp_path):
    res = invoke("search", "some-model", "--task", "lambada_opnai", "--out", str(tmp_path / "run"))
    one_line_error(res, "unknown task 'lambada_opnai'", "lambada_openai")


def test_missing_data_dir(tmp_path):
    res = invoke("search", "some-model", "--task", "cifar10", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    one_line_error(res, "does not exist")
    res = invoke("search", "some-model", "--task", "cifar10", "--out", str(tmp_path / "r"))
    one_line_error(res, "needs --data")


def test_unwritable_out_dir_is_detected_first(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = invoke("search", "some-model", "--task", "lambada_opnai", "--out", str(blocker / "run"))
    one_line_error(res, "not writable")


@pytest.mark.parametrize("args, needle", [
    (["--objectives", "score,flops"], "unknown objective"),
    (["--sampler", "cma"], "unknown sampler"),
    (["--max-params", "-2"], "--max-params must be a number of parameters >= 1"),
    (["--max-params-frac", "2"], "--max-params-frac must be a fraction"),
    (["--max-latency-ms", "0"], "--max-latency-ms must be a positive number of milliseconds"),
    (["--device", "tpu"], "--device"),
])
def test_bad_options(tmp_path, args, needle):
    res = invoke("search", "m", "--task", "cifar10", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *args)
    one_line_error(res, needle)


def test_extract_argument_errors(tmp_path):
    one_line_error(invoke("extract", str(tmp_path), "--best", "--out", str(tmp_path / "o")), "no run.json")
    one_line_error(invoke("extract", str(tmp_path), "--out", str(tmp_path / "o")), "exactly one of")


def test_search_resume_and_extract_end_to_end(tmp_path):
    """The built-in tiny ViT through the real supernet: search, resume, extract, load."""
    write_cifar(tmp_path / "c10", "cifar10", n_test=30)
    out = tmp_path / "run"
    args = ["search", "tiny-vit", "--task", "cifar10", "--data", str(tmp_path / "c10"), "--trials", "6",
            "--max-params-frac", "0.5", "--out", str(out)]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    for f in ("run.json", "trials.csv", "pareto.json", "space.json", "pareto.png", "study.journal"):
        assert (out / f).is_file(), f
    spec = json.loads((out / "run.json").read_text())
    assert spec["model"] == "tiny-vit" and spec["task"] == "cifar10" and spec["max_params_frac"] == 0.5 and spec["max_params"] is None
    res = invoke(*[a if a != "6" else "8" for a in args])  # resume to 8 trials
    assert res.exit_code == 0, res.output
    import pandas as pd

    assert len(pd.read_csv(out / "trials.csv")) == 8
    res = invoke("search", "tiny-mamba", "--task", "cifar10", "--data", str(tmp_path / "c10"), "--out", str(out))
    one_line_error(res, "holds another run")

    res = invoke("extract", str(out), "--best", "--max-params-frac", "0.5", "--out", str(tmp_path / "sub"))
    assert res.exit_code == 0, res.output
    from osf.models import load_model

    sub = osf.load_subnet(tmp_path / "sub")
    sn = osf.supernet(load_model("tiny-vit"))
    n = sum(p.numel() for p in sub.parameters())
    assert n <= 0.5 * sn.num_params()
    pareto = json.loads((out / "pareto.json").read_text())["pareto"]
    feasible = [p for p in pareto if p["params"] <= 0.5 * sn.num_params()]
    best = max(feasible, key=lambda p: p["score"])
    assert n == sn.num_params(best["config"]) == best["params"]
    assert (tmp_path / "sub" / "README.md").is_file()
    res = invoke("extract", str(out), "--trial", "0", "--out", str(tmp_path / "sub0"))
    assert res.exit_code == 0, res.output
    assert sum(p.numel() for p in osf.load_subnet(tmp_path / "sub0").parameters()) == sn.num_params()
    one_line_error(invoke("extract", str(out), "--trial", "99", "--out", str(tmp_path / "s")), "does not exist")
    # extracting again into a folder that holds a model: refused, then replaced with --overwrite
    one_line_error(invoke("extract", str(out), "--trial", "1", "--out", str(tmp_path / "sub0")),
                   "already holds a model", "--overwrite")
    res = invoke("extract", str(out), "--trial", "1", "--out", str(tmp_path / "sub0"), "--overwrite")
    assert res.exit_code == 0, res.output
    assert sum(p.numel() for p in osf.load_subnet(tmp_path / "sub0").parameters()) < sn.num_params()


@pytest.mark.parametrize("task", ["lm", "perplexity"])
def test_search_cli_with_a_language_model(tmp_path, monkeypatch, tiny_lm, tokenizer, lastword_task, corpus, task):
    import copy

    monkeypatch.setattr(run_mod, "load_model", lambda name: (copy.deepcopy(tiny_lm), tokenizer))
    task_dir, name = lastword_task
    if task == "lm":
        extra = ["--task", name, "--include-path", str(task_dir), "--limit", "3"]
    else:
        (tmp_path / "text.txt").write_text(" ".join(corpus[1][:2]))
        extra = ["--task", "perplexity", "--data", str(tmp_path / "text.txt"), "--limit", "2"]
    res = invoke("search", "tiny-mamba", *extra, "--trials", "3", "--objectives", "score,params,macs", "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(df) == 3 and df["macs"].gt(0).all() and df["score"].notna().all()
    if task == "perplexity":
        assert (df["score"] < 0).all()  # -log(ppl) of a random model
