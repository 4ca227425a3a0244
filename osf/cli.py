"""The ``osf`` command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="OSF: Optimized Supernet Formation.")
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from osf import __version__

        typer.echo(f"osf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the osf version and exit."),
) -> None:
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


def push_cmd(
    path: Path = typer.Argument(..., help="A subnet folder (osf extract), a supernet checkpoint folder "
                                "(sn.save_pretrained), or a search run folder holding its extracted subnet."),
    repo_id: str = typer.Option(..., "--repo-id", help="The model repository, namespace/name (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only prepare the folder that would be uploaded; print its "
                                 "path and files."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to prepare the upload (new or empty folder; "
                                           "default a temporary one)."),
    message: Optional[str] = typer.Option(None, "--message", help="Commit title (default: Upload <kind> with OSF)."),
    keep_card: bool = typer.Option(False, "--keep-card", help="Upload the folder's own README.md unchanged (e.g. one "
                                   "edited in a --dry-run folder) instead of writing the model card."),
) -> None:
    """Upload a subnet or supernet checkpoint to the Hugging Face Hub, with a model card.

    The token comes from HF_TOKEN or `hf auth login`; --dry-run needs none.
    """
    from osf.hub import PushError, folder_files, push

    try:
        where = push(path, repo_id, private=private, dry_run=dry_run, commit_message=message, out_dir=out_dir,
                     keep_card=keep_card)
    except (ValueError, PushError) as e:
        fail(" ".join(str(e).split()))
    files = folder_files(where) if dry_run else []
    if dry_run:
        total = sum(size for _, size in files)
        typer.echo(f"dry run: prepared {where} ({len(files)} files, {total:,} bytes) for "
                   f"{'private ' if private else ''}repository {repo_id}; nothing was uploaded")
        for name, size in files:
            typer.echo(f"  {name}  {size:,}")
        typer.echo(f"read {Path(where) / 'README.md'}, then push with: osf push {where} --repo-id {repo_id}"
                   + (" --private" if private else "") + " (add --keep-card if you edit the README)")
    else:
        typer.echo(f"pushed {path} to {where}")


def main() -> None:
    app()


from osf.search.cli import register as _register_search  # noqa: E402

_register_search(app)


def _register_train(app: typer.Typer) -> None:
    from osf.training.cli import train_cmd

    app.command("train")(train_cmd)


_register_train(app)


def _register_push(app: typer.Typer) -> None:
    app.command("push")(push_cmd)


_register_push(app)


def _register_finetune(app: typer.Typer) -> None:
    from osf.training.finetune_cli import finetune_cmd

    app.command("finetune")(finetune_cmd)


_register_finetune(app)

if __name__ == "__main__":
    main()
