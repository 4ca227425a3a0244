"""Hub-ready model cards (``README.md``) for what OSF saves, and the search record they show.

- :func:`search_record`: what a search says about one extracted subnet (its run's settings, its
  scores beside the full model's, the trials table, the Pareto front, the best trial per budget),
  as a JSON-able dict that :func:`save_search_record` writes next to the subnet
  (``osf_search.json``, with the Pareto plot ``pareto.png``).
- :func:`render_card` / :func:`write_card`: the card of a subnet folder (``osf_subnet.json``) or
  of a supernet checkpoint folder (``osf_supernet.json``): YAML metadata the Hub reads
  (``library_name``, ``base_model``, ``tags``, ``pipeline_tag``, ``model-index`` with the search's
  score), then the scores, the Pareto plot, the config (subnet sizes or the elastic space) and the
  search record. The card is made only from the folder's files, so it can be written again at any
  time (``osf push`` does) and always matches them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from osf.elastic.validate import MODELING_FILE

SEARCH_RECORD = "osf_search.json"
PARETO_PLOT = "pareto.png"
RECORD_FORMAT = 1
COSTS = ("params", "macs", "latency")
METRICS = ("score", *COSTS)
# what a search budget is called on the command line (record keys are SearchResult.best's arguments)
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# pipeline tag of a class name, from the auto-model mapping transformers keeps for that task
_PIPELINES = (
    ("text-generation", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("image-classification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("zero-shot-image-classification", "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("fill-mask", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("text-classification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("token-classification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("feature-extraction", "MODEL_MAPPING_NAMES"),
)
_TRIAL_ROWS = 200  # trials shown in the card (all of them are in osf_search.json)


# ---------------------------------------------------------------- the search record
def search_record(spec: Mapping[str, Any], result: Any, trial: int, config: Mapping[str, Any],
                  metrics: Mapping[str, Any], reference: Mapping[str, Any], metric: str | None = None,
                  loads_with_from_pretrained: bool | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """What a search says about the subnet of trial ``trial``, as a JSON-able dict.

    Args:
        spec: the run's ``run.json`` (model, task, data, limit, budgets, ...).
        result: the run's :class:`osf.search.result.SearchResult`.
        metrics: the subnet's ``score``, ``params``, ``macs``, ``latency`` (missing ones left out).
        reference: the same for the full model (the search's reference).
        metric: what the score is, with its direction (e.g. "top-1 accuracy ..., higher is better").
        loads_with_from_pretrained: whether the saved ``config.json`` alone rebuilds the subnet.
        notes: extra lines (e.g. how a cost was measured).
    """
    from osf.search.objectives import BUDGETS

    trials = result.trials
    rows = [{k: plain_value(r.get(k)) for k in ("number", *METRICS, "feasible")} for r in trials.to_dict("records")]
    pareto = [int(n) for n in result.pareto["number"]] if not result.pareto.empty else []
    budgets = {a: spec[a] for a in BUDGETS if spec.get(a) is not None}
    return {
        "format": RECORD_FORMAT,
        "model": spec["model"], "task": spec["task"], "metric": metric,
        "num_fewshot": spec.get("num_fewshot"), "data": spec.get("data"), "include_path": spec.get("include_path"),
        "limit": spec.get("limit"), "batch_size": spec.get("batch_size"), "objectives": list(spec.get("objectives", [])),
        "budgets": budgets, "study_name": spec.get("study_name"),
        "trial": int(trial), "config": dict(config),
        "full_sizes": {d: choices[0] for d, choices in (spec.get("space") or {}).get("dims", {}).items() if choices},
        "metrics": {k: plain_value(metrics.get(k)) for k in METRICS if plain_value(metrics.get(k)) is not None},
        "reference": {k: plain_value(v) for k, v in reference.items() if plain_value(v) is not None},
        "loads_with_from_pretrained": loads_with_from_pretrained, "notes": list(notes),
        "trials": rows, "pareto": pareto, "best_per_budget": best_per_budget(result, budgets),
    }


def best_per_budget(result: Any, budgets: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """The best trial within the run's own budgets and within 25/50/75/100% of the full model's
    parameters: ``{"budget": "max_params_frac=0.5", "trial": N or None, "score", "params", ...}``."""
    wanted: list[dict[str, float]] = [dict(budgets)] if budgets else []
    if result.reference.get("params"):
        wanted += [{"max_params_frac": f} for f in BUDGET_FRACTIONS]
    out: list[dict[str, Any]] = []
    for b in wanted:
        label = ", ".join(f"{k}={v:g}" for k, v in b.items())
        if any(row["budget"] == label for row in out):
            continue
        try:
            row = result.best(**b)
        except ValueError:
            out.append({"budget": label, "trial": None})
            continue
        out.append({"budget": label, "trial": int(row["number"]),
                    **{k: plain_value(row.get(k)) for k in METRICS if plain_value(row.get(k)) is not None}})
    return out


def save_search_record(folder: str | Path, record: Mapping[str, Any], result: Any | None = None) -> Path:
    """Write ``record`` to ``folder/osf_search.json`` and, given the run's ``result``, its Pareto plot
    to ``folder/pareto.png``; returns the record's path."""
    folder = Path(folder)
    path = folder / SEARCH_RECORD
    path.write_text(json.dumps(record, indent=2))
    if result is not None:
        result.plot_pareto(folder / PARETO_PLOT)
    return path


def read_search_record(folder: str | Path) -> dict[str, Any] | None:
    """``folder/osf_search.json`` (``None`` when there is none); a damaged one is named in a one-line error."""
    path = Path(folder) / SEARCH_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); restore it, or extract the subnet again with "
                         "`osf extract`") from None
    missing = [k for k in ("format", "model", "task", "trial", "metrics", "reference", "trials") if k not in
               (record if isinstance(record, dict) else {})]
    if missing:
        raise ValueError(f"{str(path)!r} lacks {', '.join(missing)} (edited?); restore it, or extract the subnet "
                         "again with `osf extract`")
    return record


