"""ViT on CIFAR-10: build the supernet, optionally train it, search it, extract and save the best subnet.

Real data (the python-pickle CIFAR-10 from https://www.cs.toronto.edu/~kriz/cifar.html):

    python examples/vit_cifar10.py --data ./cifar-10-batches-py --train-steps 2000 --trials 100 --out runs/vit

``--model`` defaults to ``google/vit-base-patch16-224-in21k``, whose classifier head is new
for CIFAR-10's 10 classes: train it (``--train-steps``: supernet training fine-tunes the
largest subnet on the labels and the smaller ones by in-place distillation), or pass a ViT
already fine-tuned on CIFAR-10 with ``--train-steps 0``. Images are resized to the model's
input size and normalised with its image processor's mean/std, the same for training and
scoring.

The search scores subnets by top-1 accuracy on the first ``--limit`` CIFAR-10 test images
(all by default) and keeps the best under ``--max-params-frac`` of the parameters; training
holds out its own validation images from the training batches.

Smoke test (offline, seconds): ``python examples/vit_cifar10.py --smoke``.

Writes ``OUT/result.json`` (parameters and accuracy of the full model and of the subnet),
``OUT/search`` (trials, Pareto front, ``pareto.png``) and ``OUT/subnet`` (``osf.load_subnet``).
"""
from __future__ import annotations

import sys

import example_utils


def smoke_model(num_labels: int):
    """A tiny ViT built from a config (no download)."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                               intermediate_size=64, image_size=32, patch_size=8, num_labels=num_labels))


def load_model(name: str, num_labels: int):
    """A pretrained classifier with a new ``num_labels`` head, and its image processor."""
    from transformers import ViTForImageClassification

    return example_utils.load_classifier(ViTForImageClassification, name, num_labels)


def main(argv: list[str] | None = None) -> dict:
    return example_utils.image_classifier_example(__doc__, __file__, argv, kind="cifar10",
                                           model="google/vit-base-patch16-224-in21k", smoke_model=smoke_model,
                                           load_model=load_model)


if __name__ == "__main__":
    main(sys.argv[1:])
