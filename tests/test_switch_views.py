"""Config switches without copies (issue 14, item 2).

A slice that keeps several runs of a Linear's output rows (Mamba's ``in_proj`` ``[x | z]``,
``x_proj`` ``[dt | B | C]``) is held as views of the shared weight (``LinearRuns``), and
``F.linear`` runs one matmul per run. The oracles: a smaller Hugging Face ``MambaForCausalLM``
built by hand (its own index arithmetic), the extracted subnet, and the former gathered path
(``sn.split_views = False``), with and without gradients, on OSF's kernels and on
transformers' own.
"""
from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import osf
from osf.elastic.supernet import LinearRuns
from oracle_tools import randomise_constants, sharpen_weights
from zoo import build


# ------------------------------------------------------------------ LinearRuns itself
def _runs_of(full: torch.Tensor, runs: list[tuple[int, int]], requires_grad: bool = False) -> LinearRuns:
    return LinearRuns([full.narrow(0, a, n) for a, n in runs], requires_grad=requires_grad)


def test_linear_over_runs_equals_linear_over_the_gathered_weight_and_bias():
    g = torch.Generator().manual_seed(0)
    full_w, full_b = torch.randn(96, 40, generator=g), torch.randn(96, generator=g)
    runs = [(0, 16), (48, 16), (80, 5)]
    rows = torch.cat([torch.arange(a, a + n) for a, n in runs])
    x = torch.randn(3, 7, 40, generator=g)
    w, b = _runs_of(full_w, runs), _runs_of(full_b, runs)
    want = F.linear(x, full_w[rows], full_b[rows])
    torch.testing.assert_close(F.linear(x, w, b), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(F.linear(x, w, full_b[rows]), want, rtol=1e-5, atol=1e-5)  # a plain bias
    lin = nn.Linear(40, 37)
    lin._parameters["weight"], lin._parameters["bias"] = w, b
    torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(w, full_w[rows]) and torch.equal(w.detach(), full_w[rows])  # any other op: the gathered tensor


def test_gradients_through_runs_reach_the_full_tensor_at_the_kept_rows_only():
    g = torch.Generator().manual_seed(1)
    full = torch.randn(20, 6, generator=g, requires_grad=True)
    runs = [(2, 3), (10, 4)]
    x = torch.randn(5, 6, generator=g)
    F.linear(x, _runs_of(full, runs)).square().sum().backward()
    rows = torch.tensor([2, 3, 4, 10, 11, 12, 13])
    want = torch.zeros(20, 6)
    want[rows] = 2 * (x @ full.detach()[rows].T).T @ x  # d/dW of sum((x W^T)^2), by hand
    torch.testing.assert_close(full.grad, want)


def test_shape_queries_take_no_copy_and_in_place_changes_are_refused(monkeypatch):
    full = torch.randn(12, 4)
    w = _runs_of(full, [(0, 2), (6, 2)], requires_grad=True)
    monkeypatch.setattr(LinearRuns, "gathered", lambda self: pytest.fail("a shape query gathered the runs"))
    assert w.shape == (4, 4) and w.size(0) == 4 and w.dim() == 2 and w.numel() == 16
    assert w.dtype == torch.float32 and w.device.type == "cpu" and w.requires_grad and w.grad is None
    assert isinstance(w, nn.Parameter)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="in place"):
        w.mul_(2)
    assert torch.equal(full[:2], full.narrow(0, 0, 2))


