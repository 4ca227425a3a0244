"""The build-time and extract-time guards fire on injected faults and name the culprit; models
that used to come out silently wrong (grouped-query attention, per-head fused qkv, a Mamba2 +
attention hybrid) are exact, checked against genuinely smaller models built another way."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

import osf
from osf.ir import analyze as real_analyze
from osf.ir.ops import OP_RULES
from zoo import build

supernet_module = sys.modules["osf.elastic.supernet"]  # the package exports the function under this name


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def randomise_constants(model, seed=0):
    """Biases and norm weights start as 0 / 1: a member the analysis missed would hide there."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if (p == 1).all() else 0.0))
    return model


def logits(model, *args, **kwargs):
    with torch.no_grad():
        out = model(*args, **kwargs)
    return out.logits if hasattr(out, "logits") else out


def _inject_missed_member(monkeypatch, ndim: int):
    """Make the analysis forget one member of one dim (the tensor is then never permuted nor
    sliced with its dim); returns a dict that receives the dim's name."""
    chosen = {}

    def analyze(model, inputs=None):
        ir = real_analyze(model, inputs)
        # a layer's own width (MLP hidden, d_inner, conv channels): reordered, and its members
        # matter (a missed key bias would be harmless: softmax ignores it)
        leaf_dim = {d.var: d.name for d in ir.dims.values() if d.kind in ("width", "channels") and d.name != "hidden"}
        for name, vars_ in ir.tensor_axes.items():
            own = sorted({leaf_dim[leaf] for v in vars_ for leaf in ir.alg.leaves(v) if leaf in leaf_dim})
            if len(vars_) == ndim and len(own) == 1:
                chosen["dim"], chosen["tensor"] = own[0], name
                del ir.tensor_axes[name]
                for d in ir.dims.values():
                    d.members = [m for m in d.members if m.tensor != name]
                return ir
        raise AssertionError("no member to remove")
    monkeypatch.setattr(supernet_module, "analyze", analyze)
    return chosen


