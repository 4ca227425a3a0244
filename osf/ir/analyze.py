"""Coupling analysis: from a traced graph to elastic dims, blocks and size attributes."""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import nn

import osf.ir.rules as module_rules
from osf.ir.context import PREFIX as _PREFIX
from osf.ir.context import Context, relative_path as _rel
from osf.ir.ir import IR, Block, Dim, Member
from osf.ir.layout import AxisAlgebra
from osf.ir.ops import OP_RULES, couple_reshape
from osf.ir.trace import trace as trace_model

# --------------------------------------------------------------------------- leaves
_UNARY_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity, nn.Softmax,
                  nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.ReLU6, nn.Softplus,
                  nn.LogSoftmax, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.SELU, nn.CELU,
                  nn.PReLU, nn.Hardtanh, nn.Softsign, nn.Tanhshrink)
_SPATIAL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)


def _apply_leaf(ctx: Context, node: fx.Node, module: nn.Module, path: str) -> None:
    rule = module_rules.match(module)
    if rule is not None:
        rule.apply(ctx, node, module, path)
        return
    args = ctx.tensor_args(node)
    out = ctx.axes(node)
    p = lambda n: ctx.param_axes(f"{path}.{n}")  # noqa: E731
    has = lambda n: getattr(module, n, None) is not None  # noqa: E731
    if not args or out is None:
        return _fix_leaf(ctx, node, module, path)
    xa = ctx.axes(args[0])
    if isinstance(module, nn.Linear):
        ctx.linear(xa, out, p("weight"), p("bias") if has("bias") else None)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        ctx.conv(xa, out, p("weight"), p("bias") if has("bias") else None, module.groups)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        n = len(module.normalized_shape)
        for u, v in zip(xa, out):
            ctx.unify(u, v)
        for name in ("weight", "bias"):
            if has(name):
                for u, v in zip(xa[-n:], p(name)):
                    ctx.unify(u, v)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d)):
        for u, v in zip(xa, out):
            ctx.unify(u, v)
        for name in ("weight", "bias", "running_mean", "running_var"):
            if has(name):
                ctx.unify(p(name)[0], xa[1])
    elif isinstance(module, nn.GroupNorm):
        for u, v in zip(xa, out):
            ctx.unify(u, v)
        ctx.grouped_channels(xa[1], module.num_groups)
        for name in ("weight", "bias"):
            if has(name):
                ctx.unify(p(name)[0], xa[1])
    elif isinstance(module, nn.Embedding):
        ctx.embedding(xa, p("weight"), out)
    elif isinstance(module, _UNARY_MODULES):
        for u, v in zip(xa, out):
            ctx.unify(u, v)
        if isinstance(module, nn.PReLU) and module.weight.numel() > 1:
            ctx.unify(p("weight")[0], xa[1])
    elif isinstance(module, (nn.Flatten, nn.Unflatten)):
        couple_reshape(ctx, xa, ctx.shape(args[0]), out, ctx.shape(node))
    elif isinstance(module, _SPATIAL_MODULES):
        for k, (u, v) in enumerate(zip(xa, out)):
            if k < 2:
                ctx.unify(u, v)
            else:
                ctx.alg.fix(u, "pooling")
                ctx.alg.fix(v, "pooling")
    else:
        _fix_leaf(ctx, node, module, path)


def _fix_leaf(ctx: Context, node: fx.Node, module: nn.Module, path: str) -> None:
    reason = f"leaf module {type(module).__name__} has no op rule"
    ctx.fix_node(node, reason)
    for name, _ in module.named_parameters():
        for v in ctx.param_axes(f"{path}.{name}"):
            ctx.alg.fix(v, reason)
    ctx.unhandled[type(module).__name__] += 1