def test_copies_and_pickles_of_runs_are_plain_parameters_of_the_gathered_values():
    full = torch.randn(12, 4)
    w = _runs_of(full, [(0, 2), (6, 2)], requires_grad=True)
    want = torch.cat([full[0:2], full[6:8]])
    c = copy.deepcopy(w)
    assert type(c) is nn.Parameter and torch.equal(c, want) and c.requires_grad
    buf = io.BytesIO()
    torch.save(w, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is nn.Parameter and torch.equal(loaded, want)
    lin = nn.Linear(4, 4, bias=False)
    lin._parameters["weight"] = w
    assert torch.equal(lin.state_dict()["weight"], want)


# ------------------------------------------------------------------ Mamba supernet oracles
@functools.lru_cache(maxsize=None)
def _supernet(kernels: bool):
    model, ex = build("tiny-mamba")
    randomise_constants(sharpen_weights(model, seed=3), seed=3)  # D, biases, norms: random
    return osf.supernet(model, ex, kernels=kernels), {"input_ids": torch.randint(0, model.config.vocab_size, (2, 12),
                                                                                generator=torch.Generator().manual_seed(0))}


def _uniform(sn, pick: dict[str, int]) -> tuple[dict, dict[str, int], list[int]]:
    """A config with every layer's dim of each kind at choice ``pick[kind]`` (an index into the
    choices) and the first droppable layer dropped; its sizes; the indices of the kept layers."""
    cfg = sn.space.largest()
    sizes = {}
    for d, choices in sn.space.dims.items():
        kind = d.rpartition(":")[2] if ":" in d else d
        cfg[d] = sizes[kind] = choices[min(pick[kind], len(choices) - 1)]
    first = next(iter(sn.space.stacks.values()))[0]
    cfg[first] = False
    kept = [i for i in range(len(sn.model.backbone.layers)) if f"backbone.layers.{i}" != first]
    return cfg, sizes, kept


PICKS = [{"hidden": 1, "d_inner": 2, "d_state": 1, "dt_rank": 0},
         {"hidden": 3, "d_inner": 5, "d_state": 2, "dt_rank": 1},
         {"hidden": 0, "d_inner": 6, "d_state": 3, "dt_rank": 2}]


def _by_hand(sn, sizes: dict[str, int], kept: list[int]):
    """A smaller MambaForCausalLM holding the supernet's weights cut by hand; and how each of
    its tensors maps back into the full ones (``key -> (full key, rows, cols)``)."""
    from transformers import MambaForCausalLM

    full_cfg = sn.model.config
    E, N, R = full_cfg.intermediate_size, full_cfg.state_size, full_cfg.time_step_rank
    h, k, n, r = sizes["hidden"], sizes["d_inner"], sizes["d_state"], sizes["dt_rank"]
    small = MambaForCausalLM(type(full_cfg)(**{**full_cfg.to_dict(), "hidden_size": h, "intermediate_size": k,
                                               "state_size": n, "time_step_rank": r,
                                               "num_hidden_layers": len(kept)})).eval()
    ar = torch.arange
    cuts = {"in_proj.weight": (torch.cat([ar(k), E + ar(k)]), ar(h)),  # [x | z]: both halves
            "x_proj.weight": (torch.cat([ar(r), R + ar(n), R + N + ar(n)]), ar(k)),  # [dt | B | C]
            "dt_proj.weight": (ar(k), ar(r)), "A_log": (ar(k), ar(n)), "out_proj.weight": (ar(h), ar(k)),
            "D": (ar(k), None), "dt_proj.bias": (ar(k), None), "conv1d.bias": (ar(k), None),
            "conv1d.weight": (ar(k), None)}
    with sn.use(sn.space.largest()), torch.no_grad():
        full = {key: v.detach().clone() for key, v in sn.model.state_dict().items()}
    where, state = {}, {}
    for key in small.state_dict():
        src, rows, cols = key, ar(h), None
        if key.startswith("backbone.layers."):
            idx, _, rest = key[len("backbone.layers."):].partition(".")
            src = f"backbone.layers.{kept[int(idx)]}.{rest}"
            leaf = rest.rpartition("mixer.")[2]
            if leaf in cuts:
                rows, cols = cuts[leaf]
        elif key.endswith(("embeddings.weight", "lm_head.weight")):
            rows, cols = ar(full[src].shape[0]), ar(h)
        v = full[src][rows]
        state[key] = v[:, cols] if cols is not None else v
        where[key] = (src, rows, cols)
    small.load_state_dict(state, strict=True)
    return small, where


def _loss(logits: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return (logits * torch.randn(logits.shape, generator=g)).mean()


@pytest.mark.parametrize("kernels", [True, False], ids=["osf-kernels", "hf-kernels"])
@pytest.mark.parametrize("which", range(len(PICKS)))
def test_mamba_subnet_on_views_equals_the_extracted_and_a_hand_built_mamba(kernels, which):
    sn, inputs = _supernet(kernels)
    cfg, sizes, kept = _uniform(sn, PICKS[which])
    small, _ = _by_hand(sn, sizes, kept)
    with torch.no_grad():
        want = small(**inputs).logits
        sn.set_config(cfg)
        got = sn(**inputs).logits
        sub = sn.extract(cfg)
        if kernels:
            from osf.kernels.mamba import patch_mamba
            patch_mamba(sub)
        extracted = sub(**inputs).logits
    for i in kept:  # the fused projections are views of the shared weights: the switch copied nothing
        for leaf in ("in_proj.weight", "x_proj.weight"):
            name = f"backbone.layers.{i}.mixer.{leaf}"
            t = sn.current(name)
            assert isinstance(t, LinearRuns), (name, type(t))
            assert all(p.untyped_storage().data_ptr() == sn.full(name).untyped_storage().data_ptr() for p in t.parts)
    sn.set_config(sn.space.largest())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(extracted, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernels", [True, False], ids=["osf-kernels", "hf-kernels"])
def test_mamba_gradients_on_views_equal_the_gathered_path_and_a_hand_built_mamba(kernels):
    sn, inputs = _supernet(kernels)
    for pick in PICKS[:2]:
        cfg, sizes, kept = _uniform(sn, pick)
        small, where = _by_hand(sn, sizes, kept)
        for p in small.parameters():
            p.requires_grad_(True)
        _loss(small(**inputs).logits).backward()
        grads = {}
        for split in (True, False):
            sn.split_views = split
            sn.zero_grad(set_to_none=True)
            with sn.use(cfg):
                _loss(sn(**inputs).logits).backward()
            grads[split] = {n: p.grad.clone() for n, p in sn.named_parameters() if p.grad is not None}
        sn.split_views = True
        assert grads[True].keys() == grads[False].keys()
        for n in grads[True]:
            torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-5, atol=1e-7, msg=n)
        small_params = dict(small.named_parameters())
        for key, (src, rows, cols) in where.items():
            if "mixer." not in key or key not in small_params:
                continue
            want = torch.zeros_like(grads[True][src])
            g = small_params[key].grad
            if cols is None:
                want[rows] = g
            else:
                want[rows[:, None], cols[None, :]] = g
            torch.testing.assert_close(grads[True][src], want, rtol=1e-4, atol=1e-6, msg=key)
