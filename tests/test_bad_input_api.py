"""Bad input to the Python API: one clear error naming the argument, what was wrong and
what is allowed; nothing silently accepted."""
from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import osf
from osf.errors import FolderNotEmptyError, InputTypeError
from osf.ir.trace import flatten_output
from zoo import build


# ------------------------------------------------------------------ shared tiny supernets
@functools.lru_cache(maxsize=None)
def mlp_sn():
    model, ex = build("mlp")
    return osf.supernet(model, ex)


@functools.lru_cache(maxsize=None)
def gpt_sn():
    model, ex = build("gpt")
    return osf.supernet(model, ex)


@functools.lru_cache(maxsize=None)
def mamba_sn():
    return osf.supernet(build("tiny-mamba")[0])


def _uniform_mamba_cfg(sn):
    """A subnet the Hugging Face config can express (same sizes in every layer)."""
    cfg = sn.space.largest()
    for d, choices in sn.space.dims.items():
        cfg[d] = choices[min(2, len(choices) - 1)]
    return cfg


def _per_layer_mamba_cfg(sn):
    cfg = sn.space.largest()
    d = "backbone.layers.1.mixer:d_inner"
    cfg[d] = sn.space.dims[d][-1]
    cfg["hidden"] = sn.space.dims["hidden"][2]
    return cfg


@pytest.fixture
def saved_uniform(tmp_path):
    sn = mamba_sn()
    sub = sn.extract(_uniform_mamba_cfg(sn))
    assert sub._osf_subnet["config_expresses_subnet"]
    return sub, tmp_path / "uniform"


@pytest.fixture
def saved_per_layer(tmp_path):
    sn = mamba_sn()
    sub = sn.extract(_per_layer_mamba_cfg(sn))
    assert not sub._osf_subnet["config_expresses_subnet"]
    osf.save_subnet(sub, tmp_path / "per_layer")
    return sub, tmp_path / "per_layer"


def _edit_json(file, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


# ------------------------------------------------------------------ osf.supernet(model, ...)
def test_supernet_refuses_a_supernet():
    with pytest.raises(TypeError, match="model is already an osf Supernet.*pass the original model"):
        osf.supernet(mlp_sn(), torch.randn(2, 12))


def test_supernet_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module .*got dict"):
        osf.supernet({"net.0.weight": torch.randn(32, 12)}, torch.randn(2, 12))


def test_supernet_refuses_weights_on_the_meta_device():
    with torch.device("meta"):
        model = build("mlp")[0]
    with pytest.raises(ValueError, match=r"meta device \(net.0.weight.*load real weights first"):
        osf.supernet(model, torch.randn(2, 12))


def test_supernet_refuses_text_as_example_inputs():
    with pytest.raises(TypeError, match="example_inputs must be a tensor.*got a string.*tokenize"):
        osf.supernet(build("mlp")[0], "the quick brown fox")


def test_supernet_refuses_a_list_of_strings_as_example_inputs():
    with pytest.raises(TypeError, match="example_inputs .*positional input 0 is a str.*tokenize"):
        osf.supernet(build("mlp")[0], ["the quick", "brown fox"])


def test_supernet_refuses_a_numpy_array_as_example_inputs():
    with pytest.raises(TypeError, match="example_inputs must be a tensor.*got ndarray: convert it with torch.from_numpy"):
        osf.supernet(build("mlp")[0], np.zeros((2, 12), dtype=np.float32))


def test_supernet_refuses_keyword_inputs_without_a_tensor():
    with pytest.raises(TypeError, match="example_inputs .*holds no tensor.*'input_ids': 'list'"):
        osf.supernet(build("tiny-mamba")[0], {"input_ids": [[3, 4, 5]]})


@pytest.mark.parametrize("flag", ["depth", "copy", "kernels"])
def test_supernet_flags_must_be_bools(flag):
    with pytest.raises(TypeError, match=f"{flag} must be True or False, got str 'no'"):
        osf.supernet(build("mlp")[0], torch.randn(2, 12), **{flag: "no"})


def test_supernet_refuses_a_space_of_the_wrong_type():
    with pytest.raises(TypeError, match="space must be a dict of dim pattern -> sizes.*got list"):
        osf.supernet(build("mlp")[0], torch.randn(2, 12), space=[32, 16])


def test_supernet_refuses_a_single_batch_as_calibration():
    model = build("tiny-mamba")[0]
    batch = {"input_ids": torch.randint(3, 200, (2, 8))}
    with pytest.raises(TypeError, match="calibration must be an iterable .* of model inputs, one batch each, got dict"):
        osf.supernet(model, importance="activation", calibration=batch)


class DropoutMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))

    def forward(self, x):
        return self.net(x)


