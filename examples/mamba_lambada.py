"""Mamba language model scored on LAMBADA with lm-eval: supernet, optional training, search, extract, save.

Online (lm-eval downloads ``lambada_openai``; the model comes from the Hub):

    python examples/mamba_lambada.py --model state-spaces/mamba-1.4b-hf --trials 100 --limit 1000 --out runs/mamba

Optionally train the supernet first on your own text (``.txt`` / ``.json(l)`` / a folder of
them / a ``datasets.save_to_disk`` folder): ``--train-data corpus/ --train-steps 2000``.
``--task`` takes any lm-eval task name (``--include-path DIR`` for local task YAMLs).

The search maximises the task's accuracy (last-word accuracy for LAMBADA) and keeps the best
subnet under ``--max-params-frac`` of the parameters; the subnet is saved with the tokenizer.

Smoke test (offline, seconds): ``python examples/mamba_lambada.py --smoke`` trains a tiny Mamba
for a few steps on English text that ships with Python and scores it on a LAMBADA-style
last-word task made from held-out documents (``osf.search.make_lastword_task``), run by lm-eval
exactly as ``lambada_openai`` is.

Writes ``OUT/result.json``, ``OUT/search`` and ``OUT/subnet`` (``osf.load_subnet``, or
``AutoModelForCausalLM.from_pretrained`` when its sizes are uniform across layers).
"""
from __future__ import annotations

import sys
from pathlib import Path

import example_utils


def main(argv: list[str] | None = None) -> dict:
    p = example_utils.parser(__doc__, model="state-spaces/mamba-130m-hf", trials=50)
    p.add_argument("--task", default="lambada_openai", help="lm-eval task (default lambada_openai)")
    p.add_argument("--include-path", type=Path, default=None, help="folder of local lm-eval task YAMLs")
    p.add_argument("--train-data", default=None, help="text for supernet training (with --train-steps)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training block (default 256)")
    args, out = example_utils.start(p, argv, __file__)

    import osf
    from osf.search import LMEval, make_lastword_task

    if args.smoke:
        from osf import demo

        model, tokenizer, _ = demo.load_or_train(seconds=600, max_steps=5, cache=out / "cache", show_progress=False,
                                                 hidden_size=64, num_hidden_layers=4, state_size=8)
        train_texts, held_out = example_utils.smoke_corpus(n_docs=40)
        args.include_path = out / "task"
        args.task = "osf_smoke_lastword"
        make_lastword_task(held_out, args.include_path, name=args.task, n=16)
        args.trials, args.train_steps, args.seq_len = min(args.trials, 4), min(args.train_steps, 2) or 2, 64
        train_source, lr = train_texts, 2e-3
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if args.train_steps and args.train_data is None:
            p.error("--train-steps needs --train-data (text to train the supernet on)")
        train_source, lr = args.train_data, 1e-4
    model = model.eval().to(args.device)
    evaluator = LMEval(args.task, tokenizer, include_path=args.include_path, limit=args.limit,
                       batch_size=args.batch_size, device=args.device)
    data = None
    if train_source is not None:
        data = osf.load_train_data(train_source, tokenizer=tokenizer, seq_len=args.seq_len, seed=args.seed)
    # channels and layers ranked on training text, else on the evaluator's unscored documents (if any)
    sn = osf.supernet(model, calibration=example_utils.lm_calibration(data) if data is not None else evaluator)
    if args.train_steps:
        print("supernet training, last validation:", example_utils.train_supernet(sn, data, args, out, lr=lr))
    return example_utils.search_and_extract(sn, evaluator, args, out,
                                     save=lambda _sub, folder: tokenizer.save_pretrained(str(folder)))


if __name__ == "__main__":
    main(sys.argv[1:])
