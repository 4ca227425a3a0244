"""Oracles with known answers: importance ordering keeps the channels made important,
block dropping drops the block made (nearly) the identity, and running other configs
(``use``, ``macs``, ``extract``, ``search``) leaves the active config as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import osf
from zoo import MLP, TinyGPT, build


def _signs(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def _mlp_with_known_channels():
    """An MLP whose channel importances are known exactly.

    Every weight is ``scale[out] * scale[in] * (+-1)`` and every bias ``scale[out] * (+-1)``,
    so a channel's summed squared weight (magnitude importance) is proportional to its
    scale squared. A few channels of each hidden dim get large, distinct scales.
    """
    model = MLP().eval()
    big32 = [5, 30, 0, 17, 22, 9, 13, 26]  # most important first
    big24 = [11, 2, 23, 7, 16, 19]
    s_in = torch.ones(12)
    s32 = torch.full((32,), 0.05)
    s24 = torch.full((24,), 0.05)
    s_out = torch.ones(5)
    for rank, c in enumerate(big32):
        s32[c] = 2.0 - 0.1 * rank
    for rank, c in enumerate(big24):
        s24[c] = 2.0 - 0.1 * rank
    # tiny distinct steps among the unimportant channels too: no ties anywhere
    s32 += torch.arange(32) * 1e-4
    s24 += torch.arange(24) * 1e-4
    with torch.no_grad():
        for i, (lin, so, si) in enumerate([(model.net[0], s32, s_in), (model.net[2], s24, s32),
                                            (model.net[4], s_out, s24)]):
            lin.weight.copy_(so[:, None] * si[None, :] * _signs(len(so), len(si), seed=i) / len(si) ** 0.5)
            lin.bias.copy_(so * _signs(len(so), seed=10 + i) * 0.1)
    return model, big32, big24


def test_smallest_subnet_keeps_exactly_the_most_important_channels_in_order():
    model, big32, big24 = _mlp_with_known_channels()
    W0, b0 = model.net[0].weight.detach().clone(), model.net[0].bias.detach().clone()
    W2, b2 = model.net[2].weight.detach().clone(), model.net[2].bias.detach().clone()
    W4, b4 = model.net[4].weight.detach().clone(), model.net[4].bias.detach().clone()
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))
    sn = osf.supernet(model, x)
    sn.set_config(sn.space.smallest())
    try:
        # the prefix that the smallest config keeps is exactly the big channels, most important first
        assert torch.equal(sn.current("net.0.weight"), W0[big32])
        assert torch.equal(sn.current("net.0.bias"), b0[big32])
        assert torch.equal(sn.current("net.2.weight"), W2[big24][:, big32])
        assert torch.equal(sn.current("net.2.bias"), b2[big24])
        assert torch.equal(sn.current("net.4.weight"), W4[:, big24])
        # and the subnet computes the network made of those channels
        with torch.no_grad():
            h = F.relu(x @ W0[big32].T + b0[big32])
            h = F.gelu(h @ W2[big24][:, big32].T + b2[big24])
            want = h @ W4[:, big24].T + b4
            got = sn(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # each dim's order is importance order: the big channels come first, most important first
        n32, n24 = (len(big32), len(big24))
        cfg = {"net.0:hidden": n32, "net.2:hidden": n24}
        for k32, k24 in [(32, 24), (n32, 24), (32, n24)]:
            sn.set_config({"net.0:hidden": k32, "net.2:hidden": k24})
            assert torch.equal(sn.current("net.0.weight")[:n32], W0[big32])
            assert torch.equal(sn.current("net.2.weight")[:n24, :n32], W2[big24][:, big32])
        assert cfg == {"net.0:hidden": min(sn.space.dims["net.0:hidden"]),
                       "net.2:hidden": min(sn.space.dims["net.2:hidden"])}
    finally:
        sn.set_config(sn.space.largest())


@pytest.mark.parametrize("dim", ["vit.layers.0.mlp:hidden", "vit.layers.1.attention:heads"])
def test_hf_vit_smallest_subnet_keeps_the_channels_made_important(dim):
    """The same on Hugging Face's ViT, for an MLP width and a head count: every member tensor of
    ``dim`` gets magnitude ``scale[channel]`` (signs kept), so importance is known exactly."""
    from osf.elastic.importance import channel_labels
    from osf.ir.apply import get_tensor

    model, _ = build("tiny-vit")
    probe = osf.supernet(model, copy=True, depth=False)  # only to learn the dim's members
    assert dim in probe.space.dims
    size, k = probe.ir.dims[dim].size, min(probe.space.dims[dim])
    important = torch.randperm(size, generator=torch.Generator().manual_seed(0))[:k].tolist()
    scale = 0.2 + 1e-3 * torch.arange(size, dtype=torch.float32)
    for rank, c in enumerate(important):
        scale[c] = 2.0 - 0.05 * rank
    members = [(m.tensor, m.axis, channel_labels(probe.ir, m.tensor, m.axis, dim)) for m in probe.ir.dims[dim].members]
    with torch.no_grad():
        for name, axis, labels in members:
            t = get_tensor(model, name)
            shape = [1] * t.dim()
            shape[axis] = -1
            f = torch.where(labels >= 0, scale[labels.clamp_min(0)], torch.ones(())).view(shape)
            t.copy_(torch.where(t >= 0, 1.0, -1.0) * f)
    originals = {name: get_tensor(model, name).detach().clone() for name, _, _ in members}
    sn = osf.supernet(model)
    sn.set_config({**sn.space.largest(), dim: k})
    try:
        for name, axis, labels in members:
            if originals[name].dim() != 1:
                continue  # the other axes of a matrix are reordered by their own dims: compare vectors
            want = torch.cat([originals[name][(labels == c).nonzero().flatten()] for c in important])
            assert torch.equal(sn.current(name), want), name
        assert any(originals[name].dim() == 1 for name, _, _ in members)
    finally:
        sn.set_config(sn.space.largest())


def test_activation_importance_keeps_the_channels_that_are_active_on_the_calibration_data():
    """All hidden channels of the first layer have equal weight norms, so magnitude cannot tell
    them apart; on the calibration data only the channels with a positive bias are active
    (ReLU passes them), so activation importance must keep exactly those."""
    model = MLP().eval()
    active = [9, 12, 15, 20, 24, 27, 29, 31]  # not a prefix: the identity order would not keep them
    with torch.no_grad():
        model.net[0].weight.copy_(0.1 * _signs(32, 12, seed=0))
        model.net[0].bias.fill_(-1.0)
        model.net[0].bias[active] = 1.0
        model.net[2].weight.copy_(0.1 * _signs(24, 32, seed=1))
    W0 = model.net[0].weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randn(16, 12, generator=g) for _ in range(2)]
    x = torch.randn(4, 12, generator=g)
    sn = osf.supernet(model, x, importance="activation", calibration=calibration)
    k = min(sn.space.dims["net.0:hidden"])
    assert k == len(active)
    sn.set_config({**sn.space.largest(), "net.0:hidden": k})
    try:
        kept = sn.current("net.0.weight")
        rows = [int(((W0 - r).abs().sum(1) == 0).nonzero()) for r in kept]
        assert sorted(rows) == active
    finally:
        sn.set_config(sn.space.largest())


def _near_identity(model, block: int, kind: str):
    """Make one residual block y = x + ~0 (its output projection scaled by 1e-4, bias zero)."""
    with torch.no_grad():
        if kind == "gpt":
            for lin in (model.h[block].c_proj, model.h[block].proj):
                lin.weight.mul_(1e-4)
                lin.bias.zero_()
        elif kind == "vit":  # both residual branches of the layer write through these
            for lin in (model.vit.layers[block].attention.o_proj, model.vit.layers[block].mlp.fc2):
                lin.weight.mul_(1e-4)
                lin.bias.zero_()
        else:
            model.backbone.layers[block].mixer.out_proj.weight.mul_(1e-4)


@pytest.mark.parametrize("kind,block", [("gpt", 0), ("gpt", 2), ("gpt", 3), ("mamba", 1), ("mamba", 3), ("vit", 1)])
def test_the_nearly_identity_block_is_dropped_first(kind, block):
    if kind == "gpt":
        torch.manual_seed(0)
        model = TinyGPT(n_layer=4).eval()
        ex = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
        stack, names = "h", [f"h.{i}" for i in range(4)]
    elif kind == "vit":
        model, ex = build("tiny-vit")
        stack, names = "vit.layers", [f"vit.layers.{i}" for i in range(4)]
    else:
        model, ex = build("tiny-mamba")
        stack, names = "backbone.layers", [f"backbone.layers.{i}" for i in range(4)]
    _near_identity(model, block, kind)
    sn = osf.supernet(model, ex)
    order = sn.space.stacks[stack]
    assert sorted(order) == names
    assert order[0] == names[block], order  # least important (dropped) first
    one_dropped = sn.space.to_config({**sn.space.largest(), stack + ":depth": len(names) - 1})
    assert [b for b in names if not one_dropped[b]] == [names[block]]
    smallest = sn.space.smallest()
    assert not smallest[names[block]]
    assert sum(not smallest[b] for b in names) == len(names) - sn.space.min_depth[stack]


# ------------------------------------------------------- the active config is restored
def _state(sn, x):
    with torch.no_grad():
        out = sn(x)
    out = out.logits if hasattr(out, "logits") else out
    return dict(sn.config), out.clone(), {n: tuple(p.shape) for n, p in sn.model.named_parameters()}


@pytest.fixture(scope="module")
def gpt_supernet():
    torch.manual_seed(0)
    model = TinyGPT(n_layer=4).eval()
    x = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    sn = osf.supernet(model, x)
    active = sn.space.to_config({**{d: c[min(1, len(c) - 1)] for d, c in sn.space.dims.items()}, "h:depth": 3})
    other = sn.space.smallest()
    assert active != sn.space.largest() and active != other
    assert any(not active[b] for b in sn.space.blocks)  # a dropped block must come back too
    return sn, x, active, other


def _check_restored(sn, x, active, before):
    config, out, shapes = _state(sn, x)
    assert config == before[0] == active
    assert shapes == before[2]
    assert torch.equal(out, before[1])


def test_use_restores_the_active_config(gpt_supernet):
    sn, x, active, other = gpt_supernet
    sn.set_config(active)
    before = _state(sn, x)
    with sn.use(other):
        assert sn.config == other
        assert not torch.equal(_state(sn, x)[1], before[1])
    _check_restored(sn, x, active, before)
    with sn.use(other):  # nested: each exit restores the config its entry found
        with sn.use(sn.space.largest()):
            assert sn.config == sn.space.largest()
        assert sn.config == other
    _check_restored(sn, x, active, before)


def test_use_restores_the_active_config_when_its_body_raises(gpt_supernet):
    sn, x, active, other = gpt_supernet
    sn.set_config(active)
    before = _state(sn, x)
    with pytest.raises(RuntimeError, match="boom"):
        with sn.use(other):
            raise RuntimeError("boom")
    _check_restored(sn, x, active, before)
    with pytest.raises(ValueError, match="allowed sizes"):  # an invalid config: nothing changes
        with sn.use({**other, next(iter(sn.space.dims)): 10**6}):
            pass
    _check_restored(sn, x, active, before)


def test_macs_extract_and_num_params_of_other_configs_leave_the_active_one(gpt_supernet):
    sn, x, active, other = gpt_supernet
    sn.set_config(active)
    before = _state(sn, x)
    assert sn.macs(other) < sn.macs(sn.space.largest())
    _check_restored(sn, x, active, before)
    sub = sn.extract(other)
    with torch.no_grad():
        assert not torch.equal(sub(x), before[1])
    _check_restored(sn, x, active, before)
    sn.num_params(other)
    _check_restored(sn, x, active, before)


def test_search_leaves_the_active_config(gpt_supernet, tmp_path):
    sn, x, active, other = gpt_supernet
    sn.set_config(active)
    before = _state(sn, x)
    seen = []

    def score(model):
        seen.append(dict(sn.config))
        with torch.no_grad():
            return float(model(x).float().std())

    res = osf.search(sn, score, n_trials=3, show_progress=False, seed=0)
    assert len(res.trials) == 3 and len(seen) >= 2 and any(c != active for c in seen)
    _check_restored(sn, x, active, before)
