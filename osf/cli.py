"""The ``osf`` command line."""
from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="OSF: Optimized Supernet Formation.")
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """OSF: turn a trained model into a weight-sharing supernet, search it, extract subnets."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with ``code``."""
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def inspect(
    model: str = typer.Argument(..., help="built-in tiny model (tiny-mamba, tiny-vit, ...), local HF folder or hub id"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Show the elastic dims, droppable blocks and parameter coverage of MODEL."""
    from osf.inspection import inspect_model, render
    from osf.ir import TraceError
    from osf.models import load_model

    import osf

    try:
        m = load_model(model)
        # a supernet checkpoint: its model as analysed (reordered weights), on its own example inputs
        _, report = inspect_model(m.model, m.example_inputs) if isinstance(m, osf.Supernet) else inspect_model(m)
    except (ValueError, TraceError, FileNotFoundError) as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report, Console(width=max(Console().width, 150)))


def main() -> None:
    app()


from osf.search.cli import register as _register_search  # noqa: E402

_register_search(app)


def _register_train(app: typer.Typer) -> None:
    from osf.training.cli import train_cmd

    app.command("train")(train_cmd)


_register_train(app)

if __name__ == "__main__":
    main()