# ---------------------------------------------------------------- the card
def render_card(folder: str | Path, repo_id: str | None = None) -> str:
    """The ``README.md`` text of a subnet folder or a supernet checkpoint folder.

    Args:
        folder: a folder written by ``osf.save_subnet`` / ``osf extract`` (``osf_subnet.json``;
            with ``osf_search.json`` when extracted from a search) or by ``sn.save_pretrained``
            (``osf_supernet.json``).
        repo_id: the Hub repository the card is for (its name titles the card).

    Raises:
        ValueError: ``folder`` is neither, or its description files are damaged.
    """
    folder = Path(folder)
    if (folder / "osf_subnet.json").is_file():
        return _subnet_card(folder, repo_id)
    if (folder / "osf_supernet.json").is_file():
        return _supernet_card(folder, repo_id)
    raise ValueError(f"{str(folder)!r} is neither a subnet folder (osf_subnet.json) nor a supernet checkpoint folder "
                     "(osf_supernet.json); a card is written for the folders osf.save_subnet and sn.save_pretrained write")


def write_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Write :func:`render_card`'s text to ``folder/README.md`` and return its path."""
    path = Path(folder) / "README.md"
    path.write_text(render_card(folder, repo_id))
    return path


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """``(metadata, body)`` of a card: the YAML between the leading ``---`` lines, and the rest."""
    import yaml

    if not text.startswith("---\n"):
        return {}, text
    head, sep, body = text[4:].partition("\n---\n")
    if not sep:
        raise ValueError("the card's YAML metadata block has no closing '---' line")
    return yaml.safe_load(head) or {}, body


