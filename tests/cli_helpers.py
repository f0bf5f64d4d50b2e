"""Helpers shared by the CLI tests: invoke the app in-process and check one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *words):
    """Exit code 2, no traceback, the last line starts with `error:` and names each of `words`."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:"), res.output
    for w in words:
        assert w in res.output, res.output
