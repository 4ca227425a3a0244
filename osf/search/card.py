"""A short README (model card) for a subnet extracted from a search run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

_COSTS = ("params", "macs", "latency")


def _fmt(key: str, value: Any) -> str:
    if value is None or value != value:  # missing or NaN
        return "-"
    if key in ("params", "macs"):
        return f"{value:,.0f}"
    if key == "latency":
        return f"{value:.4g} ms"
    return f"{value:.4g}"


def write_card(out: Path, spec: Mapping[str, Any], trial: int, config: Mapping[str, Any], metrics: Mapping[str, Any],
               reference: Mapping[str, Any], metric: str | None = None, loads_with_from_pretrained: bool | None = None,
               notes: list[str] | None = None) -> Path:
    """Write ``out/README.md``: where the subnet comes from, its score beside the full model's, its costs.

    Args:
        spec: the run's ``run.json`` (model, task, data, limit, ...).
        metrics: the subnet's ``score``, ``params``, ``macs``, ``latency`` (missing ones are left out).
        reference: the same for the full model (the search's reference).
        metric: what the score is, with its direction (e.g. "top-1 accuracy ..., higher is better").
        loads_with_from_pretrained: whether the saved ``config.json`` alone rebuilds the subnet.
        notes: extra lines (e.g. how a cost was measured).
    """
    model, task = spec["model"], spec["task"]
    lines = [
        f"# Subnet of `{model}` (trial {trial})",
        "",
        f"Extracted by OSF from a supernet search scored on `{task}`.",
        "",
        f"- score: {metric or 'higher is better'}",
        f"- task: `{task}`" + (f", few-shot: {spec['num_fewshot']}" if spec.get("num_fewshot") is not None else ""),
        f"- data: {('`' + str(spec['data']) + '`') if spec.get('data') else 'the task default'}"
        + (f" (task definitions from `{spec['include_path']}`)" if spec.get("include_path") else ""),
        f"- limit: {spec['limit'] if spec.get('limit') is not None else 'none (all examples)'}"
        + (f", batch size {spec['batch_size']}" if spec.get("batch_size") else ""),
        "",
        "| metric | this subnet | full model |",
        "|---|---|---|",
    ]
    for key in ("score", *_COSTS):
        mine, full = metrics.get(key), reference.get(key)
        if (mine is None or mine != mine) and full is None:
            continue
        text = _fmt(key, mine)
        if key in _COSTS and full and mine is not None and mine == mine:
            text += f" ({mine / full:.1%})"
        lines.append(f"| {key} | {text} | {_fmt(key, full)} |")
    lines += [f"\n{n}" for n in notes or []]
    if loads_with_from_pretrained is None:
        how = "Load it with `osf.load_subnet(path)`."
    elif loads_with_from_pretrained:
        how = ("Loads with plain `from_pretrained` (its `config.json` describes the subnet), and with "
               "`osf.load_subnet(path)`.")
    else:
        how = ("Plain `from_pretrained` does **not** load this folder (per-layer sizes that `config.json` cannot "
               "express): load it with `osf.load_subnet(path)`.")
    lines += [
        "",
        how,
        "",
        "## Config",
        "",
        "```json",
        json.dumps(dict(config), indent=2),
        "```",
        "",
    ]
    path = Path(out) / "README.md"
    path.write_text("\n".join(lines))
    return path
