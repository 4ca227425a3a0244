"""CLIP zero-shot classification on CIFAR-10 as a search task.

Each class becomes a prompt (``--template``, default ``"a photo of a {label}."``), encoded by
the text tower; each image is encoded by the vision tower; the prediction is the class whose
prompt is most similar (cosine) to the image. The whole CLIP model is the supernet, so both
towers shrink, and the prompts are re-encoded for every subnet
(:class:`osf.search.ZeroShotAccuracy`). No training: the subnets are scored zero-shot.

Real data (CIFAR-10 python-pickle batches, with ``batches.meta`` for the class names):

    python examples/clip_cifar10_zeroshot.py --data ./cifar-10-batches-py --trials 100 --limit 2000 --out runs/clip

The same search from the command line:

    osf search openai/clip-vit-base-patch32 --task clip-zeroshot:cifar10 --data ./cifar-10-batches-py \\
        --trials 100 --limit 2000 --max-params-frac 0.5 --out runs/clip-cli

Smoke test (offline, seconds; a tiny random CLIP, so accuracy is near chance):
``python examples/clip_cifar10_zeroshot.py --smoke``.

Writes ``OUT/result.json`` (parameters and zero-shot accuracy of the full model and the
subnet), ``OUT/search`` and ``OUT/subnet`` (with the processor; ``osf.load_subnet``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import example_utils


def main(argv: list[str] | None = None) -> dict:
    p = example_utils.parser(__doc__, model="openai/clip-vit-base-patch32", trials=50)
    p.add_argument("--data", type=Path, help="folder of the CIFAR-10 python-pickle batches (not needed with --smoke)")
    p.add_argument("--template", default="a photo of a {label}.", help="prompt per class, with {label}")
    args, out = example_utils.start(p, argv, __file__, check=lambda a: a.train_steps and p.error(
        "--train-steps: this example scores CLIP zero-shot; it does not train"))

    import torch

    import osf
    from osf.search import ZeroShotAccuracy

    if args.smoke:
        from transformers import CLIPConfig, CLIPModel

        data = example_utils.write_cifar(out / "data", "cifar10", n_train=10, n_test=24, seed=args.seed)
        tokenizer = example_utils.word_tokenizer([args.template.format(label=c) for c in example_utils.CIFAR10_CLASSES])
        torch.manual_seed(args.seed)
        model = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16, eos_token_id=1, pad_token_id=0,
                             bos_token_id=1),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8),
            projection_dim=16))
        processor = tokenizer
        evaluator = ZeroShotAccuracy(f"cifar10:{data}", tokenizer=tokenizer, template=args.template, limit=args.limit,
                                     batch_size=args.batch_size)
        args.trials = min(args.trials, 4)
    else:
        if args.data is None:
            p.error("--data DIR is required (the CIFAR-10 python-pickle batches), or use --smoke")
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(args.model)
        processor = CLIPProcessor.from_pretrained(args.model)
        evaluator = ZeroShotAccuracy(f"cifar10:{args.data}", processor=processor, template=args.template,
                                     limit=args.limit, batch_size=args.batch_size)
    model = model.eval().to(args.device)
    sn = osf.supernet(model)

    def save_processor(_sub, folder: Path) -> None:
        processor.save_pretrained(str(folder))

    return example_utils.search_and_extract(sn, evaluator, args, out, save=save_processor)


if __name__ == "__main__":
    main(sys.argv[1:])
