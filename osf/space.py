"""The search space of a supernet and its configurations.

A *config* is a plain JSON-serialisable dict: ``{dim_name: size, block_name: keep}``.
Every dim of the space must be present; blocks may be omitted (kept). A space also
offers *search parameters* for samplers: one categorical per dim plus one depth
choice per stack (``"<stack>:depth"``), which keeps the most important blocks.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import numbers
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from osf.errors import InputTypeError

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

    def block_dims(self, block: str) -> list[str]:
        """Dims that live inside ``block`` (named ``<block>.…`` or ``<block>:…``): unused when it is dropped."""
        return [d for d in self.dims if d.startswith(block + ".") or d.startswith(block + ":")]

    def canonical(self, cfg: Mapping[str, Any]) -> Config:
        """``cfg`` validated, with the dims of dropped blocks at their largest choice.

        Configs that differ only in the widths of dropped blocks describe one subnet;
        they have one canonical form (the search scores each subnet once).
        """
        out = self.validate(cfg)
        for b in self.blocks:
            if not out[b]:
                for d in self.block_dims(b):
                    out[d] = self.dims[d][0]
        return out

    # ------------------------------------------------------------ validation
    def validate(self, cfg: Mapping[str, Any]) -> Config:
        """Check ``cfg`` and return it completed with omitted blocks (kept).

        Sizes must be ints (numpy/torch integer scalars are taken as ints; floats and bools
        are refused), keep flags bools.

        Raises:
            ValueError: naming the offending dim or block and what is allowed (unknown names
                come with the closest known ones).
            osf.errors.InputTypeError: (a ``TypeError`` and a ``ValueError``) a value or the
                config itself has the wrong type.
        """
        if not isinstance(cfg, Mapping):
            raise InputTypeError(f"config must be a dict of dim/block name -> value (like space.largest()), "
                                 f"got {type(cfg).__name__}")
        known = set(self.dims) | set(self.blocks)
        unknown = [k for k in cfg if k not in known]
        if unknown:
            raise ValueError(f"unknown name(s) in config: {unknown}{_suggest(unknown, known)}; "
                             f"allowed dims: {_short(list(self.dims))}; blocks: {_short(self.blocks)}")
        missing = [d for d in self.dims if d not in cfg]
        if missing:
            raise ValueError(f"config is missing dim(s) {_short(missing)}; every dim needs a size")
        out: Config = {}
        for d, choices in self.dims.items():
            v = _as_size(cfg[d], f"dim {d!r}", f"allowed sizes: {choices}")
            if v not in choices:
                raise ValueError(f"dim {d!r}: size {v!r} is not allowed; allowed sizes: {choices}")
            out[d] = v
        for stack, names in self.stacks.items():
            for b in names:
                keep = _as_keep(cfg.get(b, True), b)
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
        ``"depth"`` (a fraction) sets the minimum kept share of every stack. Each list must
        include the dim's full size (the largest config is the original model).

        Raises:
            ValueError: an unreadable file (named, with the line of a parse error), a pattern
                that matches no dim (with close names), sizes out of 1..full or without full.
        """
        if isinstance(overrides, (str, Path)):
            overrides = load_mapping(Path(overrides))
        elif not isinstance(overrides, Mapping):
            raise InputTypeError(f"space must be a dict of dim pattern -> sizes, or the path of a JSON/YAML file "
                                 f"holding one, got {type(overrides).__name__}")
        dims = {d: list(c) for d, c in self.dims.items()}
        min_depth = dict(self.min_depth)
        for pattern, value in overrides.items():
            if not isinstance(pattern, str):
                raise InputTypeError(f"space: keys are dim-name patterns (strings such as '*:d_state'), "
                                     f"got {pattern!r}")
            if pattern == "depth":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                    raise ValueError(f"space override 'depth' must be a fraction in (0, 1] (the share of each "
                                     f"stack's blocks that must stay), got {value!r}")
                for s, names in self.stacks.items():
                    min_depth[s] = max(1, math.ceil(float(value) * len(names) - 1e-9))
                continue
            matched = [d for d in dims if fnmatch.fnmatchcase(d, pattern)]
            if not matched:
                raise ValueError(f"space override {pattern!r} matches no dim{_suggest_pattern(pattern, list(dims))}; "
                                 f"dims: {_short(list(dims))}")
            if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 1:
                value = value.tolist()  # a numpy array of sizes
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"space override {pattern!r}: expected a non-empty list of sizes "
                                 f"(e.g. [{self.dims[matched[0]][0]}, {max(1, self.dims[matched[0]][0] // 2)}]), "
                                 f"got {value!r}")
            for d in matched:
                full = self.dims[d][0]
                allowed = f"sizes are whole numbers from 1 to {full} (its original size)"
                sizes = [_as_size(v, f"space override {pattern!r} for dim {d!r}", allowed) for v in value]
                bad = [v for v in sizes if not 0 < v <= full]
                if bad:
                    raise ValueError(f"space override {pattern!r} for dim {d!r}: sizes {bad} are out of range; "
                                     f"{allowed}")
                if full not in sizes:
                    raise ValueError(f"space override {pattern!r} for dim {d!r}: the choices {sizes} leave out its "
                                     f"full size {full}; the largest config must be the original model, so include "
                                     f"{full} (e.g. {sorted({full, *sizes}, reverse=True)})")
                dims[d] = sorted(set(sizes), reverse=True)
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


