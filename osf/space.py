"""The search space of a supernet and its configurations.

A *config* is a plain JSON-serialisable dict: ``{dim_name: size, block_name: keep}``.
Every dim of the space must be present; blocks may be omitted (kept). A space also
offers *search parameters* for samplers: one categorical per dim plus one depth
choice per stack (``"<stack>:depth"``), which keeps the most important blocks.
"""
from __future__ import annotations

import fnmatch
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

Config = dict[str, Any]

DEPTH_SUFFIX = ":depth"


@dataclass
class SearchSpace:
    """Choices for every elastic dim and every droppable block.

    Attributes:
        dims: dim name -> allowed sizes, largest first (the first is the original size).
        stacks: stack name -> its block names, in drop order (least important first).
        min_depth: stack name -> the fewest blocks that must be kept.
    """

    dims: dict[str, list[int]] = field(default_factory=dict)
    stacks: dict[str, list[str]] = field(default_factory=dict)
    min_depth: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def blocks(self) -> list[str]:
        """All block names, stack by stack."""
        return [b for names in self.stacks.values() for b in names]

    @property
    def size(self) -> int:
        """Number of distinct configs (dims x depth choices)."""
        n = 1
        for choices in self.dims.values():
            n *= len(choices)
        for stack, names in self.stacks.items():
            n *= len(names) - self.min_depth.get(stack, len(names)) + 1
        return n

    def largest(self) -> Config:
        """The original model: every dim at full size, every block kept."""
        return {**{d: c[0] for d, c in self.dims.items()}, **{b: True for b in self.blocks}}

    def smallest(self) -> Config:
        """Every dim at its smallest choice, each stack at its minimum depth."""
        params = {d: c[-1] for d, c in self.dims.items()}
        params.update({s + DEPTH_SUFFIX: self.min_depth.get(s, len(b)) for s, b in self.stacks.items()})
        return self.to_config(params)

    def sample(self, seed: int | None = None) -> Config:
        """A uniformly random config (reproducible with ``seed``)."""
        rng = random.Random(seed)
        return self.to_config({name: rng.choice(ch) for name, ch in self.parameters().items()})

    # ---------------------------------------------------- sampler parameters
    def parameters(self) -> dict[str, list[int]]:
        """Categorical search parameters: each dim, plus ``"<stack>:depth"`` per stack."""
        params: dict[str, list[int]] = {d: list(c) for d, c in self.dims.items()}
        for stack, names in self.stacks.items():
            lo = self.min_depth.get(stack, len(names))
            if lo < len(names):
                params[stack + DEPTH_SUFFIX] = list(range(len(names), lo - 1, -1))
        return params

    def to_config(self, params: Mapping[str, int]) -> Config:
        """Turn search parameters (see :meth:`parameters`) into a config."""
        cfg: Config = {d: int(params[d]) for d in self.dims}
        for stack, names in self.stacks.items():
            depth = int(params.get(stack + DEPTH_SUFFIX, len(names)))
            n_drop = len(names) - depth
            for i, b in enumerate(names):
                cfg[b] = i >= n_drop
        return cfg

    def depths(self, cfg: Mapping[str, Any]) -> dict[str, int]:
        """Blocks kept per stack in ``cfg``."""
        return {s: sum(bool(cfg.get(b, True)) for b in names) for s, names in self.stacks.items()}

    # ------------------------------------------------------------ validation
    def validate(self, cfg: Mapping[str, Any]) -> Config:
        """Check ``cfg`` and return it completed with omitted blocks (kept).

        Raises:
            ValueError: naming the offending dim or block and what is allowed.
        """
        if not isinstance(cfg, Mapping):
            raise ValueError(f"a config must be a dict of dim/block name -> value, got {type(cfg).__name__}")
        known = set(self.dims) | set(self.blocks)
        unknown = [k for k in cfg if k not in known]
        if unknown:
            raise ValueError(
                f"unknown name(s) in config: {unknown}; allowed dims: {_short(list(self.dims))}; "
                f"blocks: {_short(self.blocks)}"
            )
        missing = [d for d in self.dims if d not in cfg]
        if missing:
            raise ValueError(f"config is missing dim(s) {_short(missing)}; every dim needs a size")
        out: Config = {}
        for d, choices in self.dims.items():
            v = cfg[d]
            if isinstance(v, bool) or not isinstance(v, int) or v not in choices:
                raise ValueError(f"dim {d!r}: size {v!r} is not allowed; allowed sizes: {choices}")
            out[d] = int(v)
        for stack, names in self.stacks.items():
            for b in names:
                keep = cfg.get(b, True)
                if not isinstance(keep, bool):
                    raise ValueError(f"block {b!r}: keep must be true or false, got {keep!r}")
                out[b] = keep
            kept = sum(out[b] for b in names)
            lo = self.min_depth.get(stack, len(names))
            if kept < lo:
                raise ValueError(
                    f"stack {stack!r}: {kept} block(s) kept, at least {lo} of {len(names)} must stay"
                )
        return out

    # ----------------------------------------------------------- overrides
    def restrict(self, overrides: Mapping[str, Any] | str | Path) -> "SearchSpace":
        """A copy with dim choices replaced by glob patterns, e.g. ``{"*:d_state": [16, 8]}``.

        ``overrides`` may be a dict, or the path of a JSON/YAML file holding one. The key
        ``"depth"`` (a fraction) sets the minimum kept share of every stack.
        """
        if isinstance(overrides, (str, Path)):
            overrides = _load_mapping(Path(overrides))
        dims = {d: list(c) for d, c in self.dims.items()}
        min_depth = dict(self.min_depth)
        for pattern, value in overrides.items():
            if pattern == "depth":
                frac = float(value)
                if not 0.0 < frac <= 1.0:
                    raise ValueError(f"space override 'depth' must be a fraction in (0, 1], got {value!r}")
                for s, names in self.stacks.items():
                    min_depth[s] = max(1, math.ceil(frac * len(names) - 1e-9))
                continue
            matched = [d for d in dims if fnmatch.fnmatchcase(d, pattern)]
            if not matched:
                raise ValueError(f"space override {pattern!r} matches no dim; dims: {_short(list(dims))}")
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"space override {pattern!r}: expected a non-empty list of sizes, got {value!r}")
            for d in matched:
                full = self.dims[d][0]
                bad = [v for v in value if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= full]
                if bad:
                    raise ValueError(f"dim {d!r}: sizes {bad} are not in 1..{full} (its original size)")
                dims[d] = sorted({full, *value}, reverse=True) if full in value else sorted(set(value), reverse=True)
        return SearchSpace(dims=dims, stacks={s: list(b) for s, b in self.stacks.items()}, min_depth=min_depth)

    # --------------------------------------------------------- persistence
    def to_json(self) -> str:
        return json.dumps({"dims": self.dims, "stacks": self.stacks, "min_depth": self.min_depth}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        data = json.loads(text)
        return cls(
            dims={k: [int(x) for x in v] for k, v in data["dims"].items()},
            stacks={k: list(v) for k, v in data.get("stacks", {}).items()},
            min_depth={k: int(v) for k, v in data.get("min_depth", {}).items()},
        )

    def __repr__(self) -> str:
        return f"SearchSpace({len(self.dims)} dims, {len(self.blocks)} blocks in {len(self.stacks)} stacks, size={self.size:.3g})"


def _short(names: list[str], n: int = 8) -> str:
    return repr(names) if len(names) <= n else repr(names[:n])[:-1] + f", ... ({len(names)} in all)]"


def _load_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"space file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"space file {str(path)!r} must hold a mapping of pattern -> sizes")
    return data