def test_model_in_train_mode_is_analysed_in_eval_mode_with_one_warning():
    torch.manual_seed(0)
    model = DropoutMLP().train()
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.eval()(x)
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sn = osf.supernet(model, x)
    ours = [w for w in caught if "training mode" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, UserWarning)
    assert "eval mode" in str(ours[0].message) and "back in training mode" in str(ours[0].message)
    assert model.training and all(m.training for m in model.modules())  # the mode is restored
    eval_built = osf.supernet(DropoutMLP().eval(), x)  # the analysis is the one eval mode gives
    assert sn.space.dims == eval_built.space.dims
    model.eval()
    with torch.no_grad():
        assert torch.allclose(sn(x), reference, atol=1e-6)  # channels were permuted, the function kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an eval-mode model builds without the warning
        osf.supernet(DropoutMLP().eval(), x)


# ------------------------------------------------------------------ space=
def test_space_file_with_bad_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("'*:hidden': [32, 16]\n'net.0:hidden': [32, 8\n")
    with pytest.raises(ValueError, match=r"space file '.*space.yaml' is not valid YAML at line 3"):
        osf.supernet(build("mlp")[0], torch.randn(2, 12), space=path)


def test_space_file_with_bad_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "space.json"
    path.write_text('{\n  "*:hidden": [32, 16],\n  "net.0:hidden": \n}\n')
    with pytest.raises(ValueError, match=r"space file '.*space.json' is not valid JSON at line 4"):
        osf.supernet(build("mlp")[0], torch.randn(2, 12), space=path)


def test_space_path_that_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match=r"space file '.*nope.yaml' does not exist; space= takes a dict or the path"):
        osf.supernet(build("mlp")[0], torch.randn(2, 12), space=str(tmp_path / "nope.yaml"))


def test_space_pattern_that_matches_no_dim_suggests_close_names():
    with pytest.raises(ValueError, match=r"'\*:hiden' matches no dim; did you mean '\*:hidden'"):
        mlp_sn().space.restrict({"*:hiden": [16]})
    with pytest.raises(ValueError, match=r"'net.1:hidden' matches no dim; did you mean 'net.2:hidden' or "
                                         r"'net.0:hidden'"):
        mlp_sn().space.restrict({"net.1:hidden": [16]})


def test_space_choices_must_include_the_full_size():
    with pytest.raises(ValueError, match=r"'net.0:hidden'.*\[16, 8\] leave out its full size 32.*include 32"):
        osf.supernet(build("mlp")[0], torch.randn(2, 12), space={"net.0:hidden": [16, 8]})


@pytest.mark.parametrize("bad,message", [
    (0, r"sizes \[0\] are out of range; sizes are whole numbers from 1 to 32"),
    (-8, r"sizes \[-8\] are out of range; sizes are whole numbers from 1 to 32"),
    (64, r"sizes \[64\] are out of range; sizes are whole numbers from 1 to 32"),
    (8.0, r"size must be an int, got the float 8.0"),
    ("8", r"size must be an int, got str '8'"),
    (True, r"size True is a bool"),
])
def test_space_sizes_must_be_whole_numbers_up_to_the_full_size(bad, message):
    with pytest.raises(ValueError, match=r"space override 'net.0:hidden' for dim 'net.0:hidden': " + message):
        mlp_sn().space.restrict({"net.0:hidden": [32, bad]})


def test_space_sizes_accept_numpy_ints():
    space = mlp_sn().space.restrict({"net.0:hidden": list(np.array([32, 16, 8])), "net.2:hidden": np.array([24, 12])})
    assert space.dims["net.0:hidden"] == [32, 16, 8] and all(type(v) is int for v in space.dims["net.0:hidden"])
    assert space.dims["net.2:hidden"] == [24, 12] and all(type(v) is int for v in space.dims["net.2:hidden"])


def test_space_depth_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"'depth' must be a fraction in \(0, 1\].*got 'half'"):
        gpt_sn().space.restrict({"depth": "half"})


# ------------------------------------------------------------------ configs
def test_config_size_given_as_a_float_is_refused():
    sn = mlp_sn()
    with pytest.raises(TypeError, match=r"dim 'net.0:hidden': size must be an int, got the float 16.0; allowed sizes"):
        sn.set_config({**sn.space.largest(), "net.0:hidden": 16.0})


