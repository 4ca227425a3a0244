"""Saved subnets load where osf is not installed.

A subnet whose sizes differ from layer to layer loads with
``AutoModelFor*.from_pretrained(folder, trust_remote_code=True)`` and with lm-eval's own CLI
(``--model hf --model_args pretrained=folder,trust_remote_code=True``); a subnet its Hugging
Face config can express loads with plain ``from_pretrained``. The loading runs in a throwaway
virtual environment that sees the project's packages but not osf (its editable install is a
``.pth`` hook that such an environment does not run), and each run proves it could not import
osf. The oracle is the supernet itself at the subnet's config, computed here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import osf
from lm_fixtures import SENTENCES, make_lastword_task, make_tokenizer
from oracle_tools import randomise_constants, sharpen_weights
from zoo import build

LOADER = r'''
import json, sys
import torch
import transformers

jobs, report_file = json.loads(open(sys.argv[1]).read()), sys.argv[2]
try:
    import osf  # noqa: F401
    importable = True
except ImportError:
    importable = False
report = {"osf_importable": importable, "results": []}
for job in jobs:
    try:  # one folder's failure is its own test's
        auto = getattr(transformers, job["auto"])
        kwargs = {"trust_remote_code": True} if job["trust"] else {}
        model = auto.from_pretrained(job["folder"], **kwargs).eval()
        if job.get("resave"):  # save_pretrained of the loaded model, loaded again
            model.save_pretrained(job["resave"])
            model = auto.from_pretrained(job["resave"], **kwargs).eval()
        inputs = torch.load(job["inputs"], weights_only=True)
        with torch.no_grad():
            out = model(**inputs)
        torch.save(out[job["output"]], job["out"])
        report["results"].append({"module": type(model).__module__, "class": type(model).__name__,
                                  "params": sum(p.numel() for p in model.parameters())})
    except Exception as e:
        report["results"].append({"error": f"{type(e).__name__}: {e}"})
report["osf_modules"] = sorted(m for m in sys.modules if m == "osf" or m.startswith("osf."))
open(report_file, "w").write(json.dumps(report))
'''

HIDE_OSF = '''
import importlib.abc, sys


class HideOsf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "osf" or name.startswith("osf."):
            raise ModuleNotFoundError(f"No module named {name!r} (this Python stands for one without osf)")
        return None


sys.meta_path.insert(0, HideOsf())
'''


# ------------------------------------------------------------ a Python without osf
@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """``(python, env, cwd)``: a virtual environment whose site-packages point at this one's
    (torch, transformers, lm-eval...) without running its ``.pth`` hooks, osf's editable
    install among them; run from a folder outside the checkout."""
    root = tmp_path_factory.mktemp("clean")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # plain paths: the .pth files inside them (osf's editable-install hook) do not run
    (site / "project_packages.pth").write_text("".join(p + "\n" for p in paths))
    if any(Path(osf.__file__).resolve().is_relative_to(Path(p).resolve()) for p in paths):
        # osf installed into site-packages itself (not editable): hide it from this Python
        (site / "hide_osf.py").write_text(HIDE_OSF)
        (site / "hide_osf.pth").write_text("import hide_osf\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", HF_MODULES_CACHE=str(root / "hf_modules"),
               HF_DATASETS_CACHE=str(root / "datasets"))
    cwd = root / "cwd"
    cwd.mkdir()
    assert importlib.util.find_spec("osf") is not None  # here osf imports: the check below can fail
    return venv / "bin" / "python", env, cwd


def run_clean(clean_python, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    python, env, cwd = clean_python
    done = subprocess.run([str(python), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


# ----------------------------------------------------------------- the subnets
def _supernet(name: str, space: dict | None = None):
    model, _ = build(name)
    randomise_constants(model)  # biases, norms, D, A_log: a member left at its full size shows
    sharpen_weights(model)
    return osf.supernet(model, space=space)


def _config(sn, **changes):
    cfg = dict(sn.space.largest())
    for k, v in changes.items():
        assert k in cfg, k
        cfg[k] = v
    return cfg


MAMBA = "backbone.layers.{}.mixer:{}"
VIT_MLP, VIT_HEADS, VIT_HEAD_DIM = ("vit.layers.{}.mlp:hidden", "vit.layers.{}.attention:heads",
                                   "vit.layers.{}.attention:head_dim")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Subnet folders, each with its inputs and the supernet's outputs at its config."""
    root = tmp_path_factory.mktemp("subnets")
    g = torch.Generator().manual_seed(0)
    # a smaller head_dim keeps the full attention scale: no config can express that subnet
    mamba, vit = _supernet("tiny-mamba"), _supernet("tiny-vit", space={"*head_dim": [16, 8]})
    swin, clip = _supernet("tiny-swinv2"), _supernet("tiny-clip")
    ids = {"input_ids": torch.randint(0, 256, (2, 9), generator=g)}
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    cases = {
        # widths that differ from layer to layer (hidden, d_inner, d_state, dt_rank)
        "mamba": (mamba, _config(mamba, hidden=48, **{MAMBA.format(0, "d_inner"): 64, MAMBA.format(1, "d_state"): 8,
                                                        MAMBA.format(2, "dt_rank"): 4}),
                  "AutoModelForCausalLM", ids, "logits"),
        # per-layer widths and two layers dropped
        "mamba-depth": (mamba, _config(mamba, **{MAMBA.format(1, "d_inner"): 96, MAMBA.format(3, "d_state"): 4,
                                                 "backbone.layers.0": False, "backbone.layers.2": False}),
                        "AutoModelForCausalLM", ids, "logits"),
        # per-layer heads, head_dim and MLP widths
        "vit": (vit, _config(vit, hidden=48, **{VIT_HEADS.format(0): 2, VIT_HEAD_DIM.format(2): 8,
                                                VIT_MLP.format(1): 64, VIT_MLP.format(3): 32}),
                "AutoModelForImageClassification", pixels, "logits"),
        # uniform sizes and a layer dropped: the Hugging Face config says it all
        "vit-uniform": (vit, _config(vit, hidden=48, **{VIT_HEADS.format(i): 3 for i in range(4)},
                                     **{VIT_MLP.format(i): 64 for i in range(4)}, **{"vit.layers.3": False}),
                        "AutoModelForImageClassification", pixels, "logits"),
        # stages of blocks (the config's depths list), per-block widths and heads, a block dropped
        "swinv2": (swin, _config(swin, **{"swinv2.encoder.layers.0.blocks.1:hidden": 64,
                                          "swinv2.encoder.layers.1.blocks.0.attention.self:heads": 2,
                                          "swinv2.encoder.layers.1:hidden": 48,
                                          "swinv2.encoder.layers.1.blocks.1": False}),
                   "AutoModelForImageClassification", pixels, "logits"),
        # two towers (nested text and vision configs), one of them a layer shorter
        "clip": (clip, _config(clip, **{"vision_model.encoder.layers.0.mlp:hidden": 64,
                                        "text_model.encoder.layers.1.self_attn:heads": 2,
                                        "text_model.encoder:hidden": 48, "text_model.encoder.layers.0": False}),
                 "AutoModel", {**ids, **pixels}, "logits_per_image"),
    }
    out = {}
    for name, (sn, cfg, auto, inputs, output) in cases.items():
        folder = root / name
        sub = sn.extract(cfg)
        if name == "mamba":
            sub.save_pretrained(folder)  # the extracted model's own save_pretrained writes the code too
        else:
            osf.save_subnet(sub, folder)
        with torch.no_grad(), sn.use(cfg):
            expected = getattr(sn.model.eval()(**inputs), output)
        torch.save(inputs, root / f"{name}.inputs.pt")
        out[name] = dict(folder=folder, auto=auto, inputs=inputs, output=output, expected=expected, sub=sub,
                         params=sn.num_params(cfg), expressed=sub._osf_subnet["config_expresses_subnet"])
    return out


