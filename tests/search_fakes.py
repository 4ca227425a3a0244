"""A small but real supernet test double following ``osf.search.SupernetLike``.

A residual MLP whose residual width and hidden width are really sliced (a subnet uses
the leading rows/columns of the shared weights) and whose residual blocks can be
dropped. ``extract`` returns a plain module holding copies of the sliced weights.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from osf.space import Config, SearchSpace

IN, CLASSES = 8, 4


class ResMLP(nn.Module):
    """x -> in_proj -> [x + fc2(relu(fc1(x)))] * blocks -> head. Sizes may be sliced."""

    def __init__(self, width: int = 16, hidden: int = 32, n_blocks: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.in_proj = nn.Linear(IN, width)
        self.fc1 = nn.ModuleList(nn.Linear(width, hidden) for _ in range(n_blocks))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, width) for _ in range(n_blocks))
        self.head = nn.Linear(width, CLASSES)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.active: dict[str, Any] = {"width": width, "hidden": hidden, "keep": [True] * n_blocks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, h = self.active["width"], self.active["hidden"]
        y = F.linear(x, self.in_proj.weight[:w], self.in_proj.bias[:w])
        for i, keep in enumerate(self.active["keep"]):
            if keep:
                f1, f2 = self.fc1[i], self.fc2[i]
                z = F.relu(F.linear(y, f1.weight[:h, :w], f1.bias[:h]))
                y = y + F.linear(z, f2.weight[:w, :h], f2.bias[:w])
        return F.linear(y, self.head.weight[:, :w], self.head.bias)


class FakeSupernet:
    """Implements the supernet protocol on :class:`ResMLP`."""

    def __init__(self, model: ResMLP | None = None, calls: list | None = None):
        self.model = model or ResMLP()
        n = len(self.model.fc1)
        self.space = SearchSpace(
            dims={"width": [16, 12, 8], "hidden": [32, 16, 8]},
            stacks={"blocks": [f"blocks.{i}" for i in range(n)]},
            min_depth={"blocks": 1},
        )
        self.config: Config = self.space.largest()

    def set_config(self, cfg: Config) -> None:
        cfg = self.space.validate(cfg)
        self.config = cfg
        self.model.active = {
            "width": cfg["width"],
            "hidden": cfg["hidden"],
            "keep": [cfg[b] for b in self.space.stacks["blocks"]],
        }

    @contextmanager
    def use(self, cfg: Config) -> Iterator["FakeSupernet"]:
        old = dict(self.config)
        self.set_config(cfg)
        try:
            yield self
        finally:
            self.set_config(old)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def _sizes(self, cfg: Config | None) -> tuple[int, int, int]:
        cfg = self.space.validate(cfg if cfg is not None else self.config)
        return cfg["width"], cfg["hidden"], sum(cfg[b] for b in self.space.stacks["blocks"])

    def num_params(self, cfg: Config | None = None) -> int:
        w, h, k = self._sizes(cfg)
        return (IN * w + w) + k * (w * h + h + h * w + w) + (w * CLASSES + CLASSES)

    def macs(self, cfg: Config | None = None, inputs: Any = None) -> int:
        w, h, k = self._sizes(cfg)
        rows = 1 if inputs is None else int(torch.as_tensor(inputs).shape[0])
        return rows * (IN * w + k * 2 * w * h + w * CLASSES)

    def extract(self, cfg: Config) -> nn.Module:
        w, h, k = self._sizes(cfg)
        cfg = self.space.validate(cfg)
        sub = ResMLP(width=w, hidden=h, n_blocks=k)
        src = self.model
        with torch.no_grad():
            sub.in_proj.weight.copy_(src.in_proj.weight[:w]); sub.in_proj.bias.copy_(src.in_proj.bias[:w])
            kept = [i for i, b in enumerate(self.space.stacks["blocks"]) if cfg[b]]
            for j, i in enumerate(kept):
                sub.fc1[j].weight.copy_(src.fc1[i].weight[:h, :w]); sub.fc1[j].bias.copy_(src.fc1[i].bias[:h])
                sub.fc2[j].weight.copy_(src.fc2[i].weight[:w, :h]); sub.fc2[j].bias.copy_(src.fc2[i].bias[:w])
            sub.head.weight.copy_(src.head.weight[:, :w]); sub.head.bias.copy_(src.head.bias)
        return sub


def make_data(n: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels produced by the full model (so the full model scores 1.0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    with torch.no_grad():
        y = ResMLP()(x).argmax(-1)
    return x, y


class AgreementEvaluator:
    """Accuracy against the full model's labels; counts its calls."""

    name = "agreement"

    def __init__(self) -> None:
        self.x, self.y = make_data()
        self.calls = 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        with torch.no_grad():
            return float((model(self.x).argmax(-1) == self.y).float().mean())

    def example_inputs(self) -> torch.Tensor:
        return self.x[:4]


class DepthSupernet:
    """Depth-only supernet of an HF model with ``backbone.layers`` (e.g. Mamba): drop layers.

    Layers are dropped from the front of ``drop_order`` (default: the middle layers
    first). Real enough to run the demo and the benchmark before the full supernet lands.
    """

    def __init__(self, model: nn.Module, min_depth: int = 1):
        self.model = model
        self._layers = list(model.backbone.layers)
        n = len(self._layers)
        order = sorted(range(n), key=lambda i: abs(i - (n - 1) / 2))  # middle first
        self._names = [f"backbone.layers.{i}" for i in order]
        self.space = SearchSpace(dims={}, stacks={"layers": self._names}, min_depth={"layers": min_depth})
        self.config: Config = self.space.largest()

    def _kept(self, cfg: Config) -> list[int]:
        cfg = self.space.validate(cfg)
        return [i for i in range(len(self._layers)) if cfg[f"backbone.layers.{i}"]]

    def set_config(self, cfg: Config) -> None:
        kept = self._kept(cfg)
        self.model.backbone.layers = nn.ModuleList(self._layers[i] for i in kept)
        self.config = self.space.validate(cfg)

    @contextmanager
    def use(self, cfg: Config) -> Iterator["DepthSupernet"]:
        old = dict(self.config)
        self.set_config(cfg)
        try:
            yield self
        finally:
            self.set_config(old)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def num_params(self, cfg: Config | None = None) -> int:
        kept = set(self._kept(cfg if cfg is not None else self.config))
        with self.use(self.space.largest()):
            total = sum(p.numel() for p in self.model.parameters())
        return total - sum(p.numel() for i, l in enumerate(self._layers) if i not in kept for p in l.parameters())

    def macs(self, cfg: Config | None = None, inputs: Any = None) -> int:
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        return self.num_params(cfg) * (1 if ids is None else int(ids.numel()))

    def extract(self, cfg: Config) -> nn.Module:
        import copy

        with self.use(cfg):
            sub = copy.deepcopy(self.model)
        sub.config.num_hidden_layers = len(sub.backbone.layers)
        for j, layer in enumerate(sub.backbone.layers):
            layer.layer_idx = j
            if hasattr(layer, "mixer"):
                layer.mixer.layer_idx = j
        return sub
