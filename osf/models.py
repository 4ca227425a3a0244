"""Built-in tiny models (usable offline) and loading models by name for the CLI."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


def _tiny_mamba() -> nn.Module:
    from transformers import MambaConfig, MambaForCausalLM

    return MambaForCausalLM(MambaConfig(vocab_size=256, hidden_size=64, state_size=16, num_hidden_layers=4,
                                        intermediate_size=128, time_step_rank=8, conv_kernel=4))


def _tiny_mamba2() -> nn.Module:
    from transformers import Mamba2Config, Mamba2ForCausalLM

    return Mamba2ForCausalLM(Mamba2Config(vocab_size=256, hidden_size=64, state_size=16, num_hidden_layers=4,
                                          num_heads=8, head_dim=16, n_groups=1, expand=2, chunk_size=8))


def _tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                               intermediate_size=128, image_size=32, patch_size=8, num_labels=10))


def _tiny_swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    return SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2],
                                                 num_heads=[2, 4], window_size=4, num_labels=10))


def _tiny_swinv2() -> nn.Module:
    from transformers import Swinv2Config, Swinv2ForImageClassification

    return Swinv2ForImageClassification(Swinv2Config(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2],
                                                     num_heads=[2, 4], window_size=4, num_labels=10))


def _tiny_clip() -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32))


BUILTIN: dict[str, Callable[[], nn.Module]] = {
    "tiny-mamba": _tiny_mamba,
    "tiny-mamba2": _tiny_mamba2,
    "tiny-vit": _tiny_vit,
    "tiny-swin": _tiny_swin,
    "tiny-swinv2": _tiny_swinv2,
    "tiny-clip": _tiny_clip,
}


def load_model(name: str, seed: int = 0) -> nn.Module:
    """A model by name: a built-in tiny model, a supernet checkpoint folder (written by
    ``sn.save_pretrained``; an :class:`osf.Supernet` is returned, restored with
    :func:`osf.load_supernet`), a local Hugging Face folder, or a hub id.

    Raises:
        ValueError: the name is none of these, with the built-in names listed.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string; built-in models: {', '.join(BUILTIN)}")
    if name in BUILTIN:
        torch.manual_seed(seed)
        return BUILTIN[name]().eval()
    path = Path(name)
    if path.exists():
        from osf.elastic.checkpoint import is_checkpoint, load_supernet

        if is_checkpoint(path):
            return load_supernet(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"{name!r} is a path but holds no config.json nor osf_supernet.json: not a Hugging Face "
                             "model folder nor a supernet checkpoint (sn.save_pretrained)")
        return _auto_load(name)
    if name.count("/") == 1 and all(part and not part.startswith(".") for part in name.split("/")):
        return _auto_load(name)
    raise ValueError(
        f"unknown model {name!r}: expected a built-in name ({', '.join(BUILTIN)}), a local Hugging Face "
        "folder, a supernet checkpoint folder, or a hub id such as 'state-spaces/mamba-130m-hf'"
    )


def _auto_load(name: str) -> nn.Module:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as e:
        raise ValueError(f"cannot load {name!r}: {str(e).splitlines()[0]} (offline? use a local folder)") from e
    import transformers

    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls.from_pretrained(name).eval()
    from transformers import AutoModel

    return AutoModel.from_pretrained(name).eval()
