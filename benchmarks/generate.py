"""Generation speed of subnets: prefill and cached-decode tokens per second of a full Mamba /
Mamba2 LM against its 75% and 50% subnets (by parameters), depth-only, width-only and mixed.

    python benchmarks/generate.py [--quick] [--device cpu|cuda] [--threads 1] [--repeats 5]

Models: random-init ``MambaForCausalLM`` (mamba-130m-sized: hidden 768, 24 layers, state 16, expand 2,
vocab 50280) and ``Mamba2ForCausalLM`` (mamba2-130m-sized: hidden 768, 24 layers, 24 heads of 64, state
128, 1 group, vocab 50288, tied embeddings as in mamba2-130m); speed does not depend on the weights. ``--quick``: tiny models, two repeats.

Subnets: ``osf.supernet(model)`` (layers droppable down to a quarter of the stack), then for each budget
f (share of the full model's parameters, embeddings included, as ``sn.num_params`` counts them) three
fixed shapes, each the largest that fits under f:

- depth: full widths, the fewest layers dropped (in the supernet's drop order);
- width: every layer kept, one uniform width fraction for every dim (hidden, d_inner, heads, state...);
- mixed: the uniform width fraction that fits sqrt(f), then layers dropped until within f.

Timing: ``prefill`` = one forward over the prompt with ``use_cache=True`` (logits of the last position
only, as generation's prefill); ``decode`` = the time from the first to the last new token of
``model.generate(prompt, max_new_tokens=1 + D, use_cache=True)`` (greedy, ``min_new_tokens`` forced),
stamped by a stopping criterion that never stops, i.e. D cached single-token steps. Tokens per second count every
sequence of the batch. Each number is the median of ``--repeats`` runs after one warm-up; models
are measured round-robin within each repeat so that load changes hit them alike. Speed-ups are
ratios to the full model in the same run. ``torch.set_num_threads(--threads)`` (default 1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

FRACS = (0.75, 0.5)
SHAPES = ("depth", "width", "mixed")
TARGET = 1.6  # decode speed-up wanted at 50% of the parameters


def mamba(quick: bool) -> torch.nn.Module:
    from transformers import MambaConfig, MambaForCausalLM

    if quick:
        cfg = MambaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=8, state_size=8, expand=2)
    else:
        cfg = MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2)
    return MambaForCausalLM(cfg)


def mamba2(quick: bool) -> torch.nn.Module:
    from transformers import Mamba2Config, Mamba2ForCausalLM

    if quick:
        cfg = Mamba2Config(vocab_size=512, hidden_size=64, num_hidden_layers=8, state_size=16, head_dim=16,
                           num_heads=8, n_groups=1, expand=2, chunk_size=16, tie_word_embeddings=True)
    else:
        cfg = Mamba2Config(vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128, head_dim=64,
                           num_heads=24, n_groups=1, expand=2, chunk_size=256, tie_word_embeddings=True)
    return Mamba2ForCausalLM(cfg)


MODELS: dict[str, Callable[[bool], torch.nn.Module]] = {"mamba": mamba, "mamba2": mamba2}


# ============================================================================ subnets
def width_config(sn: Any, r: float) -> dict[str, Any]:
    """Every dim at its largest choice <= r x its full size (at least its smallest), all layers kept."""
    space = sn.space
    cfg = {d: max([c for c in ch if c <= r * ch[0] + 1e-9] or [min(ch)]) for d, ch in space.dims.items()}
    return {**cfg, **{b: True for b in space.blocks}}


def drop_layers(sn: Any, cfg: dict[str, Any], budget: float) -> dict[str, Any] | None:
    """``cfg`` with the fewest layers dropped (each stack's drop order, stacks in turn) to fit ``budget``."""
    space = sn.space
    cfg = dict(cfg)
    queue = [(s, names[:len(names) - space.min_depth.get(s, len(names))]) for s, names in space.stacks.items()]
    droppable = [b for _, names in queue for b in names]
    for b in [None] + droppable:
        if b is not None:
            cfg[b] = False
        if sn.num_params(cfg) <= budget:
            return cfg
    return None


def shapes(sn: Any) -> dict[str, dict[str, Any]]:
    """``{f"{shape}@{f}": config}`` for each budget and shape (omitted when none fits)."""
    from osf.elastic.supernet import FRACTIONS

    full = sn.num_params(sn.space.largest())
    out: dict[str, dict[str, Any]] = {}
    for f in FRACS:
        budget = f * full
        depth = drop_layers(sn, sn.space.largest(), budget)
        width = next((width_config(sn, r) for r in FRACTIONS if sn.num_params(width_config(sn, r)) <= budget), None)
        r_mixed = next((r for r in FRACTIONS if sn.num_params(width_config(sn, r)) <= math.sqrt(f) * full), None)
        mixed = drop_layers(sn, width_config(sn, r_mixed), budget) if r_mixed is not None else None
        for name, cfg in (("depth", depth), ("width", width), ("mixed", mixed)):
            if cfg is not None:
                out[f"{name}@{f:g}"] = cfg
    return out


def describe(sn: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Layers kept and the width fraction of the residual stream and of the widest inner dim."""
    space = sn.space
    kept = sum(1 for b in space.blocks if cfg.get(b, True))
    fracs = sorted({round(cfg[d] / ch[0], 3) for d, ch in space.dims.items() if not _dropped(space, cfg, d)})
    return {"layers": f"{kept}/{len(space.blocks)}", "width_fractions": fracs}


def _dropped(space: Any, cfg: dict[str, Any], dim: str) -> bool:
    return any(not cfg.get(b, True) and dim in space.block_dims(b) for b in space.blocks)


# ============================================================================ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


class Stamps:
    """A stopping criterion that never stops and records when each new token is ready: the
    gaps between the first and the last stamp are pure cached decode steps."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        sync(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode_time(model: torch.nn.Module, prompt: torch.Tensor, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` cached decode steps of ``model.generate`` (after prefill and the first token)."""
    from transformers import StoppingCriteriaList

    stamps = Stamps(device)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1 + steps,
                   min_new_tokens=1 + steps, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None,
                   stopping_criteria=StoppingCriteriaList([stamps]))
    if len(stamps.times) != 1 + steps:
        raise RuntimeError(f"generate produced {len(stamps.times)} tokens, expected {1 + steps}")
    return stamps.times[-1] - stamps.times[0]


def measure(models: dict[str, torch.nn.Module], batch: int, prompt_len: int, decode: int, repeats: int,
            device: torch.device, vocab: int) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s per model (medians), measured round-robin."""
    g = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=g).to(device)
    runs: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in models}
    with torch.inference_mode():
        for rep in range(repeats + 1):  # repeat 0: warm-up, not kept
            for name, model in models.items():
                t_pre = timed(lambda: model(prompt, use_cache=True, logits_to_keep=1), device)
                t_dec = decode_time(model, prompt, decode, device)
                if rep:
                    runs[name]["prefill"].append(t_pre)
                    runs[name]["decode"].append(t_dec)
    out = {}
    for name, r in runs.items():
        pre, dec = statistics.median(r["prefill"]), statistics.median(r["decode"])
        out[name] = {"prefill_tok_s": batch * prompt_len / pre, "decode_tok_s": batch * decode / dec,
                     "prefill_s": pre, "decode_s": dec, "prefill_runs": r["prefill"], "decode_runs": r["decode"],
                     "decode_spread": (max(r["decode"]) - min(r["decode"])) / dec}
    return out


# ============================================================================ main
def run_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import osf

    torch.manual_seed(0)
    model = MODELS[arch](args.quick).eval()
    t = time.perf_counter()
    sn = osf.supernet(model)  # layers droppable down to a quarter of each stack (the default)
    configs = shapes(sn)
    full = sn.num_params(sn.space.largest())
    models = {"full": None}
    info = {"full": {"params": full, "params_frac": 1.0, "layers": f"{len(sn.space.blocks)}/{len(sn.space.blocks)}",
                     "width_fractions": [1.0]}}
    for key, cfg in configs.items():
        models[key] = sn.extract(cfg).eval().to(device)
        info[key] = {"params": sn.num_params(cfg), "params_frac": sn.num_params(cfg) / full, **describe(sn, cfg)}
    sn.set_config(sn.space.largest())
    del sn
    from osf.kernels.mamba import unpatch_mamba

    unpatch_mamba(model)  # the full model on transformers' own kernels, as the extracted subnets are
    models["full"] = model.to(device)
    build_s = time.perf_counter() - t
    vocab = model.config.vocab_size
    print(f"[{arch}] {len(models)} models built in {build_s:.0f} s: "
          + ", ".join(f"{k} {v['params_frac']:.0%}" for k, v in info.items()), flush=True)
    results = {}
    for batch in args.batches:
        t = time.perf_counter()
        res = measure(models, batch, args.prompt, args.decode, args.repeats, device, vocab)
        for k, v in res.items():
            v["prefill_speedup"] = v["prefill_tok_s"] / res["full"]["prefill_tok_s"]
            v["decode_speedup"] = v["decode_tok_s"] / res["full"]["decode_tok_s"]
        results[str(batch)] = res
        print(f"[{arch}] batch {batch}: {time.perf_counter() - t:.0f} s; decode speed-ups "
              + ", ".join(f"{k} {v['decode_speedup']:.2f}x" for k, v in res.items()), flush=True)
    return {"config": model.config.to_dict(), "models": info, "build_s": build_s, "results": results,
            "configs": configs}


def table(r: dict[str, Any], batches: list[int]) -> str:
    head = "| model | layers | width fractions | params | " + " | ".join(
        f"prefill tok/s b{b} | decode tok/s b{b} | decode speed-up b{b}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (4 + 3 * len(batches))]
    for key, info in r["models"].items():
        cells = [key, info["layers"], ", ".join(f"{x:g}" for x in info["width_fractions"]),
                 f"{info['params'] / 1e6:.1f}M ({info['params_frac']:.1%})"]
        for b in batches:
            m = r["results"][str(b)][key]
            cells += [f"{m['prefill_tok_s']:.1f} ({m['prefill_speedup']:.2f}x)", f"{m['decode_tok_s']:.1f}",
                      f"**{m['decode_speedup']:.2f}x**" if key != "full" else "1.00x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(r: dict[str, Any], batches: list[int]) -> str:
    parts = []
    for b in batches:
        res = r["results"][str(b)]
        at_half = {k: v["decode_speedup"] for k, v in res.items() if k.endswith("@0.5")}
        if not at_half:
            parts.append(f"batch {b}: no 50% subnet")
            continue
        best = max(at_half, key=at_half.get)
        parts.append(f"batch {b}: best {best} {at_half[best]:.2f}x ({'met' if at_half[best] >= TARGET else 'NOT met'}; "
                     + ", ".join(f"{k} {v:.2f}x" for k, v in at_half.items()) + ")")
    return f"Decode speed-up at 50% of the parameters (target >= {TARGET}x): " + "; ".join(parts) + "."


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def others() -> int:
    """Other running Python processes (a sign of contention)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout
    except OSError:
        return -1
    return sum(1 for line in out.splitlines()[1:] if "python" in line and str(os.getpid()) != line.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 repeats; writes no files unless --out")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per number (median; default 3, quick 2)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 32, quick 16)")
    ap.add_argument("--decode", type=int, default=None, help="decode steps timed (default 8, quick 4)")
    ap.add_argument("--batches", default="1,8", help="comma list of batch sizes")
    ap.add_argument("--models", default="mamba,mamba2", help="comma list of mamba, mamba2")
    ap.add_argument("--out", default=None, help="write OUT.md / OUT.json (default benchmarks/results/generate)")
    args = ap.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.prompt = args.prompt or (16 if args.quick else 32)
    args.decode = args.decode or (4 if args.quick else 8)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    torch.set_num_threads(args.threads)
    out = args.out or (None if args.quick else str(HERE / "results" / "generate"))
    command = "python benchmarks/generate.py" + "".join(f" {x}" for x in sys.argv[1:])
    start_load, start_others, started = load(), others(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    results = {}
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        if arch not in MODELS:
            raise SystemExit(f"unknown model {arch!r}: use {', '.join(MODELS)}")
        results[arch] = run_arch(arch, args, device)
    total = time.perf_counter() - t0
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    text = ["# Generation speed of subnets", "", "```", command, "```", "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"device {gpu or 'cpu'}, torch.set_num_threads({args.threads}). Started {started}; total {total:.0f} s. "
            f"Load at the start: `{start_load}` ({start_others} other Python processes); at the end: `{load()}` "
            f"({others()} other Python processes). The CPU was shared when the load average is above "
            f"{os.cpu_count()}: absolute tokens/s are then low and noisy; ratios within one run hold better.", "",
            f"Prompt {args.prompt} tokens; decode: {args.decode} cached steps of generate(max_new_tokens=1 + "
            f"{args.decode}), timed from the first new token to the last (stopping-criterion time stamps); median of {args.repeats} repeats after one warm-up, models round-robin. Subnets: "
            "fixed shapes (no search), each the largest under the budget: depth = full widths, layers dropped; "
            "width = all layers, one uniform width fraction; mixed = the width fraction that fits sqrt(budget), then "
            "layers dropped. Params count embeddings (tied, once), as `sn.num_params`. Random-init weights "
            "(speed does not depend on them); transformers' own Mamba kernels (their PyTorch fallbacks on CPU).", ""]
    for arch, r in results.items():
        text += [f"## {arch}: " + ", ".join(f"{k}={r['config'][k]}" for k in (
            "hidden_size", "num_hidden_layers", "state_size", "vocab_size") if k in r["config"]), "",
            table(r, args.batches), "", verdict(r, args.batches), ""]
    md = "\n".join(text) + "\n"
    print(md)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".md").write_text(md)
        Path(out + ".json").write_text(json.dumps({"command": command, "started": started, "total_s": total,
                                                   "load_start": start_load, "load_end": load(),
                                                   "threads": args.threads, "device": str(device),
                                                   "prompt": args.prompt, "decode": args.decode,
                                                   "repeats": args.repeats, "results": results}, indent=2, default=str))
        print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    main()
