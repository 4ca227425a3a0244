"""A search run on disk: ``run.json`` (what to rebuild), the study, and result files.

``run.json`` records the model spec, the task and the search arguments, so
``osf extract RUN_DIR`` can rebuild the same supernet and read the study.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from osf.search.storage import JOURNAL_NAME

RUN_FILE = "run.json"
IMAGE_TASKS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagefolder", "imagefolder": "imagefolder"}


def load_model(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer_or_processor_or_None)`` for a model spec, via ``osf.models.load_model``."""
    from osf.models import load_model as _load  # written elsewhere; lazy so search works without it

    out = _load(name)
    model, extra = (out if isinstance(out, tuple) else (out, None))[:2]
    if extra is None:
        extra = _auto_preprocessor(name)
    return model, extra


def _auto_preprocessor(name: str) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer

    for cls in (AutoTokenizer, AutoImageProcessor):
        try:
            return cls.from_pretrained(name)
        except Exception:
            continue
    return None


def check_task_inputs(task: str, data: str | Path | None, include_path: str | Path | None) -> None:
    """Validate ``--task``/``--data``/``--include-path`` before any model is loaded."""
    if task in IMAGE_TASKS:
        if data is None:
            raise ValueError(f"task {task!r} needs --data DIR (the {task} evaluation data)")
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {str(data)!r} does not exist")
    elif task == "perplexity":
        if data is None or not Path(data).exists():
            raise FileNotFoundError(f"task 'perplexity' needs --data FILE.txt (or a folder of .txt files); got {data!r}")
    else:
        from osf.search.lmeval import check_tasks

        check_tasks(task.split(","), include_path)


def build_evaluator(task: str, preprocessor: Any, *, data: str | Path | None = None, include_path: str | Path | None = None,
                    limit: int | None = None, batch_size: int = 16, device: str | None = None, split: str | None = None) -> Any:
    """The evaluator for a CLI ``--task``: an image task, ``perplexity``, or lm-eval task names."""
    if task in IMAGE_TASKS:
        from osf.search.images import ImageAccuracy

        return ImageAccuracy(f"{IMAGE_TASKS[task]}:{data}", split=split, batch_size=batch_size, limit=limit,
                             processor=_image_processor_dict(preprocessor))
    if preprocessor is None:
        raise ValueError(f"task {task!r} needs a tokenizer, and none was found with the model")
    if task == "perplexity":
        from osf.search.perplexity import Perplexity

        path = Path(data)  # type: ignore[arg-type]
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        return Perplexity([f.read_text() for f in files], preprocessor, max_batches=limit, batch_size=batch_size)
    from osf.search.lmeval import LMEval

    return LMEval(task.split(","), preprocessor, limit=limit, batch_size=batch_size, include_path=include_path, device=device)


def _image_processor_dict(proc: Any) -> dict | None:
    if proc is None or not (hasattr(proc, "image_mean") or isinstance(proc, dict)):
        return None
    return proc.to_dict() if hasattr(proc, "to_dict") else proc


def write_run(run_dir: Path, spec: dict[str, Any]) -> None:
    """Write ``run.json`` (atomically); refuse to reuse a folder holding another run."""
    path = run_dir / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        keys = ("model", "task", "objectives", "max_params", "space")
        diff = [k for k in keys if old.get(k) != spec.get(k)]
        if diff:
            raise ValueError(f"{str(run_dir)!r} holds another run (different {', '.join(diff)}); choose a new --out")
    tmp = path.with_name(RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    tmp.replace(path)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a search run (no {RUN_FILE}); run `osf search ... --out {run_dir}` first")
    spec = json.loads(path.read_text())
    spec.setdefault("storage", None)
    return spec


def run_storage(run_dir: Path, spec: dict[str, Any]) -> str:
    """The storage a run used: its URL, or the journal file in the run folder."""
    return spec.get("storage") or str(Path(run_dir) / JOURNAL_NAME)