def _subnet_card(folder: Path, repo_id: str | None) -> str:
    meta = _read_json(folder / "osf_subnet.json")
    record = read_search_record(folder)
    if record is not None and record.get("config") != meta.get("config"):
        raise ValueError(f"{str(folder / SEARCH_RECORD)!r} describes trial {record.get('trial')}, another subnet than "
                         f"the one saved in {str(folder)!r} (left from an earlier extraction?); delete {SEARCH_RECORD} "
                         f"and {PARETO_PLOT}, or extract the subnet again with `osf extract`")
    cls = str(meta.get("class", "")).rpartition(".")[2]
    loads = meta.get("config_expresses_subnet")
    remote_code = (folder / MODELING_FILE).is_file()  # per-layer sizes, rebuilt by code shipped in the folder
    pipeline = pipeline_tag(cls)
    base = _hub_id(record["model"]) if record else None
    base = base or _hub_id((meta.get("original_config") or {}).get("_name_or_path"))
    name = _name(repo_id, folder)
    evals = _eval_results(record, pipeline) if record else None
    metadata = _metadata(library="transformers" if loads or remote_code else "osf", base=base,
                         tags=["osf", "pruned", "subnet", *(["custom_code"] if remote_code and not loads else [])],
                         model_type=(meta.get("hf_config") or {}).get("model_type"), pipeline=pipeline, name=name,
                         evals=evals)
    config = meta.get("config") or {}
    source = f"`{record['model']}`" if record else (f"`{base}`" if base else "a larger model")
    lines = [f"# {name}", "", f"A subnet of {source} ({cls}), extracted by OSF (Optimized Supernet "
             "Formation) from its weight-sharing supernet: a real, smaller model with its own weights.", ""]
    if record:
        lines += _record_summary(record)
    lines += ["## How to load", "", _how_to_load(loads, repo_id, folder, cls, remote_code), ""]
    n_params = stored_parameters(folder)
    lines += ["## Config", ""]
    if n_params:
        lines.append(f"- parameters: {n_params:,} (the tensors stored in its weights files, tied ones once)")
    if meta.get("dropped"):
        lines.append(f"- dropped layers: {', '.join(f'`{d}`' for d in meta['dropped'])}")
    lines += [*_size_table(config, (record or {}).get("full_sizes") or {}), ""]
    lines += ["<details><summary>The subnet's config (OSF dims and kept layers)</summary>", "", "```json",
              json.dumps(config, indent=2), "```", "", "</details>", ""]
    if record:
        lines += _search_section(record, folder)
    return _join(metadata, lines)


def _supernet_card(folder: Path, repo_id: str | None) -> str:
    meta = _read_json(folder / "osf_supernet.json")
    cls = str(meta.get("model_class", "")).rpartition(".")[2]
    hf = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    base = _hub_id(hf.get("_name_or_path"))
    name = _name(repo_id, folder)
    pipeline = pipeline_tag(cls)
    metadata = _metadata(library="osf", base=base, tags=["osf", "supernet"], model_type=hf.get("model_type"),
                         pipeline=pipeline, name=name, evals=None)
    space = meta.get("space") or {}
    dims = space.get("dims") or {}
    stacks = space.get("stacks") or {}
    min_depth = space.get("min_depth") or {}
    build = meta.get("supernet_config") or {}
    lines = [f"# {name}", "", f"A weight-sharing supernet of {f'`{base}` ({cls})' if base else 'a ' + cls} saved by "
             "OSF (Optimized Supernet Formation): the full model's weights in importance order, "
             "so every subnet is a prefix of every dim, with its search space.", "",
             "## How to load", "", "```python", *_local_folder(repo_id, folder),
             "sn = osf.load_supernet(folder)  # restores it exactly, no importance pass",
             "sub = sn.extract(sn.space.smallest())  # a real, smaller model", "```", "",
             "Search it with `osf search FOLDER --task ...` (the downloaded folder as MODEL)."
             + (f" Download it with `hf download {repo_id} --local-dir FOLDER`." if repo_id else ""), "",
             f"Parameters of the full model: {stored_parameters(folder):,}.", "",
             "## Build config", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in build.items()]
    lines += ["", "## Elastic space", "", f"{len(dims)} dims, {sum(len(v) for v in stacks.values())} droppable layers "
              f"in {len(stacks)} stack(s).", "", "| dim | choices |", "|---|---|"]
    lines += [f"| `{d}` | {', '.join(str(c) for c in choices)} |" for d, choices in dims.items()]
    if stacks:
        lines += ["", "| stack | layers | at least kept |", "|---|---|---|"]
        lines += [f"| `{s}` | {len(names)} | {min_depth.get(s, '-')} |" for s, names in stacks.items()]
    lines.append("")
    return _join(metadata, lines)


