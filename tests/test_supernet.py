"""Invariants of the elastic supernet, on every supported model."""
from __future__ import annotations

import copy
import functools
import hashlib
import json

import pytest
import torch

import osf
from osf.ir.inputs import default_inputs
from osf.ir.trace import flatten_output, normalize_inputs
from zoo import ALL_MODELS, build


@functools.lru_cache(maxsize=None)
def built(name: str):
    model, ex = build(name)
    args, kwargs = normalize_inputs(ex if ex is not None else default_inputs(model))
    with torch.no_grad():
        reference = flatten_output(model(*args, **kwargs))
    sn = osf.supernet(model, ex)
    return sn, args, kwargs, reference


def run(model, args, kwargs):
    with torch.no_grad():
        return flatten_output(model(*args, **kwargs))


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def checksum(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def named_checksum(module) -> str:
    """Names, shapes and values of every parameter and buffer (a renamed or missing tensor shows)."""
    h = hashlib.sha256()
    for n, t in module.state_dict().items():
        h.update(f"{n}:{tuple(t.shape)}".encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_largest_config_is_the_original_model(name):
    sn, args, kwargs, reference = built(name)
    sn.set_config(sn.space.largest())
    out = run(sn, args, kwargs)
    for k in reference:
        assert rel_err(out[k], reference[k]) < 1e-5


@pytest.mark.parametrize("name", ALL_MODELS)
def test_extracted_subnets_equal_the_supernet(name):
    sn, args, kwargs, _ = built(name)
    stored = checksum(sn._full.values())
    configs = [sn.space.smallest()] + [sn.space.sample(seed) for seed in range(10)]
    for cfg in configs:
        sn.set_config(cfg)
        live = run(sn, args, kwargs)
        sub = sn.extract(cfg)
        assert type(sub) is type(sn.model)
        out = run(sub, args, kwargs)
        for k in live:
            assert rel_err(out[k], live[k]) < 1e-5, (name, cfg)
        n = sum(p.numel() for p in sub.parameters())
        assert n == sn.num_params(cfg)
        assert n == sum(t.numel() for t in {id(p): p for p in sub.parameters()}.values())
    assert checksum(sn._full.values()) == stored, "running configs changed the stored weights"
    sn.set_config(sn.space.largest())


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-vit", "gpt"])
def test_extracted_weights_are_independent(name):
    sn, args, kwargs, _ = built(name)
    cfg = sn.space.sample(3)
    sub = sn.extract(cfg)
    before = checksum(sn._full.values())
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    assert checksum(sn._full.values()) == before
    sn.set_config(sn.space.largest())


def test_num_params_shrinks_monotonically_and_counts_tied_weights_once():
    sn, *_ = built("gpt")
    unique = sum(p.numel() for p in sn.model.parameters())  # parameters() yields a shared tensor once
    with_dups = sum(p.numel() for _, p in sn.model.named_parameters(remove_duplicate=False))
    assert with_dups > unique  # the model does tie lm_head to wte
    assert sn.num_params(sn.space.largest()) == unique
    # shrink one choice at a time, dim by dim, then drop blocks: every step strictly lowers the count
    cfg = sn.space.largest()
    counts = [sn.num_params(cfg)]
    for d, choices in sn.space.dims.items():
        for k in choices[1:]:
            cfg[d] = k
            counts.append(sn.num_params(cfg))
    for stack, names in sn.space.stacks.items():
        for b in names[:len(names) - sn.space.min_depth[stack]]:
            cfg[b] = False
            counts.append(sn.num_params(cfg))
    assert len(counts) > 3
    assert all(b < a for a, b in zip(counts, counts[1:])), counts
    assert cfg == sn.space.smallest() and counts[-1] == sn.num_params(sn.space.smallest())
    sub = sn.extract(cfg)
    assert counts[-1] == sum(p.numel() for p in sub.parameters())  # the tie survives extraction, counted once


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-swin", "resnet"])
def test_macs_match_flop_counter_on_extracted_model(name):
    from torch.utils.flop_counter import FlopCounterMode

    sn, args, kwargs, _ = built(name)
    cfg = sn.space.sample(5)
    sub = sn.extract(cfg)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        sub(*args, **kwargs)
    assert sn.macs(cfg) == counter.get_total_flops() // 2
    assert sn.macs(sn.space.smallest()) < sn.macs(sn.space.largest())


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-vit", "tiny-clip", "tiny-swinv2"])
def test_save_load_round_trip_is_exact_for_per_layer_configs(name, tmp_path):
    sn, args, kwargs, _ = built(name)
    cfg = sn.space.sample(11)
    per_kind: dict[str, set] = {}
    for d in sn.space.dims:
        per_kind.setdefault(d.rpartition(":")[2], set()).add(cfg[d])
    assert any(len(sizes) > 1 for sizes in per_kind.values()), "the config should differ from layer to layer"
    sub = sn.extract(cfg)
    osf.save_subnet(sub, tmp_path / "a")
    sub.save_pretrained(tmp_path / "b")  # the plain HF way keeps per-layer sizes too
    for folder in ("a", "b"):
        loaded = osf.load_subnet(tmp_path / folder)
        a_sd, b_sd = sub.state_dict(), loaded.state_dict()
        assert list(b_sd) == list(a_sd)  # the same tensors under the same names, not only equal values
        assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
        a, b = run(sub, args, kwargs), run(loaded, args, kwargs)
        for k in a:
            assert rel_err(b[k], a[k]) < 1e-6
        assert json.loads((tmp_path / folder / "osf_subnet.json").read_text())["config"] == cfg
    sn.set_config(sn.space.largest())


def _uniform(sn, pick: int = 2, drop_first: bool = True):
    cfg = sn.space.largest()
    for d, choices in sn.space.dims.items():
        cfg[d] = choices[min(pick, len(choices) - 1)]
    for stack, names in sn.space.stacks.items():
        if drop_first and len(names) > sn.space.min_depth[stack]:
            cfg[names[0]] = False
    return cfg


@pytest.mark.parametrize("name,auto", [("tiny-mamba", "AutoModelForCausalLM"),
                                       ("tiny-vit", "AutoModelForImageClassification")])
def test_uniform_subnet_loads_with_plain_transformers(name, auto, tmp_path):
    import transformers

    sn, args, kwargs, _ = built(name)
    cfg = _uniform(sn)
    if name == "tiny-vit":  # HF ViT needs hidden == heads x head_dim
        cfg.update({d: 3 for d in cfg if d.endswith(":heads")}, hidden=48)
    sub = sn.extract(cfg)
    assert sub._osf_subnet["config_expresses_subnet"]
    osf.save_subnet(sub, tmp_path)
    plain = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    a, b = run(sub, args, kwargs), run(plain, args, kwargs)
    for k in a:
        assert rel_err(b[k], a[k]) < 1e-6


def test_per_layer_subnet_refuses_plain_loading(tmp_path):
    import transformers

    sn, *_ = built("tiny-mamba")
    cfg = sn.space.largest()
    cfg["backbone.layers.1.mixer:d_inner"] = sn.space.dims["backbone.layers.1.mixer:d_inner"][-1]
    sub = sn.extract(cfg)
    assert not sub._osf_subnet["config_expresses_subnet"]
    osf.save_subnet(sub, tmp_path)
    with pytest.raises(Exception, match="mismatch|size"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_extracted_mamba_generates_the_same_tokens_and_step_logits_as_the_supernet():
    sn, *_ = built("tiny-mamba")
    cfg = _uniform(sn, pick=3)
    cfg["backbone.layers.2.mixer:d_state"] = sn.space.dims["backbone.layers.2.mixer:d_state"][1]
    ids = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=10, do_sample=False, return_dict_in_generate=True, output_logits=True)
    sn.set_config(cfg)
    try:
        with torch.no_grad():
            live = sn.generate(ids, **kw)
            sub = sn.extract(cfg).generate(ids, **kw)
            full = sn.extract(sn.space.largest()).generate(ids, **kw)
    finally:
        sn.set_config(sn.space.largest())
    assert torch.equal(live.sequences, sub.sequences)
    assert sub.sequences.shape[1] == 16
    assert len(live.logits) == len(sub.logits) == 10
    for step, (a, b) in enumerate(zip(live.logits, sub.logits)):  # each step's logits, not only the argmax
        assert rel_err(b, a) < 1e-5, step
    assert rel_err(full.logits[0], live.logits[0]) > 1e-3  # the subnet is not the full model


def test_lm_eval_scores_the_live_supernet_like_the_extracted_subnet():
    from lm_fixtures import lm_eval_score
    from score_fixtures import trained_sentence_lm

    model, tok, task = trained_sentence_lm()  # trained: it scores far above chance
    sn = osf.supernet(model)
    full = lm_eval_score(sn.model, tok, task)
    assert full["acc,none"] >= 0.75 and full["perplexity,none"] < 3  # chance: acc ~ 1/vocab, ppl ~ vocab
    assert len(tok) > 40
    cfg = sn.space.smallest()
    sn.set_config(cfg)
    try:
        live = lm_eval_score(sn.model, tok, task)
        extracted = lm_eval_score(sn.extract(cfg), tok, task)
    finally:
        sn.set_config(sn.space.largest())
    # the subnet scores differently from the full model, so equal scores below mean something
    assert live["acc,none"] < full["acc,none"]
    assert live["perplexity,none"] > 1.5 * full["perplexity,none"]
    assert live["perplexity,none"] == pytest.approx(extracted["perplexity,none"], rel=1e-6)
    assert live["acc,none"] == extracted["acc,none"]


def test_building_is_in_place_and_copy_keeps_the_original():
    model, ex = build("tiny-vit")
    originals = {id(p) for p in model.parameters()}
    sn = osf.supernet(model)
    sn.set_config(sn.space.smallest())
    sn.set_config(sn.space.largest())
    assert sn.model is model and {id(p) for p in model.parameters()} == originals
    model2, _ = build("tiny-vit")
    saved = named_checksum(model2)
    sn2 = osf.supernet(model2, copy=True)
    assert sn2.model is not model2 and named_checksum(model2) == saved


def test_activation_importance_keeps_the_model_and_space_overrides_apply(tmp_path):
    model, ex = build("tiny-mamba")
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(3, 250, (2, 12), generator=g)} for _ in range(2)]
    space = {"*:d_inner": [128, 96, 64], "*:d_state": [16, 8], "depth": 0.75}
    args, kwargs = normalize_inputs(default_inputs(model))
    reference = run(model, args, kwargs)
    sn = osf.supernet(model, importance="activation", calibration=calib, space=space)
    assert sn.space.dims["backbone.layers.0.mixer:d_inner"] == [128, 96, 64]
    assert sn.space.dims["backbone.layers.3.mixer:d_state"] == [16, 8]
    assert sn.space.min_depth["backbone.layers"] == 3
    out = run(sn, args, kwargs)
    assert rel_err(out["logits"], reference["logits"]) < 1e-5
    path = tmp_path / "space.yaml"
    path.write_text("'*:dt_rank': [8, 4]\n")
    assert osf.supernet(build("tiny-mamba")[0], space=path).space.dims["backbone.layers.0.mixer:dt_rank"] == [8, 4]


