"""Supernet checkpoints (``sn.save_pretrained`` / ``osf.load_supernet``) and ``osf.SupernetConfig``.

A checkpoint must restore the supernet exactly: the weights as trained (not re-sorted by an
importance pass), the space with its block drop order, ties, and every config's outputs.
"""
from __future__ import annotations

import copy
import functools
import importlib
import json

import pytest
import torch
from safetensors.torch import load_file

import osf
from osf.elastic.checkpoint import META_FILE, WEIGHTS_FILE
from osf.ir.trace import flatten_output, normalize_inputs
from zoo import TinyGPT, build

MODELS = ["tiny-mamba", "tiny-vit", "gpt"]
# (``osf.elastic.supernet`` the attribute is the function; these are the modules)
supernet_mod = importlib.import_module("osf.elastic.supernet")
importance_mod = importlib.import_module("osf.elastic.importance")


def _floats(out) -> list[torch.Tensor]:
    return [t for t in flatten_output(out).values() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _run(module, inputs) -> list[torch.Tensor]:
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        return _floats(module(*args, **kwargs))


@functools.lru_cache(maxsize=None)
def _trained(name: str):
    """A supernet whose weights changed after it was built: one SGD step at its smallest config,
    so the shared weights are no longer in the order an importance pass would give them."""
    model, ex = build(name)
    sn = osf.supernet(model, ex)
    sn.set_config(sn.space.smallest())
    args, kwargs = normalize_inputs(sn.example_inputs)
    g = torch.Generator().manual_seed(0)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in _floats(sn(*args, **kwargs)))
    loss.backward()
    with torch.no_grad():
        for p in sn.parameters():
            if p.grad is not None:
                p -= 2.0 * p.grad / (p.grad.norm() + 1e-12)  # a big, normalised step per tensor
                p.grad = None
    return sn


def _configs(sn):
    return {"largest": sn.space.largest(), "smallest": sn.space.smallest(), "sample(1)": sn.space.sample(1),
            "sample(2)": sn.space.sample(2)}


def _no_importance(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_supernet must not run an importance pass or permute the weights")

    for fn in ("magnitude_importance", "activation_importance", "gradient_importance", "channel_importance",
               "block_importance", "greedy_block_order"):
        monkeypatch.setattr(importance_mod, fn, refuse)
    for fn in ("channel_importance", "block_importance", "greedy_block_order"):  # what the build calls
        monkeypatch.setattr(supernet_mod, fn, refuse)
    monkeypatch.setattr(supernet_mod, "permute_dims", refuse)


def _fresh(name: str):
    """What a user hands to load_supernet for their own model: a new instance, other weights."""
    return build(name, seed=7)[0] if name == "gpt" else None


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name in MODELS:
        sn = _trained(name)
        folder = tmp_path_factory.mktemp(name)
        sn.set_config(sn.space.sample(3))  # saving at a small config still saves the full weights
        sn.save_pretrained(folder)
        sn.set_config(sn.space.largest())
        out[name] = folder
    return out


@pytest.mark.parametrize("name", MODELS)
def test_reload_reproduces_every_config_without_an_importance_pass(name, saved, monkeypatch):
    sn = _trained(name)
    _no_importance(monkeypatch)
    sn2 = osf.load_supernet(saved[name], model=_fresh(name))
    assert sn2.space == sn.space and sn2.space.stacks == sn.space.stacks  # drop order included
    assert sn2.build_config == sn.build_config
    full, full2 = sn.state_dict(), sn2.state_dict()
    assert full.keys() == full2.keys() and all(torch.equal(full[k], full2[k]) for k in full)
    for label, cfg in _configs(sn).items():
        with sn.use(cfg), sn2.use(cfg):
            want, got = _run(sn, sn.example_inputs), _run(sn2, sn.example_inputs)
        assert len(want) == len(got)
        for a, b in zip(want, got):
            assert torch.allclose(a, b, rtol=0, atol=1e-6), (label, (a - b).abs().max())
        assert sn2.num_params(cfg) == sn.num_params(cfg)
    cfg = sn.space.sample(2)
    sub = sn2.extract(cfg)  # verifies itself against the reloaded supernet
    with sn.use(cfg):
        want = _run(sn, sn.example_inputs)
    for a, b in zip(want, _run(sub, sn.example_inputs)):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_a_rebuild_with_an_importance_pass_would_differ(name):
    """What the test above guards against: re-sorting the trained weights changes the subnets."""
    sn = _trained(name)
    model = build(name)[0] if name != "gpt" else build("gpt", seed=7)[0]
    model.load_state_dict(sn.state_dict())
    again = osf.supernet(model, sn.example_inputs)
    cfg = sn.space.smallest()
    if again.space.stacks != sn.space.stacks:
        return
    with sn.use(cfg), again.use(cfg):
        want, got = _run(sn, sn.example_inputs), _run(again, sn.example_inputs)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(want, got))


