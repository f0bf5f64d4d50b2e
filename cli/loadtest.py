"""seqserve loadtest (and `seqserve loadtest compare A B`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, err_console


def command(
    compare: Annotated[Optional[list[str]], typer.Argument(
        metavar="compare A B",
        help="`compare A B`: print the differences between two reports (report folders or results.json) "
             "and exit 1 if B regressed by more than --threshold.", show_default=False)] = None,
    url: Annotated[Optional[str], typer.Option(
        help="Server: http://HOST:PORT or grpc://HOST:PORT (seqserve or Triton); HOST:PORT with --protocol.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model to load (e.g. lstm, lstm_step, lstm_generate).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="http or grpc, when --url has no scheme.")] = None,
    workload: Annotated[str, typer.Option(
        help="infer (stateless requests), sequence (stateful: sequence ids, start/end) or generate (streamed text).")] = "infer",
    concurrency: Annotated[Optional[str], typer.Option(
        help="Closed loop: requests in flight, one level per value, e.g. 1,2,4,8 (default 1).")] = None,
    request_rate: Annotated[Optional[str], typer.Option(
        help="Open loop: Poisson arrivals at these rates (requests/s), e.g. 50,100,200; latency counts from "
             "each request's scheduled send time.")] = None,
    duration: Annotated[Optional[str], typer.Option(help="Measured window per level, e.g. 10s, 500ms, 2m (default 10s).")] = None,
    requests: Annotated[Optional[int], typer.Option(help="Measure this many requests per level instead of a duration.")] = None,
    warmup: Annotated[str, typer.Option(help="Load before each level's window, not measured.")] = "2s",
    sequence_length: Annotated[int, typer.Option(help="sequence: steps per sequence.")] = 20,
    input_length: Annotated[Optional[int], typer.Option(
        help="Size of each variable input axis, i.e. tokens per request (default 1); generate: characters "
             "per synthesized prompt (default 32).", show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help="generate: prompts (one per line, .jsonl or a .json list); infer/sequence: perf_analyzer's "
             "--input-data JSON. Default: inputs synthesized from the model's metadata.")] = None,
    max_tokens: Annotated[int, typer.Option(help="generate: max_tokens sent with each request.")] = 64,
    report: Annotated[Optional[Path], typer.Option(
        help="Write results.json, results.csv (perf_analyzer's columns), report.html and PNG plots here.")] = None,
    metrics_url: Annotated[Optional[str], typer.Option(
        help="The server's Prometheus /metrics, for the queue/compute breakdown (default "
             "http://HOST:8002/metrics); none to skip.", show_default=False)] = None,
    api_key: Annotated[Optional[str], typer.Option(help="Bearer token (default: $SEQSERVE_API_KEY).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds without an answer before a request counts as an error.")] = 30.0,
    max_connections: Annotated[int, typer.Option(help="Open loop: connections (requests in flight) at most.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for synthesized inputs and arrival times.")] = 0,
    threshold: Annotated[float, typer.Option(help="compare: relative change that counts as a regression.")] = 0.10,
):
    """Measure latency and throughput of a KServe v2 / Triton endpoint (seqserve or Triton).

    Closed loop (--concurrency) or open loop (--request-rate); stateless, stateful-sequence or streamed-generation workloads; p50/p90/p95/p99/max, errors by kind, the server's queue/compute breakdown from /metrics; a table here and, with --report DIR, JSON, CSV and an HTML report with plots. Ctrl-C stops and still reports what was measured.

    `seqserve loadtest compare A B` prints the differences between two reports (a regression check).
    """
    import os

    from seqserve.errors import SeqserveError

    if compare:
        if compare[0] != "compare" or len(compare) != 3:
            raise SeqserveError(f"unexpected argument {' '.join(compare)!r}: the only positional form is "
                                "`seqserve loadtest compare A B`")
        return _compare(Path(compare[1]), Path(compare[2]), threshold)
    if not url or not model:
        raise SeqserveError("give --url (the server) and --model (the model to load); see seqserve loadtest --help")

    from seqserve.loadtest import make_config, run_loadtest, write_reports
    from seqserve.loadtest.discovery import describe_model
    from seqserve.loadtest.live import LiveDisplay
    from seqserve.loadtest.report import footer, tables

    cfg = make_config(url, model, protocol=protocol, workload=workload, concurrency=concurrency,
                      request_rate=request_rate, duration=duration, requests=requests, warmup=warmup,
                      sequence_length=sequence_length, input_length=input_length, prompts=prompts,
                      max_tokens=max_tokens, report_dir=report, metrics_url=metrics_url,
                      api_key=api_key or os.environ.get("SEQSERVE_API_KEY") or None, timeout_s=timeout,
                      max_connections=max_connections, seed=seed)
    info = describe_model(cfg)
    mode = "closed loop" if cfg.closed_loop else "open loop"
    err_console.print(f"[bold]{cfg.workload}[/] load on [bold]{info.name}[/] at {cfg.target.url} ({info.server}), "
                      f"{mode}, levels {', '.join(f'{v:g}' for v in cfg.levels)}", highlight=False)
    display = LiveDisplay(err_console, cfg.levels, cfg.mode)
    if err_console.is_terminal:
        with display:
            results = run_loadtest(cfg, progress=display.progress, on_level=display.level_done, info=info)
    else:
        results = run_loadtest(cfg, on_level=display.level_done, info=info)
    for t in tables(results):
        console.print(t)
    for line in footer(results):
        console.print(line, style="dim", markup=False, highlight=False)
    if report is not None:
        paths = write_reports(results, report)
        console.print(f"report: {report / 'report.html'} (+ {', '.join(p.name for p in paths if p.suffix != '.html')})",
                      markup=False, highlight=False)
    if results["interrupted"]:
        err_console.print("[yellow]interrupted[/]: the report covers the levels measured so far")
        raise typer.Exit(130)
    if not any(lv["ok"] for lv in results["levels"]):
        raise SeqserveError("no request succeeded; see the errors above")


def _compare(a: Path, b: Path, threshold: float) -> None:
    from seqserve.loadtest.compare import compare, comparison_table
    from seqserve.loadtest.report import level_label, load_results

    ra, rb = load_results(a), load_results(b)
    c = compare(ra, rb, threshold)
    console.print(comparison_table(c, str(a), str(b), threshold, level_label(ra).lower()))
    for note in c.notes:
        console.print(f"note: {note}", style="yellow", markup=False)
    for side, levels in (("A", c.only_a), ("B", c.only_b)):
        if levels:
            console.print(f"only in {side}: levels {', '.join(f'{v:g}' for v in levels)}", style="dim")
    if c.regressions:
        console.print(f"[red]{len(c.regressions)} regression(s)[/] beyond {threshold:.0%}")
        sys.stdout.flush()
        raise typer.Exit(1)
    console.print(f"no regression beyond {threshold:.0%}")