@pytest.mark.parametrize("name", ["tiny-vit", "gpt", "tiny-mamba", "resnet"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_build_guard_names_the_dim_whose_member_was_missed(monkeypatch, name, ndim):
    model, ex = build(name)
    randomise_constants(model)
    chosen = _inject_missed_member(monkeypatch, ndim)
    with pytest.raises(osf.VerificationError, match="largest config differs from the original") as err:
        osf.supernet(model, ex)
    assert repr(chosen["dim"]) in str(err.value), (chosen, str(err.value))
    assert "space=" in str(err.value) and "verify=False" in str(err.value)


def test_without_the_guard_the_missed_member_is_a_silently_wrong_model(monkeypatch):
    """verify=False really turns the check off, and what it guards against is real."""
    model, ex = build("tiny-vit")
    randomise_constants(model)
    from osf.ir.inputs import default_inputs
    inputs = default_inputs(model)
    want = logits(model, **inputs)
    _inject_missed_member(monkeypatch, 1)
    sn = osf.supernet(model, ex, verify=False)
    assert rel_err(logits(sn, **inputs), want) > 1e-3


def test_pinning_the_named_dim_with_space_builds_an_exact_supernet(monkeypatch):
    model, ex = build("tiny-vit")
    randomise_constants(model)
    from osf.ir.inputs import default_inputs
    inputs = default_inputs(model)
    want = logits(model, **inputs)
    chosen = _inject_missed_member(monkeypatch, 1)
    real_supernet = osf.supernet
    with pytest.raises(osf.VerificationError):
        real_supernet(model, ex, copy=True)
    size = real_analyze(model).dims[chosen["dim"]].size
    sn = osf.supernet(model, ex, space={chosen["dim"]: [size]})
    assert rel_err(logits(sn, **inputs), want) < 1e-5


def _llama(kv_heads=2, heads=8, layers=2, cls="llama", seed=0):
    import transformers
    config_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                             "mistral": ("MistralConfig", "MistralForCausalLM"),
                             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[cls]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(vocab_size=64, hidden_size=64, intermediate_size=48,
                                               num_hidden_layers=layers, num_attention_heads=heads,
                                               num_key_value_heads=kv_heads)
    return randomise_constants(getattr(transformers, model_cls)(config).eval(), seed)


def test_build_guard_catches_a_broken_grouped_query_head_mapping(monkeypatch):
    """Without the rule that query head h reads kv head h // groups, query and kv heads are
    permuted independently: the guard names the heads dims."""
    original = OP_RULES["scaled_dot_product_attention"]

    def sdpa_without_gqa(ctx, node):
        saved = node.meta.get("ckwargs")
        node.meta["ckwargs"] = {**(saved or node.kwargs), "enable_gqa": False}
        try:
            original(ctx, node)
        finally:
            node.meta["ckwargs"] = saved
    monkeypatch.setitem(OP_RULES, "scaled_dot_product_attention", sdpa_without_gqa)
    with pytest.raises(osf.VerificationError, match=r"permuting .*self_attn.*heads") as err:
        osf.supernet(_llama())
    assert "missed a member" in str(err.value)


def test_extract_guard_names_the_dim_whose_slice_was_copied_wrong(monkeypatch):
    model, ex = build("tiny-vit")
    randomise_constants(model)
    sn = osf.supernet(model, ex)
    mlp = next(d for d in sn.space.dims if d == "vit.layers.0.mlp:hidden")
    tensor = next(m.tensor for m in sn.ir.dims[mlp].members if len(m.shape) == 2 and m.axis == 0)
    full_rows = sn.ir.dims[mlp].size
    extract_module = importlib.import_module("osf.elastic.extract")
    real_check = extract_module._check_all_from_supernet

    def copy_one_slice_wrong(sub, *args, **kwargs):
        t = sub.get_parameter(tensor)
        if t.shape[0] < full_rows:  # only when this dim is sliced: the wrong channel order
            with torch.no_grad():
                t.copy_(t.flip(0))
        return real_check(sub, *args, **kwargs)
    monkeypatch.setattr(extract_module, "_check_all_from_supernet", copy_one_slice_wrong)
    cfg = sn.space.largest()
    cfg[mlp] = sn.space.dims[mlp][2]
    cfg["hidden"] = sn.space.dims["hidden"][1]
    with pytest.raises(osf.VerificationError, match="extracted model differs from the supernet") as err:
        sn.extract(cfg)
    assert f"{mlp!r} alone" in str(err.value)
    assert "'hidden' alone" not in str(err.value)
    sn.extract(cfg, verify=False)  # the check, and only the check, is what refused it


# ------------------------------------------------------------- grouped-query attention
@pytest.mark.parametrize("cls,kv_heads", [("llama", 2), ("mistral", 2), ("qwen2", 1)])
def test_grouped_query_attention_largest_config_is_the_original(cls, kv_heads):
    model = _llama(kv_heads=kv_heads, cls=cls)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # padding: the repeat_kv path instead of SDPA's enable_gqa
    want, want_masked = logits(model, ids), logits(model, ids, attention_mask=mask)
    sn = osf.supernet(model)
    assert rel_err(logits(sn, ids), want) < 1e-5
    assert rel_err(logits(sn, ids, attention_mask=mask), want_masked) < 1e-5
    if kv_heads > 1:
        assert {"model.layers.0.self_attn:kv_heads", "model.layers.0.self_attn:q_per_kv"} <= set(sn.space.dims)


def _smaller_llama_by_hand(sn, kv_keep, per_kv_keep):
    """An independent construction: a LlamaForCausalLM built from a shrunk config, its weights
    copied from the (reordered) full model by HF's layout: query head h = g * groups + j."""
    from transformers import LlamaForCausalLM
    full = sn.model.config
    hd = full.hidden_size // full.num_attention_heads
    groups = full.num_attention_heads // full.num_key_value_heads
    config = type(full)(**{**full.to_dict(), "num_key_value_heads": kv_keep,
                           "num_attention_heads": kv_keep * per_kv_keep, "head_dim": hd})
    small = LlamaForCausalLM(config).eval()
    q_heads = [g * groups + j for g in range(kv_keep) for j in range(per_kv_keep)]
    q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in q_heads])
    kv_rows = torch.arange(kv_keep * hd)
    with sn.use(sn.space.largest()), torch.no_grad():
        src = {k: v.clone() for k, v in sn.model.state_dict().items()}
    for k in list(src):
        if k.endswith("q_proj.weight"):
            src[k] = src[k][q_rows]
        elif k.endswith(("k_proj.weight", "v_proj.weight")):
            src[k] = src[k][kv_rows]
        elif k.endswith("o_proj.weight"):
            src[k] = src[k][:, q_rows]
    small.load_state_dict(src, strict=True)
    return small


def test_grouped_query_subnet_equals_a_smaller_llama_built_by_hand():
    sn = osf.supernet(_llama(kv_heads=2, heads=8))
    cfg = sn.space.largest()
    for layer in range(2):
        cfg[f"model.layers.{layer}.self_attn:kv_heads"] = 1
        cfg[f"model.layers.{layer}.self_attn:q_per_kv"] = 2
    reference = _smaller_llama_by_hand(sn, kv_keep=1, per_kv_keep=2)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    sn.set_config(cfg)
    for kwargs in ({}, {"attention_mask": mask}):
        assert rel_err(logits(sn, ids, **kwargs), logits(reference, ids, **kwargs)) < 1e-5
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True,
              attention_mask=mask)
    live, ref = sn.generate(ids, **kw), reference.generate(ids, **kw)
    assert torch.equal(live.sequences, ref.sequences)
    for a, b in zip(live.logits, ref.logits):  # cached decoding reads num_key_value_groups
        assert rel_err(a, b) < 1e-5
    sub = sn.extract(cfg)
    assert sub._osf_subnet["config_expresses_subnet"]
    assert (sub.config.num_attention_heads, sub.config.num_key_value_heads) == (2, 1)
    assert rel_err(logits(sub, ids, attention_mask=mask), logits(reference, ids, attention_mask=mask)) < 1e-5


