"""Weight sharing that trains: at every config, gradients reach the shared full weights.

The oracle is independent of OSF's slicing: the subnet is built by hand
(:func:`oracle_tools.reference_subnet`, its own index arithmetic over the IR's structure),
its gradients are scattered back into place with the same hand-made indices, and they must
equal the gradients autograd put on the supernet's full weights (zero where no subnet
channel reads them).
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import osf
from osf.ir.inputs import default_inputs
from osf.ir.trace import normalize_inputs
from oracle_tools import get_tensor, kept_indices, randomise_constants, reference_subnet, sharpen_weights
from zoo import build

GRAD_MODELS = ["tiny-mamba", "tiny-mamba2", "tiny-vit", "tiny-swin", "tiny-clip", "gpt", "patch-mamba"]


def _fixture(name: str):
    model, ex = build(name)
    if name == "tiny-clip":  # pool the text tower at the highest id (see test_oracles.model_of)
        model.text_model.eos_token_id = 2
    randomise_constants(sharpen_weights(model, seed=1), seed=1)
    return model, ex


@functools.lru_cache(maxsize=None)
def _supernet(name: str):
    model, ex = _fixture(name)
    sn = osf.supernet(model, ex)
    inputs = normalize_inputs(ex if ex is not None else default_inputs(model))
    return sn, inputs


def _outputs(out) -> list[torch.Tensor]:
    from osf.elastic.verify import flatten_output

    return [t for t in flatten_output(out).values() if t.is_floating_point()]


def _loss(out, seed: int = 0) -> torch.Tensor:
    """A fixed random linear read-out of every float output: every output element matters."""
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g)).mean() for t in _outputs(out))


def _scatter(ir, name: str, grad: torch.Tensor, full_shape, selection) -> torch.Tensor:
    """``grad`` of the sliced tensor ``name`` (or of a tensor tied to it) put back at its
    hand-computed positions, zero elsewhere."""
    keep = {ir.alg.find(ir.dims[d].var): idx for d, idx in selection.items()}
    out = grad
    for axis, var in enumerate(ir.tensor_axes[name]):
        idx = torch.tensor(kept_indices(ir.alg, var, keep), dtype=torch.long)
        shape = list(out.shape)
        shape[axis] = full_shape[axis]
        out = torch.zeros(shape, dtype=grad.dtype).index_copy_(axis, idx, out)
    return out


def _configs(sn):
    return [("smallest", sn.space.smallest()), ("sample(3)", sn.space.sample(3))]


@pytest.mark.parametrize("name", GRAD_MODELS)
def test_gradients_on_the_shared_weights_equal_a_hand_built_subnets_scattered_back(name):
    sn, (args, kwargs) = _supernet(name)
    for label, cfg in _configs(sn):
        fresh, _ = build(name)
        if name == "tiny-clip":
            fresh.text_model.eos_token_id = 2
        ref = reference_subnet(sn, cfg, fresh.eval(), (args, kwargs))
        for p in ref.parameters():
            p.requires_grad_(True)
        _loss(ref(*args, **kwargs)).backward()

        sn.zero_grad(set_to_none=True)
        with sn.use(cfg):
            _loss(sn(*args, **kwargs)).backward()

        ir = sn.ir
        selection = {d: list(range(int(cfg[d]))) for d in sn.space.dims}
        aliases: dict[str, list[str]] = {}
        for alias, canonical in ir.tied.items():
            aliases.setdefault(canonical, []).append(alias)
        dropped = [b.name for b in ir.blocks if not cfg.get(b.name, True)]
        checked = 0
        for pname, full in sn.named_parameters():
            in_dropped = any(pname.startswith(b + ".") for b in dropped)
            if in_dropped:
                assert full.grad is None or not full.grad.any(), f"{label}: dropped {pname} got a gradient"
                continue
            names = [pname] + aliases.get(pname, [])
            if pname in ir.tensor_axes:
                want = sum(_scatter(ir, pname, get_tensor(ref, n).grad, full.shape, selection) for n in names
                           if get_tensor(ref, n).grad is not None)
            else:
                want = sum(get_tensor(ref, n).grad for n in names if get_tensor(ref, n).grad is not None)
            assert full.grad is not None, f"{name} {label}: no gradient reached the shared {pname}"
            scale = want.abs().max().clamp_min(1e-6)
            err = ((full.grad - want).abs().max() / scale).item()
            assert err < 1e-3, f"{name} {label}: gradient of shared {pname} differs by {err:.2e}"
            checked += 1
        params = dict(sn.named_parameters())
        live_sliced = [t for t in ir.tensor_axes if t in params and not any(t.startswith(b + ".") for b in dropped)]
        assert live_sliced and checked >= len(live_sliced), (name, label, checked, len(live_sliced))


def test_an_optimizer_step_on_a_subnet_trains_the_shared_weights_and_every_config_sees_it():
    sn, (args, kwargs) = _supernet("tiny-mamba")
    state = {k: v.clone() for k, v in sn.state_dict().items()}
    try:
        params = list(sn.parameters())
        assert len({id(p) for p in params}) == len(params) == len(
            {id(p) for p in sn.model.parameters()}), "one optimizer must hold each shared tensor once"
        opt = torch.optim.SGD(params, lr=1e-2)
        cfg = sn.space.smallest()
        sn.set_config(cfg)
        before = sn.extract(cfg, verify=False)
        opt.zero_grad()
        _loss(sn(*args, **kwargs)).backward()
        opt.step()
        # the subnet changed, and the live supernet's next training forward (its gathered
        # [x | z] copies re-sliced after the in-place step, with no set_config in between)
        # equals a fresh extraction
        live = _outputs(sn(*args, **kwargs))[0].detach()
        after = sn.extract(cfg, verify=True)
        with torch.no_grad():
            old = _outputs(before(*args, **kwargs))[0]
            new = _outputs(after(*args, **kwargs))[0]
        assert not torch.allclose(old, new), "the step did not change the subnet"
        torch.testing.assert_close(live, new, rtol=1e-5, atol=1e-5)
        in_proj = "backbone.layers.0.mixer.in_proj.weight"
        changed = (sn.full(in_proj) != state[in_proj]).any(dim=1)
        d_inner = sn.full(in_proj).shape[0] // 2
        k = sn.current(in_proj).shape[0] // 2
        # both halves of the fused [x | z] projection were trained, only in their kept rows
        assert changed[:k].all() and changed[d_inner:d_inner + k].all()
        assert not changed[k:d_inner].any() and not changed[d_inner + k:].any()
    finally:
        sn.set_config(sn.space.largest())
        sn.load_state_dict(state)


def test_the_supernet_is_a_module_over_the_full_weights():
    model, ex = _fixture("tiny-vit")
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sn = osf.supernet(model, ex)
    sn.set_config(sn.space.smallest())
    # state_dict: the full weights under the model's own names, whatever config is active
    assert {k: tuple(v.shape) for k, v in sn.state_dict().items()} == keys
    assert sn.config == sn.space.smallest()
    # .to(dtype) converts the shared weights, not only the installed slices
    sn.to(torch.float64)
    assert {p.dtype for p in sn.parameters()} == {torch.float64}
    args, kwargs = normalize_inputs(default_inputs(model))
    args = [a.double() if a.is_floating_point() else a for a in args]
    with torch.no_grad():
        small = sn(*args, **kwargs).logits
        sn.set_config(sn.space.largest())
        large = sn(*args, **kwargs).logits
    assert small.dtype == large.dtype == torch.float64
    # train()/eval() reach the model, dropped layers included
    sn.set_config(sn.space.smallest())
    sn.train()
    assert all(m.training for layer in sn.ir.blocks for m in sn.model.get_submodule(layer.stack).modules())
    sn.eval()
    assert not sn.model.training


def test_converting_the_model_behind_the_supernets_back_is_refused():
    model, ex = _fixture("tiny-vit")
    sn = osf.supernet(model, ex)
    sn.set_config(sn.space.smallest())
    sn.model.to(torch.float64)
    args, kwargs = normalize_inputs(default_inputs(model))
    with pytest.raises(RuntimeError, match=r"replaced behind the supernet's back.*sn\.to"):
        sn(*args, **kwargs)


def test_distributed_data_parallel_wraps_the_supernet(tmp_path):
    import torch.distributed as dist

    sn, (args, kwargs) = _supernet("gpt")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(sn, find_unused_parameters=True)
        sn.zero_grad(set_to_none=True)
        with sn.use(sn.space.smallest()):
            _loss(ddp(*args, **kwargs)).backward()
        sliced = [n for n in sn.sliced_tensors if isinstance(sn.full(n), nn.Parameter)]
        assert sliced and all(sn.full(n).grad is not None and sn.full(n).grad.any() for n in sliced
                              if not any(n.startswith(b.name + ".") for b in sn.ir.blocks
                                         if not sn.space.smallest().get(b.name, True)))
    finally:
        dist.destroy_process_group()
