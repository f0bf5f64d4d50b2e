"""seqserve train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, progress_bar


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (replaced atomically).")],
    family: Annotated[str, typer.Option(help="Model family: rnn, lstm, gru or gpt.")] = "lstm",
    preset: Annotated[str, typer.Option(help="Size preset: tiny (tests) or small (demos).")] = "tiny",
    corpus: Annotated[Optional[Path], typer.Option(help="Text file or folder. Default: the Python standard library's sources.")] = None,
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 200,
    minutes: Annotated[Optional[float], typer.Option(help="Stop after this many minutes even if steps remain.")] = None,
    batch_size: Annotated[int, typer.Option(help="Parallel BPTT lanes (recurrent) or windows (gpt).")] = 32,
    seq_len: Annotated[int, typer.Option(help="Truncated-BPTT chunk length / GPT window.")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-3,
    clip: Annotated[float, typer.Option(help="Max global gradient norm.")] = 1.0,
    eval_every: Annotated[int, typer.Option(help="Steps between validation passes.")] = 50,
    tokenizer: Annotated[str, typer.Option(help="char (vocabulary from the corpus) or byte (any UTF-8).")] = "char",
    layers: Annotated[Optional[int], typer.Option(help="Override the preset's layer count (1-4 for recurrent).")] = None,
    nonlinearity: Annotated[Optional[str], typer.Option(help="rnn only: tanh or relu.")] = None,
    positional: Annotated[Optional[str], typer.Option(help="gpt only: learned or sinusoidal.")] = None,
    tie_weights: Annotated[Optional[bool], typer.Option("--tie-weights/--no-tie-weights", help="Share embedding and head weights.")] = None,
    max_corpus_mb: Annotated[float, typer.Option(help="Read at most this much text.")] = 4.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[Optional[Path], typer.Option(help="Continue training this checkpoint up to --steps.")] = None,
):
    """Train a character-level language model and save a checkpoint (safetensors + JSON)."""
    from dataclasses import replace

    from seqserve.errors import SeqserveError
    from seqserve.models import get_family
    from seqserve.training import TrainConfig, resume_config, train

    fam = get_family(family)
    overrides = {"nonlinearity": nonlinearity, "positional": positional, "tie_weights": tie_weights}
    if layers is not None:
        overrides["n_layers" if family == "gpt" else "num_layers"] = layers
    if nonlinearity and family != "rnn":
        raise SeqserveError("--nonlinearity applies to --family rnn only")
    if positional and family != "gpt":
        raise SeqserveError("--positional applies to --family gpt only")
    cfg = TrainConfig(family=fam.name, preset=preset, corpus=str(corpus) if corpus else None,
                      max_corpus_bytes=int(max_corpus_mb * 1e6), tokenizer=tokenizer, steps=steps,
                      minutes=minutes, batch_size=batch_size, seq_len=seq_len, lr=lr, clip=clip,
                      eval_every=eval_every, seed=seed,
                      model_overrides={k: v for k, v in overrides.items() if v is not None})
    if resume:
        cfg = replace(resume_config(resume), steps=steps, minutes=minutes)
    from rich.progress import TextColumn

    with progress_bar(TextColumn("{task.fields[metrics]}")) as bar:
        task = bar.add_task(f"train {family}/{preset}", total=cfg.steps, metrics="")

        def report(step, total, m):
            text = f"train {m['train_bpc']:.3f} bpc" + (f"  val {m['val_bpc']:.3f} bpc" if "val_bpc" in m else "")
            bar.update(task, completed=step, metrics=text)

        result = train(cfg, out, resume=resume, progress=report)
    console.print(f"[green]saved[/] {result.path}  steps {result.steps}  validation {result.val_bpc:.3f} bits/char")
    console.print(f"next: seqserve export {result.path} --out {result.path}-onnx")
