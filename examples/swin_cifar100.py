"""Swin Transformer on CIFAR-100: supernet, optional training, search, extract, save.

Real data (the python-pickle CIFAR-100 from https://www.cs.toronto.edu/~kriz/cifar.html):

    python examples/swin_cifar100.py --data ./cifar-100-python --train-steps 3000 --trials 100 --out runs/swin

``--model`` defaults to ``microsoft/swin-tiny-patch4-window7-224`` (ImageNet-1k head): its
head is replaced by a new 100-class one, so train it (``--train-steps``), or pass a Swin
already fine-tuned on CIFAR-100 with ``--train-steps 0``. The analysis finds each stage's
width (through patch merging), each block's heads, head size and MLP width, and the blocks
of each stage that can be dropped.

The search scores subnets by top-1 accuracy on the first ``--limit`` CIFAR-100 test images
(all by default) and keeps the best under ``--max-params-frac`` of the parameters.

Smoke test (offline, seconds): ``python examples/swin_cifar100.py --smoke``.

Writes ``OUT/result.json``, ``OUT/search`` and ``OUT/subnet`` (``osf.load_subnet``).
"""
from __future__ import annotations

import sys

import example_utils


def smoke_model(num_labels: int):
    """A tiny two-stage Swin built from a config (no download)."""
    from transformers import SwinConfig, SwinForImageClassification

    return SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2],
                                                 num_heads=[2, 4], window_size=4, num_labels=num_labels))


def load_model(name: str, num_labels: int):
    """A pretrained classifier with a new ``num_labels`` head, and its image processor."""
    from transformers import SwinForImageClassification

    return example_utils.load_classifier(SwinForImageClassification, name, num_labels)


def main(argv: list[str] | None = None) -> dict:
    return example_utils.image_classifier_example(__doc__, __file__, argv, kind="cifar100",
                                           model="microsoft/swin-tiny-patch4-window7-224", smoke_model=smoke_model,
                                           load_model=load_model)


if __name__ == "__main__":
    main(sys.argv[1:])