@pytest.fixture(scope="module")
def loaded_without_osf(saved, clean_python, tmp_path_factory):
    """Each folder loaded by transformers' Auto class in the Python without osf: (report, outputs)."""
    root = tmp_path_factory.mktemp("loaded")
    jobs = []
    for name, case in saved.items():
        jobs.append(dict(folder=str(case["folder"]), auto=case["auto"], trust=not case["expressed"],
                         inputs=str(case["folder"].parent / f"{name}.inputs.pt"), output=case["output"],
                         out=str(root / f"{name}.out.pt")))
    jobs.append(dict(jobs[0], auto="AutoModel", output="last_hidden_state", out=str(root / "mamba-base.out.pt")))
    jobs.append(dict(jobs[1], resave=str(root / "resaved"), out=str(root / "mamba-depth-resaved.out.pt")))
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "loader.py").write_text(LOADER)
    run_clean(clean_python, [str(root / "loader.py"), str(root / "jobs.json"), str(root / "report.json")])
    report = json.loads((root / "report.json").read_text())
    outputs = [torch.load(j["out"], weights_only=True) if Path(j["out"]).is_file() else None for j in jobs]
    return report, dict(zip([*saved, "mamba-base", "mamba-depth-resaved"], zip(report["results"], outputs)))


def loaded(loaded_without_osf, name: str) -> tuple[dict, torch.Tensor]:
    """What the Python without osf made of folder ``name``: (class, parameters), output."""
    result, output = loaded_without_osf[1][name]
    assert "error" not in result, f"{name}: {result.get('error')}"
    return result, output