@pytest.mark.parametrize("name", ["gpt", "tiny-mamba"])
def test_tied_weights_are_stored_once_and_stay_tied(name, saved):
    meta = json.loads((saved[name] / META_FILE).read_text())
    assert meta["ties"], meta["ties"]
    stored = load_file(str(saved[name] / WEIGHTS_FILE))
    for alias, canonical in meta["ties"].items():
        assert alias not in stored and canonical in stored
    sn2 = osf.load_supernet(saved[name], model=_fresh(name))
    with sn2.use(sn2.space.largest()):
        for alias, canonical in meta["ties"].items():
            owner_a, _, leaf_a = alias.rpartition(".")
            owner_c, _, leaf_c = canonical.rpartition(".")
            ta = getattr(sn2.model.get_submodule(owner_a), leaf_a)
            tc = getattr(sn2.model.get_submodule(owner_c), leaf_c)
            assert ta is tc, (alias, canonical)
    if name == "gpt":  # the tie holds through slicing, too
        with sn2.use(sn2.space.smallest()):
            assert sn2.model.lm_head.weight is sn2.model.wte.weight


def test_checkpoint_describes_the_supernet(saved):
    meta = json.loads((saved["tiny-mamba"] / META_FILE).read_text())
    sn = _trained("tiny-mamba")
    assert meta["format"] == 1 and meta["model_class"].endswith(".MambaForCausalLM") and meta["dtype"] == "float32"
    assert meta["space"] == json.loads(sn.space.to_json())
    assert meta["supernet_config"] == sn.build_config.to_dict()
    assert [(d["name"], d["size"], d["kind"]) for d in meta["dims"]] == \
        [(d.name, d.size, d.kind) for d in sn.ir.dims.values()]
    assert (saved["tiny-mamba"] / "config.json").is_file() and not (saved["gpt"] / "config.json").exists()


def test_tokenizer_is_saved_and_a_checkpoint_is_replaced_but_not_another_model(tmp_path, tokenizer):
    sn = _trained("tiny-vit")
    sn.save_pretrained(tmp_path / "c", tokenizer=tokenizer)
    assert (tmp_path / "c" / "tokenizer_config.json").is_file()
    sn.save_pretrained(tmp_path / "c")  # saving a checkpoint again (as training does) replaces it, stale tokenizer too
    assert not (tmp_path / "c" / "tokenizer_config.json").exists() and osf.load_supernet(tmp_path / "c").space == sn.space
    build("tiny-vit")[0].save_pretrained(tmp_path / "hf")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sn.save_pretrained(tmp_path / "hf")
    sn.save_pretrained(tmp_path / "hf", overwrite=True)
    assert osf.load_supernet(tmp_path / "hf").space == sn.space