def test_config_size_given_as_a_bool_is_refused():
    sn = mlp_sn()
    with pytest.raises(TypeError, match=r"dim 'net.2:hidden': size True is a bool, not a size; allowed sizes"):
        sn.num_params({**sn.space.largest(), "net.2:hidden": True})


def test_config_sizes_given_as_numpy_or_torch_ints_are_taken_as_ints():
    sn = mlp_sn()
    cfg = {"net.0:hidden": np.int64(16), "net.2:hidden": torch.tensor(12)}
    out = sn.space.validate(cfg)
    assert out == {"net.0:hidden": 16, "net.2:hidden": 12} and all(type(v) is int for v in out.values())
    json.dumps(out)
    assert sn.num_params(cfg) == sn.num_params({"net.0:hidden": 16, "net.2:hidden": 12})


def test_config_unknown_dim_suggests_the_closest_names():
    sn = mlp_sn()
    with pytest.raises(ValueError, match=r"unknown name\(s\) in config: \['net.0:hiden'\]; for 'net.0:hiden' did you "
                                         r"mean 'net.0:hidden'"):
        sn.set_config({**sn.space.largest(), "net.0:hiden": 16})


def test_config_that_is_not_a_mapping_is_a_type_error():
    sn = mlp_sn()
    with pytest.raises(TypeError, match=r"config must be a dict of dim/block name -> value.*got list"):
        sn.set_config(list(sn.space.largest().items()))
    with pytest.raises(InputTypeError):
        sn.num_params("largest")


def test_block_keep_must_be_a_bool():
    sn = gpt_sn()
    block = sn.space.blocks[0]
    with pytest.raises(TypeError, match=rf"block '{block}': keep must be True or False \(a bool\), got int 0"):
        sn.set_config({**sn.space.largest(), block: 0})
    cfg = sn.space.validate({**sn.space.largest(), block: np.bool_(False)})  # numpy bools are bools
    assert cfg[block] is False


def test_depth_search_parameter_in_a_config_points_to_to_config():
    sn = gpt_sn()
    stack = next(iter(sn.space.stacks))
    with pytest.raises(ValueError, match=r"is a search parameter, not a config entry.*space.to_config"):
        sn.set_config({**sn.space.largest(), f"{stack}:depth": 1})


def test_extract_refuses_an_invalid_config():
    sn = mlp_sn()
    with pytest.raises(TypeError, match=r"dim 'net.0:hidden': size must be an int, got str '16'"):
        sn.extract({**sn.space.largest(), "net.0:hidden": "16"})


# ------------------------------------------------------------------ load_subnet
def test_load_subnet_from_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"subnet folder '.*missing' does not exist"):
        osf.load_subnet(tmp_path / "missing")


def test_load_subnet_given_a_file(saved_per_layer):
    _, folder = saved_per_layer
    with pytest.raises(ValueError, match=r"model.safetensors' is a file, not a folder; pass the folder"):
        osf.load_subnet(folder / "model.safetensors")


def test_load_subnet_with_truncated_weights_names_the_file(saved_per_layer):
    _, folder = saved_per_layer
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is truncated or corrupt \(.*\); save the subnet again"):
        osf.load_subnet(folder)


def test_load_subnet_with_garbage_weights_names_the_file(saved_per_layer):
    _, folder = saved_per_layer
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(ValueError, match=r"model.safetensors is truncated or corrupt"):
        osf.load_subnet(folder)


def test_load_subnet_with_a_corrupt_description(saved_per_layer):
    _, folder = saved_per_layer
    meta = folder / "osf_subnet.json"
    meta.write_text(meta.read_text()[:200])
    with pytest.raises(ValueError, match=r"osf_subnet.json is corrupt: not valid JSON at line \d+"):
        osf.load_subnet(folder)


@pytest.mark.parametrize("resave, tail", [
    (False, r".*the config no longer matches the weights"),
    (True, r""),  # the Hugging Face way (save_pretrained) records the saved config too
], ids=["save_subnet", "then_save_pretrained"])
def test_load_subnet_refuses_an_edited_hidden_size(saved_per_layer, resave, tail):
    sub, folder = saved_per_layer
    if resave:
        sub.save_pretrained(folder)
    hidden = sub.config.hidden_size
    _edit_json(folder / "config.json", hidden_size=hidden - 8)
    with pytest.raises(ValueError, match=rf"config.json: field 'hidden_size' is {hidden - 8}, but the subnet was saved "
                                         rf"with {hidden}" + tail):
        osf.load_subnet(folder)