# --------------------------------------------------------------------------- analysis
def analyze(model_or_graph: nn.Module | fx.GraphModule, example_inputs: Any = None) -> IR:
    """Find the elastic dims, droppable blocks and size attributes of a model.

    Args:
        model_or_graph: a model (traced here) or the GraphModule returned by
            :func:`osf.ir.trace`.
        example_inputs: inputs for tracing a model (see :func:`osf.ir.trace`).
    """
    if isinstance(model_or_graph, fx.GraphModule) and "osf" in model_or_graph.meta:
        gm = model_or_graph
    else:
        gm = trace_model(model_or_graph, example_inputs)
    model = gm.meta["osf"]["model"]
    ctx = Context(gm)

    for node in gm.graph.nodes:
        n_conflicts = len(ctx.alg.conflicts)
        _analyze_node(ctx, gm, node)
        if len(ctx.alg.conflicts) > n_conflicts:
            where = f" at {node.name} ({node.meta.get('op')}) in {_rel(node.meta.get('module', ''))!r}"
            ctx.alg.conflicts[n_conflicts:] = [c + where for c in ctx.alg.conflicts[n_conflicts:]]
    _couple_compared_sizes(ctx, gm.meta["osf"].get("size_comparisons", ()))
    # one attribute holds one size: every axis sized by it is the same dim
    by_attr: dict[tuple[str, str], int] = {}
    for b in ctx.attrs:
        if isinstance(b.expr, int):
            first = by_attr.setdefault((b.module, b.attr), b.expr)
            ctx.unify(first, b.expr)
    # derived constant buffers (non-persistent: masks, index tables, coordinates) keep their shape
    for path, mod in model.named_modules():
        for bname in getattr(mod, "_non_persistent_buffers_set", ()):
            full = f"{_PREFIX}{path}.{bname}" if path else f"{_PREFIX}{bname}"
            if ctx.canonical.get(full, full) in ctx.param_vars:
                for v in ctx.param_axes(full):
                    ctx.alg.fix(v, "non-persistent buffer")
    # a parameter axis no rule coupled to anything is not understood: keep it
    touched_roots = {ctx.alg.find(v) for v in ctx.alg.touched}
    for vars_ in ctx.param_vars.values():
        for v in vars_:
            if ctx.alg.find(v) not in touched_roots:
                ctx.alg.fix(v, "not coupled by any rule")
    return _build_ir(ctx, gm, model)


def _analyze_node(ctx: Context, gm: fx.GraphModule, node: fx.Node) -> None:
    if node.op == "placeholder":
        for v in ctx.axes(node) or []:
            ctx.alg.fix(v, "model input")
    elif node.op == "get_attr":
        if node.meta.get("constant") or _derived_buffer(ctx, gm, node.target):
            # tensors the model's own code reads as data (masks, index and coordinate tables)
            for v in ctx.axes(node) or []:
                ctx.alg.fix(v, "constant or buffer read as data")
        else:
            ctx.axes(node)
    elif node.op == "call_module":
        _apply_leaf(ctx, node, gm.get_submodule(node.target), node.target)
    elif node.op in ("call_function", "call_method"):
        op = node.meta.get("op")
        if op is None:
            return  # int arithmetic on sizes
        rule = OP_RULES.get(op)
        if rule is None:
            ctx.unhandled[op] += 1
            ctx.fix_node(node)
        else:
            rule(ctx, node)
    elif node.op == "output":
        for a in ctx.tensor_args(node):
            for v in ctx.axes(a) or []:
                ctx.alg.fix(v, "model output")


def _couple_compared_sizes(ctx: Context, comparisons: Any) -> None:
    """Sizes the model's code compares with ``==`` / ``!=``, where one is a module attribute.

    An attribute found equal to a tensor's size (an input check) holds that size; two attributes
    found equal are one size. A comparison that came out unequal (a branch such as Hiera's
    ``if self.hidden_size != self.hidden_size_output``), or one against a size no dim follows,
    must come out the same in every subnet: the sizes involved are kept whole."""
    def var_of(src: Any) -> int | None:
        if not isinstance(src, tuple) or not src:
            return None
        if src[0] == "size":
            axes = ctx.axes(src[1])
            ok = axes is not None and isinstance(src[2], int) and -len(axes) <= src[2] < len(axes)
            return axes[src[2]] if ok else None
        if src[0] == "attr":
            return next((b.expr for b in ctx.attrs if (b.module, b.attr) == (_rel(src[1]), src[2])
                         and isinstance(b.expr, int)), None)
        return None

    for a, b, equal in comparisons:
        attrs = [s for s in (a, b) if isinstance(s, tuple) and s[:1] == ("attr",)]
        if not attrs:
            continue
        if equal:
            for attr, other in ((a, b), (b, a)):
                v = var_of(other)
                if attr in attrs and v is not None:
                    ctx.bind_source(attr, v)
        va, vb = var_of(a), var_of(b)
        if not equal or va is None or vb is None:
            for v in (va, vb):
                if v is not None:
                    ctx.alg.fix(v, "size compared in the model's code")


