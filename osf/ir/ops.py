"""Coupling rules for recorded torch ops (functions and tensor methods), keyed by op name.

Each rule receives the analysis context and the fx node and states which axes of its
inputs and outputs are the same (``ctx.unify``) or structured (``ctx.alg.define``).
An op without a rule fixes every axis it touches: conservative, never wrong.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from osf.ir.context import Context


OpRule = Callable[[Context, fx.Node], None]
OP_RULES: dict[str, OpRule] = {}


def rule(*names: str):
    def deco(fn: OpRule) -> OpRule:
        for n in names:
            OP_RULES[n] = fn
        return fn

    return deco


def _args(node: fx.Node) -> tuple:
    """Arguments as seen while tracing: tensors as nodes, sizes as plain ints."""
    return node.meta.get("cargs", node.args)


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    args = _args(node)
    if len(args) > i:
        return args[i]
    return node.meta.get("ckwargs", node.kwargs).get(name, default)


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


# ----------------------------------------------------------------------- elementwise
_ELEMENTWISE = """
add sub mul div true_divide floor_divide __add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__
__rtruediv__ __floordiv__ __rfloordiv__ __mod__ __rmod__ __pow__ __rpow__ pow where maximum minimum fmax fmin
masked_fill masked_fill_ add_ sub_ mul_ div_ pow_ __iadd__ __isub__ __imul__ __itruediv__ eq ne lt le gt ge
__eq__ __ne__ __lt__ __le__ __gt__ __ge__ logical_and logical_or logical_xor __and__ __or__ __xor__ __rand__
__ror__ bitwise_and bitwise_or lerp addcmul addcdiv clamp clamp_ clamp_min clamp_max fmod remainder atan2
copysign copy_ hypot xlogy isclose
relu relu_ gelu silu sigmoid tanh exp exp_ log neg abs sqrt rsqrt reciprocal sin cos erf erfc softplus dropout
float half bfloat16 double to type type_as contiguous clone detach detach_ __neg__ logical_not sign floor ceil
round exp2 log1p log2 log10 expm1 square nan_to_num elu leaky_relu hardtanh hardswish hardsigmoid mish
gelu_ softmax log_softmax _softmax normalize cumsum cumprod tril triu fill_ zero_ __invert__ bool long int
cpu cuda sigmoid_ tanh_ silu_ relu6 selu celu logit alpha_dropout feature_alpha_dropout dropout1d
dropout2d dropout3d softsign tanhshrink threshold isnan isinf isfinite signbit trunc frac neg_ abs_ sqrt_
mul_ div_ requires_grad_ zeros_like ones_like full_like empty_like rand_like randn_like randint_like
float_power positive rsqrt_ clip clip_ sinh cosh asinh acosh atanh asin acos atan deg2rad rad2deg
""".split()


@rule(*_ELEMENTWISE)
def elementwise(ctx: Context, node: fx.Node) -> None:
    out = ctx.axes(node)
    if out is None:
        return
    for a in ctx.tensor_args(node):
        ax = ctx.axes(a)
        if ax is not None:
            ctx.unify_broadcast(out, ax, a, node)


@rule("glu")
def glu(ctx: Context, node: fx.Node) -> None:
    ctx.fix_node(node)


# ------------------------------------------------------------------------ reductions
@rule("sum", "mean", "amax", "amin", "std", "var", "norm", "prod", "logsumexp", "argmax", "argmin", "all", "any",
      "count_nonzero", "nansum", "nanmean", "max", "min", "median", "std_mean", "var_mean")
def reduction(ctx: Context, node: fx.Node) -> None:
    x = _arg(node, 0, "input")
    xa = ctx.axes(x)
    if xa is None:
        return
    rank = len(xa)
    dim = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    if isinstance(dim, fx.Node) or (node.meta["op"] in ("max", "min") and isinstance(dim, torch.fx.Node)):
        return ctx.fix_node(node)  # max(a, b): elementwise of two tensors
    if dim is None:
        return  # full reduction: scalar
    dims = {_norm_dim(int(d), rank) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    outs = ctx.outputs(node)
    for out in outs:
        if out is None:
            continue
        j = 0
        for i in range(rank):
            if i in dims:
                if keepdim:
                    j += 1
                continue
            if j < len(out):
                ctx.unify(xa[i], out[j])
            j += 1


# --------------------------------------------------------------------- shape changes
def couple_reshape(ctx: Context, in_vars: list[int], in_shape: tuple, out_vars: list[int], out_shape: tuple, node=None) -> None:
    """Align axes of a reshape by equal products and unify or structure them."""
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        # skip size-1 axes (they carry no channels)
        if i < n_in and in_shape[i] == 1:
            i += 1
            continue
        if j < n_out and out_shape[j] == 1:
            j += 1
            continue
        if i >= n_in or j >= n_out:
            break
        gi, gj = [i], [j]
        pi, pj = in_shape[i], out_shape[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= n_in:
                    break
                if in_shape[i] != 1:
                    gi.append(i)
                pi *= in_shape[i]
                i += 1
            else:
                if j >= n_out:
                    break
                if out_shape[j] != 1:
                    gj.append(j)
                pj *= out_shape[j]
                j += 1
        if pi != pj:
            for k in gi:
                ctx.alg.fix(in_vars[k], "reshape")
            for k in gj:
                ctx.alg.fix(out_vars[k], "reshape")
            break
        a = [in_vars[k] for k in gi]
        b = [out_vars[k] for k in gj]
        if len(a) == 1 and len(b) == 1:
            ctx.unify(a[0], b[0])
        elif len(a) == 1:
            ctx.alg.define(a[0], "prod", b, "reshape")
        elif len(b) == 1:
            ctx.alg.define(b[0], "prod", a, "reshape")
        else:
            t = ctx.alg.new(pi)
            ctx.alg.define(t, "prod", a, "reshape")
            ctx.alg.define(t, "prod", b, "reshape")


@rule("view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as", "ravel")
def reshape(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return ctx.fix_node(node)
    couple_reshape(ctx, xa, ctx.shape(x), out, ctx.shape(node), node)
    ctx.bind_size_args(node, out, start=1)
    _fix_literal_sizes(ctx, node, out)


def _fix_literal_sizes(ctx: Context, node: fx.Node, out: list[int]) -> None:
    """An output axis whose size is written as a number in the model's code
    (``x.reshape(b, -1, 256)`` with 256 from a config list) stays that size whatever the input:
    keep it whole. Sizes read from tensors or module attributes, and ``-1``, follow their dims."""
    if node.meta["op"] not in ("view", "reshape"):
        return
    args = _args(node)[1:]
    sizes = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    if len(sizes) != len(out):
        return
    sources = node.meta.get("int_sources", {})
    nested = len(args) == 1 and isinstance(args[0], (tuple, list))
    for j, size in enumerate(sizes):
        path = (1, j) if nested else (1 + j,)
        if isinstance(size, int) and size not in (-1, 1) and path not in sources:
            ctx.alg.fix(out[j], f"size {size} written in the model's code")


def _permutes(perm_of: Callable[[fx.Node, int], list[int]]) -> OpRule:
    """A rule for ops that reorder axes: output axis ``j`` is input axis ``perm_of(node, rank)[j]``."""

    def apply(ctx: Context, node: fx.Node) -> None:
        xa, out = ctx.axes(_args(node)[0]), ctx.axes(node)
        if xa is None or out is None:
            return
        for j, i in enumerate(perm_of(node, len(xa))):
            ctx.unify(out[j], xa[i])

    return apply


def _permute_perm(node: fx.Node, n: int) -> list[int]:
    args = _args(node)
    dims = args[1:] if len(args) > 2 or not isinstance(_arg(node, 1, "dims"), (tuple, list)) else _arg(node, 1, "dims")
    return [_norm_dim(int(d), n) for d in dims]


def _transpose_perm(node: fx.Node, n: int) -> list[int]:
    a, b = (_norm_dim(int(_arg(node, k, name)), n) for k, name in ((1, "dim0"), (2, "dim1")))
    perm = list(range(n))
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def _t_perm(node: fx.Node, n: int) -> list[int]:
    perm = list(range(n))
    if n > 2 and node.meta["op"] in ("t", "getattr:T"):
        return perm[::-1]
    if n >= 2:
        perm[-1], perm[-2] = perm[-2], perm[-1]
    return perm


def _movedim_perm(node: fx.Node, n: int) -> list[int]:
    src, dst = _arg(node, 1, "source"), _arg(node, 2, "destination")
    src = [_norm_dim(s, n) for s in ([src] if isinstance(src, int) else src)]
    dst = [_norm_dim(d, n) for d in ([dst] if isinstance(dst, int) else dst)]
    perm: list[int | None] = [None] * n
    for a, b in zip(src, dst):
        perm[b] = a
    rest = iter(i for i in range(n) if i not in src)
    return [p if p is not None else next(rest) for p in perm]


rule("permute")(_permutes(_permute_perm))
rule("transpose", "swapaxes", "swapdims", "transpose_")(_permutes(_transpose_perm))
rule("t", "getattr:T", "getattr:mT", "mT", "getattr:mH", "getattr:H", "adjoint")(_permutes(_t_perm))
rule("movedim", "moveaxis")(_permutes(_movedim_perm))


@rule("squeeze", "unsqueeze", "squeeze_", "unsqueeze_", "atleast_1d", "atleast_2d", "atleast_3d")
def squeeze(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    # both only add or remove size-1 axes: align the others in order
    a = [v for v, s in zip(xa, ctx.shape(x)) if s != 1]
    b = [v for v, s in zip(out, ctx.shape(node)) if s != 1]
    if len(a) != len(b):
        return ctx.fix_node(node)
    for u, v in zip(a, b):
        ctx.unify(u, v)


@rule("expand", "expand_as", "broadcast_to")
def expand(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    ctx.unify_broadcast(out, xa, x, node)
    if node.meta["op"] == "expand":
        ctx.bind_size_args(node, out, start=1)


@rule("repeat", "tile")
def repeat(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    reps = _args(node)[1:] if len(_args(node)) > 2 or not isinstance(_arg(node, 1, "repeats"), (tuple, list)) \
        else _arg(node, 1, "repeats")
    reps = [int(r) for r in reps]
    shape_in = ctx.shape(x)
    offset = len(out) - len(xa)
    for k, v in enumerate(xa):
        r = reps[k + len(reps) - len(xa)] if len(reps) >= len(xa) else 1
        j = k + offset
        if r == 1:
            ctx.unify(out[j], v)
        elif shape_in[k] != 1:
            ctx.alg.define(out[j], "cat", [v] * r, "repeat")


@rule("repeat_interleave")
def repeat_interleave(ctx: Context, node: fx.Node) -> None:
    ctx.fix_node(node)


@rule("flip", "roll", "fliplr", "flipud", "rot90")
def flip(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    dims = _arg(node, 1 if node.meta["op"] != "roll" else 2, "dims")
    if node.meta["op"] == "roll" and dims is None:
        return ctx.fix_node(node)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    dims = {_norm_dim(int(d), len(xa)) for d in dims}
    for i, (u, v) in enumerate(zip(xa, out)):
        ctx.unify(u, v)
        if i in dims:
            ctx.alg.fix(u, node.meta["op"])


# ---------------------------------------------------------------- concat and split
@rule("cat", "concat", "concatenate")
def cat(ctx: Context, node: fx.Node) -> None:
    tensors = _arg(node, 0, "tensors")
    dim = int(_arg(node, 1, "dim", 0))
    out = ctx.axes(node)
    if out is None:
        return
    parts = []
    d = _norm_dim(dim, len(out))
    for t in tensors:
        ta = ctx.axes(t)
        if ta is None:
            return ctx.fix_node(node)
        if len(ta) != len(out):  # legacy empty tensors
            continue
        for k in range(len(out)):
            if k != d:
                ctx.unify(out[k], ta[k])
        parts.append(ta[d])
    ctx.alg.define(out[d], "cat", parts, "cat")


@rule("stack")
def stack(ctx: Context, node: fx.Node) -> None:
    tensors = _arg(node, 0, "tensors")
    out = ctx.axes(node)
    if out is None:
        return
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(out))
    for t in tensors:
        ta = ctx.axes(t)
        if ta is None:
            return ctx.fix_node(node)
        rest = out[:d] + out[d + 1:]
        for u, v in zip(rest, ta):
            ctx.unify(u, v)
    ctx.alg.fix(out[d], "stack")


@rule("split", "split_with_sizes", "chunk", "tensor_split", "unbind", "unsafe_split", "hsplit", "vsplit")
def split(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa = ctx.axes(x)
    outs = ctx.outputs(node)
    if xa is None or not outs:
        return
    op = node.meta["op"]
    if op == "unbind":
        d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(xa))
        for o in outs:
            if o is not None:
                for u, v in zip(xa[:d] + xa[d + 1:], o):
                    ctx.unify(u, v)
        ctx.alg.fix(xa[d], "unbind")
        return
    d = _norm_dim(int(_arg(node, 2, "dim", 0)), len(xa))
    parts = []
    for o in outs:
        if o is None:
            return ctx.fix_node(node)
        for k in range(len(xa)):
            if k != d:
                ctx.unify(xa[k], o[k])
        parts.append(o[d])
    ctx.alg.define(xa[d], "cat", parts, op)
    if op == "chunk" and len({ctx.alg.size_of(p) for p in parts}) == 1:
        # chunk(n) cuts n equal parts of whatever size the axis has: they shrink together
        for part in parts[1:]:
            ctx.unify(parts[0], part)
    # sizes given by module attributes (e.g. [self.time_step_rank, self.ssm_state_size, ...])
    sources = node.meta.get("int_sources", {})
    for path, src in sources.items():
        if len(path) == 2 and path[0] == 1 and path[1] < len(parts):
            ctx.bind_source(src, parts[path[1]])
        elif path in ((1,), ("split_size_or_sections",), ("split_size",)) and op != "chunk":
            for part in parts:  # one size for every part, e.g. split(x.size(-1))
                if ctx.alg.size_of(part) == ctx.alg.size_of(parts[0]):
                    ctx.bind_source(src, part)
    _fix_literal_split(ctx, node, parts)


_SPLIT_SIZES = {"split": ("split_size_or_sections", "split_size"), "split_with_sizes": ("split_sizes",),
                "unsafe_split": ("split_size",), "tensor_split": ("indices_or_sections", "sections", "indices"),
                "hsplit": ("indices_or_sections", "sections", "indices"),
                "vsplit": ("indices_or_sections", "sections", "indices")}


def _fix_literal_split(ctx: Context, node: fx.Node, parts: list[int]) -> None:
    """Split sizes (or cut points) written as numbers in the model's code
    (``x.split([self.args.d_inner, self.args.d_inner])`` with the sizes in a plain config object)
    stay those numbers whatever the input: keep every part whole. Sizes read from tensors or
    module attributes follow their dims; ``chunk(n)`` and a number of sections cut in
    proportion and need nothing."""
    names = _SPLIT_SIZES.get(node.meta["op"])
    if names is None:
        return
    args = _args(node)
    kwargs = node.meta.get("ckwargs", node.kwargs)
    key = next((n for n in names if n in kwargs), None)
    if len(args) > 1:
        sizes, path = args[1], (1,)
    elif key is not None:
        sizes, path = kwargs[key], (key,)
    else:
        return
    sources = node.meta.get("int_sources", {})
    if isinstance(sizes, (tuple, list)):
        literal = [i for i, v in enumerate(sizes) if isinstance(v, int) and path + (i,) not in sources]
        if literal:
            written = [sizes[i] for i in literal]
            for part in parts:
                ctx.alg.fix(part, f"split sizes {written} written in the model's code")
    elif isinstance(sizes, int) and path not in sources and node.meta["op"] in ("split", "unsafe_split"):
        for part in parts:
            ctx.alg.fix(part, f"split size {sizes} written in the model's code")


@rule("narrow")
def narrow(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    d = _norm_dim(int(_args(node)[1]), len(xa))
    start, length = int(_args(node)[2]), int(_args(node)[3])
    for k in range(len(xa)):
        if k != d:
            ctx.unify(xa[k], out[k])
    ctx.slice_axis(xa[d], out[d], start, start + length, 1)
    sources = node.meta.get("int_sources", {})
    # a window written as numbers in the model's code stays that window whatever the input
    written = [v for i, v in ((2, start), (3, length)) if (i,) not in sources and (i, v) != (2, 0)]
    if written:
        ctx.alg.fix(xa[d], f"narrow by {written} written in the model's code")


@rule("select")
def select(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    d = _norm_dim(int(_args(node)[1]), len(xa))
    ctx.alg.fix(xa[d], "select")
    for u, v in zip(xa[:d] + xa[d + 1:], out):
        ctx.unify(u, v)


_INDEX_DIM_ARG = {"topk": (2, "dim"), "kthvalue": (2, "dim"), "take": (99, "_none"), "masked_select": (99, "_none"),
                  "masked_scatter": (99, "_none")}


@rule("index_add", "index_add_", "index_copy", "index_copy_")
def index_add(ctx: Context, node: fx.Node) -> None:
    """``x.index_add(d, index, source)``: rows of ``source`` along ``d`` go to rows ``index`` of
    ``x``; every other axis of ``source`` is ``x``'s (a mixture of experts adds each expert's
    output into the token rows it was routed)."""
    x, source = _args(node)[0], _arg(node, 3, "source")
    dim = _arg(node, 1, "dim")
    xa, sa, out = ctx.axes(x), ctx.axes(source), ctx.axes(node)
    if xa is None or sa is None or out is None or not isinstance(dim, int) or len(sa) != len(xa) \
            or not -len(xa) <= dim < len(xa):
        return ctx.fix_node(node)
    d = _norm_dim(dim, len(xa))
    for k in range(len(xa)):
        if k == d:
            for v in (xa[k], sa[k], out[k]):
                ctx.alg.fix(v, "index_add rows")
        else:
            ctx.unify(xa[k], out[k])
            ctx.unify(sa[k], out[k])
    for v in ctx.axes(_arg(node, 2, "index")) or []:
        ctx.alg.fix(v, "index")


@rule("index_select", "gather", "take_along_dim", "scatter", "scatter_add",
      "scatter_", "index_put", "index_put_", "masked_select", "masked_scatter", "take", "sort", "topk",
      "argsort", "kthvalue", "cummax", "cummin")
def index_ops(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa = ctx.axes(x)
    if xa is None:
        return ctx.fix_node(node)
    op = node.meta["op"]
    # topk(k, dim) and kthvalue(k, dim) take the axis second; the others first (take, masked_* none)
    dim = _arg(node, *_INDEX_DIM_ARG.get(op, (1, "dim")))
    if dim is None and op in ("topk", "kthvalue", "sort", "argsort", "cummax", "cummin"):
        dim = -1
    outs = [o for o in ctx.outputs(node) if o is not None]
    if isinstance(dim, int) and -len(xa) <= dim < len(xa) and all(len(o) == len(xa) for o in outs):
        d = _norm_dim(dim, len(xa))
        ctx.alg.fix(xa[d], node.meta["op"])
        for o in outs:
            ctx.alg.fix(o[d], node.meta["op"])
            for k in range(len(xa)):
                if k != d:
                    ctx.unify(xa[k], o[k])
        for a in ctx.tensor_args(node)[1:]:
            aa = ctx.axes(a)
            if aa is not None:
                for v in aa:
                    ctx.alg.fix(v, node.meta["op"])
        return
    ctx.fix_node(node)


def _index_items(idx: Any) -> list:
    return list(idx) if isinstance(idx, tuple) else [idx]


def _indexed_axes(ctx: Context, x: fx.Node, idx: Any, out: list[int] | None, out_shape: tuple | None):
    """Map the axes of ``x[idx]``: returns list of (input var or None, output position or None)."""
    xa = ctx.axes(x)
    shape = ctx.shape(x)
    items = _index_items(idx)
    n_consumed = sum(1 for it in items if it is not None and it is not Ellipsis and not (
        isinstance(it, bool)))
    tensor_items = [k for k, it in enumerate(items) if isinstance(it, fx.Node)]
    # expand Ellipsis
    if any(it is Ellipsis for it in items):
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (len(xa) - n_consumed + 1) + items[k + 1:]
    pairs = []
    i = 0
    j = 0
    adv_done = False
    adjacent = tensor_items == list(range(tensor_items[0], tensor_items[-1] + 1)) if tensor_items else True
    adv_rank = 0
    if tensor_items:
        shapes = [ctx.shape(items[k]) for k in tensor_items if isinstance(items[k], fx.Node)]
        adv_rank = max(len(s) for s in shapes) if shapes else 0
        if not adjacent:
            j = adv_rank  # advanced axes go first
            adv_done = True
    for it in items:
        if it is None:
            j += 1
            continue
        if i >= len(xa):
            break
        if isinstance(it, fx.Node):
            ctx.alg.fix(xa[i], "advanced indexing")
            if not adv_done:
                j += adv_rank
                adv_done = True
            i += 1
            continue
        if isinstance(it, slice):
            pairs.append((i, j, it))
            i += 1
            j += 1
            continue
        if isinstance(it, (int, torch.SymInt)) or isinstance(it, fx.Node):
            ctx.alg.fix(xa[i], "integer index") if shape[i] != 1 else None
            i += 1
            continue
        ctx.alg.fix(xa[i], "index")
        i += 1
    while i < len(xa):
        pairs.append((i, j, slice(None)))
        i += 1
        j += 1
    return pairs


@rule("__getitem__")
def getitem(ctx: Context, node: fx.Node) -> None:
    x, idx = _args(node)[0], _args(node)[1]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None:
        return
    if out is None:
        return
    if isinstance(idx, fx.Node) and ctx.shape(idx) is not None and ctx.node_dtype(idx) == torch.bool:
        return ctx.fix_node(node)
    try:
        pairs = _indexed_axes(ctx, x, idx, out, ctx.shape(node))
    except Exception:
        return ctx.fix_node(node)
    shape = ctx.shape(x)
    for i, j, sl in pairs:
        if j >= len(out):
            ctx.alg.fix(xa[i], "index")
            continue
        start, stop, step = sl.indices(shape[i]) if not any(isinstance(s, fx.Node) for s in (
            sl.start, sl.stop, sl.step)) else (0, shape[i], 1)
        ctx.slice_axis(xa[i], out[j], start, stop, step)


@rule("__setitem__")
def setitem(ctx: Context, node: fx.Node) -> None:
    x, idx, value = _args(node)[0], _args(node)[1], _args(node)[2]
    xa = ctx.axes(x)
    if xa is None:
        return
    va = ctx.axes(value) if isinstance(value, fx.Node) else None
    try:
        pairs = _indexed_axes(ctx, x, idx, None, None)
    except Exception:
        return ctx.fix_node(node)
    if va is None:
        return
    shape = ctx.shape(x)
    sel_vars = []
    for i, j, sl in pairs:
        start, stop, step = sl.indices(shape[i])
        if (start, stop, step) == (0, shape[i], 1):
            sel_vars.append(xa[i])
        else:
            ctx.alg.fix(xa[i], "partial assignment")
            sel_vars.append(None)
    vshape = ctx.shape(value)
    for k in range(1, min(len(va), len(sel_vars)) + 1):
        if sel_vars[-k] is not None and vshape[-k] != 1:
            ctx.unify(sel_vars[-k], va[-k])


# ---------------------------------------------------------------- linear algebra
@rule("matmul", "__matmul__", "bmm", "mm", "__rmatmul__")
def matmul(ctx: Context, node: fx.Node) -> None:
    a, b = _args(node)[0], _args(node)[1]
    if node.meta["op"] == "__rmatmul__":
        a, b = b, a
    aa, ba, out = ctx.axes(a), ctx.axes(b), ctx.axes(node)
    if aa is None or ba is None or out is None:
        return ctx.fix_node(node)
    a_vec, b_vec = len(aa) == 1, len(ba) == 1
    ka = aa[-1]
    kb = ba[0] if b_vec else ba[-2]
    ctx.unify(ka, kb)
    o = list(out)
    if not b_vec:
        ctx.unify(o.pop(), ba[-1])
    if not a_vec:
        ctx.unify(o.pop(), aa[-2])
    # batch dims broadcast
    batch_a = aa[:-2] if not a_vec else []
    batch_b = ba[:-2] if not b_vec else []
    sa = ctx.shape(a)[:-2] if not a_vec else ()
    sb = ctx.shape(b)[:-2] if not b_vec else ()
    so = ctx.shape(node)[:len(o)]
    for vars_, shp in ((batch_a, sa), (batch_b, sb)):
        for k in range(1, len(vars_) + 1):
            if shp[-k] == so[-k] and shp[-k] != 1:
                ctx.unify(vars_[-k], o[-k])


@rule("baddbmm", "addmm", "addbmm", "addmv")
def addmm(ctx: Context, node: fx.Node) -> None:
    """``beta * input + alpha * (a @ b)``, the products given by position or by keyword
    (``alibi.baddbmm(batch1=q, batch2=k, ...)``, as ALiBi attention writes it)."""
    names = {"baddbmm": ("batch1", "batch2"), "addbmm": ("batch1", "batch2"), "addmm": ("mat1", "mat2"),
             "addmv": ("mat", "vec")}[node.meta["op"]]
    bias = _arg(node, 0, "input", _arg(node, 0, "self"))
    a, b = _arg(node, 1, names[0]), _arg(node, 2, names[1])
    aa, ba, out = ctx.axes(a), ctx.axes(b), ctx.axes(node)
    if aa is None or ba is None or out is None or len(ba) < 2 or node.meta["op"] == "addbmm":
        return ctx.fix_node(node)
    ctx.unify(aa[-1], ba[-2])
    ctx.unify(out[-1], ba[-1])
    ctx.unify(out[-2], aa[-2])
    for k in range(3, len(out) + 1):
        ctx.unify(out[-k], aa[-k])
        ctx.unify(out[-k], ba[-k])
    bb = ctx.axes(bias)
    if bb is not None:
        ctx.unify_broadcast(out, bb, bias, node)


@rule("_grouped_mm", "grouped_mm", "grouped_mm_fallback")
def grouped_mm(ctx: Context, node: fx.Node) -> None:
    """``grouped_mm(x (S, in), w (experts, in, out), offs)`` -> (S, out): each row of ``x`` times
    the matrix of its expert (fused mixture-of-experts weights). The expert axis and the offsets
    are routing, not channels."""
    x, w = _args(node)[0], _arg(node, 1, "weight", _arg(node, 1, "mat_b"))
    xa, wa, out = ctx.axes(x), ctx.axes(w), ctx.axes(node)
    if xa is None or wa is None or out is None or len(xa) != 2 or len(wa) != 3 or len(out) != 2:
        return ctx.fix_node(node)
    ctx.unify(xa[-1], wa[-2])
    ctx.unify(out[-1], wa[-1])
    ctx.unify(xa[0], out[0])
    ctx.alg.fix(wa[0], "experts (routed by index)")
    offs = _arg(node, 2, "offs")
    for v in ctx.axes(offs) or []:
        ctx.alg.fix(v, "grouped_mm offsets")


@rule("einsum")
def einsum(ctx: Context, node: fx.Node) -> None:
    eq = _args(node)[0]
    operands = _args(node)[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if not isinstance(eq, str) or "..." in eq:
        return ctx.fix_node(node)
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    letters: dict[str, int] = {}
    for spec, t in zip(lhs.split(","), operands):
        ta = ctx.axes(t)
        if ta is None or len(ta) != len(spec):
            return ctx.fix_node(node)
        for ch, v in zip(spec, ta):
            if ch in letters:
                ctx.unify(letters[ch], v)
            else:
                letters[ch] = v
    out = ctx.axes(node)
    if out is not None and rhs:
        for ch, v in zip(rhs, out):
            if ch in letters:
                ctx.unify(letters[ch], v)


@rule("linear")
def linear(ctx: Context, node: fx.Node) -> None:
    x, w = _args(node)[0], _arg(node, 1, "weight")
    b = _arg(node, 2, "bias")
    xa, wa, out = ctx.axes(x), ctx.axes(w), ctx.axes(node)
    if xa is None or wa is None or out is None:
        return ctx.fix_node(node)
    ctx.linear(xa, out, wa, ctx.axes(b) if isinstance(b, fx.Node) else None)


@rule("outer", "ger")
def outer(ctx: Context, node: fx.Node) -> None:
    a, b = _args(node)[0], _args(node)[1]
    aa, ba, out = ctx.axes(a), ctx.axes(b), ctx.axes(node)
    if aa and ba and out:
        ctx.unify(out[0], aa[0])
        ctx.unify(out[1], ba[0])


# ------------------------------------------------------------------- nn functional
@rule("layer_norm", "rms_norm")
def layer_norm(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    for u, v in zip(xa, out):
        ctx.unify(u, v)
    nshape = _arg(node, 1, "normalized_shape")
    n = len(nshape) if isinstance(nshape, (tuple, list)) else 1
    for k, name in ((2, "weight"), (3, "bias")):
        w = _arg(node, k, name)
        if isinstance(w, fx.Node):
            wa = ctx.axes(w)
            if wa is not None:
                for u, v in zip(xa[-n:], wa[-n:]):
                    ctx.unify(u, v)


@rule("group_norm")
def group_norm(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    for u, v in zip(xa, out):
        ctx.unify(u, v)
    groups = int(_arg(node, 1, "num_groups"))
    ctx.grouped_channels(xa[1], groups)
    for k, name in ((2, "weight"), (3, "bias")):
        w = _arg(node, k, name)
        if isinstance(w, fx.Node) and ctx.axes(w):
            ctx.unify(ctx.axes(w)[0], xa[1])


@rule("batch_norm", "instance_norm")
def batch_norm(ctx: Context, node: fx.Node) -> None:
    x = _args(node)[0]
    xa, out = ctx.axes(x), ctx.axes(node)
    if xa is None or out is None:
        return
    for u, v in zip(xa, out):
        ctx.unify(u, v)
    for a in ctx.tensor_args(node)[1:]:
        aa = ctx.axes(a)
        if aa is not None and len(aa) == 1:
            ctx.unify(aa[0], xa[1])


@rule("embedding")
def embedding(ctx: Context, node: fx.Node) -> None:
    ids, w = _args(node)[0], _args(node)[1]
    ia, wa, out = ctx.axes(ids), ctx.axes(w), ctx.axes(node)
    if wa is None or out is None:
        return ctx.fix_node(node)
    ctx.embedding(ia, wa, out)


# module attributes that hold the number of query heads per key/value head (HF, vLLM-style names)
GQA_GROUP_ATTRIBUTES = ("num_key_value_groups", "num_kv_groups", "n_rep", "num_queries_per_kv")


@rule("scaled_dot_product_attention")
def sdpa(ctx: Context, node: fx.Node) -> None:
    q, k, v = _args(node)[0], _args(node)[1], _args(node)[2]
    qa, ka, va, out = ctx.axes(q), ctx.axes(k), ctx.axes(v), ctx.axes(node)
    if None in (qa, ka, va, out):
        return ctx.fix_node(node)
    ctx.unify(qa[-1], ka[-1])
    ctx.unify(ka[-2], va[-2])
    ctx.unify(out[-1], va[-1])
    ctx.unify(out[-2], qa[-2])
    sq, sk, sv, so = ctx.shape(q), ctx.shape(k), ctx.shape(v), ctx.shape(node)
    if len(qa) >= 3 and len(ka) >= 3 and len(va) >= 3:
        if sk[-3] == sv[-3]:
            ctx.unify(ka[-3], va[-3])  # key and value heads pair up, grouped or not
        if _arg(node, 7, "enable_gqa", False) and sq[-3] != sk[-3] and sk[-3] > 0 and sq[-3] % sk[-3] == 0:
            # grouped-query attention: query head h reads kv head h // (Hq / Hkv), so the query
            # heads are (kv heads x queries per kv head), row-major
            per_group = ctx.alg.new(sq[-3] // sk[-3])
            ctx.alg.define(qa[-3], "prod", [ka[-3], per_group], "grouped-query attention")
            module = node.meta.get("module", "")
            ctx.name_var(ka[-3], f"{module}:kv_heads", "heads")
            ctx.name_var(per_group, f"{module}:q_per_kv", "heads")
            owner = ctx.user_module(module)
            for attr in GQA_GROUP_ATTRIBUTES:  # the paths without enable_gqa (masks, decoding) read it
                if int(getattr(owner, attr, 0) or 0) == sq[-3] // sk[-3]:
                    ctx.bind_attr(module, attr, per_group)
    for vars_, shp in ((qa, sq), (ka, sk), (va, sv)):
        for i in range(3, len(vars_) + 1):
            if shp[-i] == so[-i]:
                ctx.unify(vars_[-i], out[-i])
    mask = _arg(node, 3, "attn_mask")
    if isinstance(mask, fx.Node):
        ma = ctx.axes(mask)
        if ma is not None:
            ms = ctx.shape(mask)
            target = list(out[:-1]) + [ka[-2]]
            tshape = tuple(so[:-1]) + (sk[-2],)
            for i in range(1, len(ma) + 1):
                if i <= len(target) and ms[-i] == tshape[-i] and ms[-i] != 1:
                    ctx.unify(ma[-i], target[-i])


@rule("interpolate", "pad", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
      "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
      "max_pool2d_with_indices", "upsample", "pixel_shuffle", "unfold", "fold")
def spatial(ctx: Context, node: fx.Node) -> None:
    """Pooling and resizing: batch and channel axes pass through; spatial axes are fixed."""
    x = _args(node)[0]
    xa = ctx.axes(x)
    outs = [o for o in ctx.outputs(node) if o is not None]
    if xa is None or not outs:
        return
    op = node.meta["op"]
    if op in ("pixel_shuffle", "unfold", "fold"):
        return ctx.fix_node(node)
    if op == "pad":
        pads = [int(p) for p in _arg(node, 1, "pad")]
        padded = {len(xa) - 1 - k for k in range(len(pads) // 2) if pads[2 * k] or pads[2 * k + 1]}
        for o in outs:
            for k in range(len(xa)):
                if k in padded:
                    ctx.alg.fix(xa[k], "pad")
                    ctx.alg.fix(o[k], "pad")
                else:
                    ctx.unify(xa[k], o[k])
        return
    for o in outs:
        for k in range(len(xa)):
            if k < 2 and len(xa) > 2 or (len(xa) == 2 and k < 1):
                ctx.unify(xa[k], o[k])
            else:
                ctx.alg.fix(xa[k], op)
                ctx.alg.fix(o[k], op)


@rule("conv1d", "conv2d", "conv3d")
def conv(ctx: Context, node: fx.Node) -> None:
    x, w = _args(node)[0], _arg(node, 1, "weight")
    b = _arg(node, 2, "bias")
    groups = int(_arg(node, 6, "groups", 1))
    xa, wa, out = ctx.axes(x), ctx.axes(w), ctx.axes(node)
    if xa is None or wa is None or out is None:
        return ctx.fix_node(node)
    ctx.conv(xa, out, wa, ctx.axes(b) if isinstance(b, fx.Node) else None, groups)


# ------------------------------------------------------------------------ factories
@rule("arange", "zeros", "ones", "full", "empty", "randn", "rand", "randint", "tensor", "as_tensor", "eye",
      "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "linspace", "logspace", "zeros_",
      "ones_", "randperm", "empty_strided", "scalar_tensor")
def factory(ctx: Context, node: fx.Node) -> None:
    """Fresh tensors: an axis whose size came from a module attribute follows that attribute;
    one from another tensor's size follows that axis; any other is fixed."""
    out = ctx.axes(node)
    if out is None:
        return
    op = node.meta["op"]
    start = 1 if op.startswith("new_") else 0
    bound = ctx.bind_size_args(node, out, start=start, fix_others=True)
    del bound


# --------------------------------------------------------------------- no tensors
@rule("size", "getattr:shape", "getattr:dtype", "getattr:device", "numel", "dim", "getattr:data")
def no_op(ctx: Context, node: fx.Node) -> None:
    if node.meta["op"] == "getattr:data":
        xa, out = ctx.axes(_args(node)[0]), ctx.axes(node)
        if xa and out:
            for u, v in zip(xa, out):
                ctx.unify(u, v)


@rule("getitem")
def getitem_of_tuple(ctx: Context, node: fx.Node) -> None:
    src, i = _args(node)
    out = ctx.axes(node)
    if out is None or not isinstance(src, fx.Node):
        return
    src_out = ctx.outputs(src)
    if i < len(src_out) and src_out[i] is not None:
        for u, v in zip(src_out[i], out):
            ctx.unify(u, v)

