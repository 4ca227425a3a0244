"""Every script in examples/ runs end to end with ``--smoke`` (offline, tiny models and data),
and what it reports is checked against the saved subnet, scored again here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["vit_cifar10", "swin_cifar100", "clip_cifar10_zeroshot", "mamba_lambada", "mamba2_lm", "user_mamba_tower"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All smoke runs, started together: ``{name: (returncode, output, out_dir)}``."""
    base = tmp_path_factory.mktemp("examples")
    procs = {}
    for name in EXAMPLES:
        out = base / name
        cmd = [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--smoke", "--out", str(out)]
        procs[name] = (subprocess.Popen(cmd, cwd=base, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True), out)
    done = {}
    for key, (proc, out) in procs.items():
        output, _ = proc.communicate(timeout=900)
        done[key] = (proc.returncode, output, out)
    return done


def _result(runs, name: str) -> tuple[dict, Path]:
    code, output, out = runs[name]
    assert code == 0, output[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["subnet_params"] <= result["max_params_frac"] * result["full_params"]
    assert result["subnet_params"] < result["full_params"]
    assert f"{result['subnet_params']:,} parameters" in output and "Pareto front" in output
    assert (out / "search" / "pareto.png").stat().st_size > 0
    # the subnet reported is the search's trial, as its result files record it
    trials = {r["number"]: r for r in json.loads((out / "search" / "pareto.json").read_text())["pareto"]}
    row = trials[result["subnet_trial"]]
    assert (row["params"], row["score"], row["config"]) == (result["subnet_params"], result["subnet_score"],
                                                            result["subnet_config"])
    return result, out


def _script(name: str):
    import importlib

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "examples"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_help_documents_the_real_and_the_smoke_run(name, capsys):
    with pytest.raises(SystemExit) as e:
        _script(name).main(["--help"])
    output = capsys.readouterr().out
    assert e.value.code == 0, output
    assert "--smoke" in output and "python examples/" in output  # the real-data command is in the help
    with pytest.raises(SystemExit) as e:  # a real run needs its data (or --smoke), said in one line
        _script(name).main(["--max-params-frac", "1.5"])
    assert e.value.code not in (0, None)


@pytest.mark.parametrize("name,kind", [("vit_cifar10", "cifar10"), ("swin_cifar100", "cifar100"),
                                       ("user_mamba_tower", "cifar10")])
def test_image_examples_report_what_the_saved_subnet_scores(runs, name, kind):
    import osf
    from osf.search import ImageAccuracy

    result, out = _result(runs, name)
    if name == "user_mamba_tower":
        MambaTower = _script("user_mamba_tower").MambaTower
        tower = json.loads((out / "subnet" / "tower_config.json").read_text())
        sub = osf.load_subnet(out / "subnet", model=MambaTower(**tower))
        assert result["reload_max_abs_diff"] < 1e-5 and result["dims"] >= 1 + 3 * tower["n_layers"]
    else:
        sub = osf.load_subnet(out / "subnet")
    assert sum(p.numel() for p in sub.parameters()) == result["subnet_params"]
    assert ImageAccuracy(f"{kind}:{out / 'data'}")(sub.eval()) == result["subnet_score"]


def test_clip_zeroshot_example(runs):
    import osf
    from transformers import AutoTokenizer

    from osf.search import ZeroShotAccuracy

    result, out = _result(runs, "clip_cifar10_zeroshot")
    sub = osf.load_subnet(out / "subnet")
    assert sum(p.numel() for p in sub.parameters()) == result["subnet_params"]
    tok = AutoTokenizer.from_pretrained(str(out / "subnet"))
    assert ZeroShotAccuracy(f"cifar10:{out / 'data'}", tokenizer=tok)(sub.eval()) == result["subnet_score"]
    assert "zero-shot" in result["metric"]


def test_mamba_lambada_example(runs):
    import osf
    from transformers import AutoTokenizer

    from osf.search import LMEval

    result, out = _result(runs, "mamba_lambada")
    sub = osf.load_subnet(out / "subnet")
    assert sum(p.numel() for p in sub.parameters()) == result["subnet_params"]
    tok = AutoTokenizer.from_pretrained(str(out / "subnet"))
    ev = LMEval("osf_smoke_lastword", tok, include_path=out / "task", batch_size=8)
    assert ev(sub.eval()) == result["subnet_score"]


def test_mamba2_perplexity_example(runs):
    import osf

    result, out = _result(runs, "mamba2_lm")
    sub = osf.load_subnet(out / "subnet")
    assert type(sub).__name__ == "Mamba2ForCausalLM"
    assert sum(p.numel() for p in sub.parameters()) == result["subnet_params"]
    assert result["subnet_perplexity"] == pytest.approx(float(torch.exp(torch.tensor(-result["subnet_score"]))))
    # scored again here as the script scores it (its --smoke settings)
    from transformers import AutoTokenizer

    from osf.demo import load_corpus
    from osf.search import Perplexity

    tok = AutoTokenizer.from_pretrained(str(out / "subnet"))
    ev = Perplexity(load_corpus()[1][:6], tok, seq_len=32, max_batches=2, batch_size=32)
    assert ev(sub.eval()) == pytest.approx(result["subnet_score"], rel=1e-6)
    assert result["full_score"] < 0 and result["full_perplexity"] > 1
