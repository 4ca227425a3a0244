"""``osf finetune SUBNET_DIR --data ... --out DIR``: recover a subnet's quality with LoRA
adapters, merged into its weights and saved as a subnet folder of the same format.

The output loads as the input did: with ``osf.load_subnet`` and, for a uniform subnet,
with plain ``from_pretrained``. The input's tokenizer / processor files are copied along,
and ``osf_finetune.json`` records the settings and the validation metrics before and after.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from osf.training.finetune import PRECISIONS, FinetuneConfig


def finetune_cmd(
    subnet: Path = typer.Argument(..., help="A subnet folder (osf extract / osf.save_subnet / a finetune output)."),
    data: str = typer.Option(..., "--data", help="Training data: .txt file or folder, .json/.jsonl, a save_to_disk "
                             "folder, CIFAR pickles (cifar10:DIR), or an image folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the fine-tuned subnet."),
    kind: Optional[str] = typer.Option(None, "--kind", help="lm or images (inferred when omitted)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder or hub id (LMs; default: the "
                                            "subnet folder's own)."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per training block (LMs)."),
    validation: Optional[str] = typer.Option(None, "--validation", help="Validation split name, or the fraction of "
                                             "the training data to hold out (default: the source's own split, else "
                                             "0.05)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many training examples."),
    lora_r: int = typer.Option(8, "--lora-r", help="Adapter rank."),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha", help="Adapter scale numerator (update = alpha/r * BA)."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout"),
    target: Optional[str] = typer.Option(None, "--target", help="Comma-separated Linear layer names to adapt (e.g. "
                                         "in_proj,x_proj); default: every Linear layer but the output head."),
    modules_to_save: Optional[str] = typer.Option(None, "--modules-to-save", help="Comma-separated modules trained in "
                                                  "full (default: the classifier head of image models, none for LMs; "
                                                  "'' for none)."),
    full: bool = typer.Option(False, "--full", help="Train every weight instead of LoRA adapters."),
    steps: int = typer.Option(200, "--steps"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    clip_grad: float = typer.Option(1.0, "--clip-grad"),
    precision: str = typer.Option("auto", "--precision", help=f"One of {', '.join(PRECISIONS)}."),
    eval_every: int = typer.Option(0, "--eval-every", help="Validation period in steps (0: before and after only)."),
    eval_batches: Optional[int] = typer.Option(None, "--eval-batches"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when there is one, else cpu), cpu, or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already saved in --out."),
) -> None:
    """Fine-tune a subnet with LoRA adapters (PEFT), merge them, save a subnet folder."""
    from osf.cli import fail
    from osf.errors import FolderNotEmptyError

    try:
        config = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                warmup_steps=warmup_steps, lora_r=lora_r, lora_alpha=lora_alpha,
                                lora_dropout=lora_dropout, target=_names(target, "--target"),
                                modules_to_save=_names(modules_to_save, "--modules-to-save", empty_ok=True),
                                full=full, clip_grad=clip_grad, precision=precision, eval_every=eval_every,
                                eval_batches=eval_batches, seed=seed)
        run(subnet, data, out, config, kind=kind, tokenizer=tokenizer, seq_len=seq_len, validation=validation,
            limit=limit, device=device, overwrite=overwrite)
    except FolderNotEmptyError as e:
        fail(" ".join(str(e).replace("pass overwrite=True", "pass --overwrite").split()))
    except (ValueError, FileNotFoundError, TypeError) as e:
        fail(" ".join(str(e).split()))


def run(subnet: Path, data: str, out: Path, config: FinetuneConfig, *, kind: str | None = None,
        tokenizer: str | None = None, seq_len: int = 256, validation: str | None = None, limit: int | None = None,
        device: str = "auto", overwrite: bool = False) -> Any:
    """What ``osf finetune`` does, callable from Python: load the subnet, load the data,
    fine-tune, save to ``out``. Returns the fine-tuned model."""
    import osf
    from osf.elastic.validate import model_files, prepare_save_folder
    from osf.training.cli import _device, _image_size, _tokenizer, _validation, normalised
    from osf.training.data import load_train_data
    from osf.training.finetune import finetune, match_targets, save_finetuned

    if not Path(subnet).is_dir():
        raise FileNotFoundError(f"subnet folder {str(subnet)!r} does not exist")
    if Path(out).resolve() == Path(subnet).resolve():
        raise ValueError("--out must differ from the subnet folder: the input is read while the output is written")
    if Path(out).is_dir() and model_files(Path(out)) and not overwrite:
        prepare_save_folder(out, overwrite)  # raises FolderNotEmptyError before any training
    target = _device(device)
    model = osf.load_subnet(subnet)
    if config.target is not None and not config.full:
        match_targets(model, config.target)  # a wrong name fails before the data is read
    tok = _tokenizer(tokenizer, str(subnet), kind) if kind != "images" else None
    train_data = load_train_data(data, kind=kind, tokenizer=tok, seq_len=seq_len, validation=_validation(validation),
                                 limit=limit, seed=config.seed, image_size=_image_size(model))
    if train_data.kind == "images":
        train_data = normalised(train_data, model)
    model.to(target)
    typer.echo(f"data: {train_data.source}")
    history: list[dict[str, float]] = []
    model = finetune(model, train_data, config, callback=lambda step, row: history.append({"step": step, **row}))
    path = save_finetuned(model.cpu(), out, subnet, config, history, overwrite=overwrite)
    before = {k: round(v, 4) for k, v in history[0].items() if k.startswith("val/")}
    after = {k: round(v, 4) for k, v in history[-1].items() if k.startswith("val/")}
    typer.echo(f"fine-tuned {config.steps} steps ({'full' if config.full else f'LoRA r={config.lora_r}'}) -> {path}; "
               f"validation before: {before}; after: {after}")
    return model


def _names(text: str | None, option: str, empty_ok: bool = False) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names and not empty_ok:
        raise ValueError(f"{option} must list module names separated by commas, got {text!r}")
    return names