# --------------------------------------------------------- per-head fused qkv (GPT-NeoX)
def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4)
    return randomise_constants(GPTNeoXForCausalLM(config).eval())


def test_per_head_fused_qkv_subnet_equals_a_smaller_neox_built_by_hand():
    """query_key_value rows are laid out (heads, 3, head_dim): keeping 2 heads keeps the first
    2 * 3 * head_dim rows, not a prefix of each of q, k and v."""
    from transformers import GPTNeoXForCausalLM
    sn = osf.supernet(_neox())
    cfg = sn.space.largest()
    cfg["hidden"] = 16
    for layer in range(2):
        cfg[f"gpt_neox.layers.{layer}.attention:heads"] = 2
    full = sn.model.config
    small = GPTNeoXForCausalLM(type(full)(**{**full.to_dict(), "hidden_size": 16, "num_attention_heads": 2})).eval()
    with sn.use(sn.space.largest()), torch.no_grad():
        src = {k: v.clone() for k, v in sn.model.state_dict().items()}
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    cut = {k: v[tuple(slice(0, n) for n in shapes[k])] for k, v in src.items() if k in shapes}
    small.load_state_dict(cut, strict=True)  # every axis a prefix: heads (of 3 * head_dim rows) and hidden
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    sn.set_config(cfg)
    assert rel_err(logits(sn, ids), logits(small, ids)) < 1e-5
    assert rel_err(logits(sn.extract(cfg), ids), logits(small, ids)) < 1e-5


def test_neox_subnet_with_a_dropped_layer_keeps_its_head_size():
    """A dropped layer's widths must not veto the config update (they describe nothing), and a
    config whose shapes match but whose per-head size differs is not taken (it used to
    rewrite head_size and give a silently wrong extracted model)."""
    sn = osf.supernet(_neox())
    cfg = sn.space.largest()
    cfg.update({"hidden": 8, "gpt_neox.layers.0.attention:heads": 1, "gpt_neox.layers.1.attention:heads": 2,
                "gpt_neox.layers.1": False})
    sub = sn.extract(cfg)  # the extract guard passes
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(4))
    sn.set_config(cfg)
    assert rel_err(logits(sub, ids), logits(sn, ids)) < 1e-5
    assert sub._osf_subnet["config_expresses_subnet"]
    assert (sub.config.hidden_size, sub.config.num_attention_heads) == (8, 1)
    assert sub.gpt_neox.layers[0].attention.head_size == 8
    # per-layer heads: no config expresses it, and one with matching shapes (4 heads of 2)
    # must not be taken: the class built from it computes something else
    cfg = sn.space.largest()
    cfg.update({"hidden": 8, "gpt_neox.layers.0.attention:heads": 1, "gpt_neox.layers.1.attention:heads": 2})
    sub = sn.extract(cfg)
    assert not sub._osf_subnet["config_expresses_subnet"]
    assert [layer.attention.head_size for layer in sub.gpt_neox.layers] == [8, 8]
    sn.set_config(cfg)
    assert rel_err(logits(sub, ids), logits(sn, ids)) < 1e-5


# ------------------------------------------------------- hybrid: Mamba2 + GQA attention
def _bamba():
    from transformers import BambaConfig, BambaForCausalLM
    torch.manual_seed(0)
    config = BambaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1, 3], mamba_n_heads=8,
                         mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16, mamba_expand=2, mamba_chunk_size=8)
    return randomise_constants(BambaForCausalLM(config).eval())


def test_mamba2_attention_hybrid_subnets_are_exact_or_refused_clearly():
    model = _bamba()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
    want = logits(model, ids)
    sn = osf.supernet(model)
    assert rel_err(logits(sn, ids), want) < 1e-5
    assert "model.layers.1.self_attn:kv_heads" in sn.space.dims and "model.layers.0.mamba:heads" in sn.space.dims
    exact = 0
    for seed in range(6):
        cfg = sn.space.sample(seed)
        try:
            sub = sn.extract(cfg)
        except osf.VerificationError as e:  # transformers' Bamba cannot run without attention layers
            assert "fails on the example inputs" in str(e)
            assert not cfg["model.layers.1"] and not cfg["model.layers.3"]
            continue
        sn.set_config(cfg)
        assert rel_err(logits(sub, ids), logits(sn, ids)) < 1e-5
        exact += 1
    assert exact >= 3
    cfg = sn.space.largest()
    cfg["model.layers.3"] = False  # the attention-layer list is renumbered in the config
    sub = sn.extract(cfg)
    assert sub.config.attn_layer_indices == [1]
