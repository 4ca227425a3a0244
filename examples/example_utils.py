"""What the example scripts share: command-line options, tiny offline data for ``--smoke``,
the supernet -> (train) -> search -> extract -> save flow, and the result file.

Every example writes ``<out>/result.json``: the full model's and the chosen subnet's
parameters and scores, the budget, and where the subnet was saved.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------ options
def parser(doc: str, *, model: str, trials: int = 50, limit: int | None = None,
           train_steps: int = 0) -> argparse.ArgumentParser:
    """The options every example takes (its module docstring is the help text)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=model, help=f"hub id or local folder (default {model})")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<script name>)")
    p.add_argument("--trials", type=int, default=trials, help=f"search trials (default {trials})")
    p.add_argument("--max-params-frac", type=float, default=0.5,
                   help="parameter budget of the chosen subnet, a fraction of the full model's (default 0.5)")
    p.add_argument("--limit", type=int, default=limit, help="examples per evaluation (default: "
                   + ("all" if limit is None else str(limit)) + ")")
    p.add_argument("--train-steps", type=int, default=train_steps,
                   help=f"supernet training steps before the search, 0 for none (default {train_steps})")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation and training batch size (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="run in seconds, offline: a tiny model built from a config and tiny local data")
    return p


def out_dir(args: argparse.Namespace, script: str) -> Path:
    """``--out``, else ``runs/<script>`` (``runs/<script>-smoke`` with ``--smoke``)."""
    name = Path(script).stem + ("-smoke" if args.smoke else "")
    path = args.out if args.out is not None else Path("runs") / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible option values with one line."""
    if not 0 < args.max_params_frac <= 1:
        raise SystemExit(f"error: --max-params-frac must be in (0, 1], got {args.max_params_frac}")
    for name in ("trials", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"error: --limit must be a positive integer, got {args.limit}")
    if args.train_steps < 0:
        raise SystemExit(f"error: --train-steps must be 0 or more, got {args.train_steps}")


# --------------------------------------------------------------- smoke data
def write_cifar(root: Path, kind: str, n_train: int, n_test: int, seed: int = 0,
                class_names: list[str] | None = None) -> Path:
    """Tiny CIFAR-format data (python pickles) in ``root``: noisy images whose mean colour and
    brightness pattern depend on the class, so a little training can learn them.

    ``kind`` is ``cifar10`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or
    ``cifar100`` (``train``, ``test``, ``meta``).
    """
    n_classes = 10 if kind == "cifar10" else 100
    names = class_names or (CIFAR10_CLASSES if kind == "cifar10" else [f"class_{i}" for i in range(n_classes)])
    g = np.random.default_rng(seed)
    palette = g.uniform(30, 225, size=(n_classes, 3))

    def make(n: int) -> tuple[np.ndarray, list[int]]:
        y = g.integers(0, n_classes, size=n)
        x = palette[y][:, :, None, None] + g.normal(0, 25, size=(n, 3, 32, 32))
        x[:, :, : 16] += (y % 2 * 40 - 20)[:, None, None, None]  # top half brighter or darker by class
        return np.clip(x, 0, 255).astype(np.uint8).reshape(n, -1), [int(v) for v in y]

    root.mkdir(parents=True, exist_ok=True)
    if kind == "cifar10":
        per = max(1, n_train // 5)
        for i in range(1, 6):
            x, y = make(per)
            _dump(root / f"data_batch_{i}", {b"data": x, b"labels": y})
        x, y = make(n_test)
        _dump(root / "test_batch", {b"data": x, b"labels": y})
        _dump(root / "batches.meta", {b"label_names": [c.encode() for c in names]})
    else:
        x, y = make(n_train)
        _dump(root / "train", {b"data": x, b"fine_labels": y})
        x, y = make(n_test)
        _dump(root / "test", {b"data": x, b"fine_labels": y})
        _dump(root / "meta", {b"fine_label_names": [c.encode() for c in names]})
    return root


def _dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over the words of ``texts`` that ends every text with ``<eos>``
    (CLIP's text tower pools at the EOS token); ids: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def smoke_corpus(n_docs: int | None = None) -> tuple[list[str], list[str]]:
    """English text that ships with Python (train, held-out), split by document."""
    from osf.demo import load_corpus

    train, held = load_corpus()
    return (train if n_docs is None else train[:n_docs]), held


# -------------------------------------------------------------------- flow
def normalise_like(data: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """Image training data normalised with the evaluator's mean/std, so training and scoring
    see the same inputs."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def norm(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**split, "pixel_values": (split["pixel_values"] - m) / s}

    return dataclasses.replace(data, train=norm(data.train), validation=norm(data.validation))


def train_supernet(sn: Any, data: Any, args: argparse.Namespace, out: Path, lr: float) -> dict[str, float]:
    """``osf.train`` for ``args.train_steps`` sandwich steps; the last validation metrics."""
    import osf

    steps = args.train_steps
    config = osf.TrainConfig(steps=steps, batch_size=min(args.batch_size, len(data)), lr=lr,
                             warmup_steps=steps // 10, eval_every=max(steps // 2, 1), save_every=0, eval_batches=4,
                             seed=args.seed)
    result = osf.train(sn, data, config, out_dir=out / "train", progress=not args.smoke)  # resumes a stopped run
    if not result.history:  # an earlier run of the same command had finished: its weights were loaded
        return {"resumed_at_step": float(result.start_step)}
    return {k: float(v) for k, v in result.history[-1].items() if k.startswith("val/")}


def lm_calibration(data: Any, n: int = 8, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """A few batches of training blocks to rank a language model's channels and layers on."""
    ids = data.train["input_ids"][: n * batch_size]
    return [{"input_ids": ids[i: i + batch_size]} for i in range(0, len(ids), batch_size)]


def search_and_extract(sn: Any, evaluator: Any, args: argparse.Namespace, out: Path,
                       save: Callable[[Any, Path], None] | None = None) -> dict[str, Any]:
    """Search ``sn`` under the parameter budget, save the Pareto plot and the best subnet under
    the budget, and return the summary written to ``result.json``."""
    import osf

    budget = {"max_params_frac": args.max_params_frac}
    result = osf.search(sn, evaluator, n_trials=args.trials, constraints=budget, run_dir=out / "search",
                        seed=args.seed, show_progress=not args.smoke)
    result.save(out / "search")
    result.plot_pareto(out / "search" / "pareto.png")
    print("Pareto front:")
    print(result.table())
    best = result.best(**budget)
    cfg = json.loads(best["config"])
    sub = sn.extract(cfg)
    folder = out / "subnet"
    osf.save_subnet(sub, folder, overwrite=True)
    if save is not None:
        save(sub, folder)
    summary = {
        "model": args.model if not args.smoke else "smoke",
        "metric": getattr(evaluator, "describe", lambda: evaluator.name)(),
        "max_params_frac": args.max_params_frac,
        "trials": args.trials,
        "full_params": int(sn.num_params(sn.space.largest())),
        "full_score": float(result.reference["score"]),
        "subnet_params": int(sum(p.numel() for p in sub.parameters())),
        "subnet_score": float(best["score"]),
        "subnet_trial": int(best["number"]),
        "subnet_config": cfg,
        "subnet_dir": str(folder),
    }
    write_result(out, summary)
    print(f"full model : score {summary['full_score']:.4f}, {summary['full_params']:,} parameters")
    print(f"best subnet: score {summary['subnet_score']:.4f}, {summary['subnet_params']:,} parameters "
          f"({100 * summary['subnet_params'] / summary['full_params']:.1f}%) -> {folder}")
    print(f"result: {out / 'result.json'}")
    return summary


def write_result(out: Path, summary: dict[str, Any]) -> Path:
    """``out/result.json``."""
    path = out / "result.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def quiet_offline(smoke: bool) -> None:
    """In ``--smoke`` mode nothing is downloaded and library chatter is off."""
    if smoke:
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(key, "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def start(p: argparse.ArgumentParser, argv: list[str] | None, script: str,
          check: Callable[[argparse.Namespace], Any] | None = None) -> tuple[argparse.Namespace, Path]:
    """Parse and check an example's arguments (``check(args)``: the example's own checks, which
    may call ``p.error``), quiet ``--smoke`` runs; ``(args, output folder)``."""
    args = p.parse_args(argv)
    check_args(args)
    if check is not None:
        check(args)
    quiet_offline(args.smoke)
    return args, out_dir(args, script)


def load_classifier(model_cls: Any, name: str, num_labels: int) -> tuple[Any, Any]:
    """A pretrained image classifier with a new ``num_labels`` head named by its classes (CIFAR-10's
    names, else the class numbers) and its image processor."""
    from transformers import AutoImageProcessor

    labels = CIFAR10_CLASSES if num_labels == 10 else [str(i) for i in range(num_labels)]
    model = model_cls.from_pretrained(name, num_labels=num_labels, id2label=dict(enumerate(labels)),
                                      label2id={c: i for i, c in enumerate(labels)}, ignore_mismatched_sizes=True)
    return model, AutoImageProcessor.from_pretrained(name)


def image_classifier_example(doc: str, script: str, argv: list[str] | None, *, kind: str, model: str,
                             smoke_model: Callable[[int], Any], load_model: Callable[[str, int], Any],
                             lr: float = 1e-4) -> dict[str, Any]:
    """The flow of the image-classifier examples on CIFAR (``kind``: cifar10 / cifar100): a model
    (``smoke_model(num_labels)`` or ``load_model(name, num_labels)`` -> ``(model, processor)``),
    its supernet, optional supernet training, a search scored by top-1 accuracy, the best
    subnet under the budget saved with the image processor."""
    p = parser(doc, model=model, trials=50)
    p.add_argument("--data", type=Path, help=f"folder of the {kind} python-pickle files (not needed with --smoke)")
    args, out = start(p, argv, script)
    num_labels = 10 if kind == "cifar10" else 100

    import osf
    from osf.search import ImageAccuracy

    if args.smoke:
        data = write_cifar(out / "data", kind, n_train=80, n_test=24, seed=args.seed)
        torch.manual_seed(args.seed)
        model, processor = smoke_model(num_labels), None
        args.trials, args.train_steps, lr = min(args.trials, 4), min(args.train_steps, 2) or 2, 1e-3
    else:
        if args.data is None:
            p.error(f"--data DIR is required (the {kind} python-pickle files), or use --smoke")
        data = args.data
        model, processor = load_model(args.model, num_labels)
    model = model.eval().to(args.device)
    evaluator = ImageAccuracy(f"{kind}:{data}", limit=args.limit, batch_size=args.batch_size, processor=processor)
    sn = osf.supernet(model, calibration=evaluator)  # channels and layers ranked on training images
    if args.train_steps:
        train_data = osf.load_train_data(f"{kind}:{data}", image_size=model.config.image_size, seed=args.seed)
        train_data = normalise_like(train_data, evaluator.mean, evaluator.std)
        print("supernet training, last validation:", train_supernet(sn, train_data, args, out, lr=lr))

    def save_processor(_sub: Any, folder: Path) -> None:
        if processor is not None:
            processor.save_pretrained(str(folder))

    return search_and_extract(sn, evaluator, args, out, save=save_processor)
