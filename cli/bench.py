"""seqserve bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    families: Annotated[str, typer.Option(help="Comma-separated families to time: gpt,lstm,gru,rnn.")] = "gpt,lstm,gru,rnn",
    contexts: Annotated[str, typer.Option(help="Comma-separated GPT context lengths (prefilled tokens).")] = "64,256,1024",
    steps: Annotated[int, typer.Option(help="Timed decode steps per variant and round.")] = 32,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds over the variants (each from the same context).")] = 16,
    warmup: Annotated[int, typer.Option(help="Untimed steps at the start of every round.")] = 4,
    nocache_steps: Annotated[int, typer.Option(help="Timed torch no-cache steps per round; 0 = fewer as the context grows.")] = 0,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads and torch threads; 0 = one per physical core.")] = 0,
    rnn_context: Annotated[int, typer.Option(help="Prefill length for rnn/lstm/gru.")] = 64,
    preset: Annotated[str, typer.Option(help="Model size preset (random weights): tiny or small.")] = "small",
    seed: Annotated[int, typer.Option(help="Seed for weights and tokens.")] = 0,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also time the `export --quantize int8` graphs.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results to this JSON file.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also write a PNG of GPT per-token latency vs context here.")] = None,
):
    """Per-token decode latency at batch 1: torch eager with and without KV cache vs ONNX Runtime (fp32 and int8).

    Builds random-weight models, exports them with seqserve's own export, times decode steps after a prefill with the variants interleaved, and prints medians, p90s, ratios and PASS/MISS against the targets.
    """
    from seqserve.bench import BenchConfig, parse_list, render, run_benchmark, write_json
    from seqserve.bench.output import console as wide_console, progress
    from seqserve.bench.report import plot as plot_results

    config = BenchConfig(families=parse_list(families, "families"), contexts=parse_list(contexts, "contexts", int),
                         steps=steps, rounds=rounds, warmup=warmup, nocache_steps=nocache_steps, threads=threads,
                         rnn_context=rnn_context, preset=preset, seed=seed, int8=int8)
    if plot is not None and "gpt" not in config.families:
        raise typer.BadParameter("--plot draws GPT per-token latency vs context: include gpt in --families",
                                 param_hint="--plot")
    results = run_benchmark(config, progress=progress())
    console = wide_console()           # redirected: no 80-column cut
    render(results, console)
    if plot is not None:
        console.print(f"plot written to {plot_results(results, plot)}", highlight=False)
    if json_out is not None:
        write_json(results, json_out)
        console.print(f"results written to {json_out}", highlight=False)
