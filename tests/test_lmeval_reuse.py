"""A search scores many subnets with one ``LMEval``: its reused task objects, requests,
tokenisations and request loop must give lm-eval's own ``simple_evaluate`` score for each of
them, trial after trial (state left over from one trial must not reach the next).

The reference is lm-eval as shipped: a fresh ``HFLM`` on the same live model, a fresh
``TaskManager`` (fresh task objects), lm-eval's own tokenisation and request loop.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

CHOICE_TASK = "osf_reuse_choice"
ROLLING_TASK = "osf_reuse_rolling"


def write_choice_task(out_dir: Path) -> Path:
    """A multiple-choice task over the fixture sentences: which word ends the sentence (one
    right and three other last words). Its choices are one token each after the same context,
    so lm-eval groups them and reads one forward row for all four."""
    from lm_fixtures import SENTENCES

    out_dir.mkdir(parents=True, exist_ok=True)
    last = [s.split(" ")[-1] for s in SENTENCES]
    rows = []
    for i, s in enumerate(SENTENCES):
        others = [w for w in dict.fromkeys(last) if w != last[i]][i % 3: i % 3 + 3]
        choices = others[: i % 4] + [last[i]] + others[i % 4:]  # the answer moves between positions
        rows.append({"context": " ".join(s.split(" ")[:-1]), "choices": choices, "label": i % 4})
    data = out_dir / f"{CHOICE_TASK}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": CHOICE_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{context}}",
        "doc_to_choice": "choices", "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    (out_dir / f"{CHOICE_TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return out_dir


def write_rolling_task(out_dir: Path) -> Path:
    """A wikitext-style task (``loglikelihood_rolling``: each document scored whole, in windows
    of the model's length, from an empty context)."""
    from lm_fixtures import SENTENCES

    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{ROLLING_TASK}.jsonl"
    data.write_text("".join(json.dumps({"text": s + " " + t}) + "\n" for s, t in zip(SENTENCES, SENTENCES[1:])))
    task = {
        "task": ROLLING_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "output_type": "loglikelihood_rolling", "test_split": "test", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0},
    }
    (out_dir / f"{ROLLING_TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return out_dir


def lm_eval_reference(model, tokenizer, include: list[str], tasks: list[str], batch_size: int) -> dict:
    """lm-eval's own result on ``model``: nothing built before, nothing reused."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=tasks,
                          task_manager=TaskManager(include_path=include), bootstrap_iters=0, log_samples=False)
    return out["results"]


METRICS = {"osf_lastword": ("acc,none", "perplexity,none"), CHOICE_TASK: ("acc,none", "acc_norm,none"),
           ROLLING_TASK: ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from score_fixtures import trained_sentence_lm

    model, tok, task_dir = trained_sentence_lm()  # scores far above chance: equal scores mean something
    choice_dir = write_choice_task(tmp_path_factory.mktemp("choice"))
    rolling_dir = write_rolling_task(tmp_path_factory.mktemp("rolling"))
    return model, tok, [str(task_dir), str(choice_dir), str(rolling_dir)]


def test_reused_evaluator_equals_simple_evaluate_trial_after_trial(trained):
    import osf
    from osf.search import LMEval

    model, tok, include = trained
    sn = osf.supernet(model)
    space = sn.space
    middle = space.canonical(space.to_config({n: c[len(c) // 2] for n, c in space.parameters().items()}))
    ev = LMEval(list(METRICS), tok, include_path=include, batch_size=4)
    got, ref = [], []
    lms, tasks = set(), set()
    # trials in a row on different subnets, and the first subnet again at the end
    for cfg in (space.largest(), space.smallest(), middle, space.largest()):
        with sn.use(cfg):
            res = ev.evaluate(sn.model)["results"]
            lms.add(id(ev.lm(sn.model)))
            tasks.update(id(t) for t in ev.tasks())
            want = lm_eval_reference(sn.model, tok, include, list(METRICS), batch_size=4)
        got.append({t: {m: res[t][m] for m in ms} for t, ms in METRICS.items()})
        ref.append({t: {m: want[t][m] for m in ms} for t, ms in METRICS.items()})
    assert got == ref  # exact: same tokens, same forward passes, same log-probabilities
    assert len(lms) == 1 and len(tasks) == len(METRICS)  # one HFLM and one set of task objects served every trial
    full, small = ref[0], ref[1]
    assert full["osf_lastword"]["acc,none"] >= 0.75 and full[CHOICE_TASK]["acc,none"] >= 0.75  # chance: ~0.02, 0.25
    # the subnets score differently, so a score carried over from the previous trial would show
    assert small["osf_lastword"]["perplexity,none"] > 1.5 * full["osf_lastword"]["perplexity,none"]
    assert small[ROLLING_TASK]["word_perplexity,none"] > full[ROLLING_TASK]["word_perplexity,none"]
    assert ref[2] != ref[1] and got[3] == got[0]


def test_cached_tokenisation_equals_the_tokenizer_and_is_not_shared(trained):
    from lm_eval.models.huggingface import HFLM

    from osf.search import LMEval

    model, tok, include = trained
    lm = LMEval("osf_lastword", tok, include_path=include[0], batch_size=4).lm(model)
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    for text in ("the cat sat on the", " mat", ""):
        for special in (None, False, True):
            first = lm.tok_encode(text, add_special_tokens=special)
            assert first == plain.tok_encode(text, add_special_tokens=special)
            first.append(-1)  # a caller's list is its own: the cache keeps its copy
            assert lm.tok_encode(text, add_special_tokens=special) == plain.tok_encode(text, add_special_tokens=special)
    assert lm.tok_encode("the cat sat", left_truncate_len=2) == plain.tok_encode("the cat sat", left_truncate_len=2)