def test_the_loading_python_cannot_import_osf(loaded_without_osf):
    report, _ = loaded_without_osf
    assert report["osf_importable"] is False
    assert report["osf_modules"] == []


@pytest.mark.parametrize("name", ["mamba", "mamba-depth", "vit", "swinv2", "clip"])
def test_per_layer_subnet_loads_with_trust_remote_code_and_equals_the_supernet(saved, loaded_without_osf, name):
    case = saved[name]
    assert not case["expressed"]  # the Hugging Face config alone cannot rebuild it
    config = json.loads((case["folder"] / "config.json").read_text())
    assert config["auto_map"][case["auto"]] == f"modeling_osf_subnet.{type(case['sub']).__name__}"
    result, got = loaded(loaded_without_osf, name)
    assert result["module"].startswith("transformers_modules.")  # the folder's code, not the plain class
    assert result["params"] == case["params"]
    torch.testing.assert_close(got, case["expected"], atol=1e-4, rtol=1e-4)


def test_per_layer_subnet_loads_as_its_base_model(saved, loaded_without_osf):
    """AutoModel builds the base class (MambaModel) of the saved MambaForCausalLM from the same code."""
    result, got = loaded(loaded_without_osf, "mamba-base")
    assert result["class"] == "MambaModel" and result["module"].startswith("transformers_modules.")
    sub = saved["mamba"]["sub"]
    with torch.no_grad():
        expected = sub.eval().backbone(**saved["mamba"]["inputs"]).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_subnet_loaded_without_osf_saves_and_loads_again(saved, loaded_without_osf):
    """save_pretrained of the remote-code model copies its code along: the new folder loads the same."""
    result, got = loaded(loaded_without_osf, "mamba-depth-resaved")
    assert result["module"].startswith("transformers_modules.")
    torch.testing.assert_close(got, saved["mamba-depth"]["expected"], atol=1e-4, rtol=1e-4)


