#!/usr/bin/env python
"""Continuous batching on a slot pool (`--kv-cache static`) vs the concat cache: GPT small, HTTP.

    python benchmarks/slot_pool.py                        # trains gpt small (200 steps) first
    python benchmarks/slot_pool.py --gpt-export E --json slot_pool.json
    python benchmarks/slot_pool.py --quick                # smoke run

One `seqserve serve` child serves two models of the same checkpoint side by side:
    gpt_generate          the default export (concat KV cache): the streams share one DecodeState,
                          merged on join and selected on leave, caches left-padded to the longest
    gpt_static_generate   the checkpoint exported again with --kv-cache static:N and served on the
                          slot pool (seqserve/serve/slot_pool.py): one [slots, H, N, hd] buffer
                          per layer, a slot per stream, chunked prefill
both packaged with max_streams = the highest level. Each level (N concurrent streams over HTTP
server-sent events, a finished stream replaced at once) is measured exactly as
benchmarks/continuous_batching.py measures it (its client, window and counts: tokens/s = stream
events inside the window / window); within each round the two models alternate at every level,
levels rising then falling, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from continuous_batching import (TARGET_RATIO, add_window_args, merge, parse_levels, run_level,  # noqa: E402
                                 summarize)
from seqserve.bench.serve import (ServerProcess, bench_main, fresh_repository, machine, prepare_export,  # noqa: E402
                                  stdlib_prompts, versions, wait_quiet, workdir)

MODELS = {"concat": "gpt_generate", "static": "gpt_static_generate"}


def run(args, report) -> dict:
    from seqserve.export import ExportOptions, export_checkpoint, load_export
    from seqserve.package import PackageOptions, package_export

    started = time.perf_counter()
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine(), "versions": versions(), "results": {}}
    with workdir(args.workdir) as wd:
        concat, results["model"] = prepare_export("gpt", args.gpt_export, wd, steps=args.train_steps,
                                                  max_corpus_bytes=args.max_corpus_bytes, report=report)
        static = wd / f"{concat.name}-static{args.static_length}"
        if not (static / "seqserve.json").is_file():
            report(f"exporting {concat / 'checkpoint'} with --kv-cache static:{args.static_length}")
            export_checkpoint(concat / "checkpoint", static, ExportOptions(kv_cache=f"static:{args.static_length}"))
        info = load_export(concat)
        prompts = stdlib_prompts(info.tokenizer, args.prompts, seed=args.seed)
        results["static_export"] = str(static)
        with fresh_repository(wd) as repo:
            options = PackageOptions(max_streams=max(args.levels))
            package_export(concat, repo, "gpt", options=options)
            package_export(static, repo, "gpt_static", options=options)
            report("starting the server")
            with ServerProcess(repo, list(MODELS.values()), intra_op_threads=args.threads) as server:
                results["server"] = {"command": server.command, "intra_op_threads": args.threads}
                results["other_processes_cpu_share_at_start"] = wait_quiet(args.wait_quiet, report, [server.pid])
                parts = {k: {n: [] for n in args.levels} for k in MODELS}
                total, done = args.rounds * len(args.levels) * len(MODELS), 0
                for r in range(args.rounds):
                    order = list(args.levels) if r % 2 == 0 else list(reversed(args.levels))
                    for n in order:
                        kinds = list(MODELS) if (r + n) % 2 == 0 else list(reversed(MODELS))
                        for kind in kinds:
                            report(f"{MODELS[kind]}: {n} stream(s), round {r + 1}/{args.rounds}", done, total)
                            parts[kind][n].append(run_level(server, MODELS[kind], "http", n, prompts, args, report))
                            done += 1
                for kind in MODELS:
                    results["results"][kind] = {str(n): summarize(merge(parts[kind][n])) for n in args.levels}
    results["targets"] = []
    if 1 in args.levels and 16 in args.levels:
        for kind, levels in results["results"].items():
            v = levels["16"]["tokens_per_s"] / levels["1"]["tokens_per_s"]
            results["targets"].append({"name": f"{MODELS[kind]} http: tokens/s at 16 streams / 1 stream", "value": v,
                                       "target": f">= {TARGET_RATIO:g}", "pass": v >= TARGET_RATIO})
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def render(results: dict, console) -> None:
    from rich.table import Table

    m, cfg, mc = results["machine"], results["config"], results["model"].get("model_config") or {}
    console.print(f"[bold]Slot pool (--kv-cache static:{cfg['static_length']}) vs concat KV cache: gpt small "
                  f"({mc.get('n_layers')} layers, d_model {mc.get('d_model')}; {results['model'].get('trained_steps')} "
                  f"training steps), HTTP SSE[/] - {m['cpu']}, {m['nproc']} CPUs; client and server on one machine",
                  highlight=False)
    console.print(f"server: {results['server']['command']}", highlight=False, soft_wrap=True)
    console.print(f"each stream: max_tokens {cfg['max_tokens']}, temperature 0, a stdlib prompt; per level "
                  f"{cfg['warmup_seconds']:g} s warm-up + {cfg['seconds']:g} s measured x {cfg['rounds']} round(s)",
                  highlight=False)
    tab = Table(title="tokens/s (stream events inside the window / window)", title_justify="left")
    for col in ("cache", "streams", "tokens/s", "vs 1\nstream", "rows per\nORT call", "ORT\nbusy", "ORT ms per\ncall",
                "TTFT p50\nms", "TTFT p99\nms", "ITL mean\nms", "ITL p99\nms", "server\nCPU", "exact\ncount",
                "other\nload"):
        tab.add_column(col, justify="left" if col == "cache" else "right")
    for kind, levels in results["results"].items():
        base = levels["1"]["tokens_per_s"] if "1" in levels else None
        for n, s in levels.items():
            ratio = s["tokens_per_s"] / base if base else None
            per_call = s["ort_ms_per_call_by_batch"].get(n)
            tab.add_row(kind, n, f"{s['tokens_per_s']:.0f}", "-" if ratio is None else f"{ratio:.2f}x",
                        "-" if s["rows_per_ort_call"] is None else f"{s['rows_per_ort_call']:.1f}",
                        f"{s['ort_busy_share']:.0%}", "-" if per_call is None else f"{per_call:.2f}",
                        _ms(s["ttft"]["p50_ms"]), _ms(s["ttft"]["p99_ms"]), _ms(s["itl"]["mean_ms"]),
                        _ms(s["itl"]["p99_ms"]), f"{s['server_cpu_cores']:.0%}", "yes" if s["exact"] else "NO",
                        f"{s['other_processes_cpu_share']:.0%}", end_section=n == list(levels)[-1])
    console.print(tab)
    for t in results["targets"]:
        mark = "[bold green]PASS[/]" if t["pass"] else "[bold red]MISS[/]"
        console.print(f"{t['name']}: {t['value']:.2f}x (target {t['target']}) {mark}", highlight=False)
    if all(k in results["results"] for k in MODELS):
        for n in results["results"]["static"]:
            a, b = results["results"]["concat"][n]["tokens_per_s"], results["results"]["static"][n]["tokens_per_s"]
            console.print(f"{n} stream(s): static / concat tokens/s = {b / a:.2f}x", highlight=False)
    console.print("[dim]ORT ms per call: decode calls of exactly N rows (the static model's calls run over the "
                  "slots up to the highest decoding one, counted as the decoding rows); rows per ORT call "
                  "counts a prefill chunk as one row; exact count: client events == the server's "
                  f"seqserve_generated_tokens. {results['elapsed_s']} s[/]", highlight=False)


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpt-export", type=Path, help="gpt export folder (concat; default: train one). The static "
                                                    "export is made from its checkpoint/ folder")
    ap.add_argument("--static-length", type=int, default=512, help="--kv-cache static:N positions (default 512)")
    ap.add_argument("--levels", default="1,16", help="concurrent streams (default 1,16)")
    add_window_args(ap)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s windows, one round, 5 training steps")
    args = ap.parse_args(argv)
    args.levels = parse_levels(ap, args.levels)
    if not args.levels or min(args.levels) < 1:
        ap.error("--levels must be positive stream counts")
    if args.quick:
        args.seconds, args.warmup_seconds, args.rounds = 1.0, 0.5, 1
        args.wait_quiet, args.retries = min(args.wait_quiet, 1.0), 0
        if args.gpt_export is None:
            args.train_steps, args.max_corpus_bytes = min(args.train_steps, 5), min(args.max_corpus_bytes, 1_000_000)
    return args


def main(argv=None) -> int:
    return bench_main(parse_args(argv), run, render, width=170)


if __name__ == "__main__":
    sys.exit(main())
