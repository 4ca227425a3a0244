"""Axis variables and their algebra: the core of the coupling analysis.

Every tensor axis seen in the graph gets a variable. Ops *unify* variables (the axes must
shrink together) or *define* a variable as a structure over others:

* ``cat``: the axis is the concatenation of parts (``[x | z]`` of a fused projection,
  a split into q/k/v, Swin's 4-way patch merge, which repeats one part four times);
* ``prod``: the axis is the row-major flattening of parts (``heads x head_dim``).

Unification is union-find; structures are unified part by part, refining concatenations
to common boundaries where needed. Variables that cannot be resized (model inputs and
outputs, conflicting structures, ops without a rule) are marked fixed; fixedness flows
from a structure to its parts. The elastic dims are the free leaf variables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch


@dataclass(frozen=True)
class Struct:
    """``kind`` is ``"cat"`` or ``"prod"``; ``parts`` are variable ids."""

    kind: str
    parts: tuple[int, ...]


class AxisAlgebra:
    """Union-find over axis variables with structural definitions."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.defn: dict[int, Struct] = {}
        self.fixed_roots: set[int] = set()
        self.fixed_reason: dict[int, str] = {}
        self.conflicts: list[str] = []
        self.touched: set[int] = set()  # variables some rule coupled to something

    # --------------------------------------------------------------- basics
    def new(self, size: int) -> int:
        v = len(self.parent)
        self.parent.append(v)
        self.size.append(int(size))
        return v

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def size_of(self, v: int) -> int:
        return self.size[self.find(v)]

    def struct(self, v: int) -> Struct | None:
        return self.defn.get(self.find(v))

    def fix(self, v: int, reason: str = "") -> None:
        r = self.find(v)
        if r not in self.fixed_roots:
            self.fixed_roots.add(r)
            if reason:
                self.fixed_reason[r] = reason

    def is_fixed_root(self, v: int) -> bool:
        return self.find(v) in self.fixed_roots

    # ----------------------------------------------------------- unification
    def unify(self, a: int, b: int, why: str = "") -> None:
        self.touched.add(a)
        self.touched.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self._conflict(ra, rb, f"size {self.size[ra]} vs {self.size[rb]} {why}")
            return
        da, db = self.defn.pop(ra, None), self.defn.pop(rb, None)
        # union: keep the older variable as root (stable names)
        root, child = (ra, rb) if ra < rb else (rb, ra)
        self.parent[child] = root
        if child in self.fixed_roots:
            self.fixed_roots.discard(child)
            self.fixed_roots.add(root)
            self.fixed_reason.setdefault(root, self.fixed_reason.get(child, ""))
        if da is not None and db is not None:
            self.defn[root] = da
            self._unify_structs(root, da, db, why)
        elif da is not None or db is not None:
            self.defn[root] = da if da is not None else db

    def define(self, v: int, kind: str, parts: Sequence[int], why: str = "") -> None:
        """State that axis ``v`` is the ``kind`` ("cat"/"prod") of ``parts``."""
        parts = tuple(parts)
        self.touched.add(v)
        self.touched.update(parts)
        if kind == "prod":
            parts = tuple(p for p in parts if self.size_of(p) != 1)
        if len(parts) == 1:
            self.unify(v, parts[0], why)
            return
        if not parts:
            return
        expected = _combine(kind, [self.size_of(p) for p in parts])
        r = self.find(v)
        if expected != self.size[r]:
            self._conflict(r, r, f"{kind} of sizes {[self.size_of(p) for p in parts]} != {self.size[r]} {why}")
            for p in parts:
                self.fix(p, "conflict")
            return
        new = Struct(kind, parts)
        old = self.defn.get(r)
        if old is None:
            if self._occurs(r, new):
                self._conflict(r, r, f"recursive structure {why}")
                return
            self.defn[r] = new
        else:
            self._unify_structs(r, old, new, why)

    def _occurs(self, root: int, s: Struct) -> bool:
        stack = list(s.parts)
        seen = set()
        while stack:
            p = self.find(stack.pop())
            if p == root:
                return True
            if p in seen:
                continue
            seen.add(p)
            d = self.defn.get(p)
            if d:
                stack.extend(d.parts)
        return False

    def _unify_structs(self, root: int, a: Struct, b: Struct, why: str) -> None:
        if a.kind == b.kind == "cat":
            pa, pb = self._refine(list(a.parts), list(b.parts))
            if pa is None:
                self._conflict(root, root, f"incompatible concatenations {why}")
                return
            self.defn[self.find(root)] = Struct("cat", tuple(pa))
            for x, y in zip(pa, pb):
                self.unify(x, y, why)
            return
        if a.kind == b.kind == "prod" and [self.size_of(p) for p in a.parts] == [self.size_of(p) for p in b.parts]:
            for x, y in zip(a.parts, b.parts):
                self.unify(x, y, why)
            return
        self._conflict(root, root, f"incompatible structures {a.kind}{[self.size_of(p) for p in a.parts]} vs "
                                   f"{b.kind}{[self.size_of(p) for p in b.parts]} {why}")
        for p in a.parts + b.parts:
            self.fix(p, "conflict")

    def _refine(self, pa: list[int], pb: list[int]) -> tuple[list[int] | None, list[int] | None]:
        """Split parts of two concatenations so that both have the same boundaries."""
        out_a: list[int] = []
        out_b: list[int] = []
        ia = ib = 0
        while ia < len(pa) and ib < len(pb):
            x, y = pa[ia], pb[ib]
            sx, sy = self.size_of(x), self.size_of(y)
            if sx == sy:
                out_a.append(x)
                out_b.append(y)
                ia += 1
                ib += 1
            elif sx > sy:
                head, tail = self.split(x, sy)
                if head is None:
                    return None, None
                pa[ia:ia + 1] = [head, tail]
            else:
                head, tail = self.split(y, sx)
                if head is None:
                    return None, None
                pb[ib:ib + 1] = [head, tail]
        if ia != len(pa) or ib != len(pb):
            return None, None
        return out_a, out_b

    def split(self, v: int, at: int) -> tuple[int | None, int | None]:
        """Make ``v`` a concatenation with a boundary at ``at``; return the two sides."""
        r = self.find(v)
        d = self.defn.get(r)
        if d is None:
            head, tail = self.new(at), self.new(self.size[r] - at)
            if r in self.fixed_roots:
                self.fix(head)
                self.fix(tail)
            self.defn[r] = Struct("cat", (head, tail))
            return head, tail
        if d.kind != "cat":
            return None, None
        parts = list(d.parts)
        offset = 0
        for i, p in enumerate(parts):
            sp = self.size_of(p)
            if offset == at:
                left = self._cat_of(parts[:i])
                right = self._cat_of(parts[i:])
                return left, right
            if offset < at < offset + sp:
                h, t = self.split(p, at - offset)
                if h is None:
                    return None, None
                parts[i:i + 1] = [h, t]
                self.defn[r] = Struct("cat", tuple(parts))
                return self._cat_of(parts[:i + 1]), self._cat_of(parts[i + 1:])
            offset += sp
        return None, None

    def _cat_of(self, parts: list[int]) -> int:
        if len(parts) == 1:
            return parts[0]
        v = self.new(sum(self.size_of(p) for p in parts))
        self.defn[v] = Struct("cat", tuple(parts))
        return v

    def _conflict(self, ra: int, rb: int, msg: str) -> None:
        self.conflicts.append(msg)
        self.fix(ra, "conflict: " + msg)
        self.fix(rb, "conflict: " + msg)

    # --------------------------------------------------------------- results
    def leaves(self, v: int) -> list[int]:
        """The leaf variables (roots without structure) that make up ``v``, in order."""
        r = self.find(v)
        d = self.defn.get(r)
        if d is None:
            return [r]
        out: list[int] = []
        for p in d.parts:
            out.extend(self.leaves(p))
        return out

    def fixed_leaves(self) -> set[int]:
        """Leaf roots that must keep their size: fixed themselves or inside a fixed structure."""
        fixed: set[int] = set()
        stack = [self.find(r) for r in self.fixed_roots]
        seen: set[int] = set()
        while stack:
            r = self.find(stack.pop())
            if r in seen:
                continue
            seen.add(r)
            d = self.defn.get(r)
            if d is None:
                fixed.add(r)
            else:
                stack.extend(d.parts)
        return fixed

    def positions(self, v: int, selection: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """Positions along axis ``v`` kept when each leaf ``l`` keeps ``selection[l]``.

        Leaves absent from ``selection`` keep all channels. Returns None when nothing changes.
        """
        if not any(l in selection for l in self.leaves(v)):
            return None
        return self._positions(self.find(v), selection)

    def _positions(self, r: int, selection: dict[int, torch.Tensor]) -> torch.Tensor:
        d = self.defn.get(r)
        if d is None:
            sel = selection.get(r)
            return sel if sel is not None else torch.arange(self.size[r])
        if d.kind == "cat":
            chunks, offset = [], 0
            for p in d.parts:
                chunks.append(self._positions(self.find(p), selection) + offset)
                offset += self.size_of(p)
            return torch.cat(chunks)
        pos = torch.zeros(1, dtype=torch.long)
        for p in d.parts:
            sub = self._positions(self.find(p), selection)
            pos = (pos[:, None] * self.size_of(p) + sub[None, :]).reshape(-1)
        return pos

    def labels(self, v: int, leaf: int) -> torch.Tensor:
        """For each position along axis ``v``, the channel of ``leaf`` it belongs to (-1: none)."""
        r = self.find(v)
        d = self.defn.get(r)
        if d is None:
            return torch.arange(self.size[r]) if r == leaf else torch.full((self.size[r],), -1)
        parts = [self.labels(p, leaf) for p in d.parts]
        if d.kind == "cat":
            return torch.cat(parts)
        out = parts[0]
        for p in parts[1:]:
            out = torch.where(out[:, None] >= 0, out[:, None], p[None, :]).reshape(-1)
        return out

    def new_size(self, v: int, sizes: dict[int, int]) -> int:
        """Size of axis ``v`` when leaves take ``sizes`` (others keep theirs)."""
        r = self.find(v)
        d = self.defn.get(r)
        if d is None:
            return sizes.get(r, self.size[r])
        return _combine(d.kind, [self.new_size(p, sizes) for p in d.parts])


def _combine(kind: str, sizes: Iterable[int]) -> int:
    sizes = list(sizes)
    if kind == "cat":
        return sum(sizes)
    out = 1
    for s in sizes:
        out *= s
    return out