def test_bad_configs_name_the_dim_and_allowed_values():
    sn, *_ = built("tiny-mamba")
    good = sn.space.largest()
    with pytest.raises(ValueError, match="unknown name.*nope"):
        sn.set_config({**good, "nope": 3})
    with pytest.raises(ValueError, match=r"backbone.layers.0.mixer:d_state.*allowed sizes: \[16, 12, 8, 4\]"):
        sn.set_config({**good, "backbone.layers.0.mixer:d_state": 5})
    with pytest.raises(ValueError, match="allowed sizes"):
        sn.set_config({**good, "hidden": 1000})
    missing = dict(good)
    del missing["hidden"]
    with pytest.raises(ValueError, match="missing dim.*hidden"):
        sn.set_config(missing)
    with pytest.raises(ValueError, match="at least 1 of 4"):  # the default floor keeps 1/4 of a stack
        sn.set_config({**good, **{b: False for b in sn.space.blocks}})
    with pytest.raises(ValueError, match="no dim"):
        osf.supernet(build("tiny-mamba")[0], space={"*:nothing": [1]})
    with pytest.raises(ValueError, match="importance"):
        osf.supernet(build("tiny-mamba")[0], importance="oracle")


def test_load_subnet_rejects_foreign_folders_and_wrong_shapes(tmp_path):
    with pytest.raises(ValueError, match="not written by osf"):
        osf.load_subnet(tmp_path)
    sn, *_ = built("tiny-mamba")
    sub = sn.extract(sn.space.sample(2))
    osf.save_subnet(sub, tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "osf_subnet.json").read_text())
    name = "backbone.layers.0.mixer.A_log"
    meta["shapes"][name] = [meta["shapes"][name][0], meta["shapes"][name][1] + 1]
    (tmp_path / "s" / "osf_subnet.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="A_log"):
        osf.load_subnet(tmp_path / "s")
    with pytest.raises(ValueError, match="not extracted by osf"):
        osf.save_subnet(copy.deepcopy(build("mlp")[0]), tmp_path / "x")
