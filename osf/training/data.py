"""Training data for supernet training: token blocks for LMs, image tensors for classifiers.

:func:`load_train_data` turns a local source into a :class:`TrainData` holding a training
and a validation split as tensors.

Sources
-------
LM (``kind="lm"``, needs ``tokenizer``):

- a ``.txt`` file (documents separated by blank lines);
- a folder of ``.txt`` files (one document per file; a folder with ``train/`` and
  ``val``/``validation``/``valid`` subfolders of ``.txt`` files gives its own splits);
- a ``.json`` file (a list of strings, or of records with ``text_column``) or a ``.jsonl``
  file (one record, or one JSON string, per line);
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``),
  or an in-memory ``datasets.Dataset`` / ``DatasetDict``;
- a Python list of strings.

Each document is tokenised, followed by the tokenizer's EOS id (its PAD id when it has no
EOS), the ids are concatenated and cut into full blocks of ``seq_len`` (see :func:`lm_blocks`).

Images (``kind="images"``): whatever :func:`osf.search.imagedata.load_image_dataset`
reads from local disk (``cifar10:DIR`` / ``cifar100:DIR`` python pickles, or a plain CIFAR
folder; ``imagefolder:DIR`` or a plain folder of class subfolders, optionally under
``train/`` and ``val/`` split folders; a ``save_to_disk`` folder with an image and a label
column), or a tuple of tensors ``(pixel_values, labels)``. ``pixel_values`` come back as
float in ``[0, 1]`` (uint8 / 255; float input is kept as is), *not* mean/std normalised:
normalise them the way the model's evaluation does.

Splits
------
A source's own validation split (``validation`` / ``valid`` / ``val``) is used for
validation and its ``train`` split for training. A ``test`` split is never read: for CIFAR
both splits come from the training batches. Without a validation split (or when
``validation`` is a fraction), validation is carved out of the training data: LM
*documents* are ordered by a seeded hash and the lowest take about ``validation`` of the
tokens (at least one block; identical documents always land on the same side), so no
document is in both splits; images are split by a seeded permutation. ``validation="name"``
picks a named split of the source. ``limit`` caps the training examples (a seeded subset).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from osf.errors import InputTypeError
from osf.search.imagedata import IMAGE_EXTS, load_image_dataset

KINDS = ("lm", "images")
VAL_SPLITS = ("validation", "valid", "val")
DEFAULT_VALIDATION = 0.05
_IMAGE_COLUMNS = ("img", "image", "pixel_values")
_LABEL_COLUMNS = ("label", "labels", "fine_label")
_LM_SUFFIXES = (".txt", ".json", ".jsonl")


@dataclass
class TrainData:
    """Training and validation tensors for :func:`osf.train`.

    Attributes:
        kind: ``"lm"`` or ``"images"``.
        train: LM: ``{"input_ids": (N, seq_len) long}``; images:
            ``{"pixel_values": (N, 3, H, W) float in [0, 1], "labels": (N,) long}``.
        validation: the same keys; never shares a document / image with ``train``.
        source: a human-readable description (path, split names, counts).
    """

    kind: str
    train: dict[str, torch.Tensor]
    validation: dict[str, torch.Tensor]
    source: str

    def __len__(self) -> int:
        """Number of training examples (blocks or images)."""
        return int(next(iter(self.train.values())).shape[0])

    def __repr__(self) -> str:
        shapes = lambda d: {k: tuple(v.shape) for k, v in d.items()}  # noqa: E731
        return f"TrainData(kind={self.kind!r}, train={shapes(self.train)}, validation={shapes(self.validation)}, source={self.source!r})"


# ====================================================================== public API
def lm_blocks(texts: list[str], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """Pack documents into ``(N, seq_len)`` long token blocks.

    Each text is tokenised, followed by the tokenizer's EOS id (PAD id if it has no EOS),
    the ids are concatenated and cut into full blocks; the remainder is dropped.
    """
    _check_int(seq_len, "seq_len", minimum=2)
    if tokenizer is None:
        raise ValueError("tokenizer is required to pack LM text into token blocks; pass a transformers tokenizer")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputTypeError("texts must be a list of strings (one per document)")
    ids = [i for doc in _tokenize(texts, tokenizer) for i in doc]
    return _pack(ids, seq_len, what="the texts")


def load_train_data(source: Any, *, kind: str | None = None, tokenizer: Any = None, seq_len: int = 256,
                    image_size: int | tuple[int, int] | None = None, validation: float | str | None = None,
                    text_column: str = "text", limit: int | None = None, seed: int = 0) -> TrainData:
    """Load training data and a disjoint validation split (see the module docstring).

    Args:
        source: a path (str / ``Path``; ``cifar10:DIR``, ``cifar100:DIR``, ``imagefolder:DIR``
            also accepted), a list of strings (LM), a ``datasets.Dataset`` / ``DatasetDict``
            (LM) or a tuple ``(pixel_values, labels)`` of tensors (images).
        kind: ``"lm"``, ``"images"`` or ``None`` (inferred: an image source -> images,
            else a tokenizer -> lm).
        tokenizer: a ``transformers`` tokenizer (LM only).
        seq_len: tokens per LM block.
        image_size: resize images to this (int or ``(height, width)``).
        validation: ``None`` (the source's own validation split, else a 0.05 fraction),
            a fraction in (0, 0.5] carved from the training data, or a split name.
        text_column: the text column of JSON records and ``datasets`` data.
        limit: at most this many training examples (blocks / images).
        seed: seeds the validation carve-out and the ``limit`` subset.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} or None (inferred), got {kind!r}")
    _check_int(seq_len, "seq_len", minimum=2)
    _check_int(limit, "limit", minimum=1, allow_none=True)
    _check_int(seed, "seed", minimum=0)
    if not isinstance(text_column, str) or not text_column:
        raise InputTypeError(f"text_column must be a non-empty string, got {text_column!r}")
    _check_validation(validation)
    size = _check_image_size(image_size)
    if kind is None:
        kind = _infer_kind(source, tokenizer)
    if kind == "lm":
        if tokenizer is None:
            raise ValueError("tokenizer is required for kind='lm' (LM data is packed into token blocks); pass tokenizer=")
        return _load_lm(source, tokenizer, seq_len, validation, text_column, limit, seed)
    return _load_images(source, size, validation, limit, seed)


