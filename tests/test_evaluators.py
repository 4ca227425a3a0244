"""Evaluators against independent computations."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from osf.search.images import ImageAccuracy
from osf.search.lmeval import LMEval
from osf.search.perplexity import Perplexity


# ----------------------------------------------------------------- lm-eval
def reference_lm_eval(model, tokenizer, task_dir, task, limit=None):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=HFLM(pretrained=copy.deepcopy(model), tokenizer=tokenizer, batch_size=4), tasks=[task],
                          task_manager=TaskManager(include_path=str(task_dir)), limit=limit, bootstrap_iters=0,
                          log_samples=False)
    return out["results"][task]


def test_lmeval_equals_separate_simple_evaluate():
    import osf
    from score_fixtures import trained_sentence_lm

    tiny_lm, tokenizer, task_dir = trained_sentence_lm()  # trained: far above chance, so equality means something
    task = "osf_lastword"
    ref = reference_lm_eval(tiny_lm, tokenizer, task_dir, task)
    assert ref["acc,none"] >= 0.75 and ref["perplexity,none"] < 3  # chance: ~1/vocabulary, ppl ~ vocabulary
    acc = LMEval(task, tokenizer, include_path=task_dir, batch_size=4)
    assert acc.name.startswith("lm-eval:")
    assert acc(tiny_lm) == ref["acc,none"]  # default metric: lambada-style acc
    ppl = LMEval(task, tokenizer, include_path=task_dir, metric="perplexity", batch_size=4)
    assert ppl(tiny_lm) == -ref["perplexity,none"]  # lower-is-better metrics are negated
    # the same live model is evaluated again without rebuilding the HFLM ...
    lm = ppl.lm(tiny_lm)
    before = ppl(tiny_lm)
    assert ppl.lm(tiny_lm) is lm and before == -ref["perplexity,none"]
    # a worse model (the smallest subnet) scores lower, and again as simple_evaluate scores it
    sn = osf.supernet(copy.deepcopy(tiny_lm))
    small = sn.extract(sn.space.smallest())
    small_ref = reference_lm_eval(small, tokenizer, task_dir, task)
    assert small_ref["acc,none"] < ref["acc,none"] and small_ref["perplexity,none"] > 1.5 * ref["perplexity,none"]
    assert acc(small) == small_ref["acc,none"]
    assert ppl(small) == -small_ref["perplexity,none"]


def test_lmeval_sees_in_place_changes_of_the_live_model(tiny_lm, tokenizer, lastword_task):
    task_dir, task = lastword_task
    model = copy.deepcopy(tiny_lm)
    ev = LMEval(task, tokenizer, include_path=task_dir, metric="perplexity", batch_size=4, limit=6)
    before = ev(model)
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o * 0.3)  # altered logits
    try:
        after = ev(model)
        # requests are reused between calls: the result still equals a fresh run
        assert after == -reference_lm_eval(model, tokenizer, task_dir, task, limit=6)["perplexity,none"]
    finally:
        handle.remove()
    assert after != before
    assert ev(model) == before  # no stale copy, no cache across calls


def test_lmeval_unknown_task_suggests(tokenizer, lastword_task):
    task_dir, task = lastword_task
    with pytest.raises(ValueError, match="did you mean osf_test_lastword"):
        LMEval("osf_test_lastwrd", tokenizer, include_path=task_dir)
    with pytest.raises(ValueError, match="lambada_openai"):
        LMEval("lambada_opneai", tokenizer)
    with pytest.raises(FileNotFoundError, match="include-path"):
        LMEval(task, tokenizer, include_path=task_dir / "nope")


def test_lmeval_standard_task_offline_says_how_to_run_locally(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ev = LMEval("lambada_openai", tokenizer, limit=2)
    with pytest.raises(ValueError, match="--include-path"):
        ev.tasks()


# --------------------------------------------------------------- perplexity
def test_perplexity_matches_model_loss(tiny_lm, tokenizer, corpus):
    texts = corpus[1][:3]
    ev = Perplexity(texts, tokenizer, seq_len=32, batch_size=1000)
    blocks = ev.blocks
    with torch.no_grad():
        loss = tiny_lm(input_ids=blocks, labels=blocks).loss
    assert ev(tiny_lm) == pytest.approx(-float(loss), rel=1e-5)
    assert Perplexity.to_perplexity(ev(tiny_lm)) == pytest.approx(float(torch.exp(loss)), rel=1e-4)
    few = Perplexity(texts, tokenizer, seq_len=32, batch_size=2, max_batches=1)
    with torch.no_grad():
        l1 = tiny_lm(input_ids=blocks[:2], labels=blocks[:2]).loss
    assert few(tiny_lm) == pytest.approx(-float(l1), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than one block"):
        Perplexity("short", tokenizer, seq_len=512)


# ------------------------------------------------------------------- images
class MeanColour(nn.Module):
    """Class = index of the channel with the largest mean (a plain-tensor output)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class AlwaysZero(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.n = n
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.n)
        out[:, 0] = 1
        return type("Out", (), {"logits": out})()  # HF-style output


