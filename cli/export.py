"""seqserve export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console


def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `seqserve train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder (replaced atomically; a failed export leaves the old one).")],
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset. Default: 23 for gpt (native Attention op), 17 for recurrent.")] = None,
    exporter: Annotated[Optional[str], typer.Option(help="dynamo or torchscript. Default per family (see DESIGN.md).")] = None,
):
    """Export the full-sequence and incremental-decoding ONNX graphs plus the seqserve.json sidecar."""
    from seqserve.export import ExportOptions, export_checkpoint

    with console.status("exporting") as status:
        info = export_checkpoint(checkpoint, out, ExportOptions(opset=opset, exporter=exporter),
                                 progress=lambda msg: status.update(msg))
    from rich.markup import escape

    graphs = ", ".join(f"{info.raw['graphs'][n]}" + (f" ({len(g.state)} state tensors)" if g.state else "")
                       for n, g in info.spec.graphs.items())
    console.print(f"[green]exported[/] {info.family} ({info.task}) to {escape(str(info.path))}: {graphs}, seqserve.json "
                  f"[dim]({info.raw['export_options']['exporter']}, opset {info.raw['export_options']['opset']})[/]")
    console.print(f"next: seqserve validate {info.path}", markup=False, highlight=False)
