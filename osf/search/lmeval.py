"""Score a live model with lm-evaluation-harness (``lm_eval.simple_evaluate``)."""
from __future__ import annotations

import copy
import difflib
import functools
import os
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from osf.modes import eval_mode



def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _reuse_requests(task: Any) -> Any:
    """Make ``task`` build its requests once per set of arguments and reuse them.

    Requests depend only on the documents and prompt settings, not on the model, but
    lm-eval re-renders every prompt template on each evaluation (about a quarter of an
    evaluation of a small model). Reused requests get their responses cleared.
    """
    build = task.build_all_requests
    built: dict[str, list[Any]] = {}

    def build_all_requests(**kwargs: Any) -> None:
        key = repr(sorted(kwargs.items()))
        if key not in built:
            build(**kwargs)
            built[key] = task._instances
            return
        for inst in built[key]:
            inst.resps = []
            inst.filtered_resps = {}
        task._instances = built[key]

    task.build_all_requests = build_all_requests
    return task


def _offline() -> bool:
    return os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false") or \
        os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


@functools.lru_cache(maxsize=8)
def task_manager(paths: tuple[str, ...] | None) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) if paths else None)  # indexing all tasks takes seconds: reuse


def check_tasks(names: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None) -> Any:
    """Check lm-eval task names (suggesting close ones); return the ``TaskManager``."""
    if not names:
        raise ValueError("no lm-eval task given")
    paths = None
    if include_path is not None:
        paths = [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path)]
        for p in paths:
            if not Path(p).is_dir():
                raise FileNotFoundError(f"--include-path {p!r} is not a folder of task YAML files")
    tm = task_manager(tuple(paths) if paths else None)
    known = tm.all_tasks
    for t in names:
        if t not in known:
            hint = "" if paths else " (local tasks need --include-path DIR)"
            raise ValueError(f"unknown lm-eval task {t!r}{_suggest(t, known)}{hint}")
    return tm


