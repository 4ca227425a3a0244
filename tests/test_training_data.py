"""osf.training.data: every source format, exact packing, honest splits, errors (all offline)."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from osf.training import TrainData, lm_blocks, load_train_data

SEQ = 16
WORDS = "the model reads a short text about trees and rivers and then it writes".split()


def _docs(n: int = 40, tag: str = "zq") -> list[str]:
    # each document carries a marker word (twice), distinct per document
    return [f"{tag}{i:03d}{tag} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 5)) + f" {tag}{i:03d}{tag}"
            for i in range(n)]


def _ids(tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tokenizer.encode(d) + [tokenizer.eos_token_id]
    return out


def _text(tokenizer, blocks: torch.Tensor) -> str:
    return tokenizer.decode(blocks.flatten().tolist())


def _markers(text: str, tag: str = "zq") -> set[str]:
    return set(re.findall(rf"{tag}(\d{{3}}){tag}", text))


def _check_lm(data: TrainData, tokenizer, docs: list[str], tag: str = "zq") -> tuple[set[str], set[str]]:
    """Shapes/dtypes, disjoint documents, and train blocks == packing of the train documents."""
    assert data.kind == "lm" and len(data) == data.train["input_ids"].shape[0] > 0
    for split in (data.train, data.validation):
        assert set(split) == {"input_ids"}
        x = split["input_ids"]
        assert x.dtype == torch.long and x.dim() == 2 and x.shape[1] == SEQ and len(x) >= 1
    tr = _markers(_text(tokenizer, data.train["input_ids"]), tag)
    va = _markers(_text(tokenizer, data.validation["input_ids"]), tag)
    assert tr and va and not (tr & va)
    # the training blocks are exactly the packed training documents, in their order
    train_docs = [d for d in docs if re.search(rf"{tag}(\d{{3}}){tag}", d).group(1) not in va]
    expected = _ids(tokenizer, train_docs)
    flat = data.train["input_ids"].flatten().tolist()
    assert flat == expected[: len(flat)] and len(expected) - len(flat) < SEQ
    return tr, va


# ============================================================================ LM
def test_lm_blocks_packing_is_exact(tokenizer):
    docs = _docs(12)
    blocks = lm_blocks(docs, tokenizer, SEQ)
    ids = _ids(tokenizer, docs)
    n = len(ids) // SEQ
    assert blocks.dtype == torch.long and blocks.shape == (n, SEQ)
    assert blocks.flatten().tolist() == ids[: n * SEQ]
    for i in (0, n - 1):
        assert tokenizer.decode(blocks[i].tolist()) == tokenizer.decode(ids[i * SEQ:(i + 1) * SEQ])
    # each document is followed by EOS
    assert blocks.flatten().tolist().count(tokenizer.eos_token_id) == sum(1 for k in ids[: n * SEQ] if k == tokenizer.eos_token_id)
    assert ids.count(tokenizer.eos_token_id) == len(docs)


def _write_lm(fmt: str, docs: list[str], root):
    import datasets

    if fmt == "txt":
        p = root / "c.txt"
        p.write_text("\n\n".join(docs) + "\n\n  \n")
    elif fmt == "txt_folder":
        p = root / "docs"
        p.mkdir()
        for i, d in enumerate(docs):
            (p / f"{i:03d}.txt").write_text(d + "\n")
    elif fmt == "json_strings":
        p = root / "c.json"
        p.write_text(json.dumps(docs))
    elif fmt == "json_records":
        p = root / "c.json"
        p.write_text(json.dumps([{"text": d, "id": i} for i, d in enumerate(docs)]))
    elif fmt == "jsonl":
        p = root / "c.jsonl"
        p.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    elif fmt == "saved_dataset":
        p = root / "ds"
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(p))
    elif fmt == "saved_datasetdict":
        p = root / "dsd"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(p))
    elif fmt == "list":
        return list(docs)
    return str(p)


@pytest.mark.parametrize("fmt", ["txt", "txt_folder", "json_strings", "json_records", "jsonl", "saved_dataset",
                                 "saved_datasetdict", "list"])
def test_lm_sources(fmt, tokenizer, tmp_path):
    docs = _docs(40)
    src = _write_lm(fmt, docs, tmp_path)
    data = load_train_data(src, tokenizer=tokenizer, seq_len=SEQ, validation=0.2)
    tr, va = _check_lm(data, tokenizer, docs)
    assert len(tr | va) >= 38  # every document is used (bar a cut-off tail)
    assert isinstance(data.source, str) and "validation" in data.source


def test_lm_own_validation_split_is_used_and_test_never(tokenizer, tmp_path):
    import datasets

    train, val, test = _docs(30, "zq"), _docs(8, "zv"), _docs(8, "zt")
    p = tmp_path / "dsd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": train}),
                          "validation": datasets.Dataset.from_dict({"text": val}),
                          "test": datasets.Dataset.from_dict({"text": test})}).save_to_disk(str(p))
    data = load_train_data(str(p), kind="lm", tokenizer=tokenizer, seq_len=SEQ)
    tr_text, va_text = _text(tokenizer, data.train["input_ids"]), _text(tokenizer, data.validation["input_ids"])
    assert data.train["input_ids"].flatten().tolist() == _ids(tokenizer, train)[: data.train["input_ids"].numel()]
    assert data.validation["input_ids"].flatten().tolist() == _ids(tokenizer, val)[: data.validation["input_ids"].numel()]
    assert "zv" not in tr_text and "zq" not in va_text and "zt" not in tr_text + va_text
    # a fraction carves from train instead (the validation split is then unused)
    carved = load_train_data(str(p), tokenizer=tokenizer, seq_len=SEQ, validation=0.2)
    _check_lm(carved, tokenizer, train)
    assert "zv" not in _text(tokenizer, carved.validation["input_ids"])

    # folder of .txt files with split folders; validation="name" picks a split
    root = tmp_path / "txt"
    for split, docs in (("train", train), ("valid", val), ("other", _docs(8, "zo")), ("test", test)):
        (root / split).mkdir(parents=True)
        for i, d in enumerate(docs):
            (root / split / f"{i}.txt").write_text(d)
    auto = load_train_data(root, tokenizer=tokenizer, seq_len=SEQ)
    assert "zv" in _text(tokenizer, auto.validation["input_ids"])
    named = load_train_data(root, tokenizer=tokenizer, seq_len=SEQ, validation="other")
    va_text = _text(tokenizer, named.validation["input_ids"])
    assert "zo" in va_text and "zv" not in va_text
    assert "zt" not in _text(tokenizer, torch.cat([auto.train["input_ids"], named.train["input_ids"]]))


def test_lm_split_is_seeded_and_limit(tokenizer):
    docs = _docs(60)
    a = load_train_data(docs, tokenizer=tokenizer, seq_len=SEQ, validation=0.2, seed=3)
    b = load_train_data(docs, tokenizer=tokenizer, seq_len=SEQ, validation=0.2, seed=3)
    c = load_train_data(docs, tokenizer=tokenizer, seq_len=SEQ, validation=0.2, seed=4)
    assert torch.equal(a.train["input_ids"], b.train["input_ids"]) and torch.equal(a.validation["input_ids"], b.validation["input_ids"])
    va_a = _markers(_text(tokenizer, a.validation["input_ids"]))
    assert va_a != _markers(_text(tokenizer, c.validation["input_ids"]))
    # fraction by tokens, about 20% (whole documents, at least one block)
    frac = a.validation["input_ids"].numel() / (a.validation["input_ids"].numel() + a.train["input_ids"].numel())
    assert 0.12 < frac < 0.3
    small = load_train_data(docs, tokenizer=tokenizer, seq_len=SEQ, validation=0.01)
    assert len(small.validation["input_ids"]) >= 1
    lim = load_train_data(docs, tokenizer=tokenizer, seq_len=SEQ, validation=0.2, seed=3, limit=5)
    assert len(lim) == 5 and lim.train["input_ids"].shape == (5, SEQ)
    rows = {tuple(r) for r in a.train["input_ids"].tolist()}
    assert all(tuple(r) in rows for r in lim.train["input_ids"].tolist())
    assert torch.equal(lim.validation["input_ids"], a.validation["input_ids"])


def test_lm_identical_documents_stay_on_one_side(tokenizer):
    docs = _docs(20) + _docs(20)  # every document twice: a copy must not land on the other side
    for seed in range(4):
        for frac in (0.1, 0.2, 0.3):
            data = load_train_data(docs, tokenizer=tokenizer, seq_len=SEQ, validation=frac, seed=seed)
            tr = _markers(_text(tokenizer, data.train["input_ids"]))
            va = _markers(_text(tokenizer, data.validation["input_ids"]))
            assert va and not (tr & va), (seed, frac)


# ======================================================================== images
def _img(value: int, i: int) -> np.ndarray:
    """A 3x32x32 uint8 image whose pixels are < 200 (unless value given) and unique per i."""
    rng = np.random.default_rng(i)
    x = rng.integers(0, 200, (3, 32, 32), dtype=np.uint8) if value < 0 else np.full((3, 32, 32), value, np.uint8)
    x[0, 0, 0] = i % 200
    x[0, 0, 1] = i // 200
    return x


def _write_cifar(root, kind="cifar10", per_batch=6):
    root.mkdir(parents=True, exist_ok=True)
    k = 0

    def batch(n, test=False):
        nonlocal k
        data = np.stack([_img(250 if test else -1, k + j).reshape(-1) for j in range(n)])
        k += n
        return data

    if kind == "cifar10":
        for b in range(1, 6):
            d = {b"batch_label": b"x", b"labels": [j % 10 for j in range(per_batch)], b"data": batch(per_batch),
                 b"filenames": [b"f.png"] * per_batch}
            (root / f"data_batch_{b}").write_bytes(pickle.dumps(d))
        t = {b"batch_label": b"t", b"labels": [1] * 4, b"data": batch(4, True), b"filenames": [b"f.png"] * 4}
        (root / "test_batch").write_bytes(pickle.dumps(t))
        (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}))
    else:
        n = per_batch * 5
        d = {b"fine_labels": [j % 100 for j in range(n)], b"coarse_labels": [0] * n, b"data": batch(n)}
        (root / "train").write_bytes(pickle.dumps(d))
        (root / "test").write_bytes(pickle.dumps({b"fine_labels": [1] * 4, b"coarse_labels": [0] * 4, b"data": batch(4, True)}))
        (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c"] * 100}))
    return root


def _check_images(data: TrainData, n_total: int | None = None, hw=(32, 32)) -> None:
    assert data.kind == "images"
    for split in (data.train, data.validation):
        x, y = split["pixel_values"], split["labels"]
        assert x.dtype == torch.float32 and x.shape[1:] == (3, *hw) and len(x) >= 1
        assert y.dtype == torch.long and y.shape == (len(x),)
        assert float(x.min()) >= 0 and float(x.max()) <= 1
    tr = {x.numpy().tobytes() for x in data.train["pixel_values"]}
    va = {x.numpy().tobytes() for x in data.validation["pixel_values"]}
    assert len(tr) == len(data.train["pixel_values"]) and not (tr & va)  # no image in both
    if n_total is not None:
        assert len(tr) + len(va) == n_total


@pytest.mark.parametrize("layout", ["cifar10", "cifar10_spec", "cifar10_sub", "cifar100"])
def test_cifar_uses_training_batches_only(layout, tmp_path):
    if layout == "cifar10_sub":
        _write_cifar(tmp_path / "c" / "cifar-10-batches-py")
        src = str(tmp_path / "c")
    else:
        root = _write_cifar(tmp_path / "c", "cifar100" if layout == "cifar100" else "cifar10")
        src = f"cifar10:{root}" if layout == "cifar10_spec" else str(root)
    data = load_train_data(src, validation=0.2)
    _check_images(data, n_total=30)
    assert len(data.validation["labels"]) == 6
    for split in (data.train, data.validation):
        assert not (split["pixel_values"] == 250 / 255).any()  # the test batch's value is nowhere
    assert "test batch unused" in data.source


def test_images_seeded_split_limit_and_resize(tmp_path):
    src = str(_write_cifar(tmp_path / "c"))
    a, b = load_train_data(src, seed=1, validation=0.2), load_train_data(src, seed=1, validation=0.2)
    c = load_train_data(src, seed=2, validation=0.2)
    assert torch.equal(a.train["pixel_values"], b.train["pixel_values"]) and torch.equal(a.validation["labels"], b.validation["labels"])
    assert not torch.equal(a.validation["pixel_values"], c.validation["pixel_values"])
    d = load_train_data(src)  # default fraction 0.05 of 30 -> at least 1 image
    assert len(d.validation["labels"]) == 2 and len(d) == 28
    lim = load_train_data(src, seed=1, validation=0.2, limit=7)
    assert len(lim) == 7 and torch.equal(lim.validation["pixel_values"], a.validation["pixel_values"])
    tr = {x.numpy().tobytes() for x in a.train["pixel_values"]}
    assert all(x.numpy().tobytes() in tr for x in lim.train["pixel_values"])
    r = load_train_data(src, image_size=(8, 12), validation=0.2)
    _check_images(r, 30, hw=(8, 12))


def _write_folder(root, classes=("cat", "dog"), n=5, value=-1, start=0, size=(32, 32)):
    from PIL import Image

    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            arr = _img(value, start + c * n + j).transpose(1, 2, 0)
            if size != (32, 32):
                arr = np.resize(arr, (*size, 3))
            Image.fromarray(arr).save(root / cls / f"{j}.png")


def test_image_folder_carved_and_own_split(tmp_path):
    _write_folder(tmp_path / "flat", n=6)
    data = load_train_data(str(tmp_path / "flat"), validation=0.25)
    _check_images(data, n_total=12)
    assert set(data.train["labels"].tolist()) <= {0, 1} and len(data.validation["labels"]) == 3
    # train/ val/ test/ layout: val/ is the validation split, test/ (all pixels 250) never read
    root = tmp_path / "split"
    _write_folder(root / "train", n=5, start=0)
    _write_folder(root / "val", n=2, start=100)
    _write_folder(root / "test", n=2, value=250, start=200)
    data = load_train_data(f"imagefolder:{root}")
    _check_images(data, n_total=14)
    assert len(data.validation["labels"]) == 4 and data.validation["labels"].tolist() == [0, 0, 1, 1]
    val_ids = {int(round(float(x[0, 0, 0]) * 255)) for x in data.validation["pixel_values"]}
    assert val_ids == {100, 101, 102, 103}
    for split in (data.train, data.validation):
        assert not (split["pixel_values"] == 250 / 255).all(dim=(1, 2, 3)).any()
    resized = load_train_data(str(root), image_size=16)
    assert resized.train["pixel_values"].shape == (10, 3, 16, 16)


def test_saved_image_datasets(tmp_path):
    import datasets
    from PIL import Image

    def ds(n, start, value=-1):
        return datasets.Dataset.from_dict({"image": [Image.fromarray(_img(value, start + i).transpose(1, 2, 0)) for i in range(n)],
                                           "label": [i % 3 for i in range(n)]})

    ds(10, 0).save_to_disk(str(tmp_path / "one"))
    data = load_train_data(str(tmp_path / "one"), validation=0.2)
    _check_images(data, n_total=10)
    datasets.DatasetDict({"train": ds(8, 0), "validation": ds(3, 50), "test": ds(3, 90, 250)}).save_to_disk(str(tmp_path / "dd"))
    data = load_train_data(str(tmp_path / "dd"))
    _check_images(data, n_total=11)
    assert {int(round(float(x[0, 0, 0]) * 255)) for x in data.validation["pixel_values"]} == {50, 51, 52}
    for split in (data.train, data.validation):
        assert not (split["pixel_values"] == 250 / 255).all(dim=(1, 2, 3)).any()


def test_tensor_tuple(tmp_path):
    x = torch.from_numpy(np.stack([_img(-1, i) for i in range(20)]))
    y = torch.arange(20) % 4
    data = load_train_data((x, y), validation=0.25)
    _check_images(data, n_total=20)
    assert len(data.validation["labels"]) == 5
    # labels travel with their images
    for px, lab in zip(data.train["pixel_values"], data.train["labels"]):
        assert int(lab) == int(round(float(px[0, 0, 0]) * 255)) % 4
    f = load_train_data((x.float() / 255, y), kind="images", validation=0.25)
    assert torch.allclose(f.train["pixel_values"], data.train["pixel_values"])


# ======================================================================== errors
class _NoSepTokenizer:
    eos_token_id = None
    pad_token_id = None

    def __call__(self, texts, **kw):
        return {"input_ids": [[1, 2, 3] for _ in texts]}


def _error_cases(tmp_path, tokenizer):
    import datasets

    docs = _docs(20)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n\n")
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"body": "x", "id": 1}) + "\n")
    dsd = tmp_path / "dsd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "test": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(dsd))
    notrain = tmp_path / "notrain"
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(notrain))
    onlytest = tmp_path / "onlytest"
    _write_folder(onlytest / "test", n=2)
    mixed = tmp_path / "mixed"
    _write_folder(mixed, classes=("a",), n=2)
    _write_folder(mixed, classes=("b",), n=2, size=(20, 24), start=10)
    cifar = _write_cifar(tmp_path / "cifar")
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    lm = dict(tokenizer=tokenizer, seq_len=SEQ)
    return [
        ("missing path", lambda: load_train_data(str(tmp_path / "nope.txt"), **lm), FileNotFoundError, "does not exist"),
        ("unknown format", lambda: load_train_data(str(csv), **lm), ValueError, r"unknown text file format '\.csv'.*allowed"),
        ("empty", lambda: load_train_data(str(empty), **lm), ValueError, "no \\(non-empty\\) text documents"),
        ("short", lambda: load_train_data(docs, tokenizer=tokenizer, seq_len=100000), ValueError, "fewer than one block of seq_len=100000"),
        ("lm_blocks short", lambda: lm_blocks(["hi"], tokenizer, 64), ValueError, "fewer than one block of seq_len=64"),
        ("column", lambda: load_train_data(str(records), **lm), ValueError, r"text_column 'text' is missing.*columns: \['body', 'id'\]"),
        ("column hf", lambda: load_train_data(str(dsd), text_column="body", **lm), ValueError, r"text_column 'body'.*columns: \['text'\]"),
        ("bad json", lambda: load_train_data(str(bad_json), **lm), ValueError, "not valid JSON"),
        ("frac high", lambda: load_train_data(docs, validation=0.7, **lm), ValueError, r"validation fraction must be in \(0, 0.5\], got 0.7"),
        ("frac zero", lambda: load_train_data(docs, validation=0.0, **lm), ValueError, r"validation fraction must be in \(0, 0.5\]"),
        ("frac type", lambda: load_train_data(docs, validation=[0.1], **lm), ValueError, "validation must be a fraction"),
        ("no tokenizer", lambda: load_train_data(docs, kind="lm"), ValueError, "tokenizer is required for kind='lm'"),
        ("cannot infer", lambda: load_train_data(docs), ValueError, "cannot tell the kind.*kind='lm'.*kind='images'"),
        ("bad kind", lambda: load_train_data(docs, kind="audio"), ValueError, r"kind must be one of \['lm', 'images'\]"),
        ("test split", lambda: load_train_data(str(dsd), validation="test", **lm), ValueError, "test split is kept for final evaluation"),
        ("unknown split", lambda: load_train_data(str(dsd), validation="dev", **lm), ValueError, r"validation='dev' is not a validation split.*splits: \['test', 'train'\]|splits: \['train', 'test'\]"),
        ("no train split", lambda: load_train_data(str(notrain), **lm), ValueError, "no 'train' split"),
        ("named on txt", lambda: load_train_data(docs, validation="val", **lm), ValueError, "has no named splits"),
        ("no eos/pad", lambda: lm_blocks(docs, _NoSepTokenizer(), SEQ), ValueError, "neither an eos_token nor a pad_token"),
        ("seq_len", lambda: load_train_data(docs, tokenizer=tokenizer, seq_len=1), ValueError, "seq_len must be an integer >= 2"),
        ("limit", lambda: load_train_data(docs, limit=0, **lm), ValueError, "limit must be an integer >= 1"),
        ("image_size", lambda: load_train_data(str(cifar), image_size=-3), ValueError, "image_size must be a positive int"),
        ("cifar named", lambda: load_train_data(str(cifar), validation="val"), ValueError, "only 'train' and 'test' batches"),
        ("labels", lambda: load_train_data((x, torch.zeros(3, dtype=torch.long))), ValueError, r"labels must be a 1-D tensor with one label per image \(4\)"),
        ("tuple", lambda: load_train_data((x,), kind="images"), ValueError, r"\(pixel_values, labels\)"),
        ("only test", lambda: load_train_data(str(onlytest), kind="images"), ValueError, "no 'train' folder"),
        ("sizes", lambda: load_train_data(str(mixed), validation=0.5), ValueError, "different sizes; pass image_size="),
        ("not images", lambda: load_train_data(str(csv), kind="images"), ValueError, "is not an image dataset; allowed"),
        ("one image", lambda: load_train_data((x[:1], torch.zeros(1, dtype=torch.long))), ValueError, "needs at least 2"),
    ]


def test_errors_are_one_line_and_say_what_is_wrong(tmp_path, tokenizer):
    cases = _error_cases(tmp_path, tokenizer)
    for name, call, exc, pattern in cases:
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value)
        assert re.search(pattern, msg), (name, msg)
        assert "\n" not in msg, (name, msg)