def _derived_buffer(ctx: Context, gm: fx.GraphModule, target: str) -> bool:
    """A buffer read as data that is not a weight: integer tables, and buffers the model does not
    save (rebuilt from its config: masks, rotary tables, Falcon-H1's ``mup_vector``). A saved
    floating-point buffer (a per-channel multiplier) is sliced like a parameter."""
    name = ctx.canonical.get(target, target)
    if name not in ctx.buffer_names:
        return False
    owner, _, leaf = name.rpartition(".")
    mod = ctx.user_module(owner)  # the model's own module (the graph's copies lack its buffer settings)
    buf = getattr(mod, leaf, None)
    return (not isinstance(buf, torch.Tensor) or not buf.is_floating_point()
            or leaf in getattr(mod, "_non_persistent_buffers_set", ()))


def _build_ir(ctx: Context, gm: fx.GraphModule, model: nn.Module) -> IR:
    alg = ctx.alg
    fixed = alg.fixed_leaves()
    # members of each free leaf
    members: dict[int, list[Member]] = {}
    order: dict[int, int] = {}
    tensor_axes: dict[str, list[int]] = {}
    for name, vars_ in ctx.param_vars.items():
        rel = _rel(name)
        tensor_axes[rel] = vars_
        shape = ctx.param_shapes[name]
        for axis, v in enumerate(vars_):
            leaves = alg.leaves(v)
            for leaf in dict.fromkeys(leaves):
                if leaf in fixed:
                    continue
                members.setdefault(leaf, []).append(Member(rel, axis, shape, _describe(alg, v, leaf)))
    param_order = {_rel(n): i for i, (n, _) in enumerate(gm.named_parameters(remove_duplicate=False))}
    buf_base = len(param_order)
    for i, (n, _) in enumerate(gm.named_buffers(remove_duplicate=False)):
        param_order.setdefault(_rel(n), buf_base + i)
    for leaf, ms in members.items():
        order[leaf] = min(param_order.get(m.tensor, 1 << 30) for m in ms)

    # preferred names given by rules
    names_by_root: dict[int, tuple[str, str]] = {}
    for v, nk in sorted(ctx.var_names.items()):
        names_by_root.setdefault(alg.find(v), nk)
    kinds = _structural_kinds(alg)

    dims: dict[str, Dim] = {}
    candidates = []
    for leaf in sorted(members, key=lambda l: order[l]):
        ms = members[leaf]
        if alg.size_of(leaf) < 2 or not any(isinstance(_owner(model, m.tensor), nn.Module) for m in ms):
            continue
        if leaf in names_by_root:
            name, kind = names_by_root[leaf]
            module = name.split(":")[0]
        else:
            matrices = [m for m in ms if len(m.shape) >= 2]
            conv = sum(_is_conv_weight(model, m) for m in matrices)
            kind = kinds.get(leaf) or ("channels" if matrices and conv * 2 >= len(matrices) else "width")
            module, is_stream = _home_module(model, [m.tensor for m in ms])
            candidates.append((leaf, module, kind, is_stream))
            continue
        dims[name] = Dim(name, kind, alg.size_of(leaf), ms, leaf, module)
    streams = [c for c in candidates if c[3]]
    for leaf, module, kind, is_stream in candidates:
        suffix = {"width": "hidden", "channels": "channels", "heads": "heads", "head_dim": "head_dim"}.get(kind, kind)
        if is_stream and len(streams) == 1:
            name = suffix
        else:
            name = f"{module}:{suffix}" if module else suffix
        base, k = name, 2
        while name in dims:
            name = f"{base}#{k}"
            k += 1
        dims[name] = Dim(name, kind, alg.size_of(leaf), members[leaf], leaf, module)
    dims = dict(sorted(dims.items(), key=lambda kv: order[kv[1].var]))

    # attributes: keep those whose expression involves an elastic leaf
    elastic = {d.var for d in dims.values()}
    attrs, read_attrs = [], []
    seen, seen_read = set(), set()
    for b in ctx.attrs:
        key = (b.module, b.attr)
        if key not in seen_read:
            seen_read.add(key)
            read_attrs.append(b)
        if key in seen:
            continue
        if _expr_leaves(alg, b.expr) & elastic:
            seen.add(key)
            attrs.append(b)

    reasons = {}
    for r, why in alg.fixed_reason.items():
        reasons[str(r)] = why
    return IR(model=model, graph=gm, alg=alg, dims=dims, blocks=find_blocks(gm, model), attrs=attrs,
              tensor_axes=tensor_axes, fixed_reasons=reasons, unhandled_ops=dict(ctx.unhandled),
              tied={_rel(a): _rel(c) for a, c in ctx.canonical.items() if a != c}, read_attrs=read_attrs)