def test_uniform_subnet_loads_with_plain_from_pretrained(saved, loaded_without_osf):
    case = saved["vit-uniform"]
    assert case["expressed"]
    config = json.loads((case["folder"] / "config.json").read_text())
    assert "auto_map" not in config and "osf_subnet" not in config
    assert not list(case["folder"].glob("*.py"))
    assert config["num_hidden_layers"] == 3 and config["intermediate_size"] == 64 and config["hidden_size"] == 48
    result, got = loaded(loaded_without_osf, "vit-uniform")
    assert result["module"].startswith("transformers.models.vit.")  # no trust_remote_code asked, none used
    assert result["params"] == case["params"]
    torch.testing.assert_close(got, case["expected"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mamba", "mamba-depth", "vit", "vit-uniform", "swinv2", "clip"])
def test_load_subnet_reads_the_same_folders(saved, name):
    """osf.load_subnet rebuilds with the same routine, and hands back a model of the plain class
    (no remote-code entries in its config), which saves and loads again."""
    case = saved[name]
    model = osf.load_subnet(case["folder"])
    assert type(model) is type(case["sub"])
    assert not hasattr(model.config, "auto_map") and not hasattr(model.config, "osf_subnet")
    with torch.no_grad():
        torch.testing.assert_close(getattr(model(**case["inputs"]), case["output"]), case["expected"],
                                   atol=1e-4, rtol=1e-4)


def test_remote_code_refuses_an_edited_description(saved, tmp_path):
    """A config.json whose subnet description was damaged is named, not loaded into wrong shapes."""
    import shutil

    from transformers import AutoModelForImageClassification

    folder = tmp_path / "edited"
    shutil.copytree(saved["vit"]["folder"], folder)
    original = json.loads((folder / "config.json").read_text())
    config = json.loads(json.dumps(original))
    config["osf_subnet"]["format"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.osf_subnet has format 99; this file reads format 1"):
        AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    config = json.loads(json.dumps(original))
    config["osf_subnet"]["shapes"]["vit.layers.0.nope.weight"] = [4, 4]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"names tensor 'vit.layers.0.nope.weight', which "
                                         r"ViTForImageClassification does not have"):
        AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)


def test_resaving_a_subnet_loaded_by_osf_keeps_it_loadable(saved, tmp_path):
    """osf.save_subnet and the loaded model's own save_pretrained (after a pickle round trip,
    as torch.save of a whole model does) both write the code again."""
    import pickle

    from transformers import AutoModelForCausalLM

    case = saved["mamba-depth"]
    model = osf.load_subnet(case["folder"])
    osf.save_subnet(model, tmp_path / "a")
    pickle.loads(pickle.dumps(model)).save_pretrained(tmp_path / "b")
    for folder in ("a", "b"):
        again = AutoModelForCausalLM.from_pretrained(tmp_path / folder, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(again(**case["inputs"]).logits, case["expected"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(osf.load_subnet(tmp_path / folder)(**case["inputs"]).logits, case["expected"],
                                   atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ lm-eval's CLI
def _trained_lm(tokenizer):
    """A tiny Mamba LM trained on the fixture sentences: its last-word accuracy means something."""
    from transformers import MambaForCausalLM

    from osf.demo import demo_config, token_blocks, train_lm

    rng = random.Random(0)
    texts = []
    for _ in range(30):
        order = SENTENCES[:]
        rng.shuffle(order)
        texts += [s + "." for s in order]
    torch.manual_seed(0)
    model = MambaForCausalLM(demo_config(len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=8))
    train_lm(model, token_blocks(texts, tokenizer, seq_len=24), batch_size=16, lr=1e-2, max_steps=80,
             show_progress=False)
    return model.eval()


def test_lm_eval_cli_scores_a_per_layer_subnet_as_osf_does(clean_python, tmp_path):
    from osf.search.lmeval import LMEval

    tokenizer = make_tokenizer(tmp_path / "tok")
    task_dir = make_lastword_task(tmp_path / "task")
    sn = osf.supernet(_trained_lm(tokenizer))
    cfg = _config(sn, hidden=24, **{MAMBA.format(0, "d_inner"): 48, MAMBA.format(1, "d_state"): 4})
    sub = sn.extract(cfg)
    assert not sub._osf_subnet["config_expresses_subnet"]
    folder = tmp_path / "subnet"
    osf.save_subnet(sub, folder)
    tokenizer.save_pretrained(str(folder))
    acc = LMEval("osf_lastword", tokenizer, include_path=task_dir, batch_size=4)(sub)
    ppl = -LMEval("osf_lastword", tokenizer, include_path=task_dir, batch_size=4, metric="perplexity")(sub)
    chance = 1 / len(tokenizer)
    assert acc >= 0.5 > 10 * chance  # the trained subnet predicts the last word: equal scores mean something

    out = tmp_path / "lm_eval_out"
    run_clean(clean_python, ["-m", "lm_eval", "--model", "hf", "--model_args",
                             f"pretrained={folder},trust_remote_code=True", "--tasks", "osf_lastword",
                             "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "4",
                             "--output_path", str(out)])
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["model_args"] == {"pretrained": str(folder), "trust_remote_code": True}
    scores = results["results"]["osf_lastword"]
    assert scores["acc,none"] == pytest.approx(acc, abs=1e-9)
    assert scores["perplexity,none"] == pytest.approx(ppl, rel=1e-4)
