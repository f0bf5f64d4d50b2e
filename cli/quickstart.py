"""seqserve quickstart: the main job, end to end on this machine, no external server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, progress_bar


def command(
    out: Annotated[Path, typer.Option(help="Where checkpoints and exports go.")] = Path("runs/quickstart"),
    families: Annotated[str, typer.Option(help="Comma-separated families to build.")] = "lstm,gpt",
    preset: Annotated[str, typer.Option(help="Model size preset.")] = "small",
    minutes: Annotated[float, typer.Option(help="Training budget per model, in minutes.")] = 1.0,
    prompt: Annotated[str, typer.Option(help="Prompt for the sample generations.")] = "def ",
    max_tokens: Annotated[int, typer.Option(help="Tokens per sample generation.")] = 160,
    repository: Annotated[Path, typer.Option(help="Model repository to package into and serve.")] = Path("model_repository"),
    serve: Annotated[bool, typer.Option(help="Serve the repository at the end (until Ctrl-C).")] = True,
    http_port: Annotated[int, typer.Option(help="HTTP port (a free one is taken if it is busy).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (a free one is taken if it is busy).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (a free one is taken if it is busy).")] = 8002,
    serve_seconds: Annotated[float, typer.Option(help="Stop serving after this many seconds; 0 = until Ctrl-C.")] = 0.0,
):
    """Train small models on the Python standard library, export, validate, package, and serve them."""
    from rich.progress import TextColumn
    from rich.rule import Rule

    from seqserve.errors import SeqserveError
    from seqserve.export import export_checkpoint
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.models import get_family
    from seqserve.package import package_export
    from seqserve.runtime import make_backend
    from seqserve.training import TrainConfig, train
    from seqserve.validate import ValidateConfig, render_report, validate_export

    from seqserve.training.trainer import UNBOUNDED_STEPS

    names = list(dict.fromkeys(get_family(f.strip()).name for f in families.split(",") if f.strip()))
    if not names:
        raise SeqserveError("--families must name at least one of rnn, lstm, gru, gpt")
    for fam in names:
        console.print(Rule(f"{fam} ({preset})"))
        ckpt, exp = out / fam, out / f"{fam}-onnx"
        # A GPT step costs more than an LSTM step on 2 CPU cores: batch 16 gives it ~500 steps in a
        # minute instead of ~130 at batch 32 (measured: 2.6 vs 3.5 bits/char).
        cfg = TrainConfig(family=fam, preset=preset, steps=UNBOUNDED_STEPS, minutes=minutes, eval_every=100,
                          batch_size=16 if fam == "gpt" else 32)
        with progress_bar(TextColumn("{task.fields[m]}")) as bar:
            task = bar.add_task(f"train {fam} ({minutes:g} min)", total=None, m="")
            result = train(cfg, ckpt, progress=lambda s, t, m: bar.update(
                task, completed=s, m=f"{m['train_bpc']:.2f} bpc"))
        console.print(f"trained {result.steps} steps: validation {result.val_bpc:.3f} bits/char -> {ckpt}",
                      markup=False, highlight=False)
        with console.status(f"exporting {fam}"):
            info = export_checkpoint(ckpt, exp)
        report = validate_export(exp, ValidateConfig())
        render_report(report, console)
        if not report.passed:
            raise SeqserveError(f"{fam} export failed validation; see the tables above")
        be = make_backend(info, "ort")
        sample = generate_text(be, info.tokenizer, [prompt], SamplingParams(
            max_tokens=max_tokens, temperature=0.7, top_k=20, seed=0), info.max_context)[0]
        console.print("[bold]ONNX Runtime sample[/] (temperature 0.7, top-k 20):")
        console.print(prompt + sample.text, highlight=False, markup=False)
        # version 1 every time: a second quickstart replaces its own models instead of piling up versions
        models = package_export(exp, repository, fam, version=1)
        console.print(f"packaged {', '.join(m.name for m in models)} into {repository}/", markup=False, highlight=False)
    if not serve:
        console.print(Rule("done"))
        console.print(f"exports are in {out}/, models in {repository}/. Serve them with:\n"
                      f"  seqserve serve --repository {repository}", markup=False, highlight=False)
        return
    from cli.quickstart_demo import serve_with_demo

    serve_with_demo(repository, names, prompt, (http_port, grpc_port, metrics_port), serve_seconds)