def _expr_leaves(alg: AxisAlgebra, expr: Any) -> set[int]:
    if isinstance(expr, int):
        return set(alg.leaves(expr))
    if isinstance(expr, tuple) and expr and expr[0] != "const":
        return _expr_leaves(alg, expr[1]) | _expr_leaves(alg, expr[2])
    return set()


def _owner(model: nn.Module, tensor: str):
    owner = tensor.rpartition(".")[0]
    try:
        return model.get_submodule(owner) if owner else model
    except AttributeError:
        return None


def _is_conv_weight(model: nn.Module, m: Member) -> bool:
    return isinstance(_owner(model, m.tensor), nn.modules.conv._ConvNd)


def _structural_kinds(alg: AxisAlgebra) -> dict[int, str]:
    """Leaves that are the outer factor of a (heads x head_dim) split are heads, inner ones head_dim."""
    kinds: dict[int, str] = {}
    for r, s in alg.defn.items():
        if s.kind == "prod" and len(s.parts) == 2 and alg.find(r) == r:
            outer, inner = alg.find(s.parts[0]), alg.find(s.parts[1])
            if alg.defn.get(outer) is None:
                kinds.setdefault(outer, "heads")
            if alg.defn.get(inner) is None:
                kinds.setdefault(inner, "head_dim")
    return kinds


def _describe(alg: AxisAlgebra, v: int, leaf: int) -> str:
    r = alg.find(v)
    s = alg.defn.get(r)
    if s is None:
        return "="
    return _struct_str(alg, r, leaf)


def _struct_str(alg: AxisAlgebra, v: int, leaf: int) -> str:
    r = alg.find(v)
    s = alg.defn.get(r)
    if s is None:
        return "*" if r == leaf else str(alg.size[r])
    sep = " | " if s.kind == "cat" else " x "
    inner = sep.join(_struct_str(alg, p, leaf) for p in s.parts)
    return f"[{inner}]" if s.kind == "cat" else f"({inner})"


def _home_module(model: nn.Module, tensors: list[str]) -> tuple[str, bool]:
    """Where a dim lives, and whether it spans several layers of a list (a residual stream).

    A layer-local dim lives in the deepest module holding >= 80% of its members; a stream
    in the owner of the layer list holding most of its members.
    """
    owners = [t.rpartition(".")[0] for t in tensors]
    counts: Counter[str] = Counter()
    for o in owners:
        parts = o.split(".") if o else []
        for k in range(1, len(parts) + 1):
            counts[".".join(parts[:k])] += 1
    lists = {p for p, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))}
    spans_list = any(_list_elems(p, owners) > 1 for p in lists)

    def deepest(share: float) -> str:
        ranked = sorted(counts.items(), key=lambda kv: (-len(kv[0].split(".")), kv[0]))
        return next((p for p, c in ranked if c >= share * len(owners)), "")

    if not spans_list:
        return deepest(0.8), False
    best = deepest(0.5)
    while best in lists:
        best = best.rpartition(".")[0]
    return best, True


def _list_elems(prefix: str, owners: list[str]) -> int:
    elems = set()
    for o in owners:
        if not prefix:
            elems.add(o.split(".")[0])
        elif o.startswith(prefix + "."):
            elems.add(o[len(prefix) + 1:].split(".")[0])
    return len(elems)


# ---------------------------------------------------------------------------- blocks
_TRUNK_OPS = {"add", "__add__", "__radd__", "add_", "__iadd__", "to", "float", "half", "bfloat16", "type",
              "type_as", "contiguous", "clone", "dropout", "relu", "relu_", "getitem"}


