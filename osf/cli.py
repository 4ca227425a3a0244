"""The ``osf`` command line."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="OSF: Optimized Supernet Formation.")


def main() -> None:
    app()


from osf.search.cli import register as _register_search  # noqa: E402

_register_search(app)
