"""The search on real supernets: a trial's score is the extracted subnet's score."""
from __future__ import annotations

import copy

import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM

import osf
from osf.models import load_model
from osf.search import ImageAccuracy, LMEval
from tests.test_evaluators import write_cifar


def test_lm_eval_trial_score_equals_a_separate_run_on_the_extracted_subnet(tiny_lm, tokenizer, lastword_task,
                                                                           tmp_path):
    task_dir, name = lastword_task
    sn = osf.supernet(copy.deepcopy(tiny_lm))
    res = osf.search(sn, LMEval(name, tokenizer, include_path=task_dir, batch_size=4), n_trials=4,
                     run_dir=tmp_path / "run", show_progress=False, seed=1)
    df = res.trials
    assert len(df) == 4
    checked = 0
    for _, row in df.iterrows():
        cfg = res.config(int(row["number"]))
        if cfg == sn.space.largest():
            continue
        sub = sn.extract(cfg)
        lm = HFLM(pretrained=sub, tokenizer=tokenizer, batch_size=4, device="cpu")
        out = simple_evaluate(model=lm, tasks=[name], task_manager=LMEval(name, tokenizer,
                              include_path=task_dir).task_manager, bootstrap_iters=0, log_samples=False)
        assert row["score"] == out["results"][name]["acc,none"]
        assert row["params"] == sum(p.numel() for p in sub.parameters())
        checked += 1
    assert checked >= 2


def test_image_accuracy_of_a_trial_equals_the_extracted_model(tmp_path):
    write_cifar(tmp_path / "c10", "cifar10", n_test=40)
    torch.manual_seed(0)
    sn = osf.supernet(load_model("tiny-vit"))
    evaluator = ImageAccuracy(f"cifar10:{tmp_path / 'c10'}", batch_size=16)
    res = osf.search(sn, evaluator, n_trials=5, run_dir=tmp_path / "run", show_progress=False, seed=2,
                     constraints={"params": 0.7})
    df = res.trials
    scores = set()
    for _, row in df.iterrows():
        if row["score"] != row["score"]:  # over budget: not scored
            continue
        cfg = res.config(int(row["number"]))
        sub = sn.extract(cfg)
        assert row["score"] == evaluator(sub)
        scores.add(row["score"])
    assert len(scores) >= 2, "subnets of a random model should not all score alike"
    assert all(p <= 0.7 * sn.num_params(sn.space.largest()) for p in res.pareto["params"])