def test_load_subnet_refuses_an_edited_size_in_a_config_that_describes_the_subnet(saved_uniform):
    sub, folder = saved_uniform
    sub.save_pretrained(folder)
    meta = json.loads((folder / "osf_subnet.json").read_text())
    del meta["hf_config"]  # a folder saved before osf recorded the config
    (folder / "osf_subnet.json").write_text(json.dumps(meta))
    inner = sub.config.intermediate_size
    _edit_json(folder / "config.json", intermediate_size=inner + 16)
    with pytest.raises(ValueError, match=r"config.json no longer matches the weights: with its field "
                                         r"'intermediate_size', tensor 'backbone.layers.0.mixer.*' would have shape"):
        osf.load_subnet(folder)


def test_load_subnet_refuses_an_edited_layer_count(saved_uniform):
    sub, folder = saved_uniform
    sub.save_pretrained(folder)
    _edit_json(folder / "config.json", num_hidden_layers=sub.config.num_hidden_layers - 1)
    with pytest.raises(ValueError, match=r"config.json: field 'num_hidden_layers' is \d+, but the subnet was saved "
                                         r"with \d+; the config no longer matches the weights"):
        osf.load_subnet(folder)


def test_load_subnet_on_a_plain_hugging_face_folder(tmp_path):
    build("tiny-mamba")[0].save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"not written by osf.save_subnet .*plain Hugging Face model: load it with "
                                         r"AutoModel\*.from_pretrained"):
        osf.load_subnet(tmp_path / "hf")


def test_load_subnet_on_a_supernet_checkpoint(tmp_path):
    from safetensors.torch import save_model

    (tmp_path / "ckpt").mkdir()
    torch.save(mlp_sn().model.state_dict(), tmp_path / "ckpt" / "supernet.pt")
    with pytest.raises(ValueError, match=r"not written by osf.save_subnet .*a torch checkpoint, not a subnet folder"):
        osf.load_subnet(tmp_path / "ckpt")
    (tmp_path / "st").mkdir()
    save_model(build("mlp")[0], str(tmp_path / "st" / "supernet.safetensors"))
    with pytest.raises(ValueError, match=r"not written by osf.save_subnet .*a bare weights file"):
        osf.load_subnet(tmp_path / "st")


def test_load_subnet_refuses_a_model_of_another_architecture(tmp_path):
    from zoo import MLP, TinyGPT

    sn = mlp_sn()
    osf.save_subnet(sn.extract(sn.space.smallest()), tmp_path / "mlp")
    with pytest.raises(ValueError, match=r"model is a TinyGPT, but this subnet comes from a .*MLP: pass a fresh instance"):
        osf.load_subnet(tmp_path / "mlp", model=TinyGPT())
    with pytest.raises(TypeError, match=r"model must be a fresh instance of the original architecture .*got str"):
        osf.load_subnet(tmp_path / "mlp", model="MLP")
    loaded = osf.load_subnet(tmp_path / "mlp", model=MLP())
    assert sum(p.numel() for p in loaded.parameters()) == sn.num_params(sn.space.smallest())


# ------------------------------------------------------------------ save_subnet
def test_save_subnet_refuses_a_folder_holding_another_model(saved_per_layer):
    sub, folder = saved_per_layer
    (folder / "tokenizer.json").write_text("{}")  # another model's tokenizer and generation settings
    (folder / "generation_config.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    before = sorted(p.name for p in folder.iterdir())
    other = mamba_sn().extract(_uniform_mamba_cfg(mamba_sn()))
    with pytest.raises(FolderNotEmptyError, match=r"already holds a model .*overwrite=True") as err:
        osf.save_subnet(other, folder)
    assert isinstance(err.value, ValueError)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing touched
    osf.save_subnet(other, folder, overwrite=True)
    names = {p.name for p in folder.iterdir()}
    assert "tokenizer.json" not in names and "notes.txt" in names
    assert json.loads((folder / "generation_config.json").read_text()) != {}  # the new model's own
    loaded = osf.load_subnet(folder)
    assert loaded.config.intermediate_size == other.config.intermediate_size


def test_save_subnet_refuses_a_file_path(tmp_path):
    (tmp_path / "x.bin").write_text("")
    sub = mlp_sn().extract(mlp_sn().space.smallest())
    with pytest.raises(ValueError, match=r"x.bin' is a file; save_subnet writes a folder"):
        osf.save_subnet(sub, tmp_path / "x.bin")
