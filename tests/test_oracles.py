"""Oracles that can fail (issue 9): subnets compared with constructions that share no slicing
code with OSF, on fixtures whose constants are randomised so that no member can hide.

* the differential oracle: the live supernet at a config equals the original model class,
  loaded with the supernet's full reordered weights and cut by an independent slicer
  (``oracle_tools.reference_subnet``) -- every model of the zoo, sampled configs and a
  config that slices ``head_dim``;
* genuinely smaller Hugging Face models (Mamba, Mamba2, ViT) built from shrunk configs with
  their weights copied by hand from the model's known layout;
* the permutation oracle has teeth: reordering a dim on all of its members but one changes
  the output, for 1-D and 2-D members drawn from every dim (bar members that are provably
  void). An exhaustive sweep (every member of every dim of the ten models) passed once; the
  test draws a few per model to stay fast.

The fixtures make every member matter: constants randomised (``randomise_constants``),
attention and selective-scan paths sharpened (``sharpen_weights``), CLIP's text tower pooling
at a token that attends to others (``model_of``).
"""
from __future__ import annotations

import functools
import random

import pytest
import torch

import osf
import osf.ir as oi
from osf.ir.inputs import default_inputs
from osf.ir.trace import flatten_output, normalize_inputs
from oracle_tools import permute_by_hand, randomise_constants, reference_subnet, sharpen_weights
from zoo import ALL_MODELS, build

HEAD_DIM_MODELS = ["tiny-mamba2", "tiny-vit", "tiny-swin", "tiny-swinv2", "tiny-clip", "gpt"]


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def run(model, args, kwargs):
    with torch.no_grad():
        return flatten_output(model(*args, **kwargs))


def model_of(name: str):
    """The zoo's model; tiny CLIP's eos id lies outside its vocabulary, so its text tower would
    pool at position 0, where causal attention sees only itself (query and key weights would
    be void): pool at the highest token id instead (CLIP's legacy ``eos_token_id == 2`` path)."""
    model, ex = build(name)
    if name == "tiny-clip":
        model.text_model.eos_token_id = 2
    return model, ex


def fixture(name: str):
    """(model with sharpened weights and randomised constants, example inputs or None, (args, kwargs))."""
    model, ex = model_of(name)
    randomise_constants(sharpen_weights(model, seed=1), seed=1)
    return model, ex, normalize_inputs(ex if ex is not None else default_inputs(model))


