"""Mamba2 language model scored by perplexity: supernet, optional training, search, extract, save.

Real run (any ``Mamba2ForCausalLM`` hub id or folder; validation text as ``.txt`` files):

    python examples/mamba2_lm.py --model mistralai/Mamba-Codestral-7B-v0.1 --data valid.txt \\
        --trials 100 --limit 50 --out runs/mamba2

``--data`` is the text the search scores on (a ``.txt`` file or a folder of them), cut into
``--seq-len`` token blocks; ``--limit`` caps the batches per evaluation. The score is minus the
mean next-token loss (higher is better; perplexity = exp(-score), also written to the result).
Optionally train the supernet first on other text: ``--train-data corpus/ --train-steps 2000``
(keep it apart from ``--data``).

The analysis finds each Mamba2 layer's heads, head size and state size (through the fused
``[z | xBC | dt]`` projection, the convolution and the gated norm) and which layers can go.

Smoke test (offline, seconds): ``python examples/mamba2_lm.py --smoke`` (a tiny Mamba2 from a
config, a tokenizer trained locally, English text that ships with Python).

Writes ``OUT/result.json``, ``OUT/search`` and ``OUT/subnet`` (``osf.load_subnet``).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import example_utils


def read_texts(path: Path) -> list[str]:
    """A ``.txt`` file, or every ``.txt`` file of a folder."""
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise SystemExit(f"error: --data {str(path)!r} must be a .txt file or a folder of .txt files")
    return [f.read_text(encoding="utf-8") for f in files]


def main(argv: list[str] | None = None) -> dict:
    p = example_utils.parser(__doc__, model="mistralai/Mamba-Codestral-7B-v0.1", trials=50, limit=50)
    p.add_argument("--data", type=Path, help="validation text the search scores on (.txt or a folder of them)")
    p.add_argument("--train-data", default=None, help="text for supernet training (with --train-steps)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per block (default 256)")
    args, out = example_utils.start(p, argv, __file__)

    import torch

    import osf
    from osf.search import Perplexity

    if args.smoke:
        from transformers import Mamba2Config, Mamba2ForCausalLM

        from osf.demo import train_tokenizer

        train_texts, held_out = example_utils.smoke_corpus(n_docs=40)
        tokenizer = train_tokenizer(train_texts, vocab_size=300)
        torch.manual_seed(args.seed)
        model = Mamba2ForCausalLM(Mamba2Config(vocab_size=len(tokenizer), hidden_size=64, state_size=16,
                                               num_hidden_layers=4, num_heads=8, head_dim=16, n_groups=1, expand=2,
                                               chunk_size=16, tie_word_embeddings=True,
                                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
        val_texts, train_source, lr = held_out[:6], train_texts, 2e-3
        args.trials, args.train_steps, args.seq_len, args.limit = min(args.trials, 4), min(args.train_steps, 2) or 2, 32, 2
    else:
        if args.data is None:
            p.error("--data is required (validation text: a .txt file or a folder of them), or use --smoke")
        if args.train_steps and args.train_data is None:
            p.error("--train-steps needs --train-data (text to train the supernet on, apart from --data)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        val_texts, train_source, lr = read_texts(args.data), args.train_data, 1e-4
    model = model.eval().to(args.device)
    evaluator = Perplexity(val_texts, tokenizer, seq_len=args.seq_len, max_batches=args.limit, batch_size=args.batch_size)
    data = None
    if train_source is not None:
        data = osf.load_train_data(train_source, tokenizer=tokenizer, seq_len=args.seq_len, seed=args.seed)
    # channels and layers ranked on training text, else on the evaluator's unscored documents (if any)
    sn = osf.supernet(model, calibration=example_utils.lm_calibration(data) if data is not None else evaluator)
    if args.train_steps:
        print("supernet training, last validation:", example_utils.train_supernet(sn, data, args, out, lr=lr))
    summary = example_utils.search_and_extract(sn, evaluator, args, out,
                                        save=lambda _sub, folder: tokenizer.save_pretrained(str(folder)))
    summary["full_perplexity"] = math.exp(-summary["full_score"])
    summary["subnet_perplexity"] = math.exp(-summary["subnet_score"])
    example_utils.write_result(out, summary)
    print(f"perplexity: full model {summary['full_perplexity']:.2f}, subnet {summary['subnet_perplexity']:.2f}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
