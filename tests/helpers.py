"""Helpers shared by the tests: the CLI in-process, one-line errors, folder snapshots."""

from __future__ import annotations

import os
from pathlib import Path

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


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path: compare before/after to prove nothing changed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def hidden_leftovers(parent: Path) -> list[str]:
    """Temporary siblings an atomic write might leave behind (.name.tmp-*, .name.old-*)."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]
