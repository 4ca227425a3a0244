"""Top-1 accuracy of an image classifier on a local (or Hub) evaluation split."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from osf.modes import eval_mode
from osf.search.imagedata import load_image_dataset
from osf.search.objectives import check_count, model_device

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageAccuracy:
    """Top-1 accuracy (0..1) on ``dataset`` (see :mod:`osf.search.imagedata` for forms).

    Preprocessing: pixels to [0, 1], resize to ``image_size`` (bilinear, antialiased),
    normalise with ``mean``/``std``. These come from explicit arguments, else from an
    HF image ``processor`` (object or dict with ``size``, ``image_mean``, ``image_std``),
    else ``image_size`` from the model's ``config.image_size`` at call time and ImageNet
    mean/std. The model's output may be HF (``.logits``) or a plain tensor.

    ``calibration_split`` (default ``"train"``) is where :meth:`calibration_batches` draws the
    images (with their labels) that rank a supernet's channels and layers: never the scored
    split. ``None`` turns it off.
    """

    def __init__(self, dataset: str, split: str | None = None, batch_size: int = 64, limit: int | None = None,
                 image_size: int | Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, processor: Any = None, name: str | None = None,
                 calibration_split: str | None = "train"):
        check_count(limit, "limit", what=" (images to evaluate)")
        check_count(batch_size, "batch_size", allow_none=False)
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
        self.calibration_split = calibration_split

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

    def predictions(self, model: nn.Module) -> torch.Tensor:
        """Predicted class per image."""
        return self.predictions_of(model, len(self.labels))

    def _check_logits(self, logits: Any) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model does not classify images: ImageAccuracy needs (batch, classes) logits, "
                             f"got {shape}; use an image classifier (e.g. a ...ForImageClassification model)")
        n, top = logits.shape[-1], int(self.labels.max()) if len(self.labels) else -1
        if top >= n or (len(self.labels) and int(self.labels.min()) < 0):
            raise ValueError(
                f"dataset {self.dataset!r} has labels {int(self.labels.min())}..{top} but the model outputs {n} "
                f"classes (0..{n - 1}); use a model with a head for this dataset's classes (e.g. num_labels={top + 1})"
            )

    def check_model(self, model: nn.Module) -> None:
        """Refuse early a model that cannot be scored on this data (not a classifier, too few classes)."""
        name = type(model).__name__
        main = getattr(model, "main_input_name", "pixel_values")
        if main != "pixel_values":
            raise ValueError(f"{name} takes {main!r}, not images: image tasks need an image classifier "
                             "(e.g. a ...ForImageClassification model)")
        try:
            self.predictions_of(model, 1)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{name} cannot classify the images of {self.dataset!r}: its forward fails "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e

    @torch.no_grad()
    def predictions_of(self, model: nn.Module, n: int) -> torch.Tensor:
        """Predicted classes of the first ``n`` images (the first batch's logits are checked against the labels)."""
        device, size = model_device(model), self._size_for(model)
        preds = []
        with eval_mode(model):
            for i in range(0, n, self.batch_size):
                x = self.preprocess(self.images[i: min(i + self.batch_size, n)], size).to(device)
                out = model(x)
                logits = out.logits if hasattr(out, "logits") else out
                if i == 0:
                    self._check_logits(logits)
                preds.append(logits.argmax(-1).cpu())
        return torch.cat(preds)

    def __call__(self, model: nn.Module) -> float:
        return float((self.predictions(model) == self.labels).float().mean())

    def calibration_batches(self, n: int = 8, batch_size: int = 32) -> list[dict[str, torch.Tensor]] | None:
        """Up to ``n`` batches of ``batch_size`` preprocessed images with their ``labels`` from
        ``calibration_split`` (spread over it); None when it is off, the same as the scored split,
        or the dataset has no such split."""
        if self.calibration_split is None or self.calibration_split == self.split:
            return None
        try:
            images, labels = load_image_dataset(self.dataset, split=self.calibration_split)
        except (ValueError, FileNotFoundError, KeyError):
            return None
        count = min(len(labels), n * batch_size)
        if count == 0:
            return None
        pick = torch.linspace(0, len(labels) - 1, count).round().long().tolist()
        chosen = [images[i] for i in pick] if isinstance(images, list) else images[pick]
        size = self.image_size or (tuple(chosen.shape[-2:]) if isinstance(chosen, torch.Tensor) else None)
        x, y = self.preprocess(chosen, size), labels[pick]
        return [{"pixel_values": x[i: i + batch_size], "labels": y[i: i + batch_size]}
                for i in range(0, count, batch_size)]

    def full_sample(self) -> None:
        """Always None: the evaluator holds only the images it scores."""
        return None

    def describe(self) -> str:
        return f"top-1 accuracy on {self.dataset.split(':')[0]} ({self.split or 'evaluation'} split), 0..1, higher is better"

    def example_inputs(self) -> torch.Tensor:
        """One preprocessed image at the configured size (or its stored size)."""
        return self.preprocess(self.images[:1], self.image_size)
