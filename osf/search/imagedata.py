"""Image classification data from local folders (or the Hub), as uint8 tensors.

Forms of ``dataset``:
- ``cifar10:DIR`` / ``cifar100:DIR``: the python-pickle batches (CIFAR-10:
  ``data_batch_1..5`` and ``test_batch``; CIFAR-100: ``train`` and ``test``).
- ``imagefolder:DIR``: ``DIR/<split>/<class>/*.JPEG`` (or ``DIR/<class>/*`` when DIR
  is the evaluation folder itself); classes are the sorted folder names.
- a folder written by ``datasets``' ``save_to_disk``.
- a Hub dataset name (``datasets.load_dataset``; needs the network).

Splits are explicit: the default is the evaluation split (``test``, or ``val`` /
``validation`` where there is no ``test``), never ``train``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
EVAL_SPLITS = ("test", "val", "validation")


def load_image_dataset(spec: str, split: str | None = None, limit: int | None = None,
                       size: tuple[int, int] | None = None) -> tuple[list[torch.Tensor] | torch.Tensor, torch.Tensor]:
    """Images (a uint8 ``N,C,H,W`` tensor, or a list of ``C,H,W`` if sizes differ) and labels.

    ``size`` resizes PIL images on load (image folders / datasets), saving memory.
    """
    kind, _, rest = spec.partition(":")
    if kind in ("cifar10", "cifar100") and rest:
        return _cifar(kind, Path(rest), split or "test", limit)
    if kind == "imagefolder" and rest:
        return _imagefolder(Path(rest), split, limit, size)
    path = Path(spec)
    if path.is_dir():
        return _saved_dataset(path, split, limit, size)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(f"image data folder {spec!r} does not exist")
    return _hub_dataset(spec, split, limit, size)


# ------------------------------------------------------------------ CIFAR
def _cifar(kind: str, root: Path, split: str, limit: int | None):
    if not root.is_dir():
        raise FileNotFoundError(f"{kind} folder {str(root)!r} does not exist")
    if kind == "cifar10":
        files = {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}
        label_key = b"labels"
    else:
        files = {"test": ["test"], "train": ["train"]}
        label_key = b"fine_labels"
    if split not in files:
        raise ValueError(f"{kind} has splits {list(files)}, not {split!r}")
    xs, ys = [], []
    for name in files[split]:
        f = root / name
        if not f.is_file():
            sub = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python") / name
            if not sub.is_file():
                raise FileNotFoundError(f"{kind} file {name!r} is missing in {str(root)!r} (expected the python-pickle batches)")
            f = sub
        with open(f, "rb") as fh:
            try:
                batch = pickle.load(fh, encoding="bytes")
            except Exception as e:
                raise ValueError(f"{str(f)!r} is not a {kind} pickle batch: {e}") from e
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise ValueError(f"{str(f)!r} is not a {kind} batch: needs keys b'data' and {label_key!r}")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return torch.from_numpy(x), torch.from_numpy(y)


# ------------------------------------------------------------ image folder
def _imagefolder(root: Path, split: str | None, limit: int | None, size):
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if split is not None:
        if split not in subdirs:
            raise FileNotFoundError(f"image folder {str(root)!r} has no split folder {split!r}; it has {subdirs}")
        root = root / split
    elif any(s in subdirs for s in EVAL_SPLITS):
        root = root / next(s for s in EVAL_SPLITS if s in subdirs)
    elif "train" in subdirs:
        raise ValueError(f"image folder {str(root)!r} has a 'train' split but no test/val split; pass the split explicitly")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class folders (expected DIR/<class>/*.JPEG)")
    items = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise ValueError(f"image folder {str(root)!r} has class folders but no images ({sorted(IMAGE_EXTS)})")
    if limit is not None:
        items = _spread(items, limit)
    from PIL import Image

    images = [_pil_to_tensor(Image.open(f), size) for f, _ in items]
    return _stack(images), torch.tensor([y for _, y in items])


def _spread(items: list, limit: int) -> list:
    # keep the class mix: take evenly spaced items rather than the first classes only
    if len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def _pil_to_tensor(img: Any, size: tuple[int, int] | None) -> torch.Tensor:
    img = img.convert("RGB")
    if size is not None:
        img = img.resize((size[1], size[0]))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _stack(images: list[torch.Tensor]):
    return torch.stack(images) if len({tuple(i.shape) for i in images}) == 1 else images


# --------------------------------------------------------------- datasets
def _pick_split(available: list[str], split: str | None, where: str) -> str:
    if split is not None:
        if split not in available:
            raise ValueError(f"{where} has splits {available}, not {split!r}")
        return split
    for s in EVAL_SPLITS:
        if s in available:
            return s
    raise ValueError(f"{where} has no test/val split (splits: {available}); pass the split explicitly")


def _from_hf(ds: Any, limit: int | None, size, where: str):
    cols = ds.column_names
    img_col = next((c for c in ("img", "image", "pixel_values") if c in cols), None)
    lab_col = next((c for c in ("label", "labels", "fine_label") if c in cols), None)
    if img_col is None or lab_col is None:
        raise ValueError(f"{where}: need an image column (img/image) and a label column (label/fine_label); columns: {cols}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    images = [_pil_to_tensor(im, size) for im in ds[img_col]]
    return _stack(images), torch.tensor(ds[lab_col])


def _saved_dataset(path: Path, split: str | None, limit: int | None, size):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{str(path)!r} is not a dataset folder saved with save_to_disk; for other layouts use "
            f"cifar10:DIR, cifar100:DIR or imagefolder:DIR"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[_pick_split(list(ds), split, str(path))]
    elif split is not None:
        raise ValueError(f"{str(path)!r} holds a single split; do not pass split={split!r}")
    return _from_hf(ds, limit, size, str(path))


def _hub_dataset(name: str, split: str | None, limit: int | None, size):
    import datasets

    try:
        if split is None:
            split = _pick_split(list(datasets.get_dataset_split_names(name)), None, name)
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise ValueError(
            f"could not load dataset {name!r} from the Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"Offline, use local data: cifar10:DIR, cifar100:DIR, imagefolder:DIR or a save_to_disk folder"
        ) from e
    return _from_hf(ds, limit, size, name)
