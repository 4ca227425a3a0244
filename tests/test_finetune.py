"""``osf.training.finetune`` and ``osf finetune``: LoRA recovery of an extracted subnet.

Oracles: held-out loss before vs after; the adapted (unmerged) PEFT model's outputs, recorded
by the test itself just before the merge, against the saved and reloaded model; the merged
weights against ``W + scale * B @ A`` computed here from the adapters; every base weight
against a copy taken before training.
"""
from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
import typer
from typer.testing import CliRunner

import osf
from osf.models import load_model
from osf.training import TrainData
from osf.training.finetune import FinetuneConfig, finetune, linear_layers, output_heads

PERIOD = torch.tensor([3, 17, 42, 8, 99, 5, 61])


def pattern_blocks(n: int, seq: int, seed: int) -> torch.Tensor:
    """Blocks of a period-7 token pattern at random phases: learnable next-token prediction."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.randint(0, len(PERIOD), (n,), generator=g)
    return PERIOD[(torch.arange(seq)[None] + phase[:, None]) % len(PERIOD)]


def colour_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class (of 3) is the brightest channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    x[torch.arange(n), y] += 0.6
    return x, y


def uniform_config(sn, pick: int = 1):
    """The same choice index for every dim (a config the HF config can express)."""
    cfg = sn.space.largest()
    for d, choices in sn.space.dims.items():
        cfg[d] = choices[min(pick, len(choices) - 1)]
    return cfg


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial biases and norm weights, so a member the code forgets shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


class MergeSpy:
    """Records, just before PEFT merges, the adapted model's outputs and its parameters."""

    def __init__(self, monkeypatch, probe: torch.Tensor):
        self.calls, self.probe = [], probe
        original = peft.tuners.lora.LoraModel.merge_and_unload
        spy = self

        def merge_and_unload(model, *args, **kwargs):
            with torch.no_grad():
                was = model.training
                model.eval()
                logits = model(spy.probe).logits.clone()
                model.train(was)
            base = model.model
            params = {n: p.detach().clone() for n, p in base.named_parameters()}
            adapters = {}
            for name, module in base.named_modules():
                if isinstance(module, peft.tuners.lora.LoraLayer) and module.active_adapters:
                    a = module.active_adapters[0]
                    adapters[name] = (module.get_base_layer().weight.detach().clone(),
                                      module.lora_A[a].weight.detach().clone(), module.lora_B[a].weight.detach().clone(),
                                      module.scaling[a])
            spy.calls.append({"logits": logits, "params": params, "adapters": adapters})
            return original(model, *args, **kwargs)
        monkeypatch.setattr(peft.tuners.lora.LoraModel, "merge_and_unload", merge_and_unload)


def original_name(name: str) -> str:
    return name.replace(".base_layer", "").replace(".original_module", "")


def check_only_adapters_trained(record: dict, before: dict[str, torch.Tensor], trained_whole: tuple[str, ...] = ()):
    """Base weights identical to ``before``; adapters trained (B non-zero); ``trained_whole``
    (modules_to_save) changed in their trainable copy only."""
    lora_b = [n for n in record["params"] if ".lora_B." in n]
    assert lora_b and all(record["params"][n].abs().sum() > 0 for n in lora_b)
    copies = [n for n in record["params"] if ".modules_to_save." in n]
    for name, value in record["params"].items():
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        assert torch.equal(value, before[original_name(name)]), f"base weight {name} changed"
    for module in trained_whole:
        mine = [n for n in copies if n.startswith(module + ".")]
        assert mine and any(not torch.equal(record["params"][n], before[n.replace(".modules_to_save.default", "")])
                            for n in mine)
    return lora_b


def check_merge(record: dict, merged: torch.nn.Module) -> None:
    """Each adapted layer of the merged model holds W + scale * B @ A (computed here)."""
    assert record["adapters"]
    for name, (w, a, b, scale) in record["adapters"].items():
        got = merged.get_submodule(name).weight.detach()
        assert torch.allclose(got, w + scale * (b @ a), atol=1e-6), name


# ------------------------------------------------------------------------ LM
@pytest.fixture(scope="module")
def lm_run():
    """A uniform tiny-Mamba subnet, LoRA fine-tuned on a period pattern (merge recorded)."""
    mp = pytest.MonkeyPatch()
    try:
        torch.manual_seed(0)
        model = load_model("tiny-mamba")
        randomise(model)
        sn = osf.supernet(model)
        cfg = uniform_config(sn)
        sub = sn.extract(cfg)
        assert sub._osf_subnet["config_expresses_subnet"]
        data = TrainData("lm", {"input_ids": pattern_blocks(128, 16, 1)}, {"input_ids": pattern_blocks(16, 16, 2)},
                         "pattern")
        probe = pattern_blocks(3, 16, 3)
        spy = MergeSpy(mp, probe)
        before = copy.deepcopy(sub.state_dict())
        with torch.no_grad():
            start_logits = copy.deepcopy(sub).eval()(probe).logits
        rows = []
        with pytest.warns(UserWarning, match="LoRA left out of"):
            merged = finetune(sub, data, FinetuneConfig(steps=20, batch_size=8, lr=1e-2, lora_r=4), progress=False,
                              callback=lambda s, r: rows.append((s, r)))
    finally:
        mp.undo()
    return {"sub": merged, "data": data, "probe": probe, "rows": rows, "record": spy.calls, "before": before,
            "start_logits": start_logits}