def _suggest(names: list, known: Iterable[str]) -> str:
    """'' or '; did you mean ...' with the known names closest to ``names``."""
    known = list(known)
    hints = []
    for n in names:
        if isinstance(n, str) and n.endswith(DEPTH_SUFFIX):
            hints.append(f"{n!r} is a search parameter, not a config entry: turn parameters into a config "
                         "with space.to_config(params)")
            continue
        close = difflib.get_close_matches(str(n), known, n=3, cutoff=0.6)
        if close:
            hints.append(f"for {n!r} did you mean {' or '.join(map(repr, close))}?")
    return "; " + "; ".join(hints) if hints else ""


def _suggest_pattern(pattern: str, dims: list[str]) -> str:
    """'' or '; did you mean ...': close dim names, and close ``*:<kind>`` patterns."""
    kinds = sorted({"*:" + d.rpartition(":")[2] for d in dims if ":" in d})
    by_kind = difflib.get_close_matches(pattern, kinds, n=3, cutoff=0.6)
    by_name = difflib.get_close_matches(pattern, dims, n=3, cutoff=0.6)
    glob = any(c in pattern for c in "*?[")
    first, second = (by_kind, by_name) if glob else (by_name, by_kind)
    close = first + [c for c in second if c not in first]
    return f"; did you mean {' or '.join(map(repr, close[:3]))}?" if close else ""


def _as_size(value: Any, what: str, allowed: str) -> int:
    """``value`` as a Python int: ints and integer numpy/torch scalars pass; floats, bools
    and strings are refused (``3.0`` would hide a computed size that is not whole)."""
    if isinstance(value, bool) or _is_numpy_bool(value):
        raise InputTypeError(f"{what}: size {value!r} is a bool, not a size; {allowed}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if _is_int_tensor(value):
        return int(value.item())
    if isinstance(value, numbers.Real):
        raise InputTypeError(f"{what}: size must be an int, got the float {value!r}; {allowed}")
    raise InputTypeError(f"{what}: size must be an int, got {type(value).__name__} {value!r}; {allowed}")


def _is_numpy_bool(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")


def _is_int_tensor(value: Any) -> bool:
    """A 0-dim integer torch tensor (``torch.tensor(16)``), without importing torch here."""
    return (type(value).__module__.startswith("torch") and getattr(value, "shape", None) == ()
            and str(getattr(value, "dtype", "")) in ("torch.int8", "torch.int16", "torch.int32", "torch.int64",
                                                       "torch.uint8"))


def _as_keep(value: Any, block: str) -> bool:
    """A block's keep flag as a Python bool (numpy bools pass; 0/1 and strings do not)."""
    if isinstance(value, bool):
        return value
    if _is_numpy_bool(value):
        return bool(value)
    raise InputTypeError(f"block {block!r}: keep must be True or False (a bool), got {type(value).__name__} {value!r}")


def load_mapping(path: Path) -> dict:
    """The dict in a JSON or YAML file (space overrides); one-line errors for a missing file,
    a folder, a parse error or a non-mapping."""
    where = f"space file {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{where} does not exist; space= takes a dict or the path of a JSON/YAML file")
    if not path.is_file():
        raise ValueError(f"{where} is a folder; space= takes a dict or the path of a JSON/YAML file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} cannot be read as text ({e})") from e
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"{where} is not valid YAML{line}: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg} "
                             "(use a .yaml/.yml name for YAML)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a mapping of pattern -> sizes (e.g. {{\"*:d_state\": [16, 8]}}), "
                         f"got {type(data).__name__}")
    return data


def config_key(cfg: Config) -> str:
    """Canonical JSON of a config: the search's cache key and what the trials table shows."""
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))
