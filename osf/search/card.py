"""A short README (model card) for a subnet extracted from a search run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def write_card(out: Path, model: str, task: str, trial: int, config: Mapping[str, Any],
               metrics: Mapping[str, Any], full_params: int) -> Path:
    """Write ``out/README.md``: where the subnet comes from, its size, cost and scores."""
    lines = [
        f"# Subnet of `{model}` (trial {trial})",
        "",
        f"Extracted by OSF from a supernet search scored on `{task}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("score", "params", "macs", "latency"):
        value = metrics.get(key)
        if value is None or value != value:  # missing or NaN
            continue
        text = f"{value:,.0f}" if key in ("params", "macs") else f"{value:.4g}"
        if key == "params" and full_params:
            text += f" ({value / full_params:.1%} of {full_params:,})"
        lines.append(f"| {key} | {text} |")
    lines += [
        "",
        "Load it with `osf.load_subnet(path)` (per-layer sizes), or with `from_pretrained` when the",
        "sizes are uniform across layers.",
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
