"""Running the ``osf`` command line in tests (typer's CliRunner) and checking its one-line errors."""
from __future__ import annotations

from typer.testing import CliRunner

from osf.cli import app

runner = CliRunner()


def invoke(*args: object):
    """``osf ARGS...`` in process."""
    return runner.invoke(app, [str(a) for a in args])


def ok(res) -> str:
    """The command succeeded; its standard output."""
    assert res.exit_code == 0, res.output
    return res.stdout


def one_line_error(res, *needles: str) -> str:
    """The command exited with 2 and printed exactly one ``error: ...`` line holding every needle."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
