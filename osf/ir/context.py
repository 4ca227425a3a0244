"""What op rules see while the analysis runs: axis variables of values and parameters, and
the ways to couple them (:class:`Context`)."""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch.fx as fx
from torch import nn

from osf.ir.ir import AttrBinding
from osf.ir.layout import AxisAlgebra

PREFIX = "model."  # the tracing wrapper holds the user's model as ``model``


def relative_path(path: str) -> str:
    """A traced module path relative to the user's model (without the wrapper's ``model.``)."""
    if path == "model":
        return ""
    return path[len(PREFIX):] if path.startswith(PREFIX) else path


class Context:
    """What op rules see: axis variables of values and parameters, and ways to couple them."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.alg = AxisAlgebra()
        self.node_vars: dict[fx.Node, list[int]] = {}
        self.param_vars: dict[str, list[int]] = {}
        self.var_names: dict[int, tuple[str, str]] = {}
        self.attrs: list[AttrBinding] = []
        self.unhandled: Counter[str] = Counter()
        self.canonical: dict[str, str] = {}
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.buffer_names = {n for n, _ in gm.named_buffers(remove_duplicate=False)}
        first: dict[int, str] = {}
        for name, t in list(gm.named_parameters(remove_duplicate=False)) + list(
                gm.named_buffers(remove_duplicate=False)):
            self.canonical[name] = first.setdefault(id(t), name)
            self.param_shapes[first[id(t)]] = tuple(t.shape)

    def user_module(self, path: str) -> nn.Module | None:
        """The model's module at a traced module path (``model.``-prefixed), or None."""
        model = self.gm.meta["osf"]["model"]
        try:
            return model.get_submodule(relative_path(path)) if relative_path(path) else model
        except AttributeError:
            return None

    # ------------------------------------------------------------------ values
    def shape(self, x: Any) -> tuple[int, ...] | None:
        if isinstance(x, fx.Node):
            if "param" in x.meta:
                return self.param_shapes.get(self.canonical.get(x.meta["param"], x.meta["param"]))
            return x.meta.get("shape")
        return None

    def node_dtype(self, x: Any):
        return x.meta.get("dtype") if isinstance(x, fx.Node) else None

    def axes(self, x: Any) -> list[int] | None:
        """One variable per axis of the tensor value ``x`` (an fx node), or None."""
        if not isinstance(x, fx.Node):
            return None
        if "param" in x.meta:
            return self.param_axes(x.meta["param"])
        vars_ = self.node_vars.get(x)
        if vars_ is None:
            shape = x.meta.get("shape")
            if shape is None:
                return None
            vars_ = [self.alg.new(s) for s in shape]
            self.node_vars[x] = vars_
        return vars_

    def param_axes(self, name: str) -> list[int]:
        """Variables of a parameter or buffer, by its (wrapper-relative) name."""
        name = self.canonical.get(name, name)
        vars_ = self.param_vars.get(name)
        if vars_ is None:
            shape = self.param_shapes.get(name)
            if shape is None:
                raise KeyError(f"no parameter or buffer named {name!r}")
            vars_ = [self.alg.new(s) for s in shape]
            self.param_vars[name] = vars_
        return vars_

    def outputs(self, node: fx.Node) -> list[list[int] | None]:
        """Variables of each tensor a node produces (tuple outputs via their getitem users)."""
        if "shape" in node.meta:
            return [self.axes(node)]
        shapes = node.meta.get("shapes")
        if shapes is None:
            return []
        outs: list[list[int] | None] = [None] * len(shapes)
        for u in node.users:
            if u.op == "call_function" and u.meta.get("op") == "getitem" and isinstance(u.args[1], int):
                outs[u.args[1]] = self.axes(u)
        return outs

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []

        def visit(a):
            if isinstance(a, fx.Node):
                if self.shape(a) is not None:
                    found.append(a)
            elif isinstance(a, (tuple, list)):
                for x in a:
                    visit(x)
            elif isinstance(a, dict):
                for x in a.values():
                    visit(x)

        visit(node.args)
        visit(node.kwargs)
        return found

    # --------------------------------------------------------------- coupling
    def unify(self, a: int, b: int) -> None:
        self.alg.unify(a, b)

    def unify_broadcast(self, out: list[int], src: list[int], src_node: fx.Node, node: fx.Node) -> None:
        so, ss = self.shape(node), self.shape(src_node)
        if so is None or ss is None:
            return
        for k in range(1, min(len(out), len(src)) + 1):
            if ss[-k] == so[-k] and ss[-k] != 1:
                self.unify(out[-k], src[-k])

    def fix_node(self, node: fx.Node, reason: str | None = None) -> None:
        reason = reason or f"no rule for op {node.meta.get('op', node.target)!r}"
        for a in self.tensor_args(node):
            for v in self.axes(a) or []:
                self.alg.fix(v, reason)
        for out in self.outputs(node):
            for v in out or []:
                self.alg.fix(v, reason)

    def new_dim(self, size: int, name: str, kind: str) -> int:
        v = self.alg.new(size)
        self.var_names[v] = (relative_path(name), kind)
        return v

    def name_var(self, v: int, name: str, kind: str) -> None:
        self.var_names.setdefault(v, (relative_path(name), kind))

    def bind_attr(self, module: str, attr: str, expr: Any) -> None:
        self.attrs.append(AttrBinding(relative_path(module), attr, expr))

    def bind_source(self, src: Any, var: int) -> None:
        """Tie ``var`` to where an int came from: a module attribute or another axis."""
        if not isinstance(src, tuple):
            return
        if src[0] == "attr":
            self.bind_attr(src[1], src[2], var)
        elif src[0] == "size" and isinstance(src[1], fx.Node) and src[2] is not None:
            other = self.axes(src[1])
            if other is not None and -len(other) <= src[2] < len(other):
                self.unify(var, other[src[2]])
        elif src[0] == "mul":
            st = self.alg.struct(var)
            if st is not None and st.kind == "prod" and len(st.parts) == 2:
                self.bind_source(src[1], st.parts[0])
                self.bind_source(src[2], st.parts[1])

    def bind_size_args(self, node: fx.Node, out: list[int], start: int, fix_others: bool = False) -> list[int]:
        args = node.args[start:]
        sources = node.meta.get("int_sources", {})
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            sizes, paths = args[0], [(start, j) for j in range(len(args[0]))]
        elif "size" in node.kwargs and isinstance(node.kwargs["size"], (tuple, list)):
            sizes, paths = node.kwargs["size"], [("size", j) for j in range(len(node.kwargs["size"]))]
        else:
            sizes, paths = args, [(start + j,) for j in range(len(args))]
        bound = []
        if len(sizes) != len(out):
            if fix_others:
                for v in out:
                    self.alg.fix(v, "constant size")
            return bound
        for j, (s, path) in enumerate(zip(sizes, paths)):
            src = sources.get(path)
            if src is not None and src[0] in ("attr", "size", "mul"):
                self.bind_source(src, out[j])
                bound.append(j)
            elif fix_others:
                self.alg.fix(out[j], "constant size")
        return bound

    def slice_axis(self, src: int, dst: int, start: int, stop: int, step: int) -> None:
        size = self.alg.size_of(src)
        if (start, stop, step) == (0, size, 1):
            self.unify(src, dst)
            return
        if step != 1 or stop <= start:
            self.alg.fix(src, "strided slice")
            self.alg.fix(dst, "strided slice")
            return
        rest = src
        if start > 0:
            _, rest = self.alg.split(src, start)
            if rest is None:
                self.alg.fix(src, "slice")
                self.alg.fix(dst, "slice")
                return
        mid = rest
        if stop < size:
            mid, _ = self.alg.split(rest, stop - start)
            if mid is None:
                self.alg.fix(src, "slice")
                self.alg.fix(dst, "slice")
                return
        self.unify(mid, dst)

    # ---------------------------------------------------- shared op semantics
    def linear(self, xa: list[int], out: list[int], wa: list[int], ba: list[int] | None) -> None:
        if len(wa) == 2:
            self.unify(xa[-1], wa[1])
            self.unify(out[-1], wa[0])
        if ba is not None:
            self.unify(ba[0], out[-1])
        for u, v in zip(xa[:-1], out[:-1]):
            self.unify(u, v)

    def conv(self, xa: list[int], out: list[int], wa: list[int], ba: list[int] | None, groups: int) -> None:
        spatial = len(wa) - 2
        batched = len(xa) == spatial + 2
        c_in, c_out = (xa[1], out[1]) if batched else (xa[0], out[0])
        if batched:
            self.unify(xa[0], out[0])
        for v in (xa[-spatial:] if spatial else []):
            self.alg.fix(v, "conv spatial")
        for v in (out[-spatial:] if spatial else []):
            self.alg.fix(v, "conv spatial")
        n_in, n_out = self.alg.size_of(c_in), self.alg.size_of(c_out)
        if groups == 1:
            self.unify(c_in, wa[1])
            self.unify(c_out, wa[0])
        elif groups == n_in == n_out:  # depthwise
            self.unify(c_in, c_out)
            self.unify(c_out, wa[0])
        else:
            g = self.alg.new(groups)
            self.alg.fix(g, "conv groups")
            self.alg.define(c_in, "prod", [g, wa[1]], "grouped conv")
            per_out = self.alg.new(n_out // groups)
            self.alg.define(c_out, "prod", [g, per_out], "grouped conv")
            self.unify(c_out, wa[0])
        if ba is not None:
            self.unify(ba[0], c_out)

    def embedding(self, ia: list[int] | None, wa: list[int], out: list[int]) -> None:
        self.alg.fix(wa[0], "vocabulary")
        self.unify(out[-1], wa[1])
        if ia is not None:
            for u, v in zip(ia, out[:-1]):
                self.unify(u, v)

    def grouped_channels(self, var: int, groups: int) -> None:
        g = self.alg.new(groups)
        self.alg.fix(g, "norm groups")
        per = self.alg.new(self.alg.size_of(var) // groups)
        self.alg.define(var, "prod", [g, per], "group norm")

    def module_io(self, node: fx.Node, in_var: int, out_var: int) -> None:
        """Couple a leaf module's main input's last axis and output's last axis."""
        args = self.tensor_args(node)
        out = self.axes(node)
        if not args or out is None:
            return
        xa = self.axes(args[0])
        self.unify(xa[-1], in_var)
        self.unify(out[-1], out_var)
        sx, so = self.shape(args[0]), self.shape(node)
        for k in range(min(len(xa), len(out)) - 1):
            if sx[k] == so[k]:
                self.unify(xa[k], out[k])
