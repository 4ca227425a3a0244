"""A search run on disk: ``run.json`` (what to rebuild), the study, and result files.

``run.json`` records the model spec, the task, the search arguments and the supernet's
build settings (``supernet_config``, an :class:`osf.SupernetConfig`), so ``osf extract RUN_DIR``
can rebuild the same supernet (or restore it, when the model is a supernet checkpoint folder)
and read the study.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from osf.search.storage import JOURNAL_NAME
from osf.search.tasks import ZEROSHOT_DATASETS, ZEROSHOT_TASK

RUN_FILE = "run.json"
IMAGE_TASKS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagefolder", "imagefolder": "imagefolder"}
BUILTIN_TASKS = (*IMAGE_TASKS, "perplexity")
ZEROSHOT_TASKS = tuple(f"{ZEROSHOT_TASK}:{d}" for d in ZEROSHOT_DATASETS)  # see osf.search.tasks.zeroshot_dataset
REQUIRED_KEYS = ("model", "task", "objectives", "space", "study_name")
# what makes a run's scores comparable: a change refuses to resume it (key -> how the user sets it)
IDENTITY = {
    "model": "MODEL", "task": "--task", "objectives": "--objectives", "max_params": "--max-params",
    "max_params_frac": "--max-params-frac", "max_macs": "--max-macs", "max_macs_frac": "--max-macs-frac",
    "max_latency_ms": "--max-latency-ms",
    "data": "--data", "limit": "--limit", "batch_size": "--batch-size", "num_fewshot": "--num-fewshot",
    "include_path": "--include-path", "storage": "--storage", "weights_sha256": "the model's weights",
    "space": "the supernet's search space",
}


SUPERNET_CONFIG_KEY = "supernet_config"  # how the run's supernet was built (osf.SupernetConfig.to_dict())


def supernet_config(spec: dict[str, Any], run_dir: str | Path) -> Any:
    """The :class:`osf.SupernetConfig` a run's supernet was built with; runs made before it was
    recorded were built with the defaults."""
    from osf.elastic.config import SupernetConfig

    data = spec.get(SUPERNET_CONFIG_KEY)
    if data is None:
        return SupernetConfig()
    try:
        return SupernetConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{str(Path(run_dir) / RUN_FILE)!r} has a malformed {SUPERNET_CONFIG_KEY!r} ({e}) (edited?); "
                         "restore it, or re-run `osf search` into a new --out") from None


def load_model(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer_or_processor_or_None)`` for a model spec, via ``osf.models.load_model``."""
    from osf.models import load_model as _load  # written elsewhere; lazy so search works without it

    out = _load(name)
    model, extra = (out if isinstance(out, tuple) else (out, None))[:2]
    if extra is None:
        extra = _auto_preprocessor(name)
    return model, extra


#: files a folder holding a tokenizer has at least one of
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "merges.txt")


def _auto_preprocessor(name: str) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(name)
    # from a folder without tokenizer files transformers 5 makes up an empty tokenizer from the config
    no_tokenizer = folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES)
    for cls in (AutoImageProcessor,) if no_tokenizer else (AutoTokenizer, AutoImageProcessor):
        try:
            return cls.from_pretrained(name)
        except Exception:
            continue
    return None


def check_task_inputs(task: str, data: str | Path | None, include_path: str | Path | None) -> None:
    """Validate ``--task``/``--data``/``--include-path`` before any model is loaded."""
    from osf.search.tasks import zeroshot_dataset

    names = [t.strip() for t in task.split(",")]
    if not task.strip() or not all(names):
        raise ValueError(f"--task {task!r} is empty or has an empty name; give {', '.join(BUILTIN_TASKS)} or lm-eval task names")
    own = [t for t in names if t in BUILTIN_TASKS or zeroshot_dataset(t)]
    if own and len(names) > 1:
        raise ValueError(f"--task {task!r}: {own[0]!r} cannot be combined with other tasks; only lm-eval tasks combine")
    if task in IMAGE_TASKS or zeroshot_dataset(task):
        kind = zeroshot_dataset(task) or task
        if data is None:
            raise ValueError(f"task {task!r} needs --data DIR (the {task} evaluation data)")
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {str(data)!r} does not exist")
        if not Path(data).is_dir():
            want = {"cifar10": "the python-pickle batches (test_batch, data_batch_1..5)",
                    "cifar100": "the python-pickle files (test, train)"}.get(kind, "<split>/<class>/*.JPEG")
            raise NotADirectoryError(f"--data {str(data)!r} is a file; task {task!r} needs a folder holding {want}")
    elif task == "perplexity":
        if data is None or not Path(data).exists():
            raise FileNotFoundError(f"task 'perplexity' needs --data FILE.txt (or a folder of .txt files); got {data!r}")
        if Path(data).is_dir() and not any(Path(data).glob("*.txt")):
            raise FileNotFoundError(f"--data {str(data)!r} is a folder without .txt files; task 'perplexity' reads "
                                    "FILE.txt or a folder of .txt files")
    else:
        _check_lm_tasks(names, include_path)