def _record_summary(record: Mapping[str, Any]) -> list[str]:
    task = record["task"]
    lines = [f"Found by a supernet search scored on `{task}` (trial {record['trial']}).", "",
             f"- score: {record.get('metric') or 'higher is better'}",
             f"- task: `{task}`" + (f", few-shot: {record['num_fewshot']}" if record.get("num_fewshot") is not None else ""),
             f"- data: {('`' + str(record['data']) + '`') if record.get('data') else 'the task default'}"
             + (f" (task definitions from `{record['include_path']}`)" if record.get("include_path") else ""),
             f"- limit: {record['limit'] if record.get('limit') is not None else 'none (all examples)'}"
             + (f", batch size {record['batch_size']}" if record.get("batch_size") else ""), "",
             "| metric | this subnet | full model |", "|---|---|---|"]
    mine_all, full_all = record.get("metrics", {}), record.get("reference", {})
    for key in METRICS:
        mine, full = mine_all.get(key), full_all.get(key)
        if mine is None and full is None:
            continue
        text = _fmt(key, mine)
        if key in COSTS and full and mine is not None:
            text += f" ({mine / full:.1%})"
        lines.append(f"| {key} | {text} | {_fmt(key, full)} |")
    lines += [f"\n{n}" for n in record.get("notes") or []]
    return [*lines, ""]


