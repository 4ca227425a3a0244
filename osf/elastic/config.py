"""``SupernetConfig``: how a supernet was built, as a serialisable record (like PEFT's ``LoraConfig``).

``osf.supernet(model, config=SupernetConfig(...))`` builds with it; the keyword arguments of
:func:`osf.supernet` override its fields; ``sn.build_config`` holds the effective one. It is saved
with supernet checkpoints (``sn.save_pretrained``) and search runs, so a supernet can be rebuilt
the same way. Calibration batches are not part of it (only their number, for the record).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from osf.elastic.importance import IMPORTANCE_METHODS

BLOCK_ORDERS = ("auto", "greedy", "cosine")
from osf.errors import InputTypeError


@dataclass(frozen=True)
class SupernetConfig:
    """Everything :func:`osf.supernet` is built with that can be saved.

    Attributes:
        space: overrides of the default choices, e.g. ``{"*:d_state": [16, 8]}`` (a path to a
            JSON/YAML file is read into its dict), or ``None`` for the default space.
        importance: channel importance: ``"auto"`` (default: ``"activation"`` with calibration data,
            ``"magnitude"`` without), ``"magnitude"`` (no data), or with calibration data
            ``"activation"`` (Wanda-style), ``"taylor"`` (first-order, gradient x weight),
            ``"fisher"`` (squared gradient x weight); see :mod:`osf.elastic.importance`.
        block_order: how layers are ranked for dropping: ``"greedy"`` (by the calibration loss
            when each is dropped, greedily), ``"cosine"`` (``1 - cos(input, output)``), ``"auto"``
            (default: greedy with calibration data, cosine on random example inputs, with a warning).
        depth: make residual layers droppable.
        min_depth: the share of each layer stack that must stay (default 0.25: up to 3/4 of a
            stack may be dropped), a fraction in (0, 1].
        kernels: run Hugging Face Mamba mixers through :mod:`osf.kernels`.
        verify: check at build time that the largest config reproduces the model.
        calibration_batches: how many calibration batches the build used (informational;
            the batches themselves are not saved), ``None`` when none were given.
    """

    space: dict[str, Any] | None = None
    importance: str = "auto"
    depth: bool = True
    kernels: bool = True
    verify: bool = True
    calibration_batches: int | None = None
    block_order: str = "auto"
    min_depth: float = 0.25

    def __post_init__(self) -> None:
        space = self.space
        if isinstance(space, (str, Path)):
            from osf.space import load_mapping

            space = load_mapping(Path(space))
        if space is not None:
            if not isinstance(space, Mapping):
                raise InputTypeError(f"SupernetConfig.space must be a dict of dim pattern -> sizes (or the path of a "
                                     f"JSON/YAML file holding one), or None; got {type(space).__name__}")
            space = {k: _plain(v) for k, v in space.items()}
        object.__setattr__(self, "space", space)
        if not isinstance(self.importance, str) or self.importance not in IMPORTANCE_METHODS:
            raise ValueError(f"importance must be one of {IMPORTANCE_METHODS}, got {self.importance!r}")
        for name in ("depth", "kernels", "verify"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InputTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
        if not isinstance(self.block_order, str) or self.block_order not in BLOCK_ORDERS:
            raise ValueError(f"block_order must be one of {BLOCK_ORDERS}, got {self.block_order!r}")
        f = self.min_depth
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ValueError(f"min_depth must be a fraction in (0, 1] (the share of each layer stack that must "
                             f"stay), got {f!r}")
        object.__setattr__(self, "min_depth", float(f))
        n = self.calibration_batches
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise InputTypeError(f"calibration_batches must be a count (an int >= 0) or None, got {n!r}")

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields (:meth:`from_dict` reads it back)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SupernetConfig":
        """The config a :meth:`to_dict` dict describes.

        Raises:
            ValueError: ``data`` is not a dict, or holds keys that are not fields (listed with the known ones).
        """
        if not isinstance(data, Mapping):
            raise InputTypeError(f"SupernetConfig.from_dict takes a dict, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError(f"unknown SupernetConfig field(s) {unknown}; known fields: {known}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SupernetConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"SupernetConfig JSON is not valid at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON to the file ``path`` (or ``path/supernet_config.json`` for a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "supernet_config.json"
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SupernetConfig":
        """Read a config written by :meth:`save` (a file, or a folder holding ``supernet_config.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "supernet_config.json"
        if not path.is_file():
            raise ValueError(f"SupernetConfig file {str(path)!r} does not exist")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"SupernetConfig file {str(path)!r} cannot be read ({e})") from None
        try:
            return cls.from_json(text)
        except ValueError as e:
            raise ValueError(f"{str(path)!r}: {e}") from None


def _plain(value: Any) -> Any:
    """Sizes as plain JSON values (numpy arrays and scalars, tuples -> lists and ints); anything
    else is left for :meth:`osf.SearchSpace.restrict` to judge."""
    if type(value).__module__ == "numpy":
        return value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
