#!/usr/bin/env python
"""int8 decode: torch eager fp32 with KV cache vs ONNX Runtime fp32 vs ONNX Runtime int8, per token.

    python benchmarks/int8_decode.py                          # gpt small @ 64,256,1024 + lstm, 1 and 2 threads
    python benchmarks/int8_decode.py --threads 1 --contexts 64,256 --json int8.json

One `seqserve bench` run (seqserve/bench/decode.py: random-weight `small` models exported with
`export_checkpoint(..., ExportOptions(quantize="int8"))`, variants interleaved round-robin) per
thread count; this script prints them side by side with the ratios against torch, and the
issue's target (int8 >= 6x torch eager fp32 with cache at contexts 64 and 256).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import typer  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def bench(
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts (ORT intra-op = torch).")] = "1,2",
    contexts: Annotated[str, typer.Option(help="Comma-separated GPT contexts.")] = "64,256,1024",
    families: Annotated[str, typer.Option(help="gpt and/or recurrent families.")] = "gpt,lstm",
    steps: Annotated[int, typer.Option(help="Timed steps per variant and round.")] = 32,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds.")] = 12,
    preset: Annotated[str, typer.Option(help="Model preset (random weights).")] = "small",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every run's results here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of per-token latency vs context here.")] = None,
):
    """Per-token decode latency at batch 1, fp32 vs int8, at each thread count; ratios vs torch."""
    from rich.table import Table

    from seqserve.bench import BenchConfig, parse_list, run_benchmark
    from seqserve.bench.output import console, plot_lines, progress
    from seqserve.bench.report import TARGET_INT8_CONTEXTS, TARGET_INT8_SPEEDUP

    out = console()                    # no 80-column cut when redirected
    runs = {}
    for n in parse_list(threads, "threads", int):
        cfg = BenchConfig(families=parse_list(families, "families"), contexts=parse_list(contexts, "contexts", int),
                          steps=steps, rounds=rounds, threads=n, preset=preset, int8=True)
        runs[n] = run_benchmark(cfg, progress=progress())
    first = next(iter(runs.values()))
    out.print(f"[bold]int8 decode, batch 1[/] - {first['machine']['cpu']}; median ms per token "
              f"({rounds} interleaved rounds x {steps} steps); ratios = torch eager fp32 with cache / variant",
              highlight=False)
    if first.get("gpt"):
        m = first["gpt"]["model"]
        tab = Table(title=f"GPT {preset} (d_model {m['d_model']}, {m['n_layers']} layers), random weights",
                    title_justify="left")
        for col in ("threads", "context", "torch fp32\ncache", "ORT fp32", "ORT int8", "ORT fp32\n/ torch",
                    "ORT int8\n/ torch", "target", "int8 vs\nORT fp32", "other\nCPU load"):
            tab.add_column(col, justify="right")
        for n, res in runs.items():
            for r in res["gpt"]["contexts"]:
                t, f, q = (r[k]["median_ms"] for k in ("torch_cache", "ort_cache", "ort_int8"))
                target = r["context"] in TARGET_INT8_CONTEXTS
                mark = ("[green]PASS[/]" if t / q >= TARGET_INT8_SPEEDUP else "[red]MISS[/]") if target else ""
                tab.add_row(str(n), str(r["context"]), f"{t:.3f}", f"{f:.3f}", f"{q:.3f}", f"{t / f:.2f}x",
                            f"{t / q:.2f}x", f">= {TARGET_INT8_SPEEDUP:g}x {mark}" if target else "-",
                            f"{f / q:.2f}x", _share(r))
        out.print(tab)
    if first.get("recurrent"):
        tab = Table(title="Recurrent step (after a 64-token prefill)", title_justify="left")
        for col in ("threads", "family", "torch fp32", "ORT fp32", "ORT int8", "ORT fp32\n/ torch",
                    "ORT int8\n/ torch", "int8 vs\nORT fp32", "other\nCPU load"):
            tab.add_column(col, justify="right")
        for n, res in runs.items():
            for r in res["recurrent"]:
                t, f, q = (r[k]["median_ms"] for k in ("torch", "ort", "ort_int8"))
                tab.add_row(str(n), r["family"], f"{t:.3f}", f"{f:.3f}", f"{q:.3f}", f"{t / f:.2f}x", f"{t / q:.2f}x",
                            f"{f / q:.2f}x", _share(r))
        out.print(tab)
    if plot is not None and first.get("gpt"):
        series = {}
        for n, res in runs.items():
            cs = res["gpt"]["contexts"]
            for k, name in (("torch_cache", "torch fp32 cache"), ("ort_cache", "ORT fp32"), ("ort_int8", "ORT int8")):
                series[f"{name}, {n} thread(s)"] = ([r["context"] for r in cs], [r[k]["median_ms"] for r in cs])
        plot_lines(plot, series, xlabel="context (tokens)", ylabel="ms per token (median)", log_x=True,
                   title=f"GPT {preset} decode, batch 1: per-token latency vs context, fp32 vs int8 (int8_decode.py)")
        out.print(f"plot written to {plot}", highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps({str(n): r for n, r in runs.items()}, indent=2) + "\n")
        out.print(f"results written to {json_out}", highlight=False)


def _share(r: dict) -> str:
    s = r.get("other_processes_cpu_share")
    return "?" if s is None else f"{s:.0%}"


if __name__ == "__main__":
    app(prog_name="int8_decode.py")
