"""``osf demo``: a small Mamba LM trained on CPU, turned into a supernet and searched.

Assets: an English corpus that ships with Python (``pydoc_data.topics``), a BPE
tokenizer trained locally (``tokenizers``), a tiny ``MambaForCausalLM``, a short
training loop, and a last-word lm-eval task made from held-out text. Everything is
cached in ``~/.cache/osf/demo`` (``OSF_CACHE_DIR`` overrides), so a second run skips
training.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

DEMO_SEQ_LEN = 64
SPECIALS = ["<|endoftext|>", "<pad>"]


def cache_dir() -> Path:
    """``$OSF_CACHE_DIR`` or ``~/.cache/osf/demo``."""
    return Path(os.environ.get("OSF_CACHE_DIR") or Path.home() / ".cache" / "osf" / "demo")


# ------------------------------------------------------------------- corpus
def load_corpus(held_out: float = 0.15) -> tuple[list[str], list[str]]:
    """Python's documentation topics, split by topic into (train, held-out) texts.

    The split is by topic name hash, so held-out passages share no document with training.
    """
    from pydoc_data.topics import topics

    train, test = [], []
    for key in sorted(topics):
        text = _clean(topics[key])
        bucket = int(hashlib.md5(key.encode()).hexdigest(), 16) % 1000 / 1000
        (test if bucket < held_out else train).append(text)
    return train, test


def _clean(text: str) -> str:
    # drop code-ish lines (indented/'>>>'), keep prose; collapse whitespace
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t", ">>>", "..."))]
    text = " ".join(lines)
    text = re.sub(r"[*`]+", "", text)
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int = 1024, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], bos_token=SPECIALS[0],
                                   unk_token=SPECIALS[0], pad_token=SPECIALS[1])
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


# -------------------------------------------------------------------- model
def demo_config(vocab_size: int, **overrides: Any):
    """The tiny Mamba LM of the demo (about 0.6M parameters: 4 Mamba layers of width 128, 1k vocabulary)."""
    from transformers import MambaConfig

    kw = dict(vocab_size=vocab_size, hidden_size=128, state_size=16, num_hidden_layers=4, expand=2,
              conv_kernel=4, pad_token_id=1, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
              use_cache=False)
    kw.update(overrides)
    return MambaConfig(**kw)


def token_blocks(texts: list[str], tokenizer, seq_len: int = DEMO_SEQ_LEN) -> torch.Tensor:
    """All texts tokenised, joined with EOS, cut into ``seq_len`` blocks."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def train_lm(model, blocks: torch.Tensor, seconds: float = 90.0, batch_size: int = 16, lr: float = 1e-2,
             max_steps: int | None = None, seed: int = 0, show_progress: bool = True) -> dict[str, float]:
    """Train ``model`` on ``blocks`` for a wall-time budget (one AdamW for the whole run).

    Returns a summary: steps, seconds, final loss (mean of the last 10 steps).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=int(seconds), desc="train", unit="s", disable=not show_progress)
    step = 0
    from osf.kernels.mamba import is_mamba_mixer, patch_mamba

    # transformers' reference scan is slow to train on CPU (its backward writes a full-size
    # gradient per step): train on osf.kernels' chunked scan
    scan = patch_mamba(model) if any(is_mamba_mixer(m) for m in model.modules()) else None
    try:
        while time.perf_counter() - t0 < seconds and (max_steps is None or step < max_steps):
            idx = torch.randint(len(blocks), (batch_size,), generator=g)
            batch = blocks[idx]
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.n = min(int(time.perf_counter() - t0), int(seconds))
            bar.set_postfix(step=step, loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    finally:
        if scan is not None:
            scan.remove()
        bar.close()
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - t0, "loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}


def load_or_train(seconds: float = 90.0, cache: str | Path | None = None, show_progress: bool = True,
                  max_steps: int | None = None, **config_overrides: Any):
    """``(model, tokenizer, train_info)``: trained once, then loaded from ``cache``.

    The cache key includes the training budget and config overrides; ``train_info``
    has ``cached`` set when nothing was trained.
    """
    from transformers import MambaForCausalLM, PreTrainedTokenizerFast

    root = Path(cache) if cache is not None else cache_dir()
    key = hashlib.sha1(json.dumps([seconds, max_steps, config_overrides], sort_keys=True).encode()).hexdigest()[:8]
    model_dir, tok_dir = root / f"model-{key}", root / "tokenizer"
    train, _ = load_corpus()
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    else:
        tokenizer = train_tokenizer(train, out_dir=tok_dir)
    if (model_dir / "config.json").is_file():
        model = MambaForCausalLM.from_pretrained(str(model_dir)).eval()
        info = json.loads((model_dir / "osf_train.json").read_text())
        return model, tokenizer, {**info, "cached": True, "key": key}
    torch.manual_seed(0)
    model = MambaForCausalLM(demo_config(len(tokenizer), **config_overrides))
    info = train_lm(model, token_blocks(train, tokenizer), seconds=seconds, max_steps=max_steps, show_progress=show_progress)
    tmp = root / f".model-{key}.tmp"
    model.save_pretrained(str(tmp))
    (tmp / "osf_train.json").write_text(json.dumps(info))
    if model_dir.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.replace(model_dir)  # atomic: a killed run never leaves a half-written model
    return model, tokenizer, {**info, "cached": False, "key": key}


# ------------------------------------------------------ supernet training
def calibration_batches(tokenizer, n_batches: int = 4, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Batches of the demo's training texts (never the held-out passages it is scored on) that
    rank the supernet's channels and layers."""
    train_texts, _ = load_corpus()
    blocks = token_blocks(train_texts, tokenizer)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(2))[:n_batches * batch_size]
    return [{"input_ids": blocks[order[i:i + batch_size]]} for i in range(0, len(order), batch_size)]