def test_lora_lowers_held_out_loss_lm(lm_run):
    rows = lm_run["rows"]
    start, end = rows[0][1]["val/loss"], rows[-1][1]["val/loss"]
    assert rows[0][0] == 0 and rows[-1][0] == 20
    assert end < 0.5 * start, (start, end)


def test_only_adapters_train_and_merge_is_exact_lm(lm_run):
    assert len(lm_run["record"]) == 1, "the adapters must be merged with merge_and_unload"
    record = lm_run["record"][0]
    lora_b = check_only_adapters_trained(record, lm_run["before"])
    adapted = {n.rpartition(".lora_B.")[0].rpartition(".")[2] for n in lora_b}
    assert "in_proj" in adapted and "lm_head" not in adapted  # default: every Linear but the head
    merged = lm_run["sub"]
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    check_merge(record, merged)
    with torch.no_grad():
        out = merged.eval()(lm_run["probe"]).logits
    assert torch.allclose(out, record["logits"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, lm_run["start_logits"], atol=1e-2)  # training changed the model


def test_saved_finetuned_subnet_loads_back(lm_run, tmp_path):
    import transformers

    from osf.training.finetune import save_finetuned

    merged, probe = lm_run["sub"], lm_run["probe"]
    path = save_finetuned(merged, tmp_path / "ft", None, FinetuneConfig(), [{"step": 0, "val/loss": 1.0}])
    record = lm_run["record"][0]["logits"]
    loaded = osf.load_subnet(path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        for m in (loaded, plain):
            assert torch.allclose(m(probe).logits, record, atol=1e-4, rtol=1e-4)
    sd, ld = merged.state_dict(), loaded.state_dict()
    assert list(sd) == list(ld) and all(torch.equal(sd[k], ld[k]) for k in sd)
    assert json.loads((path / "osf_finetune.json").read_text())["validation"] == [{"val/loss": 1.0, "step": 0}]


# ------------------------------------------------------------------------ images
def test_lora_vit_trains_adapters_and_the_head(monkeypatch):
    torch.manual_seed(0)
    model = load_model("tiny-vit")
    model.classifier = torch.nn.Linear(model.classifier.in_features, 3)
    model.config.num_labels = 3
    randomise(model)
    sn = osf.supernet(model)
    sub = sn.extract(sn.space.smallest())
    x, y = colour_images(256, 1)
    vx, vy = colour_images(96, 2)
    data = TrainData("images", {"pixel_values": x, "labels": y}, {"pixel_values": vx, "labels": vy}, "colours")
    assert output_heads(sub, {"pixel_values": vx[:2]}, "images") == ["classifier"]
    spy = MergeSpy(monkeypatch, vx[:4])
    before = copy.deepcopy(sub.state_dict())
    rows = []
    merged = finetune(sub, data, steps=25, batch_size=16, lr=5e-3, lora_r=4, progress=False,
                      callback=lambda s, r: rows.append(r))
    assert rows[-1]["val/loss"] < 0.7 * rows[0]["val/loss"], (rows[0], rows[-1])
    assert rows[-1]["val/accuracy"] > rows[0]["val/accuracy"]
    record = spy.calls[0]
    check_only_adapters_trained(record, before, trained_whole=("classifier",))
    check_merge(record, merged)
    trained_head = record["params"]["classifier.modules_to_save.default.weight"]
    assert torch.equal(merged.classifier.weight, trained_head)
    with torch.no_grad():
        assert torch.allclose(merged.eval()(vx[:4]).logits, record["logits"], atol=1e-4, rtol=1e-4)


def test_full_finetuning_changes_the_base_weights():
    torch.manual_seed(0)
    sub = load_model("tiny-vit")
    before = copy.deepcopy(sub.state_dict())
    x, y = colour_images(32, 1)
    data = TrainData("images", {"pixel_values": x, "labels": y}, {"pixel_values": x[:8], "labels": y[:8]}, "c")
    out = finetune(sub, data, steps=2, batch_size=8, full=True, progress=False)
    assert out is sub and not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in out.modules())
    after = out.state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in before if k.endswith("query.weight"))