class LMEval:
    """An lm-eval task score of the model it is called with (higher is better).

    Runs the real ``lm_eval.simple_evaluate`` on an ``HFLM`` wrapping the live model
    object (no copy): the ``HFLM`` is built once and reused while the model object
    stays the same, and the task objects are loaded once.

    Args:
        tasks: task name(s), e.g. ``"lambada_openai"`` or a local task's name.
        tokenizer: a ``transformers`` tokenizer (object or name/path).
        limit: documents per task (``None``: all).
        num_fewshot: few-shot examples.
        batch_size: HFLM batch size.
        include_path: folder(s) of task YAMLs (offline tasks, e.g. from
            :func:`osf.search.tasks.make_lastword_task`).
        metric: metric to report (default: each task's first higher-is-better metric,
            e.g. ``acc`` for lambada). A lower-is-better metric is negated.
        device: move the model there before the first evaluation.

    The score of several tasks is the mean of their metrics.
    """

    def __init__(self, tasks: str | Sequence[str], tokenizer: Any, limit: int | float | None = None, num_fewshot: int = 0,
                 batch_size: int = 16, include_path: str | Path | Sequence[str | Path] | None = None,
                 metric: str | None = None, device: str | None = None):
        from osf.search.objectives import check_count

        if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1) and \
                not (isinstance(limit, float) and 0.0 < limit < 1.0):
            raise ValueError(f"limit must be a number of documents >= 1, a fraction in (0, 1), or None (all), got {limit!r}")
        check_count(num_fewshot, "num_fewshot", allow_none=False, minimum=0)
        check_count(batch_size, "batch_size", allow_none=False)
        self.task_names = [tasks] if isinstance(tasks, str) else list(tasks)
        self.task_manager = check_tasks(self.task_names, include_path)
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer = tokenizer
        self.limit, self.num_fewshot, self.batch_size = limit, num_fewshot, batch_size
        self.metric, self.device = metric, device
        self.name = "lm-eval:" + ",".join(self.task_names) + (f":{metric}" if metric else "")
        self._lm: Any = None
        self._lm_model: nn.Module | None = None
        self._tasks: list[Any] | None = None
        self.reported: dict[str, tuple[str, bool]] = {}  # task -> (metric, higher is better), once scored

    # ------------------------------------------------------------ pieces
    def tasks(self) -> list[Any]:
        """The task objects (loaded once; task names if they are groups)."""
        if self._tasks is None:
            try:
                loaded = self.task_manager.load(list(self.task_names))
            except Exception as e:  # datasets raise many types for an unreachable hub
                raise ValueError(self._load_error(e)) from e
            # plain tasks are passed as loaded objects (no reload per trial); groups by name
            if loaded.get("groups"):
                self._tasks = list(self.task_names)
            else:
                self._tasks = [_reuse_requests(t) for t in loaded["tasks"].values()]
        return self._tasks

    def _load_error(self, e: Exception) -> str:
        msg = f"could not load the data of lm-eval task(s) {self.task_names}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if _offline() or "connect" in str(e).lower() or "offline" in str(e).lower():
            msg += (
                ". The task's dataset comes from the Hugging Face Hub, which is unreachable here. Run it from a "
                "local file instead: write a task YAML with `dataset_path: json` and "
                "`dataset_kwargs: {data_files: {test: FILE.jsonl}}` (osf.search.tasks.make_lastword_task makes one) "
                "into a folder and pass --include-path FOLDER --task NAME"
            )
        return msg

    def lm(self, model: nn.Module) -> Any:
        """The ``HFLM`` wrapping ``model`` (rebuilt only when the model object changes)."""
        if self._lm is None or self._lm_model is not model:
            from osf.search.objectives import check_vocab

            check_vocab(self.tokenizer, model)
            if self.device is not None:
                model.to(self.device)
            self._lm = _QuietHFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size)
            self._lm_model = model
        return self._lm

    # ------------------------------------------------------------ scoring
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The full ``simple_evaluate`` results dict for ``model``."""
        from lm_eval import simple_evaluate

        import lm_eval.evaluator as lm_evaluator

        env_info, git_hash = lm_evaluator.add_env_info, lm_evaluator.get_git_commit_hash
        # collecting the environment report runs ~10 subprocesses (0.3 s) per call, and the git
        # hash one more (printing "fatal: not a git repository" outside one); the score uses
        # neither, and a search calls this once per trial
        lm_evaluator.add_env_info = lambda results: None
        lm_evaluator.get_git_commit_hash = lambda: None
        try:
            with eval_mode(model):
                return simple_evaluate(
                    model=self.lm(model), tasks=self.tasks(), num_fewshot=self.num_fewshot, limit=self.limit,
                    task_manager=self.task_manager, bootstrap_iters=0, log_samples=False,
                )
        finally:
            lm_evaluator.add_env_info, lm_evaluator.get_git_commit_hash = env_info, git_hash

    def score(self, results: dict[str, Any]) -> float:
        """The score (see class doc) from a ``simple_evaluate`` results dict."""
        values = []
        leaves = [t for t in results["results"] if t in results.get("configs", results["results"])]
        for task in leaves:
            res, hib = results["results"][task], results.get("higher_is_better", {}).get(task, {})
            metric = self.metric or next((m for m, up in hib.items() if up), None) or next(iter(hib), None)
            key = f"{metric},none"
            if key not in res:
                have = sorted(k.split(",")[0] for k in res if "," in k and not k.split(",")[0].endswith("_stderr"))
                raise ValueError(f"task {task!r} has no metric {metric!r}; it reports {have}")
            v = float(res[key])
            values.append(v if hib.get(metric, True) else -v)
            self.reported[task] = (metric, bool(hib.get(metric, True)))
        if not values:
            raise ValueError(f"lm-eval returned no results for {self.task_names}")
        return sum(values) / len(values)

    def __call__(self, model: nn.Module) -> float:
        return self.score(self.evaluate(model))

    def describe(self) -> str:
        """What the score is: metric names and directions per task."""
        if not self.reported:
            return f"lm-eval {self.metric or 'default metric'} of {', '.join(self.task_names)}"
        parts = [f"{m} on {t}" if up else f"-{m} on {t} (negated: {m} is lower-is-better)"
                 for t, (m, up) in self.reported.items()]
        mean = "mean of " if len(parts) > 1 else ""
        return f"lm-eval {mean}{'; '.join(parts)}, {self.num_fewshot}-shot; higher is better"

    def calibration_texts(self) -> list[str]:
        """Texts of documents the score never reads: each task's training documents when it has
        them, else its evaluation documents past ``limit`` (prompt and target joined)."""
        from lm_eval.evaluator_utils import get_sample_size

        texts: list[str] = []
        for task in self.tasks():
            if isinstance(task, str):  # a group: its subtasks are loaded by lm-eval at scoring time
                continue
            if task.has_training_docs():
                docs = list(task.training_docs())
            else:
                docs = list(task.eval_docs)
                scored = get_sample_size(task, self.limit)
                docs = docs[scored:] if scored is not None else []
            for doc in docs:
                texts.append(_doc_text(task, doc))
        return [t for t in texts if t.strip()]

    def calibration_batches(self, n: int = 8, batch_size: int = 8, seq_len: int = 64) -> list[dict[str, Any]] | None:
        """Up to ``n`` batches of ``batch_size`` token blocks of ``seq_len`` from
        :meth:`calibration_texts` (never scored), for ``osf.supernet(model, calibration=evaluator)``;
        None when every document is scored and the tasks have no training documents."""
        import torch

        ids: list[int] = []
        eos = self.tokenizer.eos_token_id
        for text in self.calibration_texts():
            ids.extend(self.tokenizer(text)["input_ids"] + ([eos] if eos is not None else []))
            if len(ids) >= n * batch_size * seq_len:
                break
        blocks = len(ids) // seq_len
        if blocks == 0:
            return None
        t = torch.tensor(ids[: blocks * seq_len]).view(blocks, seq_len)[: n * batch_size]
        return [{"input_ids": t[i: i + batch_size]} for i in range(0, len(t), batch_size)]

    def full_sample(self) -> "LMEval | None":
        """The same score on all the evaluation documents, when ``limit`` scores fewer (the search
        re-ranks its best subnets with it); None without a limit."""
        if self.limit is None:
            return None
        full = copy.copy(self)
        full.limit = None
        return full

    def example_inputs(self) -> dict[str, Any]:
        """A batch of one 64-token text, for MACs/latency."""
        ids = self.tokenizer("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt")["input_ids"]
        return {"input_ids": ids[:, :64]}


def _doc_text(task: Any, doc: Any) -> str:
    """A document as plain text: its prompt and its target (a choice index becomes the choice)."""
    text = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    if isinstance(target, int) and not isinstance(target, bool):
        try:
            choices = task.doc_to_choice(doc)
            target = choices[target] if 0 <= target < len(choices) else ""
        except Exception:  # a task without choices: the index is not text
            target = ""
    if isinstance(target, list):
        target = target[0] if target else ""
    sep = getattr(getattr(task, "config", None), "target_delimiter", " ")
    return f"{text}{sep}{target}" if target else str(text)


def _causal_loglikelihood(lm: Any, requests: list[tuple[Any, list[int], list[int]]]) -> list[tuple[float, bool]]:
    """``HFLM._loglikelihood_tokens`` of a causal LM with a fixed batch size, computing the
    log-softmax only at the continuation positions.

    lm-eval normalises the logits of every position of the padded batch over the vocabulary,
    then reads the few continuation positions: for a last-word task that was a third of the
    time outside the forward passes. Each position is normalised on its own, so the values are
    the same; batching, ordering, truncation and the one-token-continuation cache are lm-eval's.
    """
    import logging

    import torch
    import torch.nn.functional as F
    from lm_eval.models.huggingface import Collator, pad_and_concat  # (their home module moved between versions)

    def order(req: tuple[Any, list[int], list[int]]) -> tuple[int, tuple[int, ...]]:
        toks = req[1] + req[2]
        return -len(toks), tuple(toks)

    re_ord = Collator(requests, sort_fn=order, group_by="contexts" if lm.logits_cache else None,
                      group_fn=lambda req: req[-2] + req[-1][:-1])
    softmax_dtype = getattr(lm, "softmax_dtype", None)
    max_length = lm.max_length  # a property that resolves the length from the config at every read
    res: list[tuple[float, bool]] = []
    for chunk in re_ord.get_batched(n=lm.batch_size, batch_fn=None):
        inps = []
        for _, context_enc, continuation_enc in chunk:
            if not context_enc or not continuation_enc or len(continuation_enc) > max_length:
                raise ValueError("an lm-eval request has an empty context or continuation, or a continuation longer "
                                 f"than the model's maximum length {max_length}")
            if len(context_enc) + len(continuation_enc) > max_length + 1:
                logging.getLogger("lm_eval.models.huggingface").warning(
                    "a request is longer than the model's maximum length %d: truncated from the left", max_length)
            inps.append(torch.tensor((context_enc + continuation_enc)[-(max_length + 1):][:-1], dtype=torch.long,
                                     device=lm.device))
        inplens = [len(inp) for inp in inps]  # before pad_and_concat, which pads the list's tensors in place
        padding_len = max(inplens)
        logits = lm._model_call(pad_and_concat(padding_len, inps, padding_side="right"))
        for (request_str, ctx_tokens, cont_toks), row, inplen in zip(chunk, logits, inplens):
            ctx_len = inplen + (row.shape[0] - padding_len)
            cont_logits = lm._select_cont_toks(row, contlen=len(cont_toks), inplen=ctx_len)
            logprobs = F.log_softmax(cont_logits, dim=-1, dtype=softmax_dtype).unsqueeze(0)  # [1, cont, vocab]
            greedy = logprobs.argmax(dim=-1)
            for req_str, cont, lp in re_ord.get_cache(req_str=request_str, cxt_toks=ctx_tokens, cont_toks=cont_toks,
                                                      logits=logprobs):
                cont_t = torch.tensor(cont, dtype=torch.long, device=lm.device).unsqueeze(0)
                exact = bool((greedy[:, -cont_t.shape[1]:] == cont_t).all())
                answer = (float(torch.gather(lp, 2, cont_t.unsqueeze(-1)).sum()), exact)
                res.append(answer)
                if req_str is not None:
                    lm.cache_hook.add_partial("loglikelihood", req_str, answer)
    return re_ord.get_original(res)


def _quiet_hflm_class():
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        """HFLM without per-call progress bars (a search shows one bar over its trials) that
        tokenises each string once: a search scores the same requests at every trial, and
        tokenising them again was about a third of the time outside the forward passes."""

        def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                       left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
            cache = self.__dict__.setdefault("_osf_encoded", {})
            # the tokenizer and add_bos_token are fixed for this object, so the arguments are the key
            key = (string, add_special_tokens, left_truncate_len, tuple(sorted(kwargs.items())))
            ids = cache.get(key)
            if ids is None:
                ids = cache[key] = super().tok_encode(string, add_special_tokens=add_special_tokens,
                                                      left_truncate_len=left_truncate_len, **kwargs)
            return list(ids)  # a copy: callers own the list they get

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def get_model_info(self) -> dict:
            if isinstance(self.pretrained, str):
                return super().get_model_info()
            # a live model object has no Hub revision: lm-eval would ask the Hub about the object (and
            # format its whole repr into a debug message) at every evaluation, to report "" anyway
            pretrained, self.pretrained = self.pretrained, ""
            try:
                info = super().get_model_info()
            finally:
                self.pretrained = pretrained
            return info

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            # (lm-eval reads override_bs only with batch_size "auto": loglikelihood_rolling passes one)
            if self.backend != "causal" or self.batch_size == "auto":
                return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
            return _causal_loglikelihood(self, requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def _QuietHFLM(**kwargs):  # noqa: N802 (a class made on first use: lm-eval imports lazily)
    global _QUIET_CLS
    if _QUIET_CLS is None:
        _QUIET_CLS = _quiet_hflm_class()
    return _QUIET_CLS(**kwargs)


_QUIET_CLS = None
