"""seqserve package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console


def command(
    export_dir: Annotated[Path, typer.Argument(help="Export folder from `seqserve export`.")],
    repository: Annotated[Path, typer.Option("--repository", "-r", help="Triton model repository folder (created if missing).")],
    name: Annotated[Optional[str], typer.Option(help="Model name; also writes NAME_step and NAME_generate. Default: the family.")] = None,
    version: Annotated[Optional[int], typer.Option(help="Version number. Default: one more than the newest in the repository.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Rows per batched call (full and step models).")] = 16,
    max_sequences: Annotated[int, typer.Option(help="Step model: sequences kept at once.")] = 64,
    sequence_idle_seconds: Annotated[float, typer.Option(help="Step model: drop a sequence's state after this long idle.")] = 60.0,
    max_streams: Annotated[int, typer.Option(help="Generate model: concurrent generation streams.")] = 64,
    target: Annotated[str, typer.Option(
        help="seqserve (the embedded server), triton-gpu (NGC tritonserver: onnxruntime backend on GPU, "
             "implicit state) or triton-python (tritonserver's python backend; runs on CPU).")] = "seqserve",
    stateless_step: Annotated[bool, typer.Option(
        "--stateless-step", help="Also write NAME_step_state: the recurrent step graph served statelessly (the client "
                                 "sends past_* and gets present_* back), so any replica serves any step.")] = False,
):
    """Write the export as Triton models NAME (full), NAME_step (stateful) and NAME_generate (text)."""
    from rich.table import Table
    from rich.text import Text

    from seqserve.package import PackageOptions, package_export

    options = PackageOptions(max_batch_size=max_batch_size, max_sequences=max_sequences,
                             sequence_idle_seconds=sequence_idle_seconds, max_streams=max_streams,
                             target=target, stateless_step=stateless_step)
    models = package_export(export_dir, repository, name=name, version=version, options=options)

    table = Table(title="Triton models written")
    for col in ("model", "version", "kind", "inputs → outputs", "path"):
        table.add_column(col, overflow="fold")
    for m in models:
        inputs = [t.name for t in m.config.input if not t.optional]
        optional = sum(t.optional for t in m.config.input)
        state = len(m.config.sequence_batching.state)
        io = ", ".join(inputs) + (f" (+{optional} optional)" if optional else "") \
            + (f" + {state} state" if state else "") + " → " + ", ".join(t.name for t in m.config.output)
        table.add_row(Text(m.name), str(m.version), m.kind, Text(io), Text(str(m.path)))
    console.print(table)
    for m in models:    # triton-gpu: what Triton's onnxruntime backend loads instead of model.onnx, and why
        if m.config.default_model_filename and "seqserve.backend_graph" in m.config.parameters:
            console.print(f"{m.name}: Triton loads {m.config.default_model_filename}: "
                          f"{m.config.parameters['seqserve.backend_graph'].string_value}",
                          markup=False, highlight=False, soft_wrap=True)
    if target == "triton-gpu":   # who runs which graph: Triton's onnxruntime backend or seqserve's code
        from seqserve.package import load_version, runner_of

        for m in models:
            served = load_version(m.path)
            graphs = " + ".join(f"{g}.onnx" if g != served.graph else f"{g} (model.onnx)"
                                for g in (*served.once, served.graph))
            console.print(f"{m.name}: {runner_of(m.config)} runs {graphs}", markup=False, highlight=False,
                          soft_wrap=True)
    engine = {"seqserve": "", "triton-python": " --engine triton"}.get(target)
    nxt = (f"seqserve serve --repository {repository}{engine}" if engine is not None
           else "docker compose up (the NGC tritonserver container; see the README's GPU stack)")
    console.print(f"next: {nxt}", markup=False, highlight=False, soft_wrap=True)
