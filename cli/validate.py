"""seqserve validate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console


def command(
    export: Annotated[Optional[Path], typer.Argument(help="Export folder from `seqserve export`.")] = None,
    repository: Annotated[Optional[Path], typer.Option(
        help="Instead of an export: check every model and version of a repository from `seqserve package`.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-3,
    tolerance: Annotated[float, typer.Option(
        help="Quantized exports: held-out bits per token may exceed the fp32 graphs' by this fraction.")] = 0.02,
    tokens: Annotated[int, typer.Option(help="Generated tokens that torch and ONNX Runtime must agree on.")] = 32,
    summary: Annotated[bool, typer.Option("--summary", help="Only the one-row-per-check summary (and failed rows).")] = False,
    module: Annotated[Optional[str], typer.Option(
        help="A brought model's export: re-import FILE.py:FACTORY for the torch side instead of the module it records.")] = None,
):
    """Gate an export: ONNX checker, dynamic axes, torch vs ONNX Runtime, incremental == full, greedy tokens.

    With --repository: every config.pbtxt parses strictly and agrees with its ONNX graph, and every
    graph runs. Exits non-zero if any check fails.
    """
    import json

    from seqserve.errors import SeqserveError
    from seqserve.io import atomic_write_text
    from seqserve.validate import ValidateConfig, render_report, validate_export

    if json_out is not None and json_out.is_dir():
        raise SeqserveError(f"--json {json_out} is a folder; expected a file path")
    if (export is None) == (repository is None):
        raise SeqserveError("give an export folder or --repository DIR (one of the two)")
    with console.status("validating") as status:
        if repository is not None:
            from seqserve.validate.repository import validate_repository

            report = validate_repository(repository, progress=lambda msg: status.update(msg))
        else:
            report = validate_export(export, ValidateConfig(atol=atol, rtol=rtol, generate_tokens=tokens, module=module,
                                                            tolerance=tolerance),
                                     progress=lambda msg: status.update(msg))
    render_report(report, console, verbose=not summary)
    if json_out:
        atomic_write_text(json_out, json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {json_out}", markup=False, highlight=False)
    if not report.passed:
        raise typer.Exit(1)
