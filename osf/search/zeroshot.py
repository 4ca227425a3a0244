"""Zero-shot image classification accuracy of a CLIP-style model (text prompts as the classifier).

Each class becomes a prompt (``"a photo of a {label}."``); the model's text tower encodes
the prompts and its vision tower the images; an image's prediction is the class whose
prompt embedding has the largest cosine similarity with the image embedding.

The whole model is the supernet: both towers may be elastic, so the prompt embeddings are
recomputed at every call (one short batch of ``len(class_names)`` prompts, small next to the
images), never cached across configs.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from osf.modes import eval_mode
from osf.search.imagedata import load_image_dataset
from osf.search.objectives import check_count, model_device

# OpenAI CLIP's image statistics (the default of every CLIP image processor)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATE = "a photo of a {label}."
# the class-name files shipped with the python-pickle CIFAR downloads: (file, key)
CIFAR_META = {"cifar10": ("batches.meta", b"label_names", "cifar-10-batches-py"),
              "cifar100": ("meta", b"fine_label_names", "cifar-100-python")}


def cifar_class_names(spec: str) -> list[str]:
    """Class names of a ``cifar10:DIR`` / ``cifar100:DIR`` dataset, read from its meta file
    (``batches.meta`` / ``meta``), underscores as spaces (``aquarium_fish`` -> ``aquarium fish``)."""
    kind, _, root = spec.partition(":")
    if kind not in CIFAR_META or not root:
        raise ValueError(f"class names are read from cifar10:DIR or cifar100:DIR datasets, not {spec!r}; "
                         "pass class_names= for other data")
    fname, key, sub = CIFAR_META[kind]
    path = Path(root) / fname
    if not path.is_file():
        path = Path(root) / sub / fname
    if not path.is_file():
        raise FileNotFoundError(f"{kind} class names file {fname!r} is missing in {root!r} (it ships with the "
                                "python-pickle download); pass class_names= instead")
    with open(path, "rb") as fh:
        try:
            meta = pickle.load(fh, encoding="bytes")
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not a {kind} meta pickle: {e}") from e
    if not isinstance(meta, dict) or key not in meta:
        raise ValueError(f"{str(path)!r} is not a {kind} meta file: needs the key {key!r}")
    return [(n.decode() if isinstance(n, bytes) else str(n)).replace("_", " ") for n in meta[key]]


class ZeroShotAccuracy:
    """Zero-shot top-1 accuracy (0..1) of a CLIP-style model on labelled images.

    The model must offer ``get_text_features(input_ids=, attention_mask=)`` and
    ``get_image_features(pixel_values=)`` (``CLIPModel`` and its relatives); each may return
    a tensor or an output with ``pooler_output`` / ``image_embeds`` / ``text_embeds``.

    Args:
        images: a dataset spec (``cifar10:DIR``, ``cifar100:DIR``, ``imagefolder:DIR``, a
            ``save_to_disk`` folder; see :mod:`osf.search.imagedata`), or a uint8
            ``(N, 3, H, W)`` tensor with ``labels``.
        labels: class indices of ``images`` when it is a tensor (``None`` for a spec).
        class_names: one name per class, in label order; read from CIFAR's meta file when
            ``images`` is a ``cifar10:``/``cifar100:`` spec and this is ``None``.
        tokenizer: encodes the prompts (taken from ``processor.tokenizer`` when ``None``).
        template: the prompt, with ``{label}`` where the class name goes.
        processor: a ``CLIPProcessor`` or image processor (object or dict): image size and
            mean/std come from it when not given explicitly.
        split, limit: which images of a dataset spec (evaluation split by default).
        batch_size: images per forward pass.
        image_size, mean, std: preprocessing; defaults: the processor's, else the model's
            ``config.vision_config.image_size`` at call time and CLIP's mean/std.
        name: the evaluator's name (default ``zero-shot:<dataset>``).

    Images are scaled to [0, 1], resized so the shorter side is the model's image size
    (bilinear, antialiased), centre-cropped to a square and normalised, as CLIP's image
    processors do.
    """

    def __init__(self, images: str | torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None, tokenizer: Any = None, *, template: str = DEFAULT_TEMPLATE,
                 processor: Any = None, split: str | None = None, limit: int | None = None, batch_size: int = 64,
                 image_size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 name: str | None = None):
        check_count(limit, "limit", what=" (images to evaluate)")
        check_count(batch_size, "batch_size", allow_none=False)
        if not isinstance(template, str) or "{label}" not in template:
            raise ValueError(f"template must be a string with '{{label}}' where the class name goes, got {template!r}")
        if isinstance(images, str):
            if labels is not None:
                raise ValueError("labels come with the dataset when images is a dataset spec; pass labels= only with "
                                 "an image tensor")
            self.dataset = images.split(":")[0]
            self.images, self.labels = load_image_dataset(images, split=split, limit=limit)
            if class_names is None:
                class_names = cifar_class_names(images)
        elif isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
            if labels is None:
                raise ValueError("labels are required with an image tensor (one class index per image)")
            self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if len(self.labels) != len(images):
                raise ValueError(f"{len(images)} images but {len(self.labels)} labels; give one label per image")
            self.images = images if limit is None else images[:limit]
            self.labels = self.labels if limit is None else self.labels[:limit]
            self.dataset = "images"
        else:
            raise TypeError(f"images must be a dataset spec (e.g. 'cifar10:DIR') or a uint8 image tensor, got "
                            f"{type(images).__name__}")
        if class_names is None or isinstance(class_names, str) or not all(isinstance(c, str) and c for c in class_names):
            raise ValueError(f"class_names must be a list of non-empty strings, one per class, got {class_names!r}")
        self.class_names = list(class_names)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise ValueError(f"labels run {int(self.labels.min())}..{int(self.labels.max())} but there are "
                             f"{len(self.class_names)} class names (labels must be 0..{len(self.class_names) - 1})")
        if tokenizer is None:
            tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or not callable(tokenizer):
            raise ValueError("a tokenizer is required to encode the class prompts: pass tokenizer= or a processor "
                             "with one (e.g. CLIPProcessor)")
        self.template, self.batch_size, self.split, self.limit = template, batch_size, split, limit
        self.prompts = [template.format(label=c) for c in self.class_names]
        enc = tokenizer(self.prompts, padding=True, return_tensors="pt")
        self.input_ids, self.attention_mask = enc["input_ids"], enc.get("attention_mask")
        if self.attention_mask is None:
            self.attention_mask = torch.ones_like(self.input_ids)
        image_proc = getattr(processor, "image_processor", processor)
        if image_proc is not None and not isinstance(image_proc, dict) and not hasattr(image_proc, "image_mean"):
            image_proc = None  # a tokenizer passed as the processor: nothing to read about images
        proc = image_proc.to_dict() if hasattr(image_proc, "to_dict") else dict(image_proc or {})
        if image_size is None:
            s = proc.get("crop_size") or proc.get("size")
            if isinstance(s, dict):
                s = s.get("height") or s.get("shortest_edge")
            image_size = s
        self.image_size = image_size
        self.mean = tuple(mean or proc.get("image_mean") or CLIP_MEAN)
        self.std = tuple(std or proc.get("image_std") or CLIP_STD)
        self.name = name or f"zero-shot:{self.dataset}"
        self._checked_size: int | None = None  # the image size of the last model checked (for example_inputs)

    # ---------------------------------------------------------------- inputs
    def _size_for(self, model: nn.Module) -> int | None:
        if self.image_size is not None:
            return int(self.image_size)
        vision = getattr(getattr(model, "config", None), "vision_config", None)
        s = getattr(vision, "image_size", None)
        return None if s is None else int(s if isinstance(s, int) else s[0])

    def preprocess(self, images: torch.Tensor | list[torch.Tensor], size: int | None) -> torch.Tensor:
        """uint8 images -> normalised float batch: shorter side to ``size``, centre crop, mean/std."""
        items = list(images) if isinstance(images, list) else [images]
        out = []
        for x in items:
            x = x.float() / 255
            if x.dim() == 3:
                x = x[None]
            if size is not None:
                h, w = x.shape[-2:]
                if (h, w) != (size, size):
                    scale = size / min(h, w)
                    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
                    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
                    top, left = (nh - size) // 2, (nw - size) // 2
                    x = x[..., top: top + size, left: left + size]
            out.append(x)
        x = torch.cat(out)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    @staticmethod
    def _features(out: Any, kind: str) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        for attr in ("pooler_output", f"{kind}_embeds"):
            t = getattr(out, attr, None)
            if isinstance(t, torch.Tensor):
                return t
        raise ValueError(f"get_{kind}_features returned {type(out).__name__} without a feature tensor "
                         "(pooler_output); ZeroShotAccuracy needs a CLIP-style model")

    def check_model(self, model: nn.Module) -> None:
        """Refuse early a model that cannot be scored: no text/image feature methods, prompts
        with token ids outside its text vocabulary, or prompts longer than its text positions."""
        name = type(model).__name__
        missing = [m for m in ("get_text_features", "get_image_features") if not callable(getattr(model, m, None))]
        if missing:
            raise ValueError(f"{name} has no {' / '.join(missing)}: zero-shot classification needs a CLIP-style model "
                             "with a text and a vision tower (e.g. CLIPModel)")
        text_cfg = getattr(getattr(model, "config", None), "text_config", None)
        vocab = getattr(text_cfg, "vocab_size", None)
        if vocab is not None and int(self.input_ids.max()) >= vocab:
            raise ValueError(f"the tokenizer's prompt ids reach {int(self.input_ids.max())} but {name}'s text vocabulary "
                             f"has {vocab} tokens; use the tokenizer that belongs to the model")
        positions = getattr(text_cfg, "max_position_embeddings", None)
        if positions is not None and self.input_ids.shape[1] > positions:
            raise ValueError(f"the longest prompt is {self.input_ids.shape[1]} tokens but {name} reads at most "
                             f"{positions}; use a shorter template or class names")
        self._checked_size = self._size_for(model)

    # ------------------------------------------------------------- scoring
    @torch.no_grad()
    def text_features(self, model: nn.Module) -> torch.Tensor:
        """Unit-length prompt embeddings (one row per class) of ``model`` as it is now."""
        device = model_device(model)
        with eval_mode(model):
            out = model.get_text_features(input_ids=self.input_ids.to(device),
                                          attention_mask=self.attention_mask.to(device))
        return F.normalize(self._features(out, "text").float(), dim=-1)

    @torch.no_grad()
    def similarities(self, model: nn.Module) -> torch.Tensor:
        """Cosine similarity of each image (rows) with each class prompt (columns)."""
        self.check_model(model)
        device, size = model_device(model), self._size_for(model)
        text = self.text_features(model)
        sims = []
        with eval_mode(model):
            for i in range(0, len(self.labels), self.batch_size):
                x = self.preprocess(self.images[i: i + self.batch_size], size).to(device)
                image = F.normalize(self._features(model.get_image_features(pixel_values=x), "image").float(), dim=-1)
                sims.append((image @ text.T).cpu())
        return torch.cat(sims) if sims else torch.zeros(0, len(self.class_names))

    def predictions(self, model: nn.Module) -> torch.Tensor:
        """Predicted class per image: the prompt of largest cosine similarity."""
        return self.similarities(model).argmax(-1)

    def __call__(self, model: nn.Module) -> float:
        return float((self.predictions(model) == self.labels).float().mean())

    def describe(self) -> str:
        return (f"zero-shot top-1 accuracy on {self.dataset} ({self.split or 'evaluation'} split; prompts "
                f"{self.template!r}, {len(self.class_names)} classes), 0..1, higher is better")

    def example_inputs(self) -> dict[str, torch.Tensor]:
        """One prompt and one preprocessed image (the model's forward inputs, for MACs and latency), at
        the image size given, else that of the model last scored or checked, else the images' own."""
        size = self.image_size if self.image_size is not None else self._checked_size
        return {"input_ids": self.input_ids[:1], "attention_mask": self.attention_mask[:1],
                "pixel_values": self.preprocess(self.images[:1], size)}
