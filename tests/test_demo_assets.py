"""Demo assets: corpus split, tokenizer, last-word task, training and its cache."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from osf import demo
from osf.search.tasks import lastword_passages, make_lastword_task


def test_corpus_split_is_disjoint_and_english(corpus):
    train, held = demo.load_corpus()
    assert len(train) > 3 * len(held) > 0
    assert not set(train) & set(held)
    assert " the " in " ".join(held)


def test_tokenizer_round_trips_and_reloads(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "The import statement binds names; it's 42 (ok)."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text)  # BPE merges, not bytes
    tokenizer.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again(text)["input_ids"] == ids and again.eos_token_id == tokenizer.eos_token_id


def test_lastword_passages_end_with_the_target():
    texts = ["One two three four five six seven eight nine ten eleven twelve thirteen target. Short one. "
             "A b c d e f g h i j k l m n o p (not.) last word here."]
    ps = lastword_passages(texts, min_words=12)
    assert ps[0].split(" ")[-1] == "target" and ps[0].startswith("One two")
    assert all(p.split(" ")[-1].isalpha() for p in ps)
    assert ps[-1].endswith("word here")


def test_lastword_task_loads_and_runs_in_lm_eval(tiny_lm, tokenizer, corpus, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    path = make_lastword_task(corpus[1], tmp_path, name="osf_t_task", n=8)
    spec = yaml.safe_load(path.read_text())
    assert spec["output_type"] == "loglikelihood" and spec["dataset_path"] == "json"
    rows = [json.loads(line) for line in (tmp_path / "osf_t_task.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["text"].split(" ")[-1].isalpha() for r in rows)
    tm = TaskManager(include_path=str(tmp_path))
    assert "osf_t_task" in tm.all_tasks
    out = simple_evaluate(model=HFLM(pretrained=tiny_lm, tokenizer=tokenizer, batch_size=4), tasks=["osf_t_task"],
                          task_manager=tm, limit=3, bootstrap_iters=0, log_samples=False)
    res = out["results"]["osf_t_task"]
    assert 0.0 <= res["acc,none"] <= 1.0 and res["perplexity,none"] > 1.0
    with pytest.raises(ValueError, match="no passage"):
        make_lastword_task(["too short."], tmp_path / "x")


def test_training_lowers_loss_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("OSF_CACHE_DIR", str(tmp_path))
    assert demo.cache_dir() == tmp_path
    overrides = dict(hidden_size=32, num_hidden_layers=2, state_size=8)
    model, tok, info = demo.load_or_train(seconds=600, max_steps=12, show_progress=False, **overrides)
    assert info["steps"] == 12 and not info["cached"]
    blocks = demo.token_blocks(demo.load_corpus()[1], tok)[:8]
    with torch.no_grad():
        trained = float(model(input_ids=blocks, labels=blocks).loss)
        torch.manual_seed(0)
        from transformers import MambaForCausalLM

        fresh = float(MambaForCausalLM(demo.demo_config(len(tok), **overrides))(input_ids=blocks, labels=blocks).loss)
    assert trained < fresh - 0.1  # held-out loss went down (same init, 12 steps)
    again, _, info2 = demo.load_or_train(seconds=600, max_steps=12, show_progress=False, **overrides)
    assert info2["cached"] and info2["steps"] == 12
    a_sd, b_sd = model.state_dict(), again.state_dict()
    assert list(b_sd) == list(a_sd)  # the same names, not only equal values
    for k in a_sd:
        assert torch.equal(a_sd[k], b_sd[k]), k
    assert not list(tmp_path.glob(".model-*.tmp"))


def test_demo_training_runs_on_osf_kernels_and_leaves_the_model_plain(monkeypatch):
    """train_lm trains through osf.kernels' scan (not a copy of its own), and unpatches after."""
    from transformers import MambaForCausalLM

    import osf.kernels as K
    from osf.kernels.mamba import PATCH_FLAG

    calls = []
    original = K.selective_scan
    monkeypatch.setattr(K, "selective_scan", lambda *a, **k: calls.append(1) or original(*a, **k))
    tok_size = 64
    model = MambaForCausalLM(demo.demo_config(tok_size, num_hidden_layers=2, hidden_size=32))
    blocks = torch.randint(0, tok_size, (8, 16))
    info = demo.train_lm(model, blocks, seconds=60, batch_size=4, max_steps=2, show_progress=False)
    assert info["steps"] == 2 and len(calls) >= 2 * 2  # two layers, two steps
    assert not any(getattr(m, PATCH_FLAG, False) for m in model.modules()) and not model.training


def test_run_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """The whole demo flow, tiny, through the real supernet."""
    import osf

    monkeypatch.setenv("OSF_CACHE_DIR", str(tmp_path / "cache"))
    summary = demo.run_demo(tmp_path / "out", trials=4, max_steps=2, supernet_steps=2, limit=4, n_passages=10,
                            show_progress=False,
                            hidden_size=64, num_hidden_layers=6, state_size=8)
    # with tied 1k x 64 embeddings, keeping 1 of 6 layers is under half the parameters
    out = capsys.readouterr().out
    assert "Pareto front" in out and "full model" in out
    run = tmp_path / "out" / "run"
    assert len(__import__("pandas").read_csv(run / "trials.csv")) == 4
    assert (tmp_path / "out" / "task" / "osf_demo_lastword.yaml").is_file()
    assert 0.0 <= summary["full_score"] <= 1.0
    sub = osf.load_subnet(summary["subnet"])
    assert sum(p.numel() for p in sub.parameters()) == summary["best_params"] <= 0.5 * summary["full_params"]
    assert "best subnet <50%, zero-shot" in out and "best subnet <50%, trained" in out
    assert len(__import__("pandas").read_csv(tmp_path / "out" / "run-zero-shot" / "trials.csv")) == 4
    assert not summary["supernet_train"]["cached"]
    # the trained supernet is cached like the base model: a second run loads it
    again = demo.run_demo(tmp_path / "out", trials=4, max_steps=2, supernet_steps=2, limit=4, n_passages=10,
                          show_progress=False, hidden_size=64, num_hidden_layers=6, state_size=8)
    assert again["supernet_train"]["cached"] and again["best_score"] == summary["best_score"]