@functools.lru_cache(maxsize=None)
def supernet_of(name: str, head_dim: bool = False):
    model, ex, inputs = fixture(name)
    space = None
    if head_dim:
        sizes = {d.size for d in oi.analyze(build(name)[0], ex).dims.values() if d.kind == "head_dim"}
        assert len(sizes) == 1, sizes
        full = sizes.pop()
        space = {"*head_dim": [full, full // 2]}
    return osf.supernet(model, ex, space=space), inputs


def assert_close(out, ref, what, tol=1e-5):
    assert set(out) == set(ref), what
    for k in ref:
        assert out[k].shape == ref[k].shape, (what, k, out[k].shape, ref[k].shape)
        err = rel_err(out[k], ref[k])
        assert err < tol, f"{what}: {k} rel err {err:.2e}"


def assert_live_equals(sn, cfg, small, inputs, what: str) -> None:
    """The live supernet at ``cfg`` computes what ``small`` (built another way) computes."""
    sn.set_config(cfg)
    try:
        live = run(sn, *inputs)
    finally:
        sn.set_config(sn.space.largest())
    assert_close(live, run(small, *inputs), what)


# ------------------------------------------------------------------ differential oracle
def _configs(sn):
    return [("smallest", sn.space.smallest())] + [(f"sample({s})", sn.space.sample(s)) for s in (0, 1)]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_supernet_equals_an_independent_reference_slicer(name):
    sn, inputs = supernet_of(name)
    for label, cfg in _configs(sn):
        ref = reference_subnet(sn, cfg, model_of(name)[0].eval(), inputs)
        assert_live_equals(sn, cfg, ref, inputs, f"{name} {label}")


@pytest.mark.parametrize("name", HEAD_DIM_MODELS)
def test_supernet_slicing_head_dim_equals_the_reference_slicer(name):
    sn, inputs = supernet_of(name, head_dim=True)
    hd = [d for d in sn.space.dims if sn.ir.dims[d].kind == "head_dim"]
    assert hd and all(len(sn.space.dims[d]) == 2 for d in hd), "head_dim is not free in this model"
    cfg = sn.space.sample(0)
    cfg.update({d: sn.space.dims[d][-1] for d in hd})
    for d, choices in sn.space.dims.items():  # 2+ heads, sliced where possible: with one head,
        if sn.ir.dims[d].kind == "heads":     # head_dim's stride would never be used
            cfg[d] = choices[1] if len(choices) > 1 and choices[1] >= 2 else choices[0]
    ref = reference_subnet(sn, cfg, model_of(name)[0].eval(), inputs)
    assert_live_equals(sn, cfg, ref, inputs, f"{name} head_dim halved")


# ------------------------------------------------- genuinely smaller models, built by hand
def _full_state(sn):
    with sn.use(sn.space.largest()), torch.no_grad():
        return {k: v.detach().clone() for k, v in sn.model.state_dict().items()}


def _layer_map(sn, stack: str, dropped: list[str]) -> list[int]:
    """Old indices of the layers that stay, in order."""
    n = len(sn.model.get_submodule(stack))
    gone = {int(b.rpartition(".")[2]) for b in dropped}
    return [i for i in range(n) if i not in gone]


def _copy_layers(src: dict, kept: list[int], prefix: str, per_key) -> dict:
    """src renamed to the smaller model's layer indices, each tensor cut by ``per_key``."""
    out = {}
    for k, v in src.items():
        if k.startswith(prefix):
            idx, _, rest = k[len(prefix):].partition(".")
            if int(idx) not in kept:
                continue
            k = f"{prefix}{kept.index(int(idx))}.{rest}"
        out[k] = per_key(k, v)
    return out


def _uniform_cfg(sn, values: dict[str, int], drop: int = 1):
    cfg = sn.space.largest()
    for d in sn.space.dims:
        suffix = d.rpartition(":")[2] if ":" in d else d
        key = d if d in values else suffix
        if key in values:
            assert values[key] in sn.space.dims[d], (d, values[key], sn.space.dims[d])
            cfg[d] = values[key]
    dropped = []
    for stack, names in sn.space.stacks.items():
        for b in names[:drop]:
            cfg[b] = False
            dropped.append(b)
    return cfg, dropped


def test_mamba_subnet_equals_a_smaller_mamba_built_by_hand():
    from transformers import MambaForCausalLM
    sn, inputs = supernet_of("tiny-mamba")
    full = sn.model.config
    E, N, R = full.intermediate_size, full.state_size, full.time_step_rank
    h, k, n, r = 48, 80, 8, 5
    cfg, dropped = _uniform_cfg(sn, {"hidden": h, "d_inner": k, "d_state": n, "dt_rank": r})
    kept = _layer_map(sn, "backbone.layers", dropped)
    small = MambaForCausalLM(type(full)(**{**full.to_dict(), "hidden_size": h, "intermediate_size": k,
                                           "state_size": n, "time_step_rank": r,
                                           "num_hidden_layers": len(kept)})).eval()
    ar = torch.arange
    x_proj_rows = torch.cat([ar(r), R + ar(n), R + N + ar(n)])  # [dt | B | C]
    in_proj_rows = torch.cat([ar(k), E + ar(k)])  # [x | z]

    def cut(key, v):
        leaf = key.rpartition("mixer.")[2] if "mixer." in key else key
        if leaf == "in_proj.weight":
            return v[in_proj_rows][:, :h]
        if leaf == "x_proj.weight":
            return v[x_proj_rows][:, :k]
        if leaf == "dt_proj.weight":
            return v[:k, :r]
        if leaf == "A_log":
            return v[:k, :n]
        if leaf in ("D", "dt_proj.bias", "conv1d.bias", "conv1d.weight"):
            return v[:k]
        if leaf == "out_proj.weight":
            return v[:h, :k]
        if key.endswith(("embeddings.weight", "lm_head.weight")):
            return v[:, :h]
        assert key.endswith("norm.weight") or key.endswith("norm_f.weight"), key
        return v[:h]

    small.load_state_dict(_copy_layers(_full_state(sn), kept, "backbone.layers.", cut), strict=True)
    assert_live_equals(sn, cfg, small, inputs, "mamba by hand")


@pytest.mark.parametrize("heads,head_dim", [(4, 16), (8, 8)])
def test_mamba2_subnet_equals_a_smaller_mamba2_built_by_hand(heads, head_dim):
    from transformers import Mamba2ForCausalLM
    sn, inputs = supernet_of("tiny-mamba2", head_dim=head_dim != 16)
    full = sn.model.config
    H, P, N, G = full.num_heads, full.head_dim, full.state_size, full.n_groups
    assert G == 1
    I = H * P
    h, n = heads * head_dim // full.expand, 8
    cfg, dropped = _uniform_cfg(sn, {"hidden": h, "heads": heads, "head_dim": head_dim, "d_state": n}
                                if head_dim != P else {"hidden": h, "heads": heads, "d_state": n})
    kept = _layer_map(sn, "backbone.layers", dropped)
    small = Mamba2ForCausalLM(type(full)(**{**full.to_dict(), "hidden_size": h, "num_heads": heads,
                                            "head_dim": head_dim, "state_size": n,
                                            "num_hidden_layers": len(kept)})).eval()
    ar = torch.arange
    x_rows = torch.cat([hd * P + ar(head_dim) for hd in range(heads)])  # heads x head_dim
    conv_rows = torch.cat([x_rows, I + ar(n), I + G * N + ar(n)])  # xBC = [x | B | C]
    in_proj_rows = torch.cat([x_rows, I + conv_rows, I + I + 2 * G * N + ar(heads)])  # [z | xBC | dt]

    def cut(key, v):
        leaf = key.rpartition("mixer.")[2] if "mixer." in key else key
        if leaf == "in_proj.weight":
            return v[in_proj_rows][:, :h]
        if leaf in ("conv1d.weight", "conv1d.bias"):
            return v[conv_rows]
        if leaf in ("dt_bias", "A_log", "D"):
            return v[:heads]
        if leaf == "norm.weight" and "mixer." in key:
            return v[x_rows]
        if leaf == "out_proj.weight":
            return v[:h][:, x_rows]
        if key.endswith(("embeddings.weight", "lm_head.weight")):
            return v[:, :h]
        assert key.endswith("norm.weight") or key.endswith("norm_f.weight"), key
        return v[:h]

    small.load_state_dict(_copy_layers(_full_state(sn), kept, "backbone.layers.", cut), strict=True)
    assert_live_equals(sn, cfg, small, inputs, f"mamba2 by hand, {heads} heads of {head_dim}")


HEAD_DIM_SCALE = ("OSF bug: slicing a ViT head_dim keeps the attention softmax scale of the full head_dim "
                  "(ViTAttention.scaling = head_dim ** -0.5 is set at init and is not a recorded size "
                  "attribute), so the subnet is not the smaller ViT its weights describe")


@pytest.mark.parametrize("heads,head_dim", [(3, 16), pytest.param(4, 8, marks=pytest.mark.xfail(
    strict=True, reason=HEAD_DIM_SCALE))])
def test_vit_subnet_equals_a_smaller_vit_built_by_hand(heads, head_dim):
    from transformers import ViTForImageClassification
    sn, inputs = supernet_of("tiny-vit", head_dim=head_dim != 16)
    full = sn.model.config
    P = full.hidden_size // full.num_attention_heads
    h, m = heads * head_dim, 96  # HF ViT: hidden == heads x head_dim
    values = {"hidden": h, "heads": heads, "mlp:hidden": m}
    if head_dim != P:
        values["head_dim"] = head_dim
    cfg = sn.space.largest()
    for d in sn.space.dims:
        cfg[d] = {"hidden": h}.get(d) or next((v for s, v in values.items() if s != "hidden" and d.endswith(s)),
                                              cfg[d])
    dropped = sn.space.stacks["vit.layers"][:1]
    cfg[dropped[0]] = False
    kept = _layer_map(sn, "vit.layers", dropped)
    small = ViTForImageClassification(type(full)(**{**full.to_dict(), "hidden_size": h, "num_attention_heads": heads,
                                                    "intermediate_size": m, "num_hidden_layers": len(kept)})).eval()
    head_rows = torch.cat([i * P + torch.arange(head_dim) for i in range(heads)])  # heads x head_dim

    def cut(key, v):
        if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            return v[head_rows][:, :h]
        if key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            return v[head_rows]
        if key.endswith("o_proj.weight"):
            return v[:h][:, head_rows]
        if key.endswith("fc1.weight"):
            return v[:m, :h]
        if key.endswith("fc1.bias"):
            return v[:m]
        if key.endswith("fc2.weight"):
            return v[:h, :m]
        if key.endswith(("cls_token", "position_embeddings")):
            return v[..., :h]
        if key.endswith("classifier.weight"):
            return v[:, :h]
        if key.endswith("classifier.bias"):
            return v
        return v[:h]  # patch projection rows, norms, o_proj / fc2 biases

    small.load_state_dict(_copy_layers(_full_state(sn), kept, "vit.layers.", cut), strict=True)
    assert_live_equals(sn, cfg, small, inputs, f"vit by hand, {heads} heads of {head_dim}")


# ------------------------------------------------------------- the oracle has teeth
# Members whose permutation provably cannot change the output: a key bias adds, for each
# query, the same number to every score, which softmax ignores.
VOID = ("k_proj.bias", "key.bias")


@functools.lru_cache(maxsize=None)
def analyzed(name: str):
    model, ex, inputs = fixture(name)
    return model, oi.analyze(model, ex), inputs


def _members(name: str, ndim: int, k: int = 4):
    """``k`` members of rank ``ndim`` (1, or 2 and more), drawn across all dims of the model."""
    _, ir, _ = analyzed(name)
    out = []
    for d in ir.dims.values():
        for m in d.members:
            if (len(m.shape) == 1) == (ndim == 1) and not m.tensor.endswith(VOID):
                out.append((d.name, m.tensor, m.axis))
    return random.Random(f"{name}-{ndim}").sample(out, min(k, len(out)))


TEETH_MODELS = ["tiny-mamba", "tiny-mamba2", "tiny-vit", "tiny-swin", "tiny-swinv2", "tiny-clip",
                "gpt", "resnet", "patch-mamba", "mlp"]


@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("name", TEETH_MODELS)
def test_permutation_oracle_catches_any_missed_member(name, ndim):
    """Reorder a dim on all its members (the output stays), then on all but one member (the
    output must change), for members of the given rank drawn from every dim."""
    model, ir, inputs = analyzed(name)
    ref = run(model, *inputs)
    members = _members(name, ndim)
    assert members, f"{name} has no {ndim}-D members to leave out"
    g = torch.Generator().manual_seed(0)
    silent = []
    for dim_name, tensor, axis in members:
        size = ir.dims[dim_name].size
        perm = torch.randperm(size, generator=g)
        while size > 1 and bool((perm == torch.arange(size)).any()):  # every channel moves
            perm = torch.randperm(size, generator=g)
        saved = {n: t.detach().clone() for n, t in model.state_dict(keep_vars=True).items()}
        try:
            permute_by_hand(ir, model, dim_name, perm)
            assert_close(run(model, *inputs), ref, f"{name}: permuting {dim_name} on all members")
            model.load_state_dict(saved)
            permute_by_hand(ir, model, dim_name, perm, skip=(tensor, axis))
            out = run(model, *inputs)
            if max(rel_err(out[k], ref[k]) for k in ref) <= 1e-3:
                silent.append(f"{tensor}[{axis}] of {dim_name}")
        finally:
            model.load_state_dict(saved)
    assert not silent, f"{name}: the oracle misses these members: {silent}"
    assert_close(run(model, *inputs), ref, f"{name}: restored", tol=1e-6)


def test_a_head_dim_subnet_saved_folder_never_loads_silently_wrong(tmp_path):
    """A config that does not express the subnet keeps the original sizes, so plain
    from_pretrained refuses the folder (it used to load hidden 32 / 4 heads and differ by 5e-2)."""
    import transformers
    sn, inputs = supernet_of("tiny-vit", head_dim=True)
    cfg = sn.space.largest()
    cfg.update({d: 8 if d.endswith("head_dim") else 96 for d in sn.space.dims if d.endswith(("head_dim", "mlp:hidden"))})
    cfg["hidden"] = 32
    sub = sn.extract(cfg)
    osf.save_subnet(sub, tmp_path)
    assert not sub._osf_subnet["config_expresses_subnet"]
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):  # refused on the shapes
        transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
    assert_close(run(osf.load_subnet(tmp_path), *inputs), run(sub, *inputs), "load_subnet of a head_dim subnet")