def write_cifar(root, kind, n_test=40, n_train=10, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    label_key = b"labels" if kind == "cifar10" else b"fine_labels"
    files = {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]} if kind == "cifar10" \
        else {"test": ["test"], "train": ["train"]}
    data = {}
    for split, names in files.items():
        for name in names:
            n = n_test if split == "test" else n_train
            x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, 3, size=n)
            with open(root / name, "wb") as f:
                pickle.dump({b"data": x.reshape(n, -1), label_key: [int(v) for v in y]}, f)
            data.setdefault(split, []).append((x, y))
    return {k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for k, v in data.items()}


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_accuracy_equals_manual(tmp_path, kind):
    truth = write_cifar(tmp_path / kind, kind)
    x, y = truth["test"]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ev = ImageAccuracy(f"{kind}:{tmp_path / kind}", mean=mean, std=std, batch_size=7)
    assert len(ev.labels) == len(y)  # the test split, not train
    xf = (torch.from_numpy(x).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    manual = float((xf.mean(dim=(2, 3)).argmax(-1) == torch.from_numpy(y)).float().mean())
    assert ev(MeanColour()) == pytest.approx(manual)
    assert ev(AlwaysZero()) == pytest.approx(float((y == 0).mean()))
    train = ImageAccuracy(f"{kind}:{tmp_path / kind}", split="train")
    assert len(train.labels) == len(truth["train"][1])


def test_cifar_accuracy_of_a_trained_vit_equals_manual():
    """A model far above chance (random data and constant models score near chance, where
    a wrong accuracy can still look right)."""
    from score_fixtures import N_CLASSES, trained_tiny_vit
    import osf

    model, root = trained_tiny_vit()
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    x = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    y = torch.tensor(raw[b"labels"])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ev = ImageAccuracy(f"cifar10:{root}", mean=mean, std=std, batch_size=7)
    assert len(ev.labels) == len(y)

    def manual(m):
        xf = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            return float((m(pixel_values=xf).logits.argmax(-1) == y).float().mean())

    full = manual(model)
    assert full >= 1 / N_CLASSES + 0.3  # well above chance
    assert ev(model) == pytest.approx(full)
    sn = osf.supernet(copy.deepcopy(model))
    small = sn.extract(sn.space.smallest())
    assert manual(small) < full - 0.2  # a different model scores differently
    assert ev(small) == pytest.approx(manual(small))


def test_cifar_resize_to_model_image_size(tmp_path):
    write_cifar(tmp_path / "c", "cifar10", n_test=5)
    seen = []

    class Probe(nn.Module):
        config = type("Cfg", (), {"image_size": 48})()

        def forward(self, x):
            seen.append(tuple(x.shape))
            return torch.zeros(x.shape[0], 10)

    ImageAccuracy(f"cifar10:{tmp_path / 'c'}")(Probe())
    assert seen == [(5, 3, 48, 48)]
    proc = {"size": {"height": 40, "width": 40}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    ev = ImageAccuracy(f"cifar10:{tmp_path / 'c'}", processor=proc)
    assert ev.image_size == (40, 40) and ev.mean == (0.5, 0.5, 0.5)


def test_image_folder_accuracy(tmp_path):
    from PIL import Image

    colours = {"a_red": (250, 10, 10), "b_green": (10, 250, 10), "c_blue": (10, 10, 250)}
    counts = {"a_red": 3, "b_green": 2, "c_blue": 4}
    for split in ("train", "val"):
        for cls, rgb in colours.items():
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(counts[cls] if split == "val" else 1):
                ext = "png" if i % 2 else "JPEG"
                Image.new("RGB", (20 + i, 24), rgb).save(d / f"{i}.{ext}")
    ev = ImageAccuracy(f"imagefolder:{tmp_path}", image_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(ev.labels) == 9  # the val split (train is never the default)
    assert ev(MeanColour()) == 1.0
    assert ev(AlwaysZero()) == pytest.approx(3 / 9)
    assert len(ImageAccuracy(f"imagefolder:{tmp_path}", split="train", image_size=16).labels) == 3


def test_saved_datasets_folder(tmp_path):
    import datasets
    from PIL import Image

    imgs = [Image.new("RGB", (8, 8), (255, 0, 0) if i % 2 else (0, 0, 255)) for i in range(6)]
    labels = [0 if i % 2 else 2 for i in range(6)]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"img": imgs[:2], "label": labels[:2]}),
                               "test": datasets.Dataset.from_dict({"img": imgs, "label": labels})})
    dd.save_to_disk(str(tmp_path / "ds"))
    ev = ImageAccuracy(str(tmp_path / "ds"), mean=(0, 0, 0), std=(1, 1, 1))
    assert len(ev.labels) == 6 and ev(MeanColour()) == 1.0


def test_image_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageAccuracy(f"cifar10:{tmp_path / 'missing'}")
    (tmp_path / "c10").mkdir()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        ImageAccuracy(f"cifar10:{tmp_path / 'c10'}")
    (tmp_path / "c10" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a cifar10 pickle batch"):
        ImageAccuracy(f"cifar10:{tmp_path / 'c10'}")
    (tmp_path / "only" / "train" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="no test/val split"):
        ImageAccuracy(f"imagefolder:{tmp_path / 'only'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageAccuracy(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="Offline, use local data"):
        ImageAccuracy("no-such-user/no-such-dataset")
