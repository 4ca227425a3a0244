"""The random-init reference models the benchmarks share (imported from the scripts' folder)."""
from __future__ import annotations

from torch import nn


def mamba_130m(layers: int = 24) -> nn.Module:
    """A Mamba-130M configuration (hidden 768, d_state 16, expand 2) with ``layers`` layers."""
    from transformers import MambaConfig, MambaForCausalLM

    return MambaForCausalLM(MambaConfig(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=layers,
                                        expand=2, conv_kernel=4))


def vit_base(layers: int = 12, num_labels: int = 1000) -> nn.Module:
    """A ViT-Base configuration (hidden 768, 12 heads, MLP 3072, 224 px, patch 16)."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                                               intermediate_size=3072, image_size=224, patch_size=16,
                                               num_labels=num_labels))
