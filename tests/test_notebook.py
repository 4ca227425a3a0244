"""The tutorial notebook runs top to bottom on the offline demo model, and says what it found."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "mamba_lm_harness.ipynb"
KERNEL = "osf-test-python"


@pytest.fixture(scope="module")
def executed(tmp_path_factory, monkeypatch_module):
    """The notebook executed by nbclient in a fresh kernel of this Python (its own kernel spec,
    found through JUPYTER_PATH), with the demo cache and the outputs in a temporary folder."""
    import nbformat
    from nbclient import NotebookClient

    base = tmp_path_factory.mktemp("notebook")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(base / "jupyter"), "--name", KERNEL],
                   check=True, capture_output=True)
    monkeypatch_module.setenv("JUPYTER_PATH", str(base / "jupyter" / "share" / "jupyter"))
    monkeypatch_module.setenv("OSF_CACHE_DIR", str(base / "cache"))
    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")
    monkeypatch_module.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = base / "work"
    work.mkdir()
    NotebookClient(nb, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(work)}}).execute()
    return nb, work


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _text(cell) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


def test_notebook_runs_offline_and_finds_a_half_size_subnet(executed):
    import osf

    nb, work = executed
    out = work / "runs" / "mamba_lm_harness"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subnet_params"] <= 0.5 * summary["full_params"]
    subnet = osf.load_subnet(out / "subnet")
    assert sum(p.numel() for p in subnet.parameters()) == summary["subnet_params"]
    # the search's best row under the budget, as the search result files record it
    pareto = json.loads((out / "search" / "pareto.json").read_text())
    assert summary["trial"] in [r["number"] for r in pareto["pareto"]]
    row = next(r for r in pareto["pareto"] if r["number"] == summary["trial"])
    assert row["params"] == summary["subnet_params"] and row["score"] == summary["subnet_score"]
    # the reference row is the trained supernet's largest subnet: the original model's size
    assert pareto["reference"]["params"] == summary["full_params"] and 0 <= summary["full_score"] <= 1
    # the outputs a reader sees: the table, the plot inline, the generations, the push folder
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    text = "\n".join(_text(c) for c in code)
    assert "full model" in text and f"{summary['subnet_params']:,} parameters" in text
    pngs = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and len(pngs[0]["data"]["image/png"]) > 1000
    assert (out / "search" / "pareto.png").is_file()
    assert text.count("PROMPT:") == 3 and text.count("full  :") == 3 and text.count("subnet:") == 3
    assert "would upload to your-name/mamba-half" in text and "model.safetensors" in text
