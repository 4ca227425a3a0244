"""``finetune``: recover an extracted subnet's quality with LoRA adapters (PEFT), then merge
them into its weights, so the result is a plain model of the same shape.

This is plain training of one model (not the sandwich rule of :func:`osf.train`), and it
uses the same mechanisms: the data of :func:`osf.training.load_train_data`, the task loss
and evaluation of :mod:`osf.training.objective`, the batch order, weight-decay groups and
warm-up + cosine schedule of :mod:`osf.training.loop`.

Adapters go on ``nn.Linear`` layers only. By default on every one of them except the
output head (the layers that produce the logits, found by one forward pass: out_features
equal to the vocabulary / number of classes); layers that PEFT refuses for the
architecture (e.g. ``out_proj`` of Mamba, which the fused CUDA kernels read directly) are
left out of the default and named in a warning. For image classifiers the head is trained
in full (PEFT ``modules_to_save``). ``full=True`` trains every weight instead (a control).

Guards: every adapter must receive a gradient at the first step (a forward that reads a
weight directly, as fused kernels do, would leave its adapter untrained), and the merged
model must compute what the adapted model computed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from osf.modes import eval_mode
from osf.training.loop import _autocast, _check_data, _NoBar, batch_for_step, lr_schedule, param_groups
from osf.training.objective import evaluate, forward, logits_of, task_loss

PRECISIONS = ("auto", "bf16", "fp32")
_REFUSED = re.compile(r"Module '([^']+)' is incompatible")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune` (saved as ``osf_finetune.json`` next to the subnet by the CLI).

    Attributes:
        steps: optimizer steps.
        batch_size: examples per step.
        lr: peak learning rate of AdamW (after ``warmup_steps``, then cosine to ``lr * min_lr_ratio``).
        weight_decay: on matrices only (none on biases and norms).
        lora_r: rank of each adapter (> 0).
        lora_alpha: adapter scale numerator (the update is ``alpha / r * B @ A``).
        lora_dropout: dropout on the adapters' input.
        target: names of the ``nn.Linear`` layers to adapt: a full module name or its last
            part(s) (``"in_proj"`` matches ``backbone.layers.0.mixer.in_proj``), as PEFT
            matches them. ``None``: every Linear layer but the output head.
        modules_to_save: modules trained in full next to the adapters. ``None``: the output
            head for image classifiers, nothing for LMs (their head is usually tied to the
            embeddings); ``()``: none.
        full: train every weight instead of adapters (the control; ``target`` and the LoRA
            settings are then unused).
        clip_grad: gradient-norm clipping (0: none).
        precision: ``"auto"`` (bf16 autocast on a GPU that supports it), ``"bf16"``, ``"fp32"``.
        eval_every: validation period in steps (0: only before and after).
        eval_batches: validation batches (None: the whole validation split).
        seed: batch order and adapter initialisation.
    """

    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target: tuple[str, ...] | None = None
    modules_to_save: tuple[str, ...] | None = None
    full: bool = False
    clip_grad: float = 1.0
    precision: str = "auto"
    eval_every: int = 0
    eval_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer, got {value!r}")
        for name in ("lr", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"FinetuneConfig.{name} must be a positive number, got {value!r}")
        for name in ("weight_decay", "warmup_steps", "clip_grad", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"FinetuneConfig.{name} must be >= 0, got {value!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"FinetuneConfig.lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"FinetuneConfig.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps and self.warmup_steps >= self.steps:
            raise ValueError(f"FinetuneConfig.warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"FinetuneConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.eval_batches is not None and (isinstance(self.eval_batches, bool) or not isinstance(
                self.eval_batches, int) or self.eval_batches <= 0):
            raise ValueError(f"FinetuneConfig.eval_batches must be a positive int or None, got {self.eval_batches!r}")
        for name in ("target", "modules_to_save"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError(f"FinetuneConfig.{name} must be a tuple of module names (non-empty strings) or None, "
                                 f"got {value!r}")
            object.__setattr__(self, name, tuple(v.strip() for v in value))
        if self.target is not None and not self.target:
            raise ValueError("FinetuneConfig.target must name at least one Linear layer, or be None (every Linear "
                             "layer but the output head)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        out = dataclasses.asdict(self)
        for name in ("target", "modules_to_save"):
            out[name] = list(out[name]) if out[name] is not None else None
        return out


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` (each once)."""
    seen: set[int] = set()
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module) not in seen:
            seen.add(id(module))
            names.append(name)
    return names


def output_heads(model: nn.Module, batch: Mapping[str, torch.Tensor], kind: str) -> list[str]:
    """The ``nn.Linear`` layers that produce the logits: found by one forward pass on
    ``batch``, the layers whose output is the logits tensor or whose ``out_features`` equal
    the logits' last size (vocabulary or classes)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
             for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = forward(model, batch, kind)
    finally:
        for h in hooks:
            h.remove()
    width = logits.shape[-1]
    return [name for name, out in outputs.items()
            if out is logits or model.get_submodule(name).out_features == width]


def match_targets(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Full names of the Linear layers that ``names`` select (PEFT's rule: a full name, or
    its ending after a dot). Raises ``ValueError`` for a name that selects none, listing
    the Linear layers there are."""
    linears = linear_layers(model)
    chosen: list[str] = []
    for target in names:
        hits = [n for n in linears if n == target or n.endswith("." + target)]
        if not hits:
            short = sorted({n.rpartition(".")[2] for n in linears})
            raise ValueError(f"target {target!r} matches no Linear layer of {type(model).__name__}; its Linear layers "
                             f"are {', '.join(short)} (a name or a full path such as {linears[0]!r})" if linears else
                             f"target {target!r}: {type(model).__name__} has no Linear layer to adapt")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def finetune(model: nn.Module, data: Any, config: FinetuneConfig | None = None, *, progress: bool = True,
             callback: Callable[[int, dict[str, float]], None] | None = None, **overrides: Any) -> nn.Module:
    """Fine-tune ``model`` (an extracted subnet, or any model) with LoRA adapters and return
    it with the adapters merged into its weights (the same object, same shapes, trained).

    Args:
        model: the model; trained where it lies (its device).
        data: a :class:`osf.training.TrainData` (``load_train_data`` makes one); LMs learn
            next-token prediction, image classifiers class cross-entropy.
        config: a :class:`FinetuneConfig`; keyword ``overrides`` replace its fields
            (``finetune(sub, data, steps=100, lora_r=4)``).
        progress: show a progress bar.
        callback: called as ``callback(step, metrics)``: step 0 with the validation metrics
            before training, then after every step (train loss, lr, and validation metrics
            at ``eval_every`` and the last step).

    Raises:
        ValueError: bad settings, a ``target`` that selects no Linear layer (the layers
            there are are listed), an adapter that received no gradient, or a merged model
            that does not compute what the adapted one did.
        TypeError: ``data`` is not a TrainData, or the model returns no logits.
    """
    config = dataclasses.replace(config or FinetuneConfig(), **overrides) if overrides else (config or FinetuneConfig())
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (e.g. a subnet from sn.extract(config)), got {type(model).__name__}")
    kind = _check_data(data)
    params = list(model.parameters())
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters: nothing to fine-tune")
    device = params[0].device
    probe = {k: v[: min(2, len(v))].to(device) for k, v in data.validation.items()}
    torch.manual_seed(config.seed)
    trained = model if config.full else _with_adapters(model, probe, kind, config)
    try:
        _train(trained, data, config, kind, device, progress, callback)
    except BaseException:
        if not config.full:
            trained.unload()  # the caller's model comes back without adapters (trained weights untouched)
        raise
    if config.full:
        return model
    return _merge(trained, probe, kind)


# ---------------------------------------------------------------------------- adapters
def _with_adapters(model: nn.Module, probe: Mapping[str, torch.Tensor], kind: str, config: FinetuneConfig) -> Any:
    import peft

    heads = output_heads(model, probe, kind)
    if config.target is None:
        targets = [n for n in linear_layers(model) if n not in heads]
        if not targets:
            raise ValueError(f"{type(model).__name__} has no Linear layer besides its output head ({heads}): pass "
                             "target= explicitly or full=True")
        explicit = False
    else:
        targets = match_targets(model, config.target)
        explicit = True
    if config.modules_to_save is None:
        save = heads if kind == "images" else []
    else:
        save = list(config.modules_to_save)
        names = {n for n, _ in model.named_modules()}
        for s in save:
            if not any(n == s or n.endswith("." + s) for n in names):
                raise ValueError(f"modules_to_save {s!r} matches no module of {type(model).__name__}")
    targets = [t for t in targets if not any(t == s or t.endswith("." + s) for s in save)]
    if not targets:
        raise ValueError(f"no Linear layer is left to adapt: the targets are all in modules_to_save ({save}); pass "
                         "other target= names, or full=True")
    refused: list[str] = []
    while True:
        lora = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                               target_modules=targets, modules_to_save=save or None, bias="none")
        try:
            with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; not the user's concern
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                wrapped = peft.get_peft_model(model, lora)
        except ValueError as e:
            _strip_adapters(model)
            found = _REFUSED.search(str(e))
            name = found.group(1) if found else None
            left = [t for t in targets if t.rpartition(".")[2] != name] if name else targets
            if explicit or not name or len(left) == len(targets) or not left:
                raise ValueError(f"PEFT refuses the adapters: {' '.join(str(e).split())}") from None
            refused.append(f"{name} (PEFT refuses it for this architecture)")
            targets = left
            continue
        starved = _starved(wrapped, probe, kind)
        if not starved:
            break
        wrapped.unload()
        if explicit or len(starved) == len(targets):
            raise ValueError(f"the adapters of {len(starved)} layer(s) would receive no gradient ({', '.join(starved[:4])}"
                             f"{', ...' if len(starved) > 4 else ''}): the model's forward reads their weights directly "
                             "(a fused kernel?), so LoRA cannot train there; pass target= without them")
        refused.append(f"{', '.join(sorted({n.rpartition('.')[2] for n in starved}))} (the forward reads the weight "
                       "directly: no gradient would reach an adapter)")
        targets = [t for t in targets if t not in starved]
    if refused:
        warnings.warn(f"LoRA left out of {'; '.join(refused)}; adapting {len(targets)} other Linear layers",
                      stacklevel=3)
    return wrapped


def _starved(wrapped: Any, probe: Mapping[str, torch.Tensor], kind: str) -> list[str]:
    """Adapted layers whose adapters get no gradient from the task loss on ``probe``."""
    base = wrapped.get_base_model()
    with torch.enable_grad():
        task_loss(forward(wrapped, probe, kind), probe, kind).backward()
    starved = sorted({n.rpartition(".lora_")[0] for n, p in base.named_parameters()
                      if p.requires_grad and ".lora_" in n and p.grad is None})
    wrapped.zero_grad(set_to_none=True)
    return starved


def _strip_adapters(model: nn.Module) -> None:
    """Undo a partial PEFT injection: every LoRA layer back to its base layer."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and name:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, module.get_base_layer())


def _merge(wrapped: Any, probe: Mapping[str, torch.Tensor], kind: str) -> nn.Module:
    with torch.no_grad(), eval_mode(wrapped):
        before = forward(wrapped, probe, kind).float()
    merged = wrapped.merge_and_unload()
    with torch.no_grad(), eval_mode(merged):
        after = forward(merged, probe, kind).float()
    err = float((after - before).abs().max())
    tol = 1e-4 + 1e-3 * float(before.abs().max())
    if not err <= tol:
        raise ValueError(f"the merged model differs from the adapted one by {err:.3g} (tolerance {tol:.3g}): the "
                         "model's forward does not use the adapted layers as PEFT merges them")
    return merged


# ---------------------------------------------------------------------------- training
def _train(model: nn.Module, data: Any, config: FinetuneConfig, kind: str, device: torch.device, progress: bool,
           callback: Callable[[int, dict[str, float]], None] | None) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    autocast = _autocast(config.precision, device)
    if callback is not None:
        callback(0, _validate(model, data, kind, config, device))
    bar = _progress(config.steps, progress)
    was_training = model.training
    model.train()
    try:
        for step in range(1, config.steps + 1):
            optimizer.zero_grad(set_to_none=True)
            batch = batch_for_step(data.train, config, step, 0, 0, 1, config.batch_size, device)
            with autocast:
                loss = task_loss(forward(model, batch, kind), batch, kind)
            loss.backward()
            row = {"loss": float(loss.detach())}
            if config.clip_grad:
                row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.clip_grad))
            optimizer.step()
            scheduler.step()
            row["lr"] = optimizer.param_groups[0]["lr"]
            if config.eval_every and step % config.eval_every == 0 or step == config.steps:
                row.update(_validate(model, data, kind, config, device))
                model.train()
            bar.update(1)
            bar.set_postfix({"loss": f"{row['loss']:.3g}"}, refresh=False)
            if callback is not None:
                callback(step, row)
    finally:
        bar.close()
        model.train(was_training)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="osf finetune", unit="step", dynamic_ncols=True)


def _validate(model: nn.Module, data: Any, kind: str, config: FinetuneConfig, device: torch.device) -> dict[str, float]:
    split = data.validation
    n = len(next(iter(split.values())))
    size = config.batch_size
    batches = [{k: v[i:i + size].to(device) for k, v in split.items()} for i in range(0, n, size)]
    batches = batches[:config.eval_batches] if config.eval_batches else batches
    with eval_mode(model):
        return {f"val/{k}": v for k, v in evaluate(model, batches, kind).items()}


def save_finetuned(model: nn.Module, out: str | Path, source: str | Path | None, config: FinetuneConfig,
                   history: list[dict[str, float]], *, overwrite: bool = False) -> Path:
    """Save a fine-tuned subnet as a subnet folder (:func:`osf.save_subnet`, so
    ``osf.load_subnet`` and, for uniform subnets, ``from_pretrained`` read it), with the
    tokenizer / processor files of ``source`` (the input folder) and ``osf_finetune.json``
    (the settings, the input folder and the validation metrics before and after)."""
    import shutil

    from osf.elastic.io import save_subnet
    from osf.elastic.validate import MODEL_FILES

    path = save_subnet(model, out, overwrite=overwrite)
    if source is not None:  # the tokenizer / processor of the input (its card describes the input: not copied)
        for name in MODEL_FILES:
            f = Path(source) / name
            if f.is_file() and name not in ("README.md", "osf_subnet.json") and not (path / name).exists():
                shutil.copy2(f, path / name)
    validation = [{k: v for k, v in r.items() if k.startswith("val/")} | {"step": r["step"]}
                  for r in history if any(k.startswith("val/") for k in r)]
    record = {"source": str(source) if source is not None else None, "config": config.to_dict(),
              "validation": validation}
    (path / "osf_finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    return path


__all__ = ["FinetuneConfig", "finetune", "linear_layers", "output_heads", "match_targets", "save_finetuned"]