def _search_section(record: Mapping[str, Any], folder: Path) -> list[str]:
    lines = ["## Search record", "", f"Objectives: {', '.join(record.get('objectives') or []) or '-'}; budgets: "
             + (", ".join(f"{k}={v:g}" for k, v in (record.get("budgets") or {}).items()) or "none") + ".", ""]
    if (folder / PARETO_PLOT).is_file():
        lines += [f"![Score against parameters of every trial, with the Pareto front]({PARETO_PLOT})", ""]
    cols = [c for c in METRICS if any(r.get(c) is not None for r in record["trials"])]
    best = record.get("best_per_budget") or []
    if best:
        lines += ["### Best per budget", "", "| budget | trial | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for b in best:
            cells = [_fmt(c, b.get(c)) for c in cols] if b.get("trial") is not None else ["no trial fits"] + [""] * (len(cols) - 1)
            trial = "-" if b.get("trial") is None else str(b["trial"])
            lines.append(f"| {b['budget']} | {trial} | " + " | ".join(cells) + " |")
        lines.append("")
    pareto = set(record.get("pareto") or [])
    rows = sorted(record["trials"], key=lambda r: r["number"])
    lines += ["### Trials", "", f"{len(rows)} completed trial(s); on the Pareto front: "
              + (", ".join(str(n) for n in sorted(pareto)) or "none") + f"; this subnet: trial {record['trial']}.", "",
              "<details><summary>All trials</summary>", "",
              "| trial | " + " | ".join(cols) + " | feasible | Pareto |", "|---|" + "---|" * (len(cols) + 2)]
    for r in rows[:_TRIAL_ROWS]:
        lines.append(f"| {r['number']} | " + " | ".join(_fmt(c, r.get(c)) for c in cols)
                     + f" | {'yes' if r.get('feasible', True) else 'no'} | {'yes' if r['number'] in pareto else ''} |")
    if len(rows) > _TRIAL_ROWS:
        lines.append(f"\n(first {_TRIAL_ROWS} of {len(rows)}; all are in `{SEARCH_RECORD}`)")
    lines += ["", "</details>", ""]
    return lines


def _size_table(config: Mapping[str, Any], full_sizes: Mapping[str, Any]) -> list[str]:
    """Each width dim's size in the subnet, beside the full model's where the run's space says it."""
    dropped = [k for k, v in config.items() if v is False]
    widths = {k: v for k, v in config.items()
              if not isinstance(v, bool) and not any(k.startswith((d + ".", d + ":")) for d in dropped)}
    if not widths:
        return []
    if full_sizes:
        rows = ["", "| dim | size | full size |", "|---|---|---|"]
        return rows + [f"| `{k}` | {v} | {full_sizes.get(k, '-')} |" for k, v in widths.items()]
    return ["", "| dim | size |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in widths.items()]


def stored_parameters(folder: Path) -> int:
    """The number of values in the folder's ``*.safetensors`` files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        if f.name.startswith("example_inputs"):
            continue
        try:
            with safe_open(str(f), framework="pt") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
        except Exception as e:  # safetensors raises its own error type for a damaged header
            raise ValueError(f"{str(f)!r} is truncated or corrupt ({type(e).__name__}); save the folder again") from None
    return total


def _how_to_load(loads: bool | None, repo_id: str | None, folder: Path, cls: str, remote_code: bool) -> str:
    where = repo_id or str(folder)
    code = "```python\n" + "\n".join([*_local_folder(repo_id, folder), "model = osf.load_subnet(folder)"]) + "\n```"
    if loads:
        return ("Its `config.json` describes the subnet, so it loads with plain `from_pretrained` "
                f"(`transformers.{cls}.from_pretrained({where!r})`) as well as with OSF:\n\n{code}")
    if remote_code:
        return ("Its sizes differ from layer to layer, more than `config.json` can say: the folder ships the code "
                f"that rebuilds it (`{MODELING_FILE}`), so it loads without OSF with "
                f"`AutoModel...from_pretrained({where!r}, trust_remote_code=True)`, or with OSF:\n\n{code}")
    if loads is None:
        return f"Load it with OSF:\n\n{code}"
    return ("Plain `from_pretrained` does **not** load it (its per-layer sizes are more than `config.json` can say); "
            f"load it with OSF:\n\n{code}")


def _local_folder(repo_id: str | None, folder: Path) -> list[str]:
    """Python lines binding ``folder`` to a local copy (OSF's loaders read local folders)."""
    if repo_id:
        return ["from huggingface_hub import snapshot_download", "import osf", "",
                f"folder = snapshot_download({repo_id!r})"]
    return ["import osf", "", f"folder = {str(folder)!r}"]


def _eval_results(record: Mapping[str, Any], pipeline: str | None) -> list[Any] | None:
    from huggingface_hub import EvalResult

    from osf.search.run import IMAGE_TASKS

    score = (record.get("metrics") or {}).get("score")
    if score is None:
        return None
    task = record["task"]
    metric_type = "accuracy" if task in IMAGE_TASKS else ("neg_log_perplexity" if task == "perplexity" else "lm_eval_score")
    return [EvalResult(task_type=pipeline or "other", dataset_type=task, dataset_name=task, metric_type=metric_type,
                       metric_value=float(score), metric_name=record.get("metric") or metric_type)]


def _metadata(*, library: str, base: str | None, tags: list[str], model_type: str | None, pipeline: str | None,
              name: str, evals: list[Any] | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name=library, base_model=base, tags=[*tags, *([model_type] if model_type else [])],
                         pipeline_tag=pipeline, model_name=name if evals else None, eval_results=evals)
    return data.to_yaml()


def pipeline_tag(class_name: str) -> str | None:
    """The Hub pipeline tag of a model class, from transformers' auto-model mappings (``None`` if unknown)."""
    from transformers.models.auto import modeling_auto

    for tag, mapping in _PIPELINES:
        names = getattr(modeling_auto, mapping, {})
        for value in names.values():
            if class_name in ((value,) if isinstance(value, str) else tuple(value)):
                return tag
    return None


def _hub_id(name: Any) -> str | None:
    """``name`` when it reads as a Hub repo id (``owner/name``) and is not a local path, else ``None``."""
    if not isinstance(name, str) or name.count("/") != 1 or Path(name).exists():
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _name(repo_id: str | None, folder: Path) -> str:
    return repo_id.rpartition("/")[2] if repo_id else folder.resolve().name


def _join(metadata: str, lines: list[str]) -> str:
    return "---\n" + metadata.rstrip("\n") + "\n---\n\n" + "\n".join(lines).rstrip("\n") + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} cannot be read as JSON ({e}); the folder is damaged: save it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, not {type(data).__name__}; save the folder again")
    return data


def _fmt(key: str, value: Any) -> str:
    if value is None or value != value:  # missing or NaN
        return "-"
    if key in ("params", "macs"):
        return f"{value:,.0f}"
    if key == "latency":
        return f"{value:.4g} ms"
    return f"{value:.4g}"


def plain_value(v: Any) -> Any:
    """A numpy/pandas scalar as a plain Python value; NaN as ``None``."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v