def find_blocks(gm: fx.GraphModule, model: nn.Module) -> list[Block]:
    """Residual layers: list elements whose output is their input plus branches."""
    blocks: list[Block] = []
    nodes = list(gm.graph.nodes)
    # a layer that returns more than its output (T5's position bias, FocalNet's stage sizes) hands
    # the next layers something a skip could not give them: it is not droppable
    extras = set(gm.meta.get("osf", {}).get("carries_extra_outputs", ()))
    # only lists the model loops over: one whose layers it calls by position (T5's
    # ``self.layer[-1]``) would call the wrong layer once one is removed
    iterated = gm.meta.get("osf", {}).get("iterated_lists")
    for list_path, lst in model.named_modules():
        if not isinstance(lst, (nn.ModuleList, nn.Sequential)) or len(lst) < 2:
            continue
        if iterated is not None and f"{_PREFIX}{list_path}" not in iterated:
            continue
        for idx, _ in enumerate(lst):
            path = f"{_PREFIX}{list_path}.{idx}" if list_path else f"{_PREFIX}{idx}"
            inside = [n for n in nodes if path in n.meta.get("stack", ()) or
                      (n.op == "call_module" and (n.target == path or n.target.startswith(path + ".")))]
            if not inside or path in extras:
                continue
            if _is_residual(inside):
                blocks.append(Block(_rel(path), list_path, idx))
    # keep the finest level: a stage made of residual blocks is not itself a block
    names = [b.name for b in blocks]
    blocks = [b for b in blocks if not any(n.startswith(b.name + ".") for n in names)]
    return _label_kinds(blocks, model)


def _label_kinds(blocks: list[Block], model: nn.Module) -> list[Block]:
    """Set ``kind`` on the blocks of stacks that mix layers of different structure (parameter
    names; widths alone, as in the stages of a CNN, do not make another kind): the children
    names only that kind has (``mamba``, ``self_attn``), or a number when no child name tells
    them apart."""
    by_stack: dict[str, list[Block]] = {}
    for b in blocks:
        by_stack.setdefault(b.stack, []).append(b)
    for stack_blocks in by_stack.values():
        sigs = {b.name: tuple(sorted(n for n, _ in model.get_submodule(b.name).named_parameters()))
                for b in stack_blocks}
        kinds = list(dict.fromkeys(sigs.values()))
        if len(kinds) < 2:
            continue
        children = {sig: set() for sig in kinds}
        for b in stack_blocks:
            children[sigs[b.name]] |= {n for n, _ in model.get_submodule(b.name).named_children()}
        labels = {}
        for i, sig in enumerate(kinds):
            own = sorted(children[sig] - set().union(*(children[o] for o in kinds if o != sig)))
            labels[sig] = "+".join(own) if own else f"kind{i}"
        if len(set(labels.values())) < len(kinds):
            labels = {sig: f"kind{i}" for i, sig in enumerate(kinds)}
        for b in stack_blocks:
            b.kind = labels[sigs[b.name]]
    return blocks


def _is_residual(inside: list[fx.Node]) -> bool:
    members = set(inside)
    inputs = []
    for n in inside:
        for a in n.all_input_nodes:
            if a not in members and a.op != "get_attr" and "shape" in a.meta and a not in inputs:
                inputs.append(a)
    outputs = [n for n in inside if "shape" in n.meta and any(u not in members for u in n.users)]
    if not inputs or not outputs:
        return False
    for x in inputs:
        for y in outputs:
            if x.meta["shape"] != y.meta["shape"]:
                continue
            # a path x -> y through trunk ops only
            stack, seen = [x], set()
            while stack:
                n = stack.pop()
                if n is y:
                    return True
                for u in n.users:
                    if u in members and u not in seen and u.meta.get("op") in _TRUNK_OPS:
                        seen.add(u)
                        stack.append(u)
    return False


def coverage_report(ir: IR) -> dict[str, Any]:
    """Totals for ``osf inspect``: parameters, elastic share, dims by kind."""
    total = sum(p.numel() for p in ir.model.parameters())
    return {
        "parameters": total,
        "elastic_share": ir.param_coverage(exclude_embeddings=False),
        "elastic_share_non_embedding": ir.param_coverage(exclude_embeddings=True),
        "dims_by_kind": dict(Counter(d.kind for d in ir.dims.values())),
    }
