"""A local tokenizer and a LAMBADA-style lm-eval task, made offline for tests."""
from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a small model can predict the last word of a sentence",
    "the dog ran to the park with the ball",
    "we train the network on text and test it on new text",
    "the sun is bright and the sky is blue today",
    "she reads a book in the garden every morning",
    "the train left the station before the rain started",
    "he wrote a letter to his friend in the city",
]


def make_tokenizer(out_dir: Path):
    """A word-level ``PreTrainedTokenizerFast`` over the words of :data:`SENTENCES`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(str(out_dir))
    return PreTrainedTokenizerFast.from_pretrained(str(out_dir))


def make_lastword_task(out_dir: Path, name: str = "osf_lastword") -> Path:
    """The library's LAMBADA-style task over :data:`SENTENCES` (short ones, so no length filter)."""
    from osf.search.tasks import make_lastword_task as write_task

    write_task([s + "." for s in SENTENCES], out_dir, name=name, n=None, min_words=2)  # passages end at a period
    return out_dir


def lm_eval_score(model, tokenizer, task_dir: Path, name: str = "osf_lastword") -> dict:
    """Run lm-eval's real ``simple_evaluate`` on ``model`` with the local task."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    out = simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=str(task_dir)),
                          num_fewshot=0, bootstrap_iters=0, log_samples=False)
    return out["results"][name]
