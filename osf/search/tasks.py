"""Task names beyond lm-eval's: local lm-eval tasks usable offline through ``include_path``
(a LAMBADA-style last-word task), and the ``clip-zeroshot:<dataset>`` task of ``osf search``."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Iterable

import yaml

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[A-Za-z]$")

ZEROSHOT_TASK = "clip-zeroshot"
# datasets whose class names ship with the data (osf.search.zeroshot.cifar_class_names)
ZEROSHOT_DATASETS = ("cifar10", "cifar100")


def zeroshot_dataset(task: str) -> str | None:
    """The dataset of a ``clip-zeroshot:<dataset>`` task name (``None`` for any other task).

    Raises:
        ValueError: the name starts with ``clip-zeroshot`` but names no supported dataset.
    """
    head, sep, dataset = task.strip().partition(":")
    if head != ZEROSHOT_TASK:
        return None
    if not sep or dataset not in ZEROSHOT_DATASETS:
        allowed = ", ".join(f"{ZEROSHOT_TASK}:{d}" for d in ZEROSHOT_DATASETS)
        raise ValueError(f"--task {task!r}: zero-shot CLIP tasks are {allowed} (with --data DIR holding the "
                         "python-pickle batches and their meta file of class names)")
    return dataset


def lastword_passages(texts: Iterable[str], n: int | None = None, min_words: int = 12, max_words: int = 48,
                      seed: int = 0) -> list[str]:
    """LAMBADA-style passages: single-spaced text ending with a plain word (the target).

    Each passage ends at a sentence end (the final period is dropped), holds
    ``min_words..max_words`` words of preceding context, and its last word is
    alphabetic (so ``text.split(' ')[-1]`` is the target).
    """
    out = []
    for text in texts:
        words = text.split()
        for i, w in enumerate(words):
            if not w.endswith(".") or i + 1 < min_words:
                continue
            target = w[:-1]
            if not _WORD.match(target) or len(target) < 3:
                continue
            ctx = words[max(0, i + 1 - max_words): i]
            out.append(" ".join([*ctx, target]))
    if n is not None and len(out) > n:
        out = random.Random(seed).sample(out, n)
    return out


def make_lastword_task(texts: Iterable[str], out_dir: str | Path, name: str = "osf_lastword", n: int | None = 200,
                       min_words: int = 12, max_words: int = 48, seed: int = 0) -> Path:
    """Write a last-word prediction task mirroring lm-eval's ``lambada_openai``.

    Writes ``<out_dir>/<name>.jsonl`` (``{"text": ...}`` per line) and
    ``<out_dir>/<name>.yaml`` (``output_type: loglikelihood``, metrics ``acc`` and
    ``perplexity``). Use it with ``TaskManager(include_path=out_dir)`` or
    ``osf search --include-path out_dir --task <name>``.

    Returns:
        The task YAML path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    passages = lastword_passages(texts, n=n, min_words=min_words, max_words=max_words, seed=seed)
    if not passages:
        raise ValueError(f"no passage of >= {min_words} words ending in a plain word found in the texts")
    data = out_dir / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
        "doc_to_target": "{{' '+text.split(' ')[-1]}}",
        "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path
