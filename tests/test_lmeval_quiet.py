"""A search scores once per trial: an lm-eval call prints nothing of its own bookkeeping."""
from __future__ import annotations

import lm_eval.evaluator as lm_evaluator

from osf.search import LMEval


def test_lmeval_outside_a_git_repository_prints_no_git_error(tiny_lm, tokenizer, lastword_task, tmp_path,
                                                             monkeypatch, capfd):
    task_dir, task = lastword_task
    monkeypatch.chdir(tmp_path)  # not a git repository: `git describe` would print "fatal: ..."
    ev = LMEval(task, tokenizer, include_path=task_dir, metric="perplexity", batch_size=4, limit=2)
    capfd.readouterr()
    ev(tiny_lm)
    captured = capfd.readouterr()
    assert "not a git repository" not in captured.err + captured.out
    # lm-eval's own helpers are back in place for other callers
    assert lm_evaluator.get_git_commit_hash.__module__ == "lm_eval.loggers.utils"
    assert lm_evaluator.add_env_info.__module__ == "lm_eval.loggers.utils"