def load_or_train_supernet(model, tokenizer, base_key: str, steps: int = 100, cache: str | Path | None = None,
                           show_progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """``(supernet, info)``: the demo model's supernet trained with :func:`osf.train` (sandwich
    rule, in-place distillation) on the demo's training texts, then loaded from ``cache``."""
    import copy
    import shutil

    import osf
    from osf.training import TrainConfig, TrainData

    config = TrainConfig(steps=steps, batch_size=16, lr=2e-3, warmup_steps=max(steps // 10, 1) if steps > 1 else 0,
                         num_random=2, eval_every=max(steps // 2, 1), save_every=0, eval_batches=4, seed=0)
    root = Path(cache) if cache is not None else cache_dir()
    key = hashlib.sha1(json.dumps([base_key, config.to_dict(), "calibrated"], sort_keys=True).encode()).hexdigest()[:8]
    folder = root / f"supernet-{key}"
    if (folder / "osf_supernet.json").is_file():
        info = json.loads((folder / "osf_train.json").read_text())
        return osf.load_supernet(folder), {**info, "cached": True}
    train_texts, _ = load_corpus()
    blocks = token_blocks(train_texts, tokenizer)
    held = torch.Generator().manual_seed(1)
    order = torch.randperm(len(blocks), generator=held)
    n_val = max(len(blocks) // 20, 16)  # validation blocks come from the training texts, never the held-out ones
    data = TrainData("lm", {"input_ids": blocks[order[n_val:]]}, {"input_ids": blocks[order[:n_val]]},
                     "demo training texts")
    sn = osf.supernet(copy.deepcopy(model), calibration=calibration_batches(tokenizer))
    t0 = time.perf_counter()
    result = osf.train(sn, data, config, progress=show_progress)
    info = {"steps": steps, "seconds": time.perf_counter() - t0,
            **{k: v for k, v in result.history[-1].items() if k.startswith("val/")}}
    tmp = root / f".supernet-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    sn.save_pretrained(tmp, tokenizer=tokenizer)
    (tmp / "osf_train.json").write_text(json.dumps(info))
    if folder.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return sn, {**info, "cached": False}


# --------------------------------------------------------------- the demo
def run_demo(out_dir: str | Path = "osf-demo", trials: int = 20, train_seconds: float = 90.0, limit: int | None = None,
             n_passages: int = 100, max_steps: int | None = None, supernet_steps: int = 100, show_progress: bool = True,
             **config_overrides: Any):
    """Train (or load) the demo LM, build its supernet, search it zero-shot, train the supernet
    (or load it), search it again, and save the best half-size subnet of the trained one.

    Returns a summary dict (full model score, best subnets under half the parameters with and
    without supernet training, paths). ``train_seconds``/``max_steps``/``supernet_steps``/
    ``limit`` keep tests short.
    """
    import copy

    import osf
    from osf.search.lmeval import LMEval
    from osf.search.tasks import make_lastword_task

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, info = load_or_train(train_seconds, show_progress=show_progress, max_steps=max_steps, **config_overrides)
    print("model: " + ("loaded from cache" if info.get("cached") else f"trained {info['steps']} steps in {info['seconds']:.0f} s")
          + f", final train loss {info['loss']:.2f}, {sum(p.numel() for p in model.parameters()):,} parameters")
    _, held_out = load_corpus()
    task_dir = out_dir / "task"
    make_lastword_task(held_out, task_dir, name="osf_demo_lastword", n=n_passages)
    evaluator = LMEval("osf_demo_lastword", tokenizer, include_path=task_dir, limit=limit, batch_size=32)
    full_score = evaluator(model)
    print(f"full model: last-word accuracy {full_score:.3f} on {n_passages if limit is None else limit} held-out passages")

    print("\n1. zero-shot: the supernet of the trained model, searched as it is")
    zero_shot = osf.supernet(copy.deepcopy(model), calibration=calibration_batches(tokenizer))
    summary: dict[str, Any] = {"full_score": full_score, "full_params": zero_shot.num_params(zero_shot.space.largest()),
                               "train": info}
    zs_best = _search_half(zero_shot, evaluator, out_dir / "run-zero-shot", trials, show_progress)
    if zs_best is not None:
        summary.update(zero_shot_score=float(zs_best["score"]), zero_shot_params=int(zs_best["params"]))

    print("\n2. trained: the supernet trained with osf.train (sandwich rule, in-place distillation), searched")
    sn, sn_info = load_or_train_supernet(model, tokenizer, info["key"], steps=supernet_steps, show_progress=show_progress)
    print("supernet: " + ("loaded from cache" if sn_info.get("cached") else
                          f"trained {sn_info['steps']} steps in {sn_info['seconds']:.0f} s"))
    summary["supernet_train"] = sn_info
    best = _search_half(sn, evaluator, out_dir / "run", trials, show_progress)
    if best is None:
        return summary
    sub = sn.extract(json.loads(best["config"]))
    osf.save_subnet(sub, out_dir / "subnet", overwrite=True)  # a rerun replaces its own subnet
    tokenizer.save_pretrained(str(out_dir / "subnet"))
    summary.update(best_score=float(best["score"]), best_params=int(best["params"]), subnet=str(out_dir / "subnet"))
    print(f"\nlast-word accuracy on held-out passages ({summary['full_params']:,} parameters in the full model):")
    print(f"full model                 : {full_score:.3f}")
    if zs_best is not None:
        print(f"best subnet <50%, zero-shot: {zs_best['score']:.3f}  ({int(zs_best['params']):,} parameters)")
    print(f"best subnet <50%, trained  : {best['score']:.3f}  ({int(best['params']):,} parameters) -> {out_dir / 'subnet'}")
    return summary


def _search_half(sn, evaluator, run_dir: Path, trials: int, show_progress: bool):
    """Search ``sn`` (resuming in ``run_dir``), show its front; the best row under half the
    parameters, or None."""
    import osf.search as osf_search

    result = osf_search.search(sn, evaluator, n_trials=trials, run_dir=run_dir, show_progress=show_progress)
    result.save(run_dir)
    result.plot_pareto(run_dir / "pareto.png")
    print("Pareto front (score = last-word accuracy):")
    print(result.table())
    try:
        return result.best(max_params_frac=0.5)
    except ValueError as e:
        print(f"no subnet under half the parameters was found: {e}")
        return None
