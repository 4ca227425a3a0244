"""``osf inspect``: what the analysis finds in a model, as a table or JSON."""
from __future__ import annotations

from typing import Any

from torch import nn

from osf.ir import IR, analyze
from osf.ir.analyze import coverage_report


def inspect_model(model: nn.Module, example_inputs: Any = None) -> tuple[IR, dict]:
    """Analyze ``model`` and return the IR with a JSON-able report."""
    ir = analyze(model, example_inputs)
    report = {
        **coverage_report(ir),
        "dims": [
            {"name": d.name, "kind": d.kind, "size": d.size,
             "members": [{"tensor": m.tensor, "axis": m.axis, "layout": m.layout} for m in d.members]}
            for d in ir.dims.values()
        ],
        "blocks": [{"name": b.name, "stack": b.stack, "index": b.index} for b in ir.blocks],
        "attributes": [{"module": a.module, "attr": a.attr} for a in ir.attrs],
        "ops_without_rule": ir.unhandled_ops,
    }
    try:
        from osf.kernels import describe  # the scan backend in use, once kernels are available

        report["scan_backend"] = describe()
    except ImportError:
        pass
    return ir, report


def render(report: dict, console) -> None:
    """Print the report as rich tables."""
    from rich.table import Table

    table = Table(title="Elastic dims", show_lines=False)
    table.add_column("dim", no_wrap=True, overflow="fold")
    table.add_column("kind")
    table.add_column("size", justify="right")
    table.add_column("members", justify="right")
    table.add_column("for example", overflow="ellipsis", no_wrap=True, max_width=48)
    for d in report["dims"]:
        m = d["members"][0]
        example = f"{m['tensor']}[{m['axis']}]" + ("" if m["layout"] == "=" else f" {m['layout']}")
        table.add_row(d["name"], d["kind"], str(d["size"]), str(len(d["members"])), example)
    console.print(table)
    if report["blocks"]:
        stacks: dict[str, list[str]] = {}
        for b in report["blocks"]:
            stacks.setdefault(b["stack"], []).append(str(b["index"]))
        bt = Table(title="Droppable blocks")
        bt.add_column("stack")
        bt.add_column("blocks")
        for s, idx in stacks.items():
            bt.add_row(s or "<root>", ", ".join(idx))
        console.print(bt)
    console.print(
        f"parameters: {report['parameters']:,}   elastic share: {report['elastic_share']:.1%} "
        f"(non-embedding: {report['elastic_share_non_embedding']:.1%})"
    )
    if not report["dims"]:
        console.print("[yellow]this model has no elastic dims: every axis is tied to an input or output, "
                      "or passes through ops without a rule[/yellow]")
    if report["ops_without_rule"]:
        console.print(f"ops without a rule (their axes are kept fixed): {report['ops_without_rule']}")
    if "scan_backend" in report:
        console.print(f"selective-scan backend: {report['scan_backend']}")