# ====================================================================== checks
def _check_int(value: Any, name: str, *, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_validation(validation: Any) -> None:
    if validation is None or isinstance(validation, str):
        if isinstance(validation, str) and validation == "test":
            raise ValueError("validation='test' is not allowed: the test split is kept for final evaluation; "
                             "pass a validation split name (validation/valid/val) or a fraction in (0, 0.5]")
        return
    if isinstance(validation, bool) or not isinstance(validation, (int, float)):
        raise InputTypeError(f"validation must be a fraction in (0, 0.5], a split name or None, got {validation!r}")
    if not 0 < validation <= 0.5:
        raise ValueError(f"validation fraction must be in (0, 0.5], got {validation!r}")


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of positive ints, got {image_size!r}")
    return int(pair[0]), int(pair[1])


# ====================================================================== kind inference
def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _cifar_kind(path: Path) -> str | None:
    if not path.is_dir():
        return None
    for root in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (root / "data_batch_1").is_file():
            return "cifar10"
        if (root / "train").is_file() and ((root / "meta").is_file() or (root / "test").is_file()):
            return "cifar100"
    return None


def _has_images(d: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir() if f.is_file())


def _is_image_folder(path: Path) -> bool:
    if not path.is_dir() or _is_saved_dataset(path):
        return False
    splits = [path / s for s in ("train", *VAL_SPLITS, "test") if (path / s).is_dir()]
    for root in splits or [path]:
        if any(_has_images(d) for d in root.iterdir() if d.is_dir()):
            return True
    return False


def _hf_is_images(ds: Any) -> bool:
    import datasets

    d = next(iter(ds.values())) if isinstance(ds, datasets.DatasetDict) else ds
    if d is None:
        return False
    feats = getattr(d, "features", {}) or {}
    return any(isinstance(f, datasets.Image) for f in feats.values()) or any(c in d.column_names for c in _IMAGE_COLUMNS)


def _infer_kind(source: Any, tokenizer: Any) -> str:
    if isinstance(source, tuple) and source and all(isinstance(t, torch.Tensor) for t in source):
        return "images"
    if isinstance(source, (str, Path)):
        spec = str(source)
        if spec.partition(":")[0] in ("cifar10", "cifar100", "imagefolder") and spec.partition(":")[2]:
            return "images"
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source {spec!r} does not exist")
        if _cifar_kind(path) or _is_image_folder(path):
            return "images"
        if _is_saved_dataset(path):
            try:
                import datasets

                if _hf_is_images(datasets.load_from_disk(str(path))):
                    return "images"
            except Exception:  # unreadable: the LM loader reports it
                pass
    if tokenizer is not None:
        return "lm"
    raise ValueError(f"cannot tell the kind of data from source {_describe(source)}: pass kind='lm' with tokenizer= "
                     f"(text) or kind='images' (CIFAR folder, image folder, saved image dataset or (pixel_values, labels))")


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return repr(str(source))
    return f"of type {type(source).__name__}"


# ====================================================================== LM
def _tokenize(texts: list[str], tokenizer: Any, chunk: int = 1000) -> list[list[int]]:
    sep = getattr(tokenizer, "eos_token_id", None)
    if sep is None:
        sep = getattr(tokenizer, "pad_token_id", None)
    if sep is None:
        raise ValueError("tokenizer has neither an eos_token nor a pad_token to separate documents; "
                         "set tokenizer.eos_token (or pad_token) first")
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        enc = tokenizer(list(texts[i:i + chunk]), verbose=False)["input_ids"]
        out.extend(list(ids) + [sep] for ids in enc)
    return out


def _pack(ids: list[int], seq_len: int, what: str) -> torch.Tensor:
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{what} give {len(ids)} tokens, fewer than one block of seq_len={seq_len}; "
                         f"pass more text or a smaller seq_len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _clean_docs(docs: list[Any], where: str) -> list[str]:
    bad = next((d for d in docs if not isinstance(d, str)), None)
    if bad is not None:
        raise InputTypeError(f"{where}: documents must be strings, found {type(bad).__name__}")
    return [d for d in docs if d.strip()]


def _txt_docs(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [d.strip() for d in re.split(r"\n[ \t\r]*\n", text) if d.strip()]


def _json_docs(path: Path, text_column: str) -> list[str]:
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"source {str(path)!r} is not valid JSON{' lines' if path.suffix == '.jsonl' else ''}: {e}") from None
    if path.suffix == ".json" and not isinstance(records, list):
        raise ValueError(f"source {str(path)!r} must hold a JSON list of strings or of records with {text_column!r}, "
                         f"got a JSON {type(records).__name__}")
    docs = []
    for r in records:
        if isinstance(r, dict):
            if text_column not in r:
                raise ValueError(f"text_column {text_column!r} is missing in records of {str(path)!r}; columns: {sorted(r)}")
            docs.append(r[text_column])
        else:
            docs.append(r)
    return _clean_docs(docs, f"source {str(path)!r}")


def _hf_docs(ds: Any, text_column: str, where: str) -> list[str]:
    if text_column not in ds.column_names:
        raise ValueError(f"text_column {text_column!r} is not a column of {where}; columns: {ds.column_names}")
    return _clean_docs([t for t in ds[text_column] if t is not None], where)


def _split_names(available: Sequence[str], validation: Any, where: str) -> tuple[str, str | None]:
    """(train split, own validation split or None) of a source with named splits."""
    avail = list(available)
    if "train" not in avail:
        raise ValueError(f"{where} has no 'train' split (splits: {avail}); training data needs one")
    if isinstance(validation, str):
        if validation not in avail or validation == "train":
            ok = [s for s in avail if s not in ("train", "test")]
            raise ValueError(f"validation={validation!r} is not a validation split of {where}; its splits: {avail} "
                             f"(allowed: {ok or 'none; pass a fraction'})")
        return "train", validation
    if validation is None:
        return "train", next((s for s in VAL_SPLITS if s in avail), None)
    return "train", None  # an explicit fraction: carve from train


def _no_named_split(validation: Any, where: str) -> None:
    if isinstance(validation, str):
        raise ValueError(f"validation={validation!r} names a split, but {where} has no named splits; "
                         f"pass a fraction in (0, 0.5] or None")


def _lm_documents(source: Any, validation: Any, text_column: str) -> tuple[list[str], list[str] | None, str]:
    """(train docs, own validation docs or None, description)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover
        datasets = None
    if datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _hf_lm_docs(source, validation, text_column, "the given dataset")
    if isinstance(source, (list, tuple)) and not isinstance(source, str):
        if not all(isinstance(t, str) for t in source):
            raise InputTypeError("source as a list must hold strings (one per document) for LM data")
        _no_named_split(validation, "a list of strings")
        return _clean_docs(list(source), "source"), None, "a list of strings"
    if not isinstance(source, (str, Path)):
        raise InputTypeError(f"source for LM data must be a path, a list of strings or a datasets.Dataset, "
                             f"got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data source {str(source)!r} does not exist")
    where = repr(str(path))
    if path.is_file():
        if path.suffix not in _LM_SUFFIXES:
            raise ValueError(f"source {where}: unknown text file format {path.suffix or '(no suffix)'!r}; "
                             f"allowed: .txt, .json, .jsonl, a folder of .txt files or a save_to_disk folder")
        _no_named_split(validation, where)
        docs = _txt_docs(path) if path.suffix == ".txt" else _json_docs(path, text_column)
        return docs, None, where
    if _is_saved_dataset(path):
        import datasets

        return _hf_lm_docs(datasets.load_from_disk(str(path)), validation, text_column, where)
    subdirs = sorted(d.name for d in path.iterdir() if d.is_dir())
    if "train" in subdirs:
        train_split, val_split = _split_names([s for s in subdirs if (path / s).is_dir()], validation, where)
        train = _txt_folder_docs(path / train_split)
        val = _txt_folder_docs(path / val_split) if val_split else None
        return train, val, f"{where} ({train_split}/" + (f", {val_split}/)" if val_split else ")")
    if any(s in subdirs for s in ("test", *VAL_SPLITS)):
        raise ValueError(f"source {where} has split folders {subdirs} but no 'train' folder; training data needs one")
    _no_named_split(validation, where)
    return _txt_folder_docs(path), None, where


def _txt_folder_docs(folder: Path) -> list[str]:
    files = sorted(f for f in folder.rglob("*.txt") if f.is_file())
    if not files:
        raise ValueError(f"source {str(folder)!r} is a folder without .txt files; allowed: a folder of .txt files "
                         f"(one document each) or a folder written by datasets' save_to_disk")
    return _clean_docs([f.read_text(encoding="utf-8").strip() for f in files], f"source {str(folder)!r}")


def _hf_lm_docs(ds: Any, validation: Any, text_column: str, where: str):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        train_split, val_split = _split_names(list(ds), validation, where)
        train = _hf_docs(ds[train_split], text_column, f"{where}[{train_split!r}]")
        val = _hf_docs(ds[val_split], text_column, f"{where}[{val_split!r}]") if val_split else None
        return train, val, f"{where} (splits {train_split!r}" + (f", {val_split!r})" if val_split else ")")
    _no_named_split(validation, where + " (a single Dataset)")
    return _hf_docs(ds, text_column, where), None, where


def _doc_key(doc: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}\0{doc}".encode("utf-8"), digest_size=16).digest()


def _carve_docs(tokens: list[list[int]], docs: list[str], frac: float, seq_len: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation): documents by ascending seeded hash go to validation until
    they hold ``frac`` of the tokens and at least one block; equal documents stay together."""
    keys = [_doc_key(d, seed) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: keys[i])
    total = sum(len(t) for t in tokens)
    need = max(seq_len, frac * total)
    val, count, k = [], 0, 0
    while k < len(order) and (count < need or keys[order[k]] == keys[order[k - 1]]):
        val.append(order[k])
        count += len(tokens[order[k]])
        k += 1
    val_set = set(val)
    return [i for i in range(len(docs)) if i not in val_set], sorted(val)


def _load_lm(source, tokenizer, seq_len, validation, text_column, limit, seed) -> TrainData:
    train_docs, val_docs, where = _lm_documents(source, validation, text_column)
    if not train_docs:
        raise ValueError(f"source {where} holds no (non-empty) text documents")
    train_tok = _tokenize(train_docs, tokenizer)
    if val_docs is not None:
        if not val_docs:
            raise ValueError(f"the validation split of {where} holds no (non-empty) text documents")
        val_tok = _tokenize(val_docs, tokenizer)
        how = "its own validation split"
    else:
        frac = DEFAULT_VALIDATION if validation is None else float(validation)
        if len(train_docs) < 2:
            raise ValueError(f"source {where} holds 1 document; carving a validation split needs at least 2 "
                             f"(documents are never split between train and validation)")
        total = sum(len(t) for t in train_tok)
        if total < 2 * seq_len:
            raise ValueError(f"source {where} gives {total} tokens, fewer than one block of seq_len={seq_len} for "
                             f"training plus one for validation; pass more text or a smaller seq_len")
        tr, va = _carve_docs(train_tok, train_docs, frac, seq_len, seed)
        if not tr:
            raise ValueError(f"source {where}: after carving validation (at least one block of seq_len={seq_len}, "
                             f"whole documents) no training documents are left; pass more documents or a smaller seq_len")
        val_tok = [train_tok[i] for i in va]
        train_tok = [train_tok[i] for i in tr]
        how = f"carved by seeded document hash (fraction {frac:g}, seed {seed})"
    train_blocks = _pack([i for t in train_tok for i in t], seq_len, f"the training documents of {where}")
    val_blocks = _pack([i for t in val_tok for i in t], seq_len, f"the validation documents of {where}")
    n_all = len(train_blocks)
    train_blocks = _subset(train_blocks, limit, seed)
    desc = (f"lm: {where}; train {len(train_tok)} documents -> {len(train_blocks)} blocks of {seq_len} tokens"
            + (f" (limit {limit} of {n_all})" if len(train_blocks) < n_all else "")
            + f"; validation {len(val_tok)} documents -> {len(val_blocks)} blocks ({how})")
    return TrainData("lm", {"input_ids": train_blocks}, {"input_ids": val_blocks}, desc)


def _subset_index(n: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded subset of ``limit`` of ``n`` rows, in order (``None``: keep all)."""
    if limit is None or n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:limit].sort().values


def _subset(t: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    idx = _subset_index(len(t), limit, seed)
    return t if idx is None else t[idx]


# ====================================================================== images
def _to_float(images: Any, size: tuple[int, int] | None, where: str) -> torch.Tensor:
    if isinstance(images, list):
        if size is None:
            raise ValueError(f"images of {where} have different sizes; pass image_size= to resize them")
        return torch.cat([_to_float(i[None], size, where) for i in images])
    if images.dtype == torch.uint8:
        x = images.float().div_(255)
    elif images.is_floating_point():
        x = images.float()
    else:
        raise InputTypeError(f"pixel_values of {where} must be uint8 (0..255) or float, got {images.dtype}")
    if size is not None and tuple(x.shape[-2:]) != size:
        x = torch.cat([F.interpolate(x[i:i + 256], size=size, mode="bilinear", align_corners=False, antialias=True)
                       for i in range(0, len(x), 256)])
    return x


def _check_pairs(x: Any, y: torch.Tensor, where: str) -> None:
    n = len(x)
    if n == 0:
        raise ValueError(f"{where} holds no images")
    if y.dim() != 1 or len(y) != n:
        raise ValueError(f"{where}: labels must be a 1-D tensor with one label per image ({n}), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputTypeError(f"{where}: labels must be integers (class ids), got {y.dtype}")


def _image_folder_splits(root: Path, validation: Any, where: str) -> tuple[str | None, str | None]:
    """(train split folder or None (root itself), own validation folder or None)."""
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    if "train" in subdirs:
        train, val = _split_names(subdirs, validation, where)
        if val is not None:
            tc = sorted(d.name for d in (root / train).iterdir() if d.is_dir())
            vc = sorted(d.name for d in (root / val).iterdir() if d.is_dir())
            if tc != vc:
                raise ValueError(f"image folder {where}: class folders of {train!r} and {val!r} differ "
                                 f"({sorted(set(tc) ^ set(vc))}); labels would not match")
        return train, val
    if any(s in subdirs for s in ("test", *VAL_SPLITS)):
        raise ValueError(f"image folder {where} has split folders but no 'train' folder (folders: {subdirs}); "
                         f"training data needs DIR/train/<class>/*")
    _no_named_split(validation, f"image folder {where}")
    return None, None


def _load_image_pairs(source: Any, size, validation) -> tuple[Any, torch.Tensor, Any, torch.Tensor | None, str]:
    """(train images, train labels, val images or None, val labels or None, description)."""
    if isinstance(source, tuple):
        if len(source) != 2 or not all(isinstance(t, torch.Tensor) for t in source):
            raise InputTypeError("source as a tuple must be (pixel_values, labels), two tensors")
        x, y = source
        if x.dim() != 4:
            raise ValueError(f"pixel_values must be a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        _no_named_split(validation, "a (pixel_values, labels) tuple")
        return x, y, None, None, f"a tensor tuple of {len(x)} images"
    if not isinstance(source, (str, Path)):
        raise InputTypeError(f"source for image data must be a path or a (pixel_values, labels) tuple of tensors, "
                             f"got {type(source).__name__}")
    spec = str(source)
    prefix, _, rest = spec.partition(":")
    if prefix in ("cifar10", "cifar100", "imagefolder") and rest:
        path = Path(rest).expanduser()
    else:
        path, prefix = Path(spec).expanduser(), None
    if not path.exists():
        raise FileNotFoundError(f"data source {spec!r} does not exist")
    where = repr(spec)
    if prefix is None and path.is_dir():
        prefix = _cifar_kind(path) or ("imagefolder" if _is_image_folder(path) else None)
    if prefix in ("cifar10", "cifar100"):
        if isinstance(validation, str):
            raise ValueError(f"validation={validation!r}: {prefix} has only 'train' and 'test' batches and the test "
                             f"batch is kept for final evaluation; pass a fraction in (0, 0.5] or None")
        x, y = load_image_dataset(f"{prefix}:{path}", split="train")
        return x, y, None, None, f"{prefix} {str(path)!r} (training batches; test batch unused)"
    if prefix == "imagefolder":
        train, val = _image_folder_splits(path, validation, where)
        x, y = load_image_dataset(f"imagefolder:{path / train if train else path}", split=None, size=size)
        vx = vy = None
        if val:
            vx, vy = load_image_dataset(f"imagefolder:{path / val}", split=None, size=size)
        return x, y, vx, vy, f"image folder {where}" + (f" ({train}/, {val}/)" if val else f" ({train}/)" if train else "")
    if path.is_file() or not _is_saved_dataset(path):
        raise ValueError(f"source {where} is not an image dataset; allowed: a CIFAR-10/100 python-pickle folder, "
                         f"an image folder (DIR/<class>/*.png or DIR/train/<class>/...), a save_to_disk folder "
                         f"or a (pixel_values, labels) tuple")
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        train, val = _split_names(list(ds), validation, where)
        x, y = load_image_dataset(str(path), split=train, size=size)
        vx = vy = None
        if val:
            vx, vy = load_image_dataset(str(path), split=val, size=size)
        return x, y, vx, vy, f"dataset {where} (splits {train!r}" + (f", {val!r})" if val else ")")
    _no_named_split(validation, f"{where} (a single Dataset)")
    x, y = load_image_dataset(str(path), size=size)
    return x, y, None, None, f"dataset {where}"


def _load_images(source, size, validation, limit, seed) -> TrainData:
    x, y, vx, vy, where = _load_image_pairs(source, size, validation)
    _check_pairs(x, y, f"source {where}")
    if vx is not None:
        _check_pairs(vx, vy, f"the validation split of {where}")
        how = "its own validation split"
    else:
        frac = DEFAULT_VALIDATION if validation is None else float(validation)
        n = len(x)
        if n < 2:
            raise ValueError(f"source {where} holds {n} image; carving a validation split needs at least 2")
        n_val = min(n - 1, max(1, round(frac * n)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        va, tr = perm[:n_val].sort().values, perm[n_val:].sort().values
        if isinstance(x, list):
            vx, x = [x[i] for i in va.tolist()], [x[i] for i in tr.tolist()]
        else:
            vx, x = x[va], x[tr]
        vy, y = y[va], y[tr]
        how = f"carved by seeded permutation (fraction {frac:g}, seed {seed})"
    n_all = len(x)
    idx = _subset_index(n_all, limit, seed)
    if idx is not None:
        x = [x[i] for i in idx.tolist()] if isinstance(x, list) else x[idx]
        y = y[idx]
    train_x, val_x = _to_float(x, size, where), _to_float(vx, size, where)
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ValueError(f"train images {tuple(train_x.shape[1:])} and validation images {tuple(val_x.shape[1:])} "
                         f"of {where} differ in size; pass image_size=")
    desc = (f"images: {where}; train {len(train_x)} images" + (f" (limit {limit} of {n_all})" if len(train_x) < n_all else "")
            + f" of {tuple(train_x.shape[1:])}; validation {len(val_x)} images ({how})")
    return TrainData("images", {"pixel_values": train_x, "labels": y.long()},
                     {"pixel_values": val_x, "labels": vy.long()}, desc)


__all__ = ["TrainData", "load_train_data", "lm_blocks"]
