"""Op rules: modules whose internals the graph must not unroll, described by structure.

A rule *matches* a module by its parameter names and shapes (never by class name), so
Hugging Face's ``MambaMixer``, ``mamba_ssm``'s ``Mamba`` and users' copies with the same
parameter layout are all covered. Matched modules are traced as single ops; the rule's
``apply`` states how the module's parameter axes, inputs and outputs couple, names the
dims it creates and records which module attributes hold their sizes.

Register a rule for a new kind of module with :func:`register`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from osf.ir.context import Context, relative_path


@dataclass
class ModuleRule:
    """``matches(module) -> bool``; ``apply(ctx, node, module, path)`` adds the couplings."""

    name: str
    matches: Callable[[nn.Module], bool]
    apply: Callable[[Context, fx.Node, nn.Module, str], None]


_RULES: list[ModuleRule] = []


def register(rule: ModuleRule) -> ModuleRule:
    """Add an op rule; later registrations take precedence."""
    _RULES.insert(0, rule)
    return rule


def match(module: nn.Module) -> ModuleRule | None:
    """The first rule that matches ``module``, if any."""
    for r in _RULES:
        try:
            if r.matches(module):
                return r
        except Exception:  # a rule probing an unusual module must not break tracing
            continue
    return None


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def bind_sizes(ctx: Context, m: nn.Module, path: str, names: Mapping[int, Sequence[str]]) -> None:
    """Record where the leaf module ``m`` (whose forward the graph does not see) keeps the size
    of each dim var: ``names[var]`` lists the attribute names it may have.

    Its own int attributes are bound (set per config). A dim with none of them, whose size sits
    instead in a plain object the module holds (mamba-minimal's ``self.args.d_inner``), is bound
    through that object (``args.d_inner``) when only the module and its parents hold the object
    (one copy per layer); an object other modules hold too (one ``ModelArgs`` for every layer)
    cannot hold a size per layer, so that dim is kept whole."""
    holders = None
    for var, attrs in names.items():
        own = [a for a in attrs if _is_size(getattr(m, a, None))]
        for a in own:
            ctx.bind_attr(path, a, var)
        if own:
            continue
        size = ctx.alg.size_of(var)
        for key, obj in _held_objects(m):
            found = [a for a in attrs if _is_size(_safe_getattr(obj, a)) and _safe_getattr(obj, a) == size]
            if not found:
                continue
            if holders is None:
                holders = _holders(ctx.gm)
            others = [h for h in holders.get(id(obj), []) if h != path and not path.startswith(h + ".") and h]
            if others:
                ctx.alg.fix(var, f"{relative_path(path)}.{key}.{found[0]} is in an object that "
                                 f"{relative_path(others[0])!r} holds too: one size for both")
            else:
                for a in found:
                    ctx.bind_attr(path, f"{key}.{a}", var)


def _is_size(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _safe_getattr(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property of a user object may raise
        return None


def _held_objects(m: nn.Module) -> list[tuple[str, object]]:
    """The plain objects (configs, argument records) held in ``m``'s own attributes."""
    return [(k, v) for k, v in vars(m).items()
            if not k.startswith("_") and hasattr(v, "__dict__") and not isinstance(v, (nn.Module, torch.Tensor, type))
            and not callable(v)]


def _holders(root: nn.Module) -> dict[int, list[str]]:
    """For each plain object held by a module of ``root``: the paths of the modules holding it."""
    out: dict[int, list[str]] = {}
    for name, mod in root.named_modules():
        for _, obj in _held_objects(mod):
            out.setdefault(id(obj), []).append(name)
    return out


# --------------------------------------------------------------------------- Mamba
def _is_mamba_mixer(m: nn.Module) -> bool:
    s = _shapes(m)
    need = ("in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight", "A_log", "D", "out_proj.weight")
    if not all(k in s for k in need) or len(s["A_log"]) != 2:
        return False
    e, n = s["A_log"]
    r = s["dt_proj.weight"][1]
    return (s["in_proj.weight"][0] == 2 * e and s["conv1d.weight"][0] == e and s["x_proj.weight"] == (r + 2 * n, e)
            and s["dt_proj.weight"][0] == e and s["D"] == (e,) and s["out_proj.weight"][1] == e)


def _apply_mamba(ctx: Context, node: fx.Node, m: nn.Module, path: str) -> None:
    p = lambda name: ctx.param_axes(f"{path}.{name}")  # noqa: E731
    e_size, n_size = m.A_log.shape
    r_size = m.dt_proj.weight.shape[1]
    E = ctx.new_dim(e_size, f"{path}:d_inner", "width")
    N = ctx.new_dim(n_size, f"{path}:d_state", "state")
    R = ctx.new_dim(r_size, f"{path}:dt_rank", "rank")
    in_w = p("in_proj.weight")
    ctx.alg.define(in_w[0], "cat", [E, E], "mamba in_proj [x | z]")
    if m.in_proj.bias is not None:
        ctx.unify(p("in_proj.bias")[0], in_w[0])
    conv_w = p("conv1d.weight")
    ctx.unify(conv_w[0], E)
    if m.conv1d.bias is not None:
        ctx.unify(p("conv1d.bias")[0], E)
    x_w = p("x_proj.weight")
    ctx.alg.define(x_w[0], "cat", [R, N, N], "mamba x_proj [dt | B | C]")
    ctx.unify(x_w[1], E)
    dt_w = p("dt_proj.weight")
    ctx.unify(dt_w[0], E)
    ctx.unify(dt_w[1], R)
    if m.dt_proj.bias is not None:
        ctx.unify(p("dt_proj.bias")[0], E)
    a = p("A_log")
    ctx.unify(a[0], E)
    ctx.unify(a[1], N)
    ctx.unify(p("D")[0], E)
    out_w = p("out_proj.weight")
    ctx.unify(out_w[1], E)
    ctx.module_io(node, in_w[1], out_w[0])
    if m.out_proj.bias is not None:
        ctx.unify(p("out_proj.bias")[0], out_w[0])
    bind_sizes(ctx, m, path, {E: ("intermediate_size", "d_inner"), N: ("ssm_state_size", "d_state"),
                              R: ("time_step_rank", "dt_rank")})
    known = {"in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
             "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias"}
    channel_multipliers(ctx, m, path, known, in_w[0], [E, N, R])


register(ModuleRule("mamba_mixer", _is_mamba_mixer, _apply_mamba))


# -------------------------------------------------------------------------- Mamba2
def _is_mamba2_mixer(m: nn.Module) -> bool:
    s = _shapes(m)
    need = ("in_proj.weight", "conv1d.weight", "A_log", "D", "dt_bias", "out_proj.weight")
    if not all(k in s for k in need) or len(s["A_log"]) != 1:
        return False
    h = s["A_log"][0]
    e = s["out_proj.weight"][1]  # the gated norm (norm.weight) is optional (Falcon-H1)
    if "norm.weight" in s and s["norm.weight"] != (e,):
        return False
    conv = s["conv1d.weight"][0]
    g, n = getattr(m, "n_groups", None), getattr(m, "ssm_state_size", None)
    return (isinstance(g, int) and isinstance(n, int) and e % h == 0 and conv == e + 2 * g * n
            and s["in_proj.weight"][0] == e + conv + h and s["out_proj.weight"][1] == e)


def _apply_mamba2(ctx: Context, node: fx.Node, m: nn.Module, path: str) -> None:
    p = lambda name: ctx.param_axes(f"{path}.{name}")  # noqa: E731
    h_size = m.A_log.shape[0]
    e_size = m.out_proj.weight.shape[1]
    g_size, n_size = int(m.n_groups), int(m.ssm_state_size)
    G = ctx.alg.new(g_size)
    ctx.alg.fix(G, "mamba2 groups")
    HG = ctx.new_dim(h_size // g_size, f"{path}:heads", "heads")
    P = ctx.new_dim(e_size // h_size, f"{path}:head_dim", "head_dim")
    N = ctx.new_dim(n_size, f"{path}:d_state", "state")
    H = ctx.alg.new(h_size)
    ctx.alg.define(H, "prod", [G, HG], "mamba2 heads per group")
    E = ctx.alg.new(e_size)
    ctx.alg.define(E, "prod", [G, HG, P], "mamba2 d_inner")
    GN = ctx.alg.new(g_size * n_size)
    ctx.alg.define(GN, "prod", [G, N], "mamba2 B/C")
    GN2 = ctx.alg.new(g_size * n_size)
    ctx.alg.define(GN2, "prod", [G, N], "mamba2 B/C")
    X = ctx.alg.new(e_size)
    ctx.alg.define(X, "prod", [G, HG, P], "mamba2 x")
    XBC = ctx.alg.new(e_size + 2 * g_size * n_size)
    ctx.alg.define(XBC, "cat", [X, GN, GN2], "mamba2 xBC")
    in_w = p("in_proj.weight")
    ctx.alg.define(in_w[0], "cat", [E, XBC, H], "mamba2 in_proj [z | xBC | dt]")
    if m.in_proj.bias is not None:
        ctx.unify(p("in_proj.bias")[0], in_w[0])
    ctx.unify(p("conv1d.weight")[0], XBC)
    if m.conv1d.bias is not None:
        ctx.unify(p("conv1d.bias")[0], XBC)
    for name in ("A_log", "D", "dt_bias"):
        ctx.unify(p(name)[0], H)
    if getattr(getattr(m, "norm", None), "weight", None) is not None:
        ctx.unify(p("norm.weight")[0], E)
    out_w = p("out_proj.weight")
    ctx.unify(out_w[1], E)
    if m.out_proj.bias is not None:
        ctx.unify(p("out_proj.bias")[0], out_w[0])
    ctx.module_io(node, in_w[1], out_w[0])
    ctx.bind_attr(path, "num_heads", H)
    ctx.bind_attr(path, "head_dim", P)
    ctx.bind_attr(path, "ssm_state_size", N)
    ctx.bind_attr(path, "intermediate_size", E)
    ctx.bind_attr(path, "conv_dim", XBC)
    if isinstance(getattr(getattr(m, "norm", None), "group_size", None), int):
        ctx.bind_attr(f"{path}.norm", "group_size", ("mul", HG, P))
    if isinstance(getattr(m, "groups_time_state_size", None), int):
        ctx.bind_attr(path, "groups_time_state_size", GN)
    known = {"in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "A_log", "D", "dt_bias", "norm.weight",
             "out_proj.weight", "out_proj.bias"}
    channel_multipliers(ctx, m, path, known, in_w[0], [E, XBC, H, N, HG, P])


def channel_multipliers(ctx: Context, m: nn.Module, path: str, known: set[str], fused: int, dims: list[int]) -> None:
    """Tensors of a rule-matched module that the rule does not name: a vector as long as the
    fused input projection's output (a per-channel multiplier such as Falcon-H1's
    ``mup_vector``, shaped (1, 1, n) or (n,)) follows that projection's layout; anything else
    (Jamba's norms over ``d_state`` and ``dt_rank``) keeps whole every dim of the module as long
    as one of its axes, since the module's code may size it by that dim."""
    fused_size = ctx.alg.size_of(fused)
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if name in known:
            continue
        axes = ctx.param_axes(f"{path}.{name}")
        if t.shape and t.shape[-1] == fused_size and all(s == 1 for s in t.shape[:-1]):
            ctx.unify(axes[-1], fused)
            continue
        sizes = set(t.shape)
        for v in list(axes) + [d for d in dims if ctx.alg.size_of(d) in sizes]:
            ctx.alg.fix(v, f"{path}.{name} is not described by the rule")

register(ModuleRule("mamba2_mixer", _is_mamba2_mixer, _apply_mamba2))
