"""Top-1 accuracy of an image classifier on a local (or Hub) evaluation split."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from osf.search.imagedata import load_image_dataset
from osf.search.objectives import model_device

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageAccuracy:
    """Top-1 accuracy (0..1) on ``dataset`` (see :mod:`osf.search.imagedata` for forms).

    Preprocessing: pixels to [0, 1], resize to ``image_size`` (bilinear, antialiased),
    normalise with ``mean``/``std``. These come from explicit arguments, else from an
    HF image ``processor`` (object or dict with ``size``, ``image_mean``, ``image_std``),
    else ``image_size`` from the model's ``config.image_size`` at call time and ImageNet
    mean/std. The model's output may be HF (``.logits``) or a plain tensor.
    """

    def __init__(self, dataset: str, split: str | None = None, batch_size: int = 64, limit: int | None = None,
                 image_size: int | Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, processor: Any = None, name: str | None = None):
        proc = processor.to_dict() if hasattr(processor, "to_dict") else dict(processor or {})
        if image_size is None and "size" in proc:
            s = proc["size"]
            s = s if isinstance(s, dict) else {"height": s, "width": s}
            image_size = (s["height"], s["width"]) if "height" in s else s.get("shortest_edge")
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)
        self.mean = tuple(mean or proc.get("image_mean") or IMAGENET_MEAN)
        self.std = tuple(std or proc.get("image_std") or IMAGENET_STD)
        self.dataset, self.split, self.limit, self.batch_size = dataset, split, limit, batch_size
        self.name = name or f"accuracy:{dataset.split(':')[0]}"
        self.images, self.labels = load_image_dataset(dataset, split=split, limit=limit)

    def _size_for(self, model: nn.Module) -> tuple[int, int] | None:
        if self.image_size is not None:
            return self.image_size
        s = getattr(getattr(model, "config", None), "image_size", None)
        return None if s is None else ((s, s) if isinstance(s, int) else tuple(s))

    def preprocess(self, images: torch.Tensor | list[torch.Tensor], size: tuple[int, int] | None) -> torch.Tensor:
        """uint8 images -> normalised float batch at ``size``."""
        if isinstance(images, list):
            if size is None:
                raise ValueError("images have different sizes; give image_size (or a model with config.image_size)")
            images = torch.stack([self._resize(i[None].float() / 255, size)[0] for i in images])
        else:
            images = images.float() / 255
            if size is not None and tuple(images.shape[-2:]) != tuple(size):
                images = self._resize(images, size)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    @staticmethod
    def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def predictions(self, model: nn.Module) -> torch.Tensor:
        """Predicted class per image."""
        device, size, was_training = model_device(model), self._size_for(model), model.training
        model.eval()
        preds = []
        try:
            for i in range(0, len(self.labels), self.batch_size):
                x = self.preprocess(self.images[i: i + self.batch_size], size).to(device)
                out = model(x)
                logits = out.logits if hasattr(out, "logits") else out
                preds.append(logits.argmax(-1).cpu())
        finally:
            model.train(was_training)
        return torch.cat(preds)

    def __call__(self, model: nn.Module) -> float:
        return float((self.predictions(model) == self.labels).float().mean())

    def example_inputs(self) -> torch.Tensor:
        """One preprocessed image at the configured size (or its stored size)."""
        return self.preprocess(self.images[:1], self.image_size)
