"""Models that score well above chance, so that an equality of scores means something.

* :func:`trained_sentence_lm`: a tiny Mamba LM trained (a few seconds) on the sentences of
  :mod:`lm_fixtures`, with their word-level tokenizer and last-word lm-eval task. Chance on
  that task is about 1 / vocabulary; the trained model predicts most last words.
* :func:`trained_tiny_vit`: the built-in ``tiny-vit`` trained (a few seconds) on a small
  synthetic but learnable image set (the class is the dominant colour, under noise), written
  as a CIFAR-10 folder with disjoint train and test splits.

Both are built once per session (cached); callers get a deep copy of the model.
"""
from __future__ import annotations

import atexit
import copy
import functools
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

N_CLASSES = 3  # images: chance accuracy is 1/3
STEPS = 40  # full-batch steps for the LM (it reaches acc 1.0 on its 8 passages)
VIT_STEPS = 20  # batches of 32 for the ViT (accuracy 1.0 on the test split)


def _tmpdir(prefix: str) -> Path:
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


@functools.lru_cache(maxsize=None)
def _sentence_lm():
    from transformers import MambaConfig, MambaForCausalLM

    from lm_fixtures import SENTENCES, make_lastword_task, make_tokenizer
    from osf.kernels.mamba import patch_mamba
    from osf.search.tasks import lastword_passages

    root = _tmpdir("osf-score-lm-")
    tok = make_tokenizer(root / "tok")
    task = make_lastword_task(root / "task")
    passages = lastword_passages([s + "." for s in SENTENCES], n=None, min_words=2)
    ids = [tok(p)["input_ids"] for p in passages]
    width = max(map(len, ids))
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, row in enumerate(ids):
        batch[i, :len(row)] = torch.tensor(row)
        labels[i, :len(row)] = torch.tensor(row)
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=len(tok), hidden_size=32, state_size=8, num_hidden_layers=2,
                                         intermediate_size=64, time_step_rank=4, pad_token_id=0, use_cache=False))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    with patch_mamba(model):
        for _ in range(STEPS):
            loss = model(input_ids=batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, tok, task, float(loss.detach())



def trained_sentence_lm():
    """``(model, tokenizer, task_dir)``; the task is ``osf_lastword``; the model a fresh copy."""
    model, tok, task, _ = _sentence_lm()
    return copy.deepcopy(model), tok, task


def write_learnable_cifar(root: Path, n_train: int = 300, n_test: int = 60, seed: int = 0) -> Path:
    """A CIFAR-10 folder whose label is the dominant colour channel of a noisy image."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def make(n):
        y = rng.integers(0, N_CLASSES, size=n)
        x = rng.normal(110, 45, size=(n, 3, 32, 32))
        x[np.arange(n), y] += 40  # the class's channel is brighter (under heavy noise)
        return np.clip(x, 0, 255).astype(np.uint8), y

    for name, n in [("test_batch", n_test)] + [(f"data_batch_{i}", n_train // 5) for i in range(1, 6)]:
        x, y = make(n)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]}, f)
    return root


@functools.lru_cache(maxsize=None)
def _vit():
    from osf.models import load_model
    from osf.search.images import ImageAccuracy

    root = write_learnable_cifar(_tmpdir("osf-score-img-") / "c10")
    train = ImageAccuracy(f"cifar10:{root}", split="train")
    model = load_model("tiny-vit", seed=0)
    x = train.preprocess(train.images, (32, 32))
    y = torch.as_tensor(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(VIT_STEPS):
        idx = torch.randint(len(y), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, root



def trained_tiny_vit():
    """``(model, cifar10_root)``: a fresh copy of the trained tiny ViT and its data folder."""
    model, root = _vit()
    return copy.deepcopy(model), root
