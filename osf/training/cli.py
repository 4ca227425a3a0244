"""``osf train MODEL --data ... --out DIR``: train a supernet from the command line.

Under ``torchrun --nproc-per-node N $(which osf) train ...`` every process joins the group
and takes its share of each global batch. The trained supernet is saved to ``DIR/supernet``
(``osf search DIR/supernet`` and ``osf.load_supernet`` read it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from osf.training.config import PRECISIONS, TrainConfig


def train_cmd(
    model: str = typer.Argument(..., help="Local HF folder, supernet checkpoint folder (continue training it), hub id, "
                                "or built-in tiny model name."),
    data: str = typer.Option(..., "--data", help="Training data: .txt file or folder, .json/.jsonl, a save_to_disk "
                             "folder, CIFAR pickles (cifar10:DIR), or an image folder."),
    out: Path = typer.Option(..., "--out", help="Run folder (config, metrics.csv, checkpoint/, supernet/); re-run to "
                             "resume."),
    kind: Optional[str] = typer.Option(None, "--kind", help="lm or images (inferred when omitted)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder or hub id (LMs; default: "
                                            "MODEL's own)."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per training block (LMs)."),
    validation: Optional[str] = typer.Option(None, "--validation", help="Validation split name, or the fraction of "
                                             "the training data to hold out (default: the source's own split, else "
                                             "0.05)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many training examples."),
    steps: int = typer.Option(1000, "--steps"),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per optimizer step over all processes."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    lr: float = typer.Option(1e-4, "--lr"),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    num_random: int = typer.Option(2, "--num-random", help="Random subnets per step besides the largest and smallest."),
    distill: bool = typer.Option(True, "--distill/--no-distill", help="In-place distillation from the largest."),
    temperature: float = typer.Option(1.0, "--temperature"),
    clip_grad: float = typer.Option(1.0, "--clip-grad"),
    precision: str = typer.Option("auto", "--precision", help=f"One of {', '.join(PRECISIONS)}."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    eval_every: int = typer.Option(100, "--eval-every"),
    save_every: int = typer.Option(100, "--save-every"),
    eval_batches: Optional[int] = typer.Option(None, "--eval-batches"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/checkpoint when present."),
    device: str = typer.Option("auto", "--device", help="auto (the process's GPU under torchrun, else cpu), cpu, "
                               "or cuda[:N]."),
) -> None:
    """Train MODEL's supernet so that every subnet is good (sandwich rule, in-place distillation)."""
    from osf.cli import fail

    try:
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                             warmup_steps=warmup_steps, num_random=num_random, distill=distill,
                             temperature=temperature, clip_grad=clip_grad, precision=precision,
                             gradient_checkpointing=gradient_checkpointing, eval_every=eval_every,
                             save_every=save_every, eval_batches=eval_batches, seed=seed)
        run(model, data, out, config, kind=kind, tokenizer=tokenizer, seq_len=seq_len,
            validation=_validation(validation), limit=limit, resume=resume, device=device)
    except (ValueError, FileNotFoundError, TypeError) as e:
        fail(" ".join(str(e).split()))


def run(model: str, data: str, out: Path, config: TrainConfig, *, kind: str | None = None,
        tokenizer: str | None = None, seq_len: int = 256, validation: float | str | None = None,
        limit: int | None = None, resume: bool = True, device: str = "auto") -> Any:
    """What ``osf train`` does, callable from Python: load, build, train, save. Returns the
    trained :class:`osf.Supernet`."""
    import torch

    import osf
    from osf.models import load_model
    from osf.training.data import load_train_data
    from osf.training.distributed import init_from_env, rank_and_world
    from osf.training.loop import train

    init_from_env()
    rank, _ = rank_and_world()
    target = _device(device)
    loaded = load_model(model)
    tok = _tokenizer(tokenizer, model, kind) if kind != "images" else None
    train_data = load_train_data(data, kind=kind, tokenizer=tok, seq_len=seq_len, validation=validation,
                                 limit=limit, seed=config.seed,
                                 image_size=_image_size(loaded))
    if train_data.kind == "images":
        train_data = normalised(train_data, loaded)
    sn = loaded if isinstance(loaded, osf.Supernet) else osf.supernet(loaded.eval())
    sn.to(target)
    if rank == 0:
        typer.echo(f"data: {train_data.source}")
        typer.echo(f"supernet: {sn.space.size:,} configs; {sn.num_params(sn.space.largest()):,} parameters at the "
                   f"largest, {sn.num_params(sn.space.smallest()):,} at the smallest")
    result = train(sn, train_data, config, out_dir=out, resume=resume)
    if rank == 0:
        sn.save_pretrained(out / "supernet", tokenizer=tok)
        last = result.history[-1] if result.history else {}
        shown = {k: round(v, 4) for k, v in last.items() if k.startswith("val/")}
        typer.echo(f"trained {config.steps - result.start_step} steps -> {out / 'supernet'}; validation: {shown}")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return sn


def normalised(data: Any, model: Any) -> Any:
    """Image data normalised as the search's :class:`~osf.search.images.ImageAccuracy` does
    (the model's processor mean/std when known, else ImageNet's), so training and scoring see
    the same inputs."""
    import dataclasses

    import torch

    from osf.search.images import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)

    def norm(split):
        return {**split, "pixel_values": (split["pixel_values"] - mean) / std}
    return dataclasses.replace(data, train=norm(data.train), validation=norm(data.validation))


def _validation(text: str | None) -> float | str | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _device(name: str) -> Any:
    import os

    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def _tokenizer(name: str | None, model: str, kind: str | None) -> Any:
    from transformers import AutoTokenizer

    source = name or model
    if Path(source).is_dir() and not (Path(source) / "tokenizer_config.json").is_file() and name is None:
        if kind == "lm":
            raise ValueError(f"{model} holds no tokenizer: pass --tokenizer (a folder or hub id)")
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        if name is None and kind != "lm":
            return None  # maybe an image model: load_train_data says what it needs
        raise ValueError(f"cannot load a tokenizer from {source!r} ({type(e).__name__}): pass --tokenizer") from None


def _image_size(model: Any) -> Any:
    config = getattr(getattr(model, "model", model), "config", None)
    return getattr(config, "image_size", None)
