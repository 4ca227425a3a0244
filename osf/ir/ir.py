"""The IR: elastic dims, their members, droppable blocks, and size attributes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

from osf.ir.layout import AxisAlgebra

# kinds of dims
WIDTH, HEADS, HEAD_DIM, STATE, RANK, CHANNELS = "width", "heads", "head_dim", "state", "rank", "channels"


@dataclass(frozen=True)
class Member:
    """One axis of one parameter or buffer that a dim resizes.

    ``segments`` lists where the dim's channels sit along the axis, as (offset, length,
    stride-pattern) summaries for display; :meth:`IR.positions` gives exact indices.
    """

    tensor: str
    axis: int
    shape: tuple[int, ...]
    layout: str  # human-readable, e.g. "[x | z]" halves or "heads x head_dim"

    def __str__(self) -> str:
        return f"{self.tensor}[{self.axis}]{'' if self.layout == '=' else ' ' + self.layout}"


@dataclass
class Dim:
    """A set of tensor axes that must shrink together."""

    name: str
    kind: str
    size: int
    members: list[Member]
    var: int  # leaf variable in the axis algebra
    module: str  # common module path of its members

    @property
    def num_members(self) -> int:
        return len(self.members)


@dataclass
class Block:
    """A residual layer ``y = x + f(x)`` that can be dropped (replaced by the identity)."""

    name: str  # module path of the layer, e.g. "backbone.layers.3"
    stack: str  # module path of the list holding it, e.g. "backbone.layers"
    index: int
    kind: str = ""  # in a list of layers of several kinds (a hybrid's Mamba / attention layers): which

    @property
    def group(self) -> str:
        """Its depth choice: the stack, or ``"<stack>[<kind>]"`` in a stack of several kinds."""
        return f"{self.stack}[{self.kind}]" if self.kind else self.stack


@dataclass
class AttrBinding:
    """A module attribute holding a size: ``module.attr == expr(sizes)``."""

    module: str
    attr: str
    expr: Any  # var id, or ("mul"|"add", a, b), or ("const", c)


@dataclass
class IR:
    """What :func:`osf.ir.analyze` found in a model."""

    model: torch.nn.Module
    graph: fx.GraphModule
    alg: AxisAlgebra
    dims: dict[str, Dim]
    blocks: list[Block]
    attrs: list[AttrBinding]
    tensor_axes: dict[str, list[int]]  # tensor name -> var per axis
    fixed_reasons: dict[str, str] = field(default_factory=dict)
    unhandled_ops: dict[str, int] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)  # alias tensor name -> canonical name
    # every size attribute the forward reads, elastic or not (``attrs`` holds the elastic ones)
    read_attrs: list[AttrBinding] = field(default_factory=list)

    # ----------------------------------------------------------------- queries
    @property
    def stacks(self) -> dict[str, list[Block]]:
        out: dict[str, list[Block]] = {}
        for b in self.blocks:
            out.setdefault(b.stack, []).append(b)
        return out

    @property
    def depth_groups(self) -> dict[str, list[Block]]:
        """Blocks by depth choice: one per stack, or one per kind of layer in a stack that mixes
        kinds (a hybrid's Mamba, attention and MoE layers), so a search drops each kind on its own."""
        out: dict[str, list[Block]] = {}
        for b in self.blocks:
            out.setdefault(b.group, []).append(b)
        return out

    def dim_of_var(self) -> dict[int, Dim]:
        return {d.var: d for d in self.dims.values()}

    def positions(self, tensor: str, axis: int, selection: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Indices kept along ``tensor``'s ``axis`` when each dim keeps ``selection[dim]``."""
        var = self.tensor_axes[tensor][axis]
        return self.alg.positions(var, {self.dims[n].var: idx for n, idx in selection.items()})

    def new_shape(self, tensor: str, sizes: dict[str, int]) -> tuple[int, ...]:
        leaf_sizes = {self.dims[n].var: s for n, s in sizes.items()}
        return tuple(self.alg.new_size(v, leaf_sizes) for v in self.tensor_axes[tensor])

    def eval_expr(self, expr: Any, sizes: dict[str, int]) -> int:
        return self.evaluator(sizes)(expr)

    def evaluator(self, sizes: dict[str, int]) -> Callable[[Any], int]:
        """``expr -> its value`` at ``sizes`` (every dim's size by name), for many expressions."""
        leaf_sizes = {self.dims[n].var: s for n, s in sizes.items()}
        return lambda expr: _eval(self.alg, expr, leaf_sizes)

    def param_coverage(self, exclude_embeddings: bool = True) -> float:
        """Share of parameters (by count) with at least one axis in an elastic dim."""
        elastic = {d.var for d in self.dims.values()}
        total = covered = 0
        seen = set()
        for name, p in self.model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if exclude_embeddings and _is_embedding_param(self.model, name):
                continue
            total += p.numel()
            axes = self.tensor_axes.get(name)
            if axes and any(any(l in elastic for l in self.alg.leaves(v)) for v in axes):
                covered += p.numel()
        return covered / total if total else 0.0

    def summary(self) -> str:
        lines = [f"{len(self.dims)} dims, {len(self.blocks)} blocks in {len(self.stacks)} stacks"]
        for d in self.dims.values():
            lines.append(f"  {d.name:<48} {d.kind:<9} {d.size:>6}  {len(d.members)} members")
        return "\n".join(lines)


def _eval(alg: AxisAlgebra, expr: Any, leaf_sizes: dict[int, int]) -> int:
    if isinstance(expr, int):
        return alg.new_size(expr, leaf_sizes)
    op = expr[0]
    if op == "const":
        return int(expr[1])
    a, b = _eval(alg, expr[1], leaf_sizes), _eval(alg, expr[2], leaf_sizes)
    if op == "mul":
        return a * b
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "floordiv":
        return a // b
    raise ValueError(f"unknown size expression {expr!r}")


def _is_embedding_param(model: torch.nn.Module, name: str) -> bool:
    owner, _, _ = name.rpartition(".")
    try:
        mod = model.get_submodule(owner) if owner else model
    except AttributeError:
        return False
    return isinstance(mod, torch.nn.Embedding)
