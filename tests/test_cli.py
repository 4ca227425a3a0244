"""The ``osf`` command line, end to end through typer's runner."""
import json

from typer.testing import CliRunner

from osf.cli import app

runner = CliRunner()


def test_inspect_json_reports_dims_blocks_and_coverage():
    result = runner.invoke(app, ["inspect", "tiny-mamba", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = {d["name"] for d in report["dims"]}
    assert {"hidden", "backbone.layers.0.mixer:d_inner", "backbone.layers.3.mixer:d_state"} <= names
    assert len(report["blocks"]) == 4
    assert report["elastic_share_non_embedding"] > 0.9


def test_inspect_table():
    result = runner.invoke(app, ["inspect", "tiny-vit"])
    assert result.exit_code == 0, result.output
    assert "Elastic dims" in result.stdout and "vit.layers.0.attention:heads" in result.stdout


def test_malformed_model_argument_is_one_line_error(tmp_path):
    for arg in ["no-such-model", str(tmp_path)]:
        result = runner.invoke(app, ["inspect", arg])
        assert result.exit_code == 2
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "error:" in result.output and "Traceback" not in result.output