# ------------------------------------------------------------------------------ errors
def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError) as e:
        osf.load_supernet(tmp_path / "nope")
    _one_line(e, "does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        osf.load_supernet(tmp_path / "empty")
    _one_line(e, META_FILE)


def test_corrupt_checkpoints(tmp_path, saved):
    import shutil

    bad = tmp_path / "weights"
    shutil.copytree(saved["tiny-vit"], bad)
    data = (bad / WEIGHTS_FILE).read_bytes()
    (bad / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        osf.load_supernet(bad)
    _one_line(e, "truncated or corrupt")

    bad = tmp_path / "json"
    shutil.copytree(saved["tiny-vit"], bad)
    (bad / META_FILE).write_text((bad / META_FILE).read_text()[:40])
    with pytest.raises(ValueError) as e:
        osf.load_supernet(bad)
    _one_line(e, "not valid JSON")

    bad = tmp_path / "dims"
    shutil.copytree(saved["tiny-vit"], bad)
    meta = json.loads((bad / META_FILE).read_text())
    meta["dims"][0]["size"] += 1
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        osf.load_supernet(bad)
    _one_line(e, repr(meta["dims"][0]["name"]), f"{meta['dims'][0]['size']} when saved")


def test_a_format_from_the_future_is_refused(tmp_path, saved):
    import shutil

    bad = tmp_path / "future"
    shutil.copytree(saved["tiny-vit"], bad)
    meta = json.loads((bad / META_FILE).read_text())
    meta["format"] = 99
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        osf.load_supernet(bad)
    _one_line(e, "format 99", "newer osf", "upgrade")


def test_a_wrong_model_is_refused(saved):
    with pytest.raises(ValueError) as e:
        osf.load_supernet(saved["gpt"])  # a user's model: it cannot be rebuilt from a config
    _one_line(e, "model=")
    with pytest.raises(ValueError) as e:
        osf.load_supernet(saved["gpt"], model=build("mlp")[0])
    _one_line(e, "MLP", "TinyGPT")
    with pytest.raises(ValueError) as e:
        osf.load_supernet(saved["gpt"], model=TinyGPT(d=48))  # same class, another architecture
    _one_line(e, "shape")
    with pytest.raises(ValueError) as e:
        osf.load_supernet(saved["gpt"], model=TinyGPT(n_layer=3))
    _one_line(e, "missing", "h.2.")
    with pytest.raises(ValueError) as e:
        osf.load_supernet(saved["tiny-vit"], model=build("tiny-mamba")[0])
    _one_line(e, "MambaForCausalLM", "ViTForImageClassification")


# ------------------------------------------------------------------------- SupernetConfig
def test_supernet_config_round_trips_and_refuses_unknown_keys(tmp_path):
    cfg = osf.SupernetConfig(space={"*:d_state": (16, 8)}, importance="activation", depth=False, kernels=False,
                             verify=True, calibration_batches=4)
    assert cfg.space == {"*:d_state": [16, 8]}
    assert osf.SupernetConfig.from_dict(cfg.to_dict()) == cfg
    assert osf.SupernetConfig.load(cfg.save(tmp_path / "c.json")) == cfg
    assert json.loads(cfg.to_json()) == cfg.to_dict()
    with pytest.raises(ValueError) as e:
        osf.SupernetConfig.from_dict({**cfg.to_dict(), "importanse": "magnitude"})
    _one_line(e, "importanse", "importance", "calibration_batches")
    with pytest.raises(ValueError, match="importance must be one of"):
        osf.SupernetConfig(importance="gradient")
    with pytest.raises(TypeError, match="depth must be True or False"):
        osf.SupernetConfig(depth="yes")
    with pytest.raises(Exception):
        cfg.depth = True  # frozen


def test_supernet_takes_a_config_and_keywords_override_it(tmp_path):
    model, ex = build("gpt")
    base = osf.SupernetConfig(depth=False, verify=False)
    sn = osf.supernet(copy.deepcopy(model), ex, config=base)
    assert sn.build_config == base and not sn.space.stacks
    sn = osf.supernet(copy.deepcopy(model), ex, config=base, depth=True, calibration=[ex, ex])
    assert sn.build_config == osf.SupernetConfig(depth=True, verify=False, calibration_batches=2)
    assert sn.space.stacks
    space_file = tmp_path / "space.json"
    d = next(iter(sn.space.dims))
    space_file.write_text(json.dumps({d: [sn.space.dims[d][0]]}))
    sn = osf.supernet(copy.deepcopy(model), ex, space=str(space_file))
    assert sn.build_config.space == {d: [sn.space.dims[d][0]]} and sn.space.dims[d] == [sn.space.dims[d][0]]
    with pytest.raises(TypeError, match="osf.SupernetConfig"):
        osf.supernet(copy.deepcopy(model), ex, config={"depth": False})


# ------------------------------------------------------------------------------- the CLI
def test_cli_searches_and_extracts_from_a_checkpoint_folder(tmp_path):
    from typer.testing import CliRunner

    from osf.cli import app
    from tests.test_evaluators import write_cifar

    runner = CliRunner()
    sn = _trained("tiny-vit")
    sn.save_pretrained(tmp_path / "ckpt")
    write_cifar(tmp_path / "c10", "cifar10", n_test=12)
    out = tmp_path / "run"
    res = runner.invoke(app, ["search", str(tmp_path / "ckpt"), "--task", "cifar10", "--data", str(tmp_path / "c10"),
                              "--trials", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    spec = json.loads((out / "run.json").read_text())
    assert spec["supernet_config"] == sn.build_config.to_dict()
    assert spec["space"] == json.loads(sn.space.to_json())
    res = runner.invoke(app, ["extract", str(out), "--trial", "1", "--out", str(tmp_path / "sub")])
    assert res.exit_code == 0, res.output
    sub = osf.load_subnet(tmp_path / "sub")
    import optuna

    from osf.search.result import SearchResult
    from osf.search.run import run_storage
    from osf.search.storage import make_storage

    study = optuna.load_study(study_name=spec["study_name"], storage=make_storage(run_storage(out, spec), None))
    cfg = SearchResult(study=study, space=sn.space, objectives=tuple(spec["objectives"])).config(1)
    with sn.use(cfg):
        want = _run(sn, sn.example_inputs)
    for a, b in zip(want, _run(sub, sn.example_inputs)):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)  # the trained weights, not a re-sorted copy

    # a run made before run.json recorded the supernet config still extracts; a damaged one is named
    del spec["supernet_config"]
    (out / "run.json").write_text(json.dumps(spec))
    res = runner.invoke(app, ["extract", str(out), "--trial", "0", "--out", str(tmp_path / "sub0")])
    assert res.exit_code == 0, res.output
    spec["supernet_config"] = {"depht": True}
    (out / "run.json").write_text(json.dumps(spec))
    res = runner.invoke(app, ["extract", str(out), "--trial", "0", "--out", str(tmp_path / "sub1")])
    assert res.exit_code == 2 and "depht" in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_extract_rebuilds_a_plain_models_supernet_from_the_recorded_config(tmp_path, monkeypatch):
    """``osf extract`` builds the supernet with the SupernetConfig run.json recorded."""
    from typer.testing import CliRunner

    from osf.cli import app
    from tests.test_evaluators import write_cifar

    runner = CliRunner()
    write_cifar(tmp_path / "c10", "cifar10", n_test=12)
    out = tmp_path / "run"
    res = runner.invoke(app, ["search", "tiny-vit", "--task", "cifar10", "--data", str(tmp_path / "c10"),
                              "--trials", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    spec = json.loads((out / "run.json").read_text())
    drawn = spec["supernet_config"]["calibration_batches"]  # osf search ranks on the task's training images
    assert drawn and spec["supernet_config"] == osf.SupernetConfig(calibration_batches=drawn).to_dict()
    seen = []
    real = osf.supernet

    def spy(model, example_inputs=None, config=None, **kw):
        seen.append(config)
        return real(model, example_inputs, config, **kw)

    monkeypatch.setattr(osf, "supernet", spy)
    spec["supernet_config"]["verify"] = False  # a field that leaves the space as it was
    (out / "run.json").write_text(json.dumps(spec))
    res = runner.invoke(app, ["extract", str(out), "--trial", "0", "--out", str(tmp_path / "sub")])
    assert res.exit_code == 0, res.output
    assert seen == [osf.SupernetConfig(verify=False, calibration_batches=drawn)]