def _check_lm_tasks(names: list[str], include_path: str | Path | None) -> None:
    import difflib

    from osf.search.lmeval import task_manager

    if include_path is not None:
        if not Path(include_path).exists():
            raise FileNotFoundError(f"--include-path {str(include_path)!r} does not exist; give a folder of task YAML files")
        if not Path(include_path).is_dir():
            raise NotADirectoryError(f"--include-path {str(include_path)!r} is a file; give the folder holding the "
                                     "task YAML files")
    known = task_manager((str(include_path),) if include_path is not None else None).all_tasks
    for t in names:
        if t not in known:
            close = difflib.get_close_matches(t, [*BUILTIN_TASKS, *known], n=5, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            local = "" if include_path is not None else " (local task YAMLs need --include-path DIR)"
            raise ValueError(f"unknown task {t!r}: {hint}built-in tasks are {', '.join((*BUILTIN_TASKS, *ZEROSHOT_TASKS))}; any other "
                             f"name must be an lm-eval task{local}")


def check_model_kind(task: str, model: Any, model_name: str) -> None:
    """Refuse a model of the wrong kind for ``task`` (an image task on a language model, and back)."""
    from transformers import PreTrainedModel

    from osf.search.tasks import zeroshot_dataset

    kind = type(model).__name__
    main = getattr(model, "main_input_name", None)
    if zeroshot_dataset(task):
        if not all(callable(getattr(model, m, None)) for m in ("get_text_features", "get_image_features")):
            raise ValueError(f"model {model_name!r} ({kind}) has no text and image towers (get_text_features, "
                             f"get_image_features), so it cannot be scored on --task {task}; use a CLIP-style model")
        return
    if task in IMAGE_TASKS:
        if main is not None and main != "pixel_values":
            raise ValueError(f"model {model_name!r} ({kind}) takes {main!r}, not images, so it cannot be scored on "
                             f"--task {task}; image tasks need an image classifier (a ...ForImageClassification model)")
        return
    what = "perplexity (next-token loss)" if task == "perplexity" else f"lm-eval task {task!r}"
    if isinstance(model, PreTrainedModel) and (main != "input_ids" or model.get_output_embeddings() is None):
        raise ValueError(f"model {model_name!r} ({kind}) is not a language model with an LM head, so it cannot be "
                         f"scored on {what}; use a causal LM (a ...ForCausalLM model), or an image task for image models")


def check_model_fits_task(task: str, model: Any, preprocessor: Any, evaluator: Any, model_name: str) -> None:
    """Refuse a model that cannot be scored by ``evaluator`` (too few classes, tokenizer too large, ...)."""
    import torch

    from osf.search.tasks import zeroshot_dataset

    if task in IMAGE_TASKS or zeroshot_dataset(task):
        try:
            evaluator.check_model(model)
        except ValueError as e:
            raise ValueError(f"model {model_name!r} does not fit --task {task}: {e}") from None
        return
    from osf.search.objectives import check_vocab

    if isinstance(model, torch.nn.Module) and preprocessor is not None and hasattr(preprocessor, "__len__"):
        try:
            check_vocab(preprocessor, model)
        except ValueError as e:
            raise ValueError(f"model {model_name!r}: {e}") from None
    if task != "perplexity":
        evaluator.tasks()  # load the task data now: a Hub dataset offline fails here, before the run starts


def weights_checksum(model: Any) -> str:
    """SHA-256 over the model's state dict (names, shapes, dtypes and bytes)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def build_evaluator(task: str, preprocessor: Any, *, data: str | Path | None = None, include_path: str | Path | None = None,
                    limit: int | None = None, batch_size: int = 16, device: str | None = None, split: str | None = None,
                    num_fewshot: int | None = None) -> Any:
    """The evaluator for a CLI ``--task``: an image task, ``clip-zeroshot:<dataset>``, ``perplexity``, or lm-eval
    task names."""
    from osf.search.tasks import zeroshot_dataset

    zs = zeroshot_dataset(task)
    if zs:
        from osf.search.zeroshot import ZeroShotAccuracy

        if num_fewshot:
            raise ValueError(f"--num-fewshot applies to lm-eval tasks only, not to --task {task}")
        tokenizer = getattr(preprocessor, "tokenizer", preprocessor)
        if tokenizer is None or not callable(tokenizer) or not hasattr(tokenizer, "pad_token"):
            raise ValueError(f"task {task!r} encodes one prompt per class, and no tokenizer was found with the model; "
                             "give a local Hugging Face folder or hub id that holds tokenizer files")
        processor = preprocessor if hasattr(preprocessor, "image_processor") else None  # a CLIPProcessor
        return ZeroShotAccuracy(f"{zs}:{data}", tokenizer=tokenizer, processor=processor, split=split,
                                batch_size=batch_size, limit=limit)
    if task in IMAGE_TASKS:
        from osf.search.images import ImageAccuracy

        return ImageAccuracy(f"{IMAGE_TASKS[task]}:{data}", split=split, batch_size=batch_size, limit=limit,
                             processor=_image_processor_dict(preprocessor))
    if preprocessor is None:
        raise ValueError(f"task {task!r} needs a tokenizer, and none was found with the model; give a local Hugging "
                         "Face folder or hub id that holds tokenizer files (built-in tiny models have none)")
    if task == "perplexity":
        from osf.search.perplexity import Perplexity

        path = Path(data)  # type: ignore[arg-type]
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        texts = []
        for f in files:
            try:
                texts.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"--data {str(f)!r} is not UTF-8 text; task 'perplexity' reads plain .txt files") from None
        try:
            return Perplexity(texts, preprocessor, max_batches=limit, batch_size=batch_size)
        except ValueError as e:
            raise ValueError(f"--data {str(data)!r}: {e}") from None
    from osf.search.lmeval import LMEval

    return LMEval(task.split(","), preprocessor, limit=limit, batch_size=batch_size, include_path=include_path, device=device,
                  num_fewshot=num_fewshot or 0)


def _image_processor_dict(proc: Any) -> dict | None:
    if proc is None or not (hasattr(proc, "image_mean") or isinstance(proc, dict)):
        return None
    return proc.to_dict() if hasattr(proc, "to_dict") else proc


def check_run_identity(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The run in ``run_dir`` (``None`` if none); refuse one made with other score-affecting settings."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        found = [f for f in (JOURNAL_NAME, "trials.csv", "pareto.json") if (run_dir / f).is_file()]
        if found:
            raise ValueError(
                f"{str(run_dir)!r} holds search results ({', '.join(found)}) but no {RUN_FILE}, which records how they "
                f"were made (deleted?); they cannot be resumed safely: choose a new --out, or delete the folder to start over"
            )
        return None
    old = read_run(run_dir)
    for key, option in IDENTITY.items():
        if key not in old or key not in spec or old.get(key) == spec.get(key):
            continue  # (a key missing from ``spec`` is checked later, e.g. the weights once the model is loaded)
        if key in ("space", "weights_sha256"):
            detail = (f"{option} changed since the run was made"
                      + (f" (checksum {str(old[key])[:12]}... then, {str(spec.get(key))[:12]}... now)" if key != "space" else ""))
        else:
            shown = lambda v: "(not given)" if v is None else repr(v)  # noqa: E731
            detail = f"it was made with {option} {shown(old[key])}, this command has {option} {shown(spec.get(key))}"
        raise ValueError(
            f"{str(run_dir)!r} holds another run: {detail}. Scores made with other settings cannot be mixed: repeat the "
            f"run's settings to resume it, or choose a new --out"
        )
    return old


def write_run(run_dir: Path, spec: dict[str, Any]) -> None:
    """Write ``run.json`` (atomically); the caller has refused another run with ``check_run_identity``."""
    path = run_dir / RUN_FILE
    tmp = path.with_name(RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    tmp.replace(path)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run folder, checked (an edited or truncated file is refused with its path)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{str(run_dir)!r} is a file; give the folder written by `osf search --out`")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a search run (no {RUN_FILE}); run `osf search ... --out {run_dir}` first")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); it was edited or truncated: restore it, or re-run "
                         "`osf search` into a new --out") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, not {type(spec).__name__}; restore it or re-run `osf search`")
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f"{str(path)!r} lacks {', '.join(repr(k) for k in missing)} (edited?); restore it, or re-run "
                         "`osf search` into a new --out")
    bad = [k for k in ("model", "task", "study_name") if not isinstance(spec[k], str)]
    if bad or not isinstance(spec["objectives"], list) or not isinstance(spec["space"], dict):
        raise ValueError(f"{str(path)!r} has a malformed {', '.join(repr(k) for k in bad) or 'objectives/space'} "
                         "(edited?); restore it, or re-run `osf search` into a new --out")
    spec.setdefault("storage", None)
    _budgets_with_units(spec)
    return spec


def _budgets_with_units(spec: dict[str, Any]) -> None:
    """A run made before budgets named their unit had one ``max_params``: <= 1 a fraction, > 1 a count."""
    if "max_params_frac" in spec:
        return
    old = spec.get("max_params")
    frac = isinstance(old, (int, float)) and not isinstance(old, bool) and old <= 1
    spec["max_params"], spec["max_params_frac"] = (None, old) if frac else (old, None)
    for key in ("max_macs", "max_macs_frac", "max_latency_ms"):
        spec.setdefault(key, None)


def run_storage(run_dir: Path, spec: dict[str, Any]) -> str:
    """The storage a run used: its URL (a relative sqlite path is relative to the run folder), or its journal."""
    from osf.search.storage import resolve_sqlite

    url = spec.get("storage")
    return resolve_sqlite(url, run_dir) if url else str(Path(run_dir) / JOURNAL_NAME)
