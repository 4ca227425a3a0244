"""Independent oracles for the IR and the supernet (issue 9, "oracles that can fail").

Nothing here reuses OSF's slicing or permuting code: the IR's *structure* (which axis is a
concatenation or a row-major product of which dims) is read from ``ir.alg`` and turned into
indices by the few lines below, so a bug in ``osf.ir.apply``, ``AxisAlgebra.positions`` or
the supernet's view/gather logic shows up as a difference.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn


# ------------------------------------------------------------ fixtures without hidden members
def _has_identical_slices(t: torch.Tensor) -> bool:
    """True when some axis of ``t`` (longer than 1) holds identical slices: a permutation or a
    wrong slice along it could not be seen in the output."""
    for axis in range(t.dim()):
        if t.shape[axis] > 1 and torch.equal(t, t.narrow(axis, 0, 1).expand_as(t)):
            return True
    return False


@torch.no_grad()
def randomise_constants(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every constant-initialised tensor random values of a sensible scale.

    Biases, norm weights and biases, Mamba ``D``, ``dt_bias``, ``A_log`` (whose rows start
    identical), conv biases, Swin's position-bias tables, Swinv2's ``logit_scale``: any
    floating parameter or buffer that is 1-D or has identical slices along an axis. A member
    the analysis misses can no longer hide in a tensor whose channels are all alike.
    """
    g = torch.Generator().manual_seed(seed)
    seen = set()
    # non-persistent buffers (rotary frequencies, ALiBi slopes, masks) are derived constants that a
    # saved model rebuilds from its config; the analysis keeps their shape, so they stay as they are
    for path, mod in model.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            seen.add(id(getattr(mod, b)))
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, t in named:
        if id(t) in seen or not t.is_floating_point() or t.numel() <= 1:
            continue
        seen.add(id(t))
        if not (t.dim() == 1 or _has_identical_slices(t)):
            continue
        scale = 0.3 * t.abs().mean().item() + 0.3
        noise = torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * scale
        new = t + noise
        if name.endswith("running_var"):
            new = t.abs() + torch.rand(t.shape, generator=g).to(t.dtype) + 0.5
        t.copy_(new)
    return model


