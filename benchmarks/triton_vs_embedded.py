#!/usr/bin/env python
"""The embedded server vs tritonserver (python backend): same repository, same models, same machine.

    python benchmarks/triton_vs_embedded.py                   # trains lstm + gpt (small, 200 steps) first
    python benchmarks/triton_vs_embedded.py --workdir W --out tve.json
    python benchmarks/triton_vs_embedded.py --lstm-export A --gpt-export B --rounds 1
    python benchmarks/triton_vs_embedded.py --quick           # smoke run

One model repository, packaged with `seqserve package --target triton-python` (python-backend
configs; the embedded server serves it as well), is served in turn by `seqserve serve` (the
embedded server) and by `seqserve serve --engine triton` (tritonserver 2.51 from the nvidia-pytriton
wheel, python backend: every model is a model.py that runs seqserve's served model classes through
Triton's stub). Never both at once. Both get one ONNX Runtime intra-op thread per model.

Load: Triton's perf_analyzer 2.51, the same binary and arguments against both servers:
    lstm_step    `--shape input_ids:1 --input-data zero --sequence-length 32`: sequences of 32
                 one-token steps (+-20%, perf_analyzer's default variation; it sends START/END and
                 correlation ids, fresh ones for every run; the server keeps h/c), over gRPC and HTTP
    gpt_generate `-i grpc --streaming --input-data prompts.json`: decoupled generation, one
                 response per token; {"text_input": prompt, "max_tokens": 128, "temperature": 0}
                 with prompts of Python standard-library source lines (the training corpus)
at concurrency 1 and 8, `--measurement-interval 3000 --stability-percentage 30 --max-trials 6`
(an unstable level is measured again with the check off, and flagged). perf_analyzer's numbers:
throughput (Inferences/Second: steps/s, or requests/s for generation), p50/p99 latency (for
generation: request sent -> last token, checked against the profile export). Tokens/s =
perf_analyzer's response throughput (one response per token; counted exactly from its profile
export, which also gives TTFT and every stream's finish reason: "length" = ran to max_tokens).

Per level also: the CPU time of the server's whole process tree (tritonserver + one python stub
per model) and of perf_analyzer per request, and the share of the CPUs other processes used; a
level during which others used more than 10% is measured again once after waiting for a quiet
machine. Rounds alternate the order of the servers (embedded first, then Triton first); the table
shows the median over rounds. Target: embedded throughput >= 2x Triton python at every workload
and concurrency.

A level during which perf_analyzer records no answers at all (a hung server) is recorded with the
server's error lines (its output, and tritonserver's log where the python stubs write), the server
is restarted and the level tried again (--retries, default 1); such rows are marked with a dagger.
A watchdog polls the model's request counters once a second during each run: no request completed
for 6 s means a hung server, and perf_analyzer is stopped at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

from seqserve.bench.serve import (bench_main, NOISY_SHARE, fresh_repository, machine,  # noqa: E402
                                  prepare_export, stdlib_prompts, versions, wait_quiet, workdir)
from seqserve.bench.triton import (ENGINES, LABELS, Cell, EngineServer, LevelFailed, WindowSettings,  # noqa: E402
                                   generation_data, gpt_workload, lstm_workload, prepare_triton, run_level, warm_up)

TARGET_RATIO = 2.0          # embedded throughput over Triton python's
MODELS = ["lstm_step", "gpt_generate"]


def run(args, report) -> dict:
    from seqserve.export import load_export
    from seqserve.package import PackageOptions, package_export
    from seqserve.tools import ensure_perf_analyzer

    started = time.perf_counter()
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine(), "versions": versions(), "servers": {}, "models": {}}
    ws = WindowSettings(args.interval_ms, args.stability, args.max_trials)
    with workdir(args.workdir) as wd:
        exports = {}
        for family, given in (("lstm", args.lstm_export), ("gpt", args.gpt_export)):
            exports[family], results["models"][family] = prepare_export(
                family, given, wd, steps=args.train_steps, max_corpus_bytes=args.max_corpus_bytes, report=report)
        report("tritonserver and the python-backend stub environment (downloaded once into seqserve's cache)")
        results["triton"] = prepare_triton(progress=report)
        report("perf_analyzer")
        pa = ensure_perf_analyzer(progress=report)
        results["perf_analyzer"] = str(pa.binary)
        with fresh_repository(wd) as repo, tempfile.TemporaryDirectory(prefix="seqserve-tve-") as tmp:
            report("packaging (--target triton-python)")
            for family, export in exports.items():
                package_export(export, repo, name=family, options=PackageOptions(target="triton-python"))
            prompts = stdlib_prompts(load_export(exports["gpt"]).tokenizer, args.prompts, min_chars=45)
            results["prompts"] = {"count": len(prompts), "chars": [len(p) for p in prompts]}
            data = generation_data(prompts, args.max_tokens, Path(tmp) / "generate.json")
            workloads = [lstm_workload(p, args.sequence_length) for p in args.protocols]
            workloads.append(gpt_workload(data, args.max_tokens))
            results["workloads"] = {w.key: {"model": w.model, "protocol": w.protocol, "what": w.what,
                                            "perf_analyzer_args": list(w.args)} for w in workloads}
            cells: dict[tuple, Cell] = {}
            results["failures"] = []
            total = args.rounds * len(ENGINES) * len(workloads) * len(args.concurrency)
            done = 0
            for r in range(args.rounds):
                order = ENGINES if r % 2 == 0 else tuple(reversed(ENGINES))
                for engine in order:
                    report(f"round {r + 1}/{args.rounds}: waiting for a quiet machine", done, total)
                    wait_quiet(args.wait_quiet, report)
                    starts = [0]

                    def start(engine=engine, r=r, starts=starts) -> EngineServer:
                        report(f"round {r + 1}/{args.rounds}: starting the {LABELS[engine]} server", done, total)
                        starts[0] += 1
                        t0 = time.perf_counter()
                        s = EngineServer(engine, repo, MODELS, intra_op_threads=args.threads,
                                         triton_log=Path(tmp) / f"tritonserver-r{r + 1}-{starts[0]}.log")
                        s.start()
                        try:
                            results["servers"][engine] = {"command": s.command,
                                                          "start_s": round(time.perf_counter() - t0, 2)}
                            warm_up(s, args.sequence_length, prompts[0], args.max_tokens)
                        except BaseException:
                            s.stop()
                            raise
                        return s

                    server = start()
                    try:
                        for w in workloads:
                            for c in args.concurrency:
                                report(f"round {r + 1}/{args.rounds}: {LABELS[engine]}, {w.key}, concurrency {c}",
                                       done, total)
                                row, server = measure(pa, server, start, w, c, ws, Path(tmp), args, report, results,
                                                      (r + 1, engine))
                                row["round"] = r + 1
                                cells.setdefault((w.key, c, engine), Cell()).rounds.append(row)
                                done += 1
                    finally:
                        server.stop()
    results["rows"] = summarize(cells, workloads, args)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def measure(pa, server, start, w, c, ws, tmp, args, report, results, where):
    """One level, measured again once if other processes were busy; a level whose server hung
    (perf_analyzer got no answers) is recorded in results["failures"] with the server's error lines,
    the server restarted and the level tried again, --retries times at most."""
    for attempt in range(args.retries + 1):
        try:
            row = run_level(pa, server, w, c, ws, tmp)
            if row["other_cpu_share"] is not None and row["other_cpu_share"] > NOISY_SHARE:
                busy = row["other_cpu_share"]
                wait_quiet(args.wait_quiet, report, exclude_pids=server.tree_pids())
                row = run_level(pa, server, w, c, ws, tmp)
                row["rerun_busy_share_before"] = busy
            row["attempt"] = attempt + 1
            return row, server
        except LevelFailed as e:
            results["failures"].append({"round": where[0], "engine": where[1], "workload": w.key, "concurrency": c,
                                        "attempt": attempt + 1, "perf_analyzer": str(e)[-600:],
                                        "server_errors": server.error_lines()})
            report(f"{LABELS[where[1]]}, {w.key}, concurrency {c}: no answers; restarting the server")
            server.stop()
            server = start()
    return {"failed": True, "attempt": args.retries + 1}, server


def summarize(cells: dict, workloads, args) -> list[dict]:
    """Per (workload, concurrency): both servers' medians over the rounds that were measured (a
    failed round - the server hung every time - counts in `failed_rounds`), and the ratios."""
    rows = []
    for w in workloads:
        thr_key = "tokens_per_s" if w.generation else "throughput"
        for c in args.concurrency:
            pair = {}
            for engine in ENGINES:
                all_rounds = cells[(w.key, c, engine)].rounds
                cell = Cell([x for x in all_rounds if not x.get("failed")])
                ok = cell.rounds
                pair[engine] = {
                    "throughput": cell.median("throughput"), "tokens_per_s": cell.median("tokens_per_s"),
                    "headline_throughput": cell.median(thr_key),
                    "p50_ms": cell.median("p50_ms"), "p99_ms": cell.median("p99_ms"),
                    "ttft_p50_ms": cell.median("ttft_p50_ms"),
                    "server_cpu_us_per_request": cell.median("server_cpu_us_per_request"),
                    "client_cpu_us_per_request": cell.median("client_cpu_us_per_request"),
                    "server_cpu_us_per_request_by_process": _median_dicts(
                        [x["server_cpu_us_per_request_by_process"] for x in ok]),
                    "requests_per_execution": cell.median("requests_per_execution"),
                    "other_cpu_share": max([x["other_cpu_share"] or 0.0 for x in ok], default=None),
                    "all_stable": all(x["stable"] for x in ok),
                    "failed_rounds": len(all_rounds) - len(ok),
                    "retried_rounds": sum(1 for x in all_rounds if x.get("attempt", 1) > 1),
                    "rounds": all_rounds,
                }
            e, t = pair["seqserve"], pair["triton"]
            per_round = [a[thr_key] / b[thr_key] for a, b in zip(cells[(w.key, c, "seqserve")].rounds,
                                                                  cells[(w.key, c, "triton")].rounds)
                         if a.get(thr_key) and b.get(thr_key)]
            ratio = (e["headline_throughput"] / t["headline_throughput"]
                     if e["headline_throughput"] and t["headline_throughput"] else None)
            rows.append({"workload": w.key, "generation": w.generation, "concurrency": c, "servers": pair,
                         "throughput_ratio": ratio, "throughput_ratio_per_round": per_round,
                         "p50_ratio": e["p50_ms"] / t["p50_ms"] if e["p50_ms"] and t["p50_ms"] else None,
                         "target": f">= {TARGET_RATIO:g}x", "pass": ratio is not None and ratio >= TARGET_RATIO})
    return rows


def _median_dicts(ds: list[dict]) -> dict:
    import numpy as np

    keys = sorted({k for d in ds for k in d})
    return {k: float(np.median([d.get(k, 0.0) for d in ds])) for k in keys}


# ---- output -------------------------------------------------------------------------------------

def render(results: dict, console=None) -> None:
    from rich.table import Table

    from seqserve.bench.output import console as wide_console

    console = console or wide_console()
    m, cfg = results["machine"], results["config"]
    console.print(f"[bold]Embedded server vs Triton (python backend)[/] - {m['cpu']}, {m['nproc']} CPUs; "
                  f"same repository (--target triton-python), same models, one server at a time; ORT intra-op "
                  f"1 thread per model in both; load: perf_analyzer 2.51 on the same machine", highlight=False)
    for engine in ENGINES:
        s = results["servers"].get(engine, {})
        console.print(f"{LABELS[engine]}: {s.get('command')} (ready in {s.get('start_s')} s)", highlight=False,
                      soft_wrap=True)
    for fam, src in results["models"].items():
        mc = src.get("model_config") or {}
        size = (f"{mc.get('num_layers')}x{mc.get('hidden_size')}" if fam == "lstm" else
                f"d_model {mc.get('d_model')}, {mc.get('n_layers')} layers, {mc.get('n_heads')} heads")
        console.print(f"model {fam}: {size}, vocab {mc.get('vocab_size')} ({src['source']}, "
                      f"{src.get('trained_steps')} training steps)", highlight=False)
    for key, w in results["workloads"].items():
        console.print(f"{key}: {w['what']}", highlight=False)
    console.print(f"perf_analyzer: --measurement-interval {cfg['interval_ms']} --stability-percentage "
                  f"{cfg['stability']} --max-trials {cfg['max_trials']}; {cfg['rounds']} round(s), servers in "
                  f"alternating order; medians over rounds", highlight=False)
    tab = Table(title="Throughput and latency (client side, perf_analyzer); ratios embedded / Triton python",
                title_justify="left")
    for col in ("workload", "conc.", "server", "infer/s", "tokens/s", "p50 ms", "p99 ms", "TTFT p50\nms",
                "throughput\nE / T", "p50\nE / T", "server CPU\nus / req", "client CPU\nus / req", "other\nload"):
        tab.add_column(col, justify="left" if col in ("workload", "server") else "right")
    for row in results["rows"]:
        for i, engine in enumerate(ENGINES):
            s = row["servers"][engine]
            first = i == 0
            ratio = ""
            if first and row["throughput_ratio"] is not None:
                ratio = f"{row['throughput_ratio']:.2f}x " + _mark(row["pass"])
            mark = ("" if s["all_stable"] else " *") + (" †" if s["retried_rounds"] or s["failed_rounds"] else "")
            if s["throughput"] is None:
                tab.add_row(row["workload"] if first else "", str(row["concurrency"]) if first else "",
                            LABELS[engine] + mark, "[red]failed[/]", *[""] * 9, end_section=not first)
                continue
            tab.add_row(row["workload"] if first else "", str(row["concurrency"]) if first else "",
                        LABELS[engine] + mark,
                        f"{s['throughput']:.1f}", _f(s["tokens_per_s"], ".0f"),
                        f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", _f(s["ttft_p50_ms"], ".2f"), ratio,
                        _f(row["p50_ratio"], ".2f", "") if first else "",
                        _f(s["server_cpu_us_per_request"], ".0f"), _f(s["client_cpu_us_per_request"], ".0f"),
                        _f(s["other_cpu_share"], ".0%"), end_section=not first)
    console.print(tab)
    tab = Table(title="Where the server's CPU goes: us per request (generation: per stream) by process; "
                      "requests per model execution", title_justify="left")
    for col in ("workload", "conc.", "embedded\nseqserve", "Triton\ntritonserver", "Triton\npython stubs",
                "Triton\nCLI process", "Triton\ntotal", "embedded\nreq / exec", "Triton\nreq / exec"):
        tab.add_column(col, justify="left" if col == "workload" else "right")
    for row in results["rows"]:
        e, t = row["servers"]["seqserve"], row["servers"]["triton"]
        tb = t["server_cpu_us_per_request_by_process"]
        tab.add_row(row["workload"], str(row["concurrency"]), _f(e["server_cpu_us_per_request"], ".0f"),
                    _f(tb.get("tritonserver"), ".0f"), _f(tb.get("python stub"), ".0f"),
                    _f(tb.get("seqserve"), ".0f"), _f(t["server_cpu_us_per_request"], ".0f"),
                    "-" if row["generation"] else _f(e["requests_per_execution"], ".2f"),
                    "-" if row["generation"] else _f(t["requests_per_execution"], ".2f"))
    console.print(tab)
    notes = []
    for row in results["rows"]:
        if row["generation"]:
            for engine in ENGINES:
                rs = [x for x in row["servers"][engine]["rounds"] if not x.get("failed")]
                tok = sorted({round(x["tokens_per_request"], 2) for x in rs})
                reasons = {}
                for x in rs:
                    for k, v in x["finish_reasons"].items():
                        reasons[k] = reasons.get(k, 0) + v
                notes.append(f"{row['workload']} c={row['concurrency']} {LABELS[engine]}: tokens/request "
                             f"{', '.join(map(str, tok))}, finish reasons {reasons}")
        if len(row["throughput_ratio_per_round"]) > 1:
            notes.append(f"{row['workload']} c={row['concurrency']}: throughput ratio per round "
                         + ", ".join(f"{v:.2f}x" for v in row["throughput_ratio_per_round"]))
    if any(not row["servers"][e]["all_stable"] for row in results["rows"] for e in ENGINES):
        notes.append("* a round did not stabilize within --max-trials windows and was measured with the check off")
    for n in notes:
        console.print(f"[dim]{n}[/]", highlight=False)
    for f in results.get("failures", []):
        console.print(f"[yellow]† round {f['round']}, {LABELS[f['engine']]}, {f['workload']} c={f['concurrency']}, "
                      f"attempt {f['attempt']}: the server stopped answering; restarted. Its errors: "
                      f"{' | '.join(f['server_errors']) or '(none logged)'}[/]", highlight=False)
    passed = [r for r in results["rows"] if r["pass"]]
    console.print(f"target embedded >= {TARGET_RATIO:g}x Triton-python throughput: {len(passed)}/{len(results['rows'])} "
                  f"workload/concurrency pairs pass", highlight=False)
    v = results["versions"]
    console.print(f"[dim]{results['elapsed_s']} s; tritonserver {results['triton']['version']}, onnxruntime "
                  f"{v.get('onnxruntime')}, tritonclient {v.get('tritonclient')}, grpcio {v.get('grpcio')}, "
                  f"uvicorn {v.get('uvicorn')}, python {v.get('python')}[/]", highlight=False)


def _f(v, fmt: str, missing: str = "-") -> str:
    return missing if v is None else format(v, fmt)


def _mark(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]MISS[/]"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Full description: the module docstring and benchmarks/README.md.")
    ap.add_argument("--lstm-export", type=Path, help="lstm export folder (seqserve export); default: train one")
    ap.add_argument("--gpt-export", type=Path, help="gpt export folder; default: train one")
    ap.add_argument("--train-steps", type=int, default=200, help="steps when training (default 200)")
    ap.add_argument("--max-corpus-bytes", type=int, default=4_000_000, help="training text read (default 4 MB)")
    ap.add_argument("--workdir", type=Path, help="keep the trained exports here and reuse them (default: a temp folder)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, servers in alternating order (default 2)")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                    help="concurrency levels, comma-separated (default 1,8)")
    ap.add_argument("--protocols", type=lambda s: s.split(","), default=["grpc", "http"],
                    help="protocols for the lstm_step workload (default grpc,http; generation is gRPC streaming)")
    ap.add_argument("--sequence-length", type=int, default=32, help="lstm_step steps per sequence (default 32)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per generation request (default 128)")
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts, used round-robin (default 8)")
    ap.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window (default 3000)")
    ap.add_argument("--stability", type=int, default=30, help="perf_analyzer --stability-percentage (default 30)")
    ap.add_argument("--max-trials", type=int, default=6, help="perf_analyzer --max-trials (default 6)")
    ap.add_argument("--threads", type=int, default=1,
                    help="embedded server's --intra-op-threads (default 1 = the python-backend models' default)")
    ap.add_argument("--wait-quiet", type=float, default=20.0,
                    help="wait up to this many seconds for other processes to go quiet (default 20)")
    ap.add_argument("--retries", type=int, default=1,
                    help="when a server stops answering during a level: restart it and try again, this many "
                         "times (default 1)")
    ap.add_argument("--out", "--json", type=Path, dest="json_out", help="write the results to this JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 1 s windows, gRPC only, 16 tokens; trains 10 steps on 1 MB")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.interval_ms, args.max_trials, args.protocols = 1, 1000, 4, ["grpc"]
        args.max_tokens, args.wait_quiet = min(args.max_tokens, 16), min(args.wait_quiet, 3.0)
        if args.lstm_export is None or args.gpt_export is None:
            args.train_steps, args.max_corpus_bytes = min(args.train_steps, 10), min(args.max_corpus_bytes, 1_000_000)
    for name in ("rounds", "train_steps", "threads", "sequence_length", "max_tokens", "prompts", "interval_ms",
                 "stability", "max_trials"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.concurrency or min(args.concurrency) < 1:
        ap.error("--concurrency takes whole numbers of at least 1")
    bad = [p for p in args.protocols if p not in ("grpc", "http")]
    if bad:
        ap.error(f"--protocols: unknown {bad}; expected grpc and/or http")
    if args.threads != 1:
        print("note: the python-backend models run 1 intra-op thread (their config's seqserve.intra_op_threads); "
              f"--threads {args.threads} changes only the embedded server", file=sys.stderr)
    return args


def main(argv=None) -> int:
    return bench_main(parse_args(argv), run, render, width=170)


if __name__ == "__main__":
    sys.exit(main())
