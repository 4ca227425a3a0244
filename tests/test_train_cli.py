"""``osf train``: from a model name and a data folder to a trained, saved, searchable supernet."""
from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

import osf
from osf.cli import app
from score_fixtures import write_learnable_cifar


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_osf_train_trains_saves_and_resumes(tmp_path):
    root = write_learnable_cifar(tmp_path / "c10", n_train=100, n_test=10)
    out = tmp_path / "run"
    args = ["train", "tiny-vit", "--data", f"cifar10:{root}", "--out", str(out), "--steps", "3", "--batch-size", "8",
            "--lr", "1e-3", "--eval-every", "3", "--save-every", "3", "--eval-batches", "2", "--num-random", "1"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "validation:" in res.output and "val/half/accuracy" in res.output
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [1, 2, 3]
    assert json.loads((out / "train_config.json").read_text())["steps"] == 3
    sn = osf.load_supernet(out / "supernet")
    assert sn.num_params(sn.space.largest()) > sn.num_params(sn.space.smallest())
    # the saved supernet is an osf MODEL like any other: inspect reads it
    res = runner.invoke(app, ["inspect", str(out / "supernet"), "--json"])
    assert res.exit_code == 0, res.output
    assert {d["name"] for d in json.loads(res.output)["dims"]} == set(sn.ir.dims)
    # more steps: resumes at the checkpoint instead of starting over
    res = runner.invoke(app, [a if a != "3" else "5" for a in args[:9]] + args[9:])
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [1, 2, 3, 4, 5]


def test_osf_train_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "tiny-vit", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "error:" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["train", "tiny-vit", "--data", "x", "--out", str(tmp_path / "o"), "--precision", "fp8"])
    assert res.exit_code == 2 and "precision must be one of" in res.output