# ------------------------------------------------------------------------ CLI
def _app() -> typer.Typer:
    from osf.cli import app  # the real `osf` command line

    return app


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A saved uniform tiny-Mamba subnet with a word-level tokenizer, and a text file."""
    from lm_fixtures import SENTENCES, make_tokenizer

    root = tmp_path_factory.mktemp("ftcli")
    tok = make_tokenizer(root / "tok")
    torch.manual_seed(0)
    model = load_model("tiny-mamba")
    sn = osf.supernet(model)
    sub = sn.extract(uniform_config(sn))
    osf.save_subnet(sub, root / "subnet")
    tok.save_pretrained(str(root / "subnet"))
    text = root / "train.txt"
    text.write_text("\n\n".join(SENTENCES[i % 4] for i in range(40)))
    return root


def test_cli_finetunes_and_saves_a_loadable_subnet(lm_folder):
    import transformers

    out = lm_folder / "out"
    runner = CliRunner()
    res = runner.invoke(_app(), ["finetune", str(lm_folder / "subnet"), "--data", str(lm_folder / "train.txt"),
                                 "--out", str(out), "--steps", "6", "--batch-size", "4", "--seq-len", "8",
                                 "--lr", "1e-2", "--lora-r", "2", "--target", "in_proj,x_proj", "--validation", "0.2"])
    assert res.exit_code == 0, res.output
    assert "validation before" in res.output
    meta = json.loads((out / "osf_finetune.json").read_text())
    assert meta["config"]["target"] == ["in_proj", "x_proj"] and meta["config"]["lora_r"] == 2
    steps = [v["step"] for v in meta["validation"]]
    assert steps == [0, 6] and meta["validation"][1]["val/loss"] < meta["validation"][0]["val/loss"]
    assert (out / "tokenizer.json").is_file()
    loaded = osf.load_subnet(out)
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    original = osf.load_subnet(lm_folder / "subnet")
    ids = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        a, b, c = loaded(ids).logits, plain(ids).logits, original(ids).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)
    sd, od = loaded.state_dict(), original.state_dict()
    changed = {k.rpartition(".")[0].rpartition(".")[2] for k in sd if not torch.equal(sd[k], od[k])}
    assert changed == {"in_proj", "x_proj"}  # only the targets (LoRA merged into them)
    # the output folder is itself a subnet folder finetune reads again; an existing --out is refused
    res = runner.invoke(_app(), ["finetune", str(out), "--data", str(lm_folder / "train.txt"), "--out", str(out),
                                 "--steps", "1"])
    assert res.exit_code == 2 and "--out must differ" in res.output


@pytest.mark.parametrize("args,message", [
    (["--lora-r", "0"], "lora_r must be a positive integer, got 0"),
    (["--target", "in_proj,qkv"], "target 'qkv' matches no Linear layer of MambaForCausalLM; its Linear layers are "
                                  "dt_proj, in_proj, lm_head, out_proj, x_proj"),
    (["--data", "MISSING"], "does not exist"),
    (["--steps", "0"], "steps must be a positive integer"),
])
def test_cli_bad_input_is_one_line(lm_folder, args, message):
    base = {"--data": str(lm_folder / "train.txt"), "--out": str(lm_folder / "bad"), "--steps": "1",
            "--seq-len": "8", "--validation": "0.2"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = str(lm_folder / v) if v == "MISSING" else v
    cmd = ["finetune", str(lm_folder / "subnet")] + [x for kv in base.items() for x in kv]
    res = CliRunner().invoke(_app(), cmd)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and len(res.output.strip().splitlines()) == 1, res.output
    assert not (lm_folder / "bad" / "model.safetensors").exists()


def test_api_bad_input():
    model = load_model("tiny-mamba")
    data = TrainData("lm", {"input_ids": pattern_blocks(8, 8, 0)}, {"input_ids": pattern_blocks(2, 8, 1)}, "p")
    with pytest.raises(ValueError, match="lora_r must be a positive integer, got -1"):
        FinetuneConfig(lora_r=-1)
    with pytest.raises(ValueError, match="target must be a tuple of module names"):
        FinetuneConfig(target="in_proj")
    with pytest.raises(TypeError, match="data must be an osf.training.TrainData"):
        finetune(model, [[1, 2, 3]], steps=1, progress=False)
    with pytest.raises(ValueError, match="matches no Linear layer.*dt_proj, in_proj, lm_head, out_proj, x_proj"):
        finetune(model, data, target=("mixer.conv1d",), steps=1, progress=False)
    with pytest.raises(ValueError, match="PEFT refuses the adapters.*out_proj"):
        finetune(model, data, target=("out_proj",), steps=1, progress=False)
    assert "lm_head" in linear_layers(model)
    # a refused request leaves the model as it was: no adapter layers stay behind
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules())
