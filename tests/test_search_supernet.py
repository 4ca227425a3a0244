"""The search on real supernets: a trial's score is the extracted subnet's score."""
from __future__ import annotations

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM

import osf
from osf.search import ImageAccuracy, LMEval
from score_fixtures import N_CLASSES, trained_sentence_lm, trained_tiny_vit


def test_lm_eval_trial_score_equals_a_separate_run_on_the_extracted_subnet(tmp_path):
    model, tokenizer, task_dir = trained_sentence_lm()  # far above chance: a wrong score can show
    name = "osf_lastword"
    sn = osf.supernet(model)
    res = osf.search(sn, LMEval(name, tokenizer, include_path=task_dir, batch_size=4), n_trials=4,
                     run_dir=tmp_path / "run", show_progress=False, seed=1)
    df = res.trials
    assert len(df) == 4
    full = df[df["params"] == sn.num_params(sn.space.largest())]["score"]
    assert len(full) == 1 and full.iloc[0] >= 0.75  # chance is ~1/vocabulary
    checked = 0
    scores = set()
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
        scores.add(row["score"])
    assert checked >= 2
    assert len(scores | set(full)) >= 2, "the subnets should not all score like the full model"


def test_image_accuracy_of_a_trial_equals_the_extracted_model(tmp_path):
    model, root = trained_tiny_vit()  # trained on learnable images: far above chance
    sn = osf.supernet(model)
    evaluator = ImageAccuracy(f"cifar10:{root}", batch_size=16)
    assert evaluator(sn.model) >= 1 / N_CLASSES + 0.3
    res = osf.search(sn, evaluator, n_trials=5, run_dir=tmp_path / "run", show_progress=False, seed=2,
                     constraints={"max_params_frac": 0.7})
    df = res.trials
    scores = set()
    for _, row in df.iterrows():
        if row["score"] != row["score"]:  # over budget: not scored
            continue
        cfg = res.config(int(row["number"]))
        sub = sn.extract(cfg)
        assert row["score"] == evaluator(sub)
        scores.add(row["score"])
    assert len(scores) >= 2, "the subnets should not all score alike"
    assert all(p <= 0.7 * sn.num_params(sn.space.largest()) for p in res.pareto["params"])
