"""``osf push`` against a local stand-in of the Hub (tests/hub_standin.py): no network.

The uploads run in a subprocess (``python -m osf.cli push``) with ``HF_ENDPOINT`` pointing at the
stand-in, as a user would run them; huggingface_hub reads its settings at import. What the stand-in
stored must be, byte for byte, the folder a dry run prepared.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.hub_standin import HubStandIn, card_metadata_errors
from tests.cli_tools import invoke, one_line_error
from tests.test_evaluators import write_cifar

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_standin_write_token"


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dry_run(path: Path, repo_id: str, out: Path, *extra: str) -> dict[str, bytes]:
    res = invoke("push", str(path), "--repo-id", repo_id, "--dry-run", "--out-dir", str(out), *map(str, extra))
    assert res.exit_code == 0, res.output
    listed = {ln.split()[0]: int(ln.split()[1].replace(",", "")) for ln in res.output.splitlines() if ln.startswith("  ")}
    files = tree(out)
    assert listed == {k: len(v) for k, v in files.items()}  # the printed list is the folder
    return files


def push_subprocess(path: Path, repo_id: str, hub: HubStandIn, *extra: str, token: str = TOKEN, xet: bool = True,
                    home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    return subprocess.run([sys.executable, "-m", "osf.cli", "push", str(path), "--repo-id", repo_id, *extra],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory) -> Path:
    """A real `osf search` of the built-in tiny ViT, with its best subnet extracted into the run folder."""
    tmp = tmp_path_factory.mktemp("push_run")
    write_cifar(tmp / "c10", "cifar10", n_test=20)
    run = tmp / "run"
    res = invoke("search", "tiny-vit", "--task", "cifar10", "--data", str(tmp / "c10"), "--trials", "4",
                 "--max-params-frac", "0.6", "--out", str(run))
    assert res.exit_code == 0, res.output
    res = invoke("extract", str(run), "--best", "--out", str(run / "best"))
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="module")
def supernet_ckpt(tmp_path_factory) -> Path:
    import osf
    from osf.models import load_model

    folder = tmp_path_factory.mktemp("push_ckpt") / "ckpt"
    osf.supernet(load_model("tiny-mamba")).save_pretrained(folder)
    return folder


def card_of(files: dict[str, bytes]) -> tuple[dict, str]:
    from osf.search.card import split_card

    text = files["README.md"].decode()
    assert card_metadata_errors(text) == []
    return split_card(text)


def test_push_search_run_uploads_exactly_the_dry_run_folder(searched_run, tmp_path):
    staged = dry_run(searched_run, "alice/vit-small", tmp_path / "staged", "--private")
    sub = searched_run / "best"
    # the model's own files, unchanged, plus the card
    assert {k: v for k, v in staged.items() if k != "README.md"} == {k: v for k, v in tree(sub).items()
                                                                     if k != "README.md"}
    meta, body = card_of(staged)
    pareto = json.loads((searched_run / "pareto.json").read_text())
    trials = pd.read_csv(searched_run / "trials.csv")
    record = json.loads((sub / "osf_search.json").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert {"osf", "pruned", "vit"} <= set(meta["tags"]) and "base_model" not in meta  # tiny-vit is no Hub id
    [result] = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "vit-small"
    assert result["dataset"] == {"name": "cifar10", "type": "cifar10"}
    chosen = trials[trials["number"] == record["trial"]].iloc[0]
    assert result["metrics"][0]["type"] == "accuracy" and result["metrics"][0]["value"] == pytest.approx(chosen["score"])
    best = max((p for p in pareto["pareto"] if p["params"] <= 0.6 * pareto["reference"]["params"]),
               key=lambda p: (p["score"], -p["params"]))
    assert record["trial"] == best["number"]
    assert "](pareto.png)" in body and "pareto.png" in staged
    for n in trials["number"]:  # every trial in the card's table
        assert f"\n| {n} | " in body
    assert "| max_params_frac=0.6 | " + str(best["number"]) + " |" in body

    with HubStandIn(token=TOKEN, lfs_suffixes=()) as hub:  # everything as regular files: the pipelined upload
        res = push_subprocess(searched_run, "alice/vit-small", hub, "--private", home=tmp_path / "home")
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"{hub.url}/alice/vit-small" in res.stdout
        [create] = hub.calls("POST", "/api/repos/create")
        assert create.authorized and create.body["name"] == "vit-small" and create.body["organization"] == "alice"
        assert create.body["visibility"] == "private" and hub.repos["alice/vit-small"].private is True
        assert len(hub.repos["alice/vit-small"].commits) == 1
        assert hub.repos["alice/vit-small"].files == staged
        # the card's own loading code, run as written, fetches the repo back and loads the subnet
        code = body.split("## How to load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
        assert "snapshot_download('alice/vit-small')" in code
        check = "\nfrom osf.search.run import weights_checksum\nprint(weights_checksum(model))\n"
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "home2"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        res = subprocess.run([sys.executable, "-c", code + check], env=env, capture_output=True, text=True, cwd=ROOT,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    import osf
    from osf.search.run import weights_checksum

    assert res.stdout.split()[-1] == weights_checksum(osf.load_subnet(sub))


def test_push_supernet_checkpoint_through_lfs(supernet_ckpt, tmp_path):
    staged = dry_run(supernet_ckpt, "bob/mamba-supernet", tmp_path / "staged")
    assert {k: v for k, v in staged.items() if k != "README.md"} == tree(supernet_ckpt)
    meta, body = card_of(staged)
    assert meta["library_name"] == "osf" and meta["pipeline_tag"] == "text-generation"
    assert {"osf", "supernet", "mamba"} <= set(meta["tags"]) and "model-index" not in meta
    saved = json.loads((supernet_ckpt / "osf_supernet.json").read_text())
    for dim, choices in saved["space"]["dims"].items():  # the elastic space, every dim with its choices
        assert f"| `{dim}` | {', '.join(map(str, choices))} |" in body
    assert f"| importance | `\"{saved['supernet_config']['importance']}\"` |" in body

    with HubStandIn(token=TOKEN) as hub:  # *.safetensors through the LFS batch API
        bad = push_subprocess(supernet_ckpt, "bob/mamba-supernet", hub, token="hf_wrong", xet=False,
                              home=tmp_path / "home")
        lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and "401" in lines[0] and "token" in lines[0], bad.stderr
        assert not hub.repos
        res = push_subprocess(supernet_ckpt, "bob/mamba-supernet", hub, xet=False, home=tmp_path / "home")
        assert res.returncode == 0, res.stderr[-3000:]
    [create] = [r for r in hub.calls("POST", "/api/repos/create") if r.authorized]
    assert create.body["visibility"] == "public"
    uploaded = {r.path.rsplit("/", 1)[1] for r in hub.calls("PUT", "/lfs-upload/")}
    lfs = {k for k in staged if k.endswith(".safetensors")}
    import hashlib

    assert uploaded == {hashlib.sha256(staged[k]).hexdigest() for k in lfs} and len(lfs) >= 1
    assert hub.repos["bob/mamba-supernet"].files == staged


def test_card_names_a_hub_base_model_and_refuses_a_stale_record(searched_run, tmp_path):
    import shutil

    from osf.search.card import render_card, split_card

    sub = tmp_path / "sub"
    shutil.copytree(searched_run / "best", sub)
    record = json.loads((sub / "osf_search.json").read_text())
    (sub / "osf_search.json").write_text(json.dumps({**record, "model": "google/vit-base-patch16-224"}))
    meta, _ = split_card(render_card(sub, "carol/vit"))
    assert meta["base_model"] == "google/vit-base-patch16-224"
    config = dict(record["config"])
    config[next(k for k, v in config.items() if not isinstance(v, bool))] += 8
    (sub / "osf_search.json").write_text(json.dumps({**record, "config": config}))
    one_line_error(invoke("push", str(sub), "--repo-id", "carol/vit", "--dry-run", "--out-dir", str(tmp_path / "o")),
                   "osf_search.json", "another subnet")


def test_push_error_lines(searched_run, supernet_ckpt, tmp_path, monkeypatch):
    from huggingface_hub import constants

    ok = str(supernet_ckpt)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for repo in ["noslash", "a/b/c", "/name", "alice/bad name!"]:
        one_line_error(invoke("push", ok, "--repo-id", repo, "--dry-run"), repr(repo), "namespace/name")
    one_line_error(invoke("push", str(tmp_path / "empty"), "--repo-id", "a/b", "--dry-run"),
                   "is not a subnet folder", "supernet checkpoint", "search run folder")
    one_line_error(invoke("push", str(tmp_path / "nope"), "--repo-id", "a/b", "--dry-run"), "does not exist")
    one_line_error(invoke("push", str(tmp_path / "file.txt"), "--repo-id", "a/b", "--dry-run"), "is a file")
    one_line_error(invoke("push", str(supernet_ckpt.parent), "--repo-id", "a/b", "--dry-run"), "ckpt", "push that")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    one_line_error(invoke("push", ok, "--repo-id", "a/b", "--dry-run", "--out-dir", str(tmp_path / "full")),
                   "not empty")
    one_line_error(invoke("push", ok, "--repo-id", "a/b", "--dry-run", "--out-dir", str(supernet_ckpt / "x")),
                   "inside the folder being pushed")
    # a run folder: with no extracted subnet, and with two
    import shutil

    run = tmp_path / "run"
    shutil.copytree(searched_run, run, ignore=shutil.ignore_patterns("best"))
    one_line_error(invoke("push", str(run), "--repo-id", "a/b", "--dry-run"), "no extracted subnet", "osf extract")
    shutil.copytree(searched_run / "best", run / "b1")
    spec = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**spec, "study_name": "another-study"}))
    one_line_error(invoke("push", str(run), "--repo-id", "a/b", "--dry-run"), "extracted from another search")
    (run / "run.json").write_text(json.dumps(spec))
    shutil.copytree(searched_run / "best", run / "b2")
    one_line_error(invoke("push", str(run), "--repo-id", "a/b", "--dry-run"), "holds 2 extracted subnets", "b1, b2")
    # a real push: offline mode, then no token (none in the environment or the saved login)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    one_line_error(invoke("push", ok, "--repo-id", "a/b"), "HF_HUB_OFFLINE", "--dry-run")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    one_line_error(invoke("push", ok, "--repo-id", "a/b"), "no Hugging Face token", "HF_TOKEN")
    # nothing was left behind by the refused pushes
    assert not (tmp_path / "o").exists()


def test_prepared_folder_links_only_large_files(supernet_ckpt, tmp_path):
    """Weights are hard-linked (no copy of a large model), small files copied: editing the prepared
    config.json leaves the source alone."""
    import shutil

    from osf.hub import LINK_MIN_BYTES, prepare_folder

    src = tmp_path / "src"
    shutil.copytree(supernet_ckpt, src)
    (src / "big.bin").write_bytes(b"\1" * (LINK_MIN_BYTES + 1))
    (src / ".hidden").write_text("x")
    staged = prepare_folder(src, "a/b", tmp_path / "staged")
    assert (staged / "big.bin").samefile(src / "big.bin") and not (staged / "config.json").samefile(src / "config.json")
    assert not (staged / ".hidden").exists()
    before = (src / "config.json").read_bytes()
    (staged / "config.json").write_text("{}")
    assert (src / "config.json").read_bytes() == before


def test_keep_card_uploads_an_edited_card(supernet_ckpt, tmp_path):
    first = dry_run(supernet_ckpt, "a/b", tmp_path / "staged")
    edited = first["README.md"] + b"\nA note added by hand.\n"
    (tmp_path / "staged" / "README.md").write_bytes(edited)
    assert dry_run(tmp_path / "staged", "a/b", tmp_path / "kept", "--keep-card")["README.md"] == edited
    assert dry_run(tmp_path / "staged", "a/b", tmp_path / "fresh")["README.md"] == first["README.md"]  # written anew
    (tmp_path / "staged" / "README.md").write_text("---\ntags: [osf\n---\n")
    one_line_error(invoke("push", tmp_path / "staged", "--repo-id", "a/b", "--dry-run", "--keep-card"),
                   "--keep-card", "not valid YAML")
    (tmp_path / "staged" / "README.md").unlink()
    one_line_error(invoke("push", tmp_path / "staged", "--repo-id", "a/b", "--dry-run", "--keep-card"), "no README.md")