@torch.no_grad()
def sharpen_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every path matter. Hugging Face's small init (std 0.02) leaves attention scores
    near zero (softmax near uniform: query and key weights would be nearly void), and a
    Mamba mixer whose ``x_proj`` is small barely uses its state (``dt``, ``B``, ``C``,
    ``A_log`` would be nearly void): re-draw small linear weights at std 1/sqrt(fan_in) and
    scale up selective-scan projections and time steps."""
    g = torch.Generator().manual_seed(seed)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            w = mod.weight
            if w.std() < 0.05:
                w.copy_(torch.randn(w.shape, generator=g).to(w.dtype) / w.shape[1] ** 0.5)
            if name.endswith("x_proj"):
                w.mul_(4.0)
    for name, p in model.named_parameters():
        if name.endswith(("dt_bias", "dt_proj.bias")):  # dt near 0.7: every state decays visibly
            p.copy_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.5)
    return model


# ------------------------------------------------------------------ positions, by hand
def kept_indices(alg, var: int, keep: dict[int, list[int]]) -> list[int]:
    """Indices kept along axis variable ``var`` when leaf ``l`` keeps channels ``keep[l]``
    (in that order; leaves not in ``keep`` keep all). Own recursion over ``alg.defn``:
    a ``cat`` keeps each part's indices at the part's offset, a ``prod`` is row-major."""
    r = alg.find(var)
    struct = alg.defn.get(r)
    if struct is None:
        return list(keep.get(r, range(alg.size[r])))
    if struct.kind == "cat":
        out, offset = [], 0
        for p in struct.parts:
            out.extend(offset + i for i in kept_indices(alg, p, keep))
            offset += alg.size[alg.find(p)]
        return out
    assert struct.kind == "prod", struct
    sizes = [alg.size[alg.find(p)] for p in struct.parts]
    out = []
    for combo in itertools.product(*(kept_indices(alg, p, keep) for p in struct.parts)):
        flat = 0
        for i, s in zip(combo, sizes):
            flat = flat * s + i
        out.append(flat)
    return out


def get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, leaf)


def put_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        mod._buffers[leaf] = value


def _leaf_keep(ir, selection: dict[str, list[int]]) -> dict[int, list[int]]:
    return {ir.alg.find(ir.dims[d].var): list(idx) for d, idx in selection.items()}


def index_tensor(ir, name: str, t: torch.Tensor, selection: dict[str, list[int]],
                 skip_axis: int | None = None) -> torch.Tensor:
    """``t`` with each axis indexed by :func:`kept_indices` (dims keep ``selection[d]``)."""
    keep = _leaf_keep(ir, selection)
    for axis, var in enumerate(ir.tensor_axes[name]):
        if axis == skip_axis:
            continue
        idx = kept_indices(ir.alg, var, keep)
        if idx != list(range(t.shape[axis])):
            t = t.index_select(axis, torch.tensor(idx, dtype=torch.long))
    return t


@torch.no_grad()
def permute_by_hand(ir, model: nn.Module, dim: str, perm: torch.Tensor, skip: tuple[str, int] | None = None):
    """Reorder dim ``dim`` of ``model`` by ``perm`` on every member but ``skip`` = (tensor, axis)."""
    sel = {dim: perm.tolist()}
    for name in ir.tensor_axes:
        t = get_tensor(model, name)
        new = index_tensor(ir, name, t, sel, skip_axis=skip[1] if skip and skip[0] == name else None)
        if new is not t:
            t.copy_(new)


# ----------------------------------------------------------- the reference slicer
class Skip(nn.Module):
    """A dropped residual layer: its input, in the form the layer returned its output."""

    def __init__(self, tuple_len: int, layer: nn.Module):
        super().__init__()
        for k, v in vars(layer).items():  # settings the parent may read (ModernBERT's attention_type)
            if not k.startswith("_") and k != "training" and isinstance(v, (str, int, float, bool)):
                setattr(self, k, v)
        self.tuple_len = tuple_len

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        return (x,) + (None,) * (self.tuple_len - 1) if self.tuple_len else x


def _sync_primitives(model: nn.Module) -> None:
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
            mod.normalized_shape = tuple(w.shape)
        elif isinstance(mod, nn.GroupNorm) and w is not None:
            mod.num_channels = w.shape[0]
        elif isinstance(mod, nn.modules.conv._ConvNd):
            if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
                mod.groups = w.shape[0]
            mod.out_channels, mod.in_channels = w.shape[0], w.shape[1] * mod.groups
        elif isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = w.shape


@torch.no_grad()
def reference_subnet(sn, cfg: dict, fresh: nn.Module, run_inputs) -> nn.Module:
    """The subnet ``cfg`` built independently of the supernet's slicing: ``fresh`` (a new
    instance of the original model) gets the supernet's full reordered weights, every tensor
    of the IR is cut with :func:`kept_indices`, the recorded size attributes are set and
    dropped layers become skips."""
    ir = sn.ir
    with sn.use(sn.space.largest()):
        full = {k: v.detach().clone() for k, v in sn.model.state_dict().items()}
        # non-persistent buffers too (rotary frequencies, masks): the fixture may have randomised them
        extra = {k: v.detach().clone() for k, v in sn.model.named_buffers() if k not in full}
    fresh.load_state_dict(full, strict=True)
    for k, v in extra.items():
        get_tensor(fresh, k).copy_(v)
    # how each droppable layer returns its output (tensor, or a tuple of n), seen by running it
    formats: dict[str, int] = {}
    hooks = [fresh.get_submodule(b.name).register_forward_hook(
        lambda m, a, out, n=b.name: formats.__setitem__(n, len(out) if isinstance(out, tuple) else 0))
        for b in ir.blocks]
    args, kwargs = run_inputs
    fresh(*args, **kwargs)
    for h in hooks:
        h.remove()
    sizes = {d: int(cfg[d]) for d in sn.space.dims}
    selection = {d: list(range(k)) for d, k in sizes.items()}
    aliases: dict[str, list[str]] = {}
    for alias, canonical in ir.tied.items():
        aliases.setdefault(canonical, []).append(alias)
    for name in ir.tensor_axes:
        t = get_tensor(fresh, name).detach()
        new = index_tensor(ir, name, t, selection)
        for n in [name] + aliases.get(name, []):
            put_tensor(fresh, n, new.clone())
    all_sizes = {d.name: d.size for d in ir.dims.values()} | sizes
    for a in ir.attrs:
        setattr(fresh.get_submodule(a.module) if a.module else fresh, a.attr, ir.eval_expr(a.expr, all_sizes))
    _sync_primitives(fresh)
    for b in ir.blocks:
        if not cfg.get(b.name, True):
            parent = fresh.get_submodule(b.stack) if b.stack else fresh
            parent[b.index] = Skip(formats[b.name], parent[b.index])
    return fresh
