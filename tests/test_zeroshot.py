"""ZeroShotAccuracy (CLIP zero-shot classification) against an independent computation, and as
the ``clip-zeroshot:<dataset>`` task of ``osf search``."""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from osf.search.zeroshot import CLIP_MEAN, CLIP_STD, ZeroShotAccuracy

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
WORDS = ["<pad>", "<eos>", "<unk>", "a", "photo", "of", "picture", "."] + list(COLOURS)


def word_tokenizer():
    """A word-level tokenizer that ends every text with <eos> (CLIP pools the text at its EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def colour_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy single-colour 32x32 images and their colour classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(COLOURS), (n,), generator=g)
    base = torch.tensor(list(COLOURS.values()), dtype=torch.float)[y]
    x = base[:, :, None, None] + 40 * torch.randn(n, 3, 32, 32, generator=g)
    return x.clamp(0, 255).to(torch.uint8), y


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=1, pad_token_id=0,
                         bos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)).eval()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """CLIP's normalisation, written out (no resize: the images are the model's size)."""
    return (x.float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def train_contrastive(model, tokenizer, steps: int = 60):
    """A few CLIP steps on colour images against their class prompts (training images differ from the test ones)."""
    enc = tokenizer([f"a photo of a {c}." for c in COLOURS], padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        x, y = colour_images(32, 1000 + step)
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=normalise(x))
        loss = torch.nn.functional.cross_entropy(out.logits_per_image, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def reference_logits(model, tokenizer, images, template="a photo of a {label}.") -> torch.Tensor:
    """One image at a time through the model's own forward: ``logits_per_image``, the logit
    scale times the cosine similarities of image and prompt embeddings."""
    enc = tokenizer([template.format(label=c) for c in COLOURS], padding=True, return_tensors="pt")
    rows = []
    with torch.no_grad():
        for img in images:
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        pixel_values=normalise(img[None]))
            rows.append(out.logits_per_image[0])
    return torch.stack(rows) / model.logit_scale.exp().item()


def reference_predictions(model, tokenizer, images) -> torch.Tensor:
    return reference_logits(model, tokenizer, images).argmax(-1)


@pytest.fixture(scope="module")
def trained():
    tok = word_tokenizer()
    return train_contrastive(tiny_clip(), tok), tok


def test_matches_a_hand_written_loop_and_beats_chance(trained):
    model, tok = trained
    images, labels = colour_images(48, 7)
    ev = ZeroShotAccuracy(images, labels, list(COLOURS), tok, batch_size=20)
    ref = reference_predictions(model, tok, images)
    assert torch.equal(ev.predictions(model), ref)
    torch.testing.assert_close(ev.similarities(model), reference_logits(model, tok, images), rtol=1e-4, atol=1e-5)
    acc = ev(model)
    assert acc == float((ref == labels).float().mean())
    assert acc >= 0.9  # chance: 0.25
    # an untrained model: arbitrary but still identical per-image predictions
    fresh = tiny_clip()
    torch.testing.assert_close(ev.similarities(fresh), reference_logits(fresh, tok, images), rtol=1e-4, atol=1e-5)
    assert ev(fresh) < acc
    # the template is used: prompts without the class word cannot tell classes apart
    blind = ZeroShotAccuracy(images, labels, ["of", "of", "of", "of"], tok)
    assert blind(model) == float((labels == 0).float().mean())  # all ties -> class 0


def test_text_tower_is_elastic_and_scores_follow_the_config(trained):
    import osf

    model, tok = trained
    images, labels = colour_images(40, 8)
    ev = ZeroShotAccuracy(images, labels, list(COLOURS), tok)
    sn = osf.supernet(copy.deepcopy(model))
    full = ev(sn.model)
    assert full == ev(model)
    text_dims = [d for d in sn.space.dims if d.startswith("text_model") and len(sn.space.dims[d]) > 1]
    assert text_dims, sn.space.dims
    text_only = {**sn.space.largest(), **{d: sn.space.dims[d][-1] for d in text_dims}}
    with sn.use(text_only):
        # the prompt embeddings are recomputed for the active subnet, not cached from the full model
        assert not torch.allclose(ev.text_features(sn.model), ev.text_features(model))
    smallest = sn.space.smallest()
    for cfg in (text_only, smallest, sn.space.sample(3)):
        with sn.use(cfg):
            live = ev.predictions(sn.model)
        sub = sn.extract(cfg)
        assert torch.equal(live, ev.predictions(sub))
        assert torch.equal(live, reference_predictions(sub, tok, images))
    res = osf.search(sn, ev, objectives=("score", "params", "macs"), n_trials=4, show_progress=False)
    assert res.reference["score"] == full
    assert res.trials["macs"].notna().all()


def test_example_inputs_take_the_size_of_the_checked_model(trained):
    model, tok = trained
    images, labels = colour_images(2, 3)
    big = torch.nn.functional.interpolate(images.float(), size=(48, 40)).to(torch.uint8)
    ev = ZeroShotAccuracy(big, labels, list(COLOURS), tok)
    assert ev.example_inputs()["pixel_values"].shape == (1, 3, 48, 40)  # no model seen yet: the image's own size
    ev.check_model(model)
    ex = ev.example_inputs()
    assert ex["pixel_values"].shape == (1, 3, 32, 32) and ex["input_ids"].shape[0] == 1
    model(**ex)  # the model's forward takes them


def test_resize_and_centre_crop():
    tok = word_tokenizer()
    img = torch.zeros(1, 3, 40, 64, dtype=torch.uint8)
    img[..., :, 8:56] = 255  # black sides of 8 columns: a resize to 20x20 without the centre crop keeps them
    ev = ZeroShotAccuracy(img, [0], list(COLOURS), tok, mean=(0, 0, 0), std=(1, 1, 1))
    out = ev.preprocess(img, 20)
    assert out.shape == (1, 3, 20, 20)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-4)


def write_cifar10(root, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": images.numpy().reshape(len(images), -1), b"labels": labels.tolist()}, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in names]}, fh)


def test_cifar_class_names_are_read_from_the_meta_file(tmp_path):
    from osf.search.zeroshot import cifar_class_names

    images, labels = colour_images(6, 1)
    write_cifar10(tmp_path, images, labels, ["red", "green", "blue", "light_yellow"])
    assert cifar_class_names(f"cifar10:{tmp_path}") == ["red", "green", "blue", "light yellow"]
    ev = ZeroShotAccuracy(f"cifar10:{tmp_path}", tokenizer=word_tokenizer())
    assert ev.prompts[0] == "a photo of a red." and torch.equal(ev.labels, labels)
    (tmp_path / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        ZeroShotAccuracy(f"cifar10:{tmp_path}", tokenizer=word_tokenizer())


def test_bad_input_is_refused_with_one_line(trained):
    from transformers import ViTConfig, ViTModel

    model, tok = trained
    images, labels = colour_images(4, 2)
    with pytest.raises(ValueError, match=r"\{label\}"):
        ZeroShotAccuracy(images, labels, list(COLOURS), tok, template="a photo")
    with pytest.raises(ValueError, match="labels run 0..5 but there are 4 class names"):
        ZeroShotAccuracy(images, torch.tensor([0, 1, 2, 5]), list(COLOURS), tok)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ZeroShotAccuracy(images, labels[:3], list(COLOURS), tok)
    with pytest.raises(ValueError, match="tokenizer is required"):
        ZeroShotAccuracy(images, labels, list(COLOURS))
    with pytest.raises(ValueError, match="uint8"):
        ZeroShotAccuracy(images.float(), labels, list(COLOURS), tok)
    ev = ZeroShotAccuracy(images, labels, list(COLOURS), tok)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8))
    with pytest.raises(ValueError, match="get_text_features / get_image_features"):
        ev(vit)
    small_vocab = copy.deepcopy(model)
    small_vocab.config.text_config.vocab_size = 5
    with pytest.raises(ValueError, match="text vocabulary has 5 tokens"):
        ev(small_vocab)


def test_cli_task_clip_zeroshot(trained, tmp_path):
    from typer.testing import CliRunner

    from osf.cli import app

    model, tok = trained
    folder = tmp_path / "clip"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    images, labels = colour_images(24, 9)
    data = tmp_path / "cifar"
    write_cifar10(data, images, labels, list(COLOURS))
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(app, ["search", str(folder), "--task", "clip-zeroshot:cifar10", "--data", str(data),
                            "--trials", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    ref = float((reference_predictions(model, tok, images) == labels).float().mean())
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["reference"]["score"] == ref >= 0.9
    r = runner.invoke(app, ["extract", str(out), "--best", "--out", str(tmp_path / "sub")])
    assert r.exit_code == 0, r.output
    import osf
    from transformers import AutoTokenizer

    sub = osf.load_subnet(tmp_path / "sub")
    best = json.loads((out / "pareto.json").read_text())["pareto"]
    assert sum(p.numel() for p in sub.parameters()) in {r["params"] for r in best}
    assert AutoTokenizer.from_pretrained(str(tmp_path / "sub"))("a photo of a red.")["input_ids"] == \
        tok("a photo of a red.")["input_ids"]
    assert float((reference_predictions(sub, tok, images) == labels).float().mean()) == max(r["score"] for r in best)
    # bad task names and inputs: one line each, exit code 2
    for args, msg in ((["--task", "clip-zeroshot:mnist", "--data", str(data)], "clip-zeroshot:cifar10, clip-zeroshot:cifar100"),
                      (["--task", "clip-zeroshot:cifar10"], "needs --data"),
                      (["--task", "clip-zeroshot:cifar10,lambada_openai", "--data", str(data)], "cannot be combined")):
        r = runner.invoke(app, ["search", str(folder), *args, "--trials", "1", "--out", str(tmp_path / "bad")])
        assert r.exit_code == 2 and msg in " ".join(r.output.split()), r.output
    r = runner.invoke(app, ["search", "tiny-vit", "--task", "clip-zeroshot:cifar10", "--data", str(data), "--trials", "1",
                            "--out", str(tmp_path / "bad2")])
    assert r.exit_code == 2 and "CLIP-style model" in r.output, r.output
