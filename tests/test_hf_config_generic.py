"""Config updating and output naming without model-family names: nested configs, depth lists
and output fields are found by what they are, not by what a family calls them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, SwinConfig, SwinForImageClassification
from transformers.modeling_outputs import ModelOutput

import osf
from osf.elastic.hf_config import nested_configs
from osf.ir.trace import flatten_output


def test_nested_configs_are_found_under_any_attribute_name():
    inner = PretrainedConfig(hidden_size=8)
    deeper = PretrainedConfig(hidden_size=4)
    inner.deeper_part = deeper
    top = PretrainedConfig(hidden_size=16)
    top.audio_tower = inner  # a name no rule knows
    top.same_again = inner  # walked once
    assert [c.hidden_size for c in nested_configs(top)] == [16, 8, 4]


def test_depth_list_is_told_from_a_per_stage_list_with_the_same_values():
    """depths == num_heads == [2, 2]: dropping a block of stage 0 changes the depths only."""
    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2],
                                                  num_heads=[2, 2], window_size=4, num_labels=10)).eval()
    sn = osf.supernet(model)
    stacks = list(sn.space.stacks)
    params = {k: v[0] for k, v in sn.space.parameters().items()}
    params[stacks[0] + ":depth"] = 1
    sub = sn.extract(sn.space.canonical(sn.space.to_config(params)))
    assert sub.config.depths == [1, 2] and sub.config.num_heads == [2, 2]
    assert sub.config.num_layers == 2  # the number of stages, not a stage's depth
    assert sub._osf_subnet["config_expresses_subnet"] is True


def test_output_fields_are_kept_by_type():
    @dataclass
    class Out(ModelOutput):
        logits: torch.Tensor = None
        image_embeds: torch.Tensor = None
        any_model_output: ModelOutput = None
        per_layer_states: tuple = None
        loss: torch.Tensor = None

    out = Out(logits=torch.ones(2), image_embeds=torch.zeros(3), any_model_output=Out(logits=torch.ones(1)),
              per_layer_states=(torch.ones(1),), loss=torch.tensor(1.0))
    assert list(flatten_output(out)) == ["logits", "image_embeds"]
