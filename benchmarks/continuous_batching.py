#!/usr/bin/env python
"""Continuous batching: aggregate generated tokens/s with N concurrent streams vs 1 stream.

    python benchmarks/continuous_batching.py                  # trains lstm + gpt (small, 200 steps) first
    python benchmarks/continuous_batching.py --lstm-export A --gpt-export B --json cb.json
    python benchmarks/continuous_batching.py --quick          # smoke run, < 60 s

One `seqserve serve` child process serves lstm_generate and gpt_generate. For each model and
protocol (HTTP server-sent events on /v2/models/M/generate_stream; gRPC ModelStreamInfer with
tritonclient.grpc.aio), an asyncio client keeps exactly N streams in flight (a stream that
finishes is replaced at once by the next prompt) for a warm-up and then a measured window;
afterwards no new stream starts and the open ones finish. Every request is
{"text_input": prompt, "max_tokens": 128, "temperature": 0}; prompts are runs of lines of the
Python standard library's sources (the default training corpus) that the tokenizer encodes.

Counted, per level N:
    tokens/s      stream events (one per generated token) that arrived inside the window / window
    server tok/s  inference_count from /v2/models/M/stats at the window's edges (one batch row per
                  generated token, prefill included) / the time between the two reads
    exact check   client events over the whole level == the change of seqserve_generated_tokens
                  on /metrics (counted by the server when a stream finishes)
    TTFT          request sent -> first event, for streams started inside the window (p50 / p99)
    ITL           gaps between consecutive events of a stream, inside the window (p50 / p99)
    rows / call   inference_count / execution_count in the window: how many streams one ORT call ran
    CPU           server and client CPU time in the window, as a share of one core
Levels run in rounds, in rising then falling order, so drift hits all of them alike; a level
during which other processes used more than 10% of the CPUs is run again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import numpy as np  # noqa: E402

from seqserve.bench.serve import (bench_main, NOISY_SHARE, CpuMeter, ServerProcess, fresh_repository, machine, package_models, pcts, prepare_export, stdlib_prompts,
                                  versions, wait_quiet, workdir)
from seqserve.errors import SeqserveError  # noqa: E402

TARGET_RATIO = 4.0               # tokens/s at 16 streams over 1 stream
FAMILIES = ("lstm", "gpt")
PROTOCOLS = ("http", "grpc")


# ---- one stream ----------------------------------------------------------------------------

class Stream:
    __slots__ = ("sent", "events", "finish")

    def __init__(self, sent: int):
        self.sent, self.events, self.finish = sent, [], None


async def sse_stream(session, url: str, body: bytes) -> Stream:
    s = Stream(time.perf_counter_ns())
    async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                     "Accept": "text/event-stream"}) as resp:
        if resp.status != 200:
            raise SeqserveError(f"{url} answered {resp.status}: {(await resp.read())[:300]!r}")
        async for line in resp.content:              # one `data: {...}` line per event
            if not line.startswith(b"data:"):
                continue
            now = time.perf_counter_ns()
            ev = json.loads(line[5:])
            if "error" in ev:
                raise SeqserveError(f"{url}: {ev['error']}")
            s.events.append(now)
            if ev.get("finish_reason"):
                s.finish = ev["finish_reason"]
    return s


async def grpc_stream(client, model: str, inputs) -> Stream:
    s = Stream(time.perf_counter_ns())

    async def requests():
        yield {"model_name": model, "inputs": inputs}

    async for result, error in client.stream_infer(requests()):
        now = time.perf_counter_ns()
        if error is not None:
            raise SeqserveError(f"gRPC {model}: {error}")
        text, finish = result.as_numpy("text_output"), result.as_numpy("finish_reason")
        piece = text.reshape(-1)[0] if text is not None and text.size else b""
        reason = (finish.reshape(-1)[0] if finish is not None and finish.size else b"") or None
        if piece or reason:
            s.events.append(now)
        if reason:
            s.finish = reason.decode()
    return s


def grpc_inputs(prompt: str, max_tokens: int):
    import tritonclient.grpc as g

    out = []
    for name, dt, arr in (("text_input", "BYTES", np.array([prompt.encode()], dtype=object)),
                          ("max_tokens", "INT32", np.array([max_tokens], np.int32)),
                          ("temperature", "FP32", np.array([0.0], np.float32))):
        t = g.InferInput(name, [1], dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


# ---- one level -------------------------------------------------------------------------------

async def _level(server: ServerProcess, model: str, protocol: str, n: int, prompts: list[str], args) -> dict:
    loop = asyncio.get_running_loop()
    if protocol == "http":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=600))
        url = f"http://127.0.0.1:{server.ports['http']}/v2/models/{model}/generate_stream"
        bodies = [json.dumps({"text_input": p, "max_tokens": args.max_tokens, "temperature": 0}).encode()
                  for p in prompts]
        one = lambda k: sse_stream(session, url, bodies[k % len(bodies)])          # noqa: E731
        close = session.close
    else:
        import tritonclient.grpc.aio as ga

        client = ga.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
        inputs = [grpc_inputs(p, args.max_tokens) for p in prompts]
        one = lambda k: grpc_stream(client, model, inputs[k % len(inputs)])        # noqa: E731
        close = client.close

    streams: list[Stream] = []
    issuing = True

    async def worker(k: int) -> None:
        while issuing:
            streams.append(await one(k))
            k += n

    async def snapshot():
        t0 = time.perf_counter_ns()
        st = await loop.run_in_executor(None, server.model_stats, model)
        return (t0 + time.perf_counter_ns()) // 2, st

    tokens0 = await loop.run_in_executor(None, server.metric, "seqserve_generated_tokens", model)
    tasks: list[asyncio.Task] = []
    try:
        tasks = [asyncio.create_task(worker(k)) for k in range(n)]
        await asyncio.sleep(args.warmup_seconds)
        cpu = CpuMeter(server.pid)
        ta, sa = await snapshot()
        cpu.start()
        w0 = time.perf_counter_ns()
        await asyncio.sleep(args.seconds)
        w1 = time.perf_counter_ns()
        cpu.stop()
        tb, sb = await snapshot()
        issuing = False
        await asyncio.gather(*tasks)             # the open streams finish; none starts
    finally:
        issuing = False
        for t in tasks:
            t.cancel()
        await close()
    tokens1 = await loop.run_in_executor(None, server.metric, "seqserve_generated_tokens", model)

    window = (w1 - w0) / 1e9
    in_window = sum(1 for s in streams for t in s.events if w0 <= t < w1)
    ttft = [s.events[0] - s.sent for s in streams if w0 <= s.sent < w1 and s.events]
    itl = [b - a for s in streams for a, b in zip(s.events, s.events[1:]) if w0 <= b < w1]
    rows = sb["inference_count"] - sa["inference_count"]
    calls = sb["execution_count"] - sa["execution_count"]
    ort = _batch_delta(sa, sb)
    return {"ort_by_batch": ort, "window_s": window, "window_tokens": in_window, "ttft_ns": ttft, "itl_ns": itl,
            "server_rows": rows, "server_calls": calls, "server_window_s": (tb - ta) / 1e9,
            "client_events_total": sum(len(s.events) for s in streams),
            "server_generated_tokens_total": int(tokens1 - tokens0),
            "streams_completed": len(streams),
            "tokens_per_stream": [len(s.events) for s in streams],
            "finish_reasons": _count(s.finish for s in streams),
            "cpu": {"client_ns": cpu.client_ns, "server_ns": cpu.server_ns, "wall_ns": cpu.wall_ns,
                    "other_share": cpu.other_share()}}


def _batch_delta(before: dict, after: dict) -> dict:
    """{batch size: [executions, ORT-run ns, in+out ns]} executed between two statistics reads."""
    def table(st):
        return {b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"],
                                  b["compute_input"]["ns"] + b["compute_output"]["ns"]) for b in st["batch_stats"]}
    a, b = table(before), table(after)
    out = {}
    for bs, (c, ns, io) in b.items():
        c0, ns0, io0 = a.get(bs, (0, 0, 0))
        if c - c0:
            out[bs] = [c - c0, ns - ns0, io - io0]
    return out


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def run_level(server, model, protocol, n, prompts, args, report) -> dict:
    """One level, run again (after waiting for quiet) while other processes kept the CPUs busy."""
    dropped = 0
    while True:
        got = asyncio.run(_level(server, model, protocol, n, prompts, args))
        share = got["cpu"]["other_share"]
        if share is None or share <= NOISY_SHARE or dropped >= args.retries:
            got["dropped_busy"] = dropped
            return got
        dropped += 1
        wait_quiet(args.wait_quiet, report, exclude_pids=[server.pid])


def merge(parts: list[dict]) -> dict:
    """Sum of several runs of one level (rounds)."""
    out = {"window_s": 0.0, "window_tokens": 0, "ttft_ns": [], "itl_ns": [], "server_rows": 0, "server_calls": 0,
           "server_window_s": 0.0, "client_events_total": 0, "server_generated_tokens_total": 0,
           "streams_completed": 0, "tokens_per_stream": [], "finish_reasons": {}, "dropped_busy": 0,
           "ort_by_batch": {},
           "cpu": {"client_ns": 0, "server_ns": 0, "wall_ns": 0, "other_weighted": 0.0}}
    for p in parts:
        for k in ("window_s", "window_tokens", "server_rows", "server_calls", "server_window_s",
                  "client_events_total", "server_generated_tokens_total", "streams_completed", "dropped_busy"):
            out[k] += p[k]
        for k in ("ttft_ns", "itl_ns", "tokens_per_stream"):
            out[k] += p[k]
        for bs, v in p["ort_by_batch"].items():
            acc = out["ort_by_batch"].setdefault(bs, [0, 0, 0])
            for i in range(3):
                acc[i] += v[i]
        for k, v in p["finish_reasons"].items():
            out["finish_reasons"][k] = out["finish_reasons"].get(k, 0) + v
        for k in ("client_ns", "server_ns", "wall_ns"):
            out["cpu"][k] += p["cpu"][k]
        out["cpu"]["other_weighted"] += (p["cpu"]["other_share"] or 0.0) * p["cpu"]["wall_ns"]
    return out


def summarize(m: dict) -> dict:
    wall = m["cpu"]["wall_ns"] or 1
    by = m["ort_by_batch"]
    ort_ns = sum(v[1] for v in by.values())
    return {"ort_busy_share": ort_ns / (m["server_window_s"] * 1e9),
            "ort_batch1_share": (by[1][1] / ort_ns) if ort_ns and 1 in by else 0.0,
            "ort_ms_per_call_by_batch": {str(bs): v[1] / v[0] / 1e6 for bs, v in sorted(by.items())},
            "ort_calls_by_batch": {str(bs): v[0] for bs, v in sorted(by.items())},
            "tokens_per_s": m["window_tokens"] / m["window_s"],
            "server_tokens_per_s": m["server_rows"] / m["server_window_s"],
            "rows_per_ort_call": m["server_rows"] / m["server_calls"] if m["server_calls"] else None,
            "ttft": pcts(m["ttft_ns"]), "itl": pcts(m["itl_ns"]),
            "exact": m["client_events_total"] == m["server_generated_tokens_total"],
            "client_events_total": m["client_events_total"],
            "server_generated_tokens_total": m["server_generated_tokens_total"],
            "streams_completed": m["streams_completed"],
            "mean_tokens_per_stream": float(np.mean(m["tokens_per_stream"])) if m["tokens_per_stream"] else None,
            "finish_reasons": m["finish_reasons"], "window_s": m["window_s"],
            "server_cpu_cores": m["cpu"]["server_ns"] / wall, "client_cpu_cores": m["cpu"]["client_ns"] / wall,
            "other_processes_cpu_share": m["cpu"]["other_weighted"] / wall, "levels_dropped_busy": m["dropped_busy"]}


# ---- the run -----------------------------------------------------------------------------------

def run(args, report) -> dict:
    from seqserve.export import load_export

    started = time.perf_counter()
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine(), "versions": versions(), "models": {}, "results": {}}
    with workdir(args.workdir) as wd:
        exports, prompts = {}, {}
        for fam in args.families:
            exports[fam], results["models"][fam] = prepare_export(
                fam, getattr(args, f"{fam}_export"), wd, steps=args.train_steps,
                max_corpus_bytes=args.max_corpus_bytes, report=report)
            prompts[fam] = stdlib_prompts(load_export(exports[fam]).tokenizer, args.prompts, seed=args.seed)
            lens = [len(p) for p in prompts[fam]]
            results["models"][fam]["prompts"] = {"count": len(lens), "chars_min": min(lens),
                                                 "chars_median": float(np.median(lens)), "chars_max": max(lens)}
        with fresh_repository(wd) as repo:
            package_models(exports, repo)
            report("starting the server")
            models = [f"{fam}_generate" for fam in args.families]
            with ServerProcess(repo, models, intra_op_threads=args.threads) as server:
                results["server"] = {"command": server.command, "intra_op_threads": args.threads}
                results["other_processes_cpu_share_at_start"] = wait_quiet(args.wait_quiet, report, [server.pid])
                plan = [(fam, proto) for fam in args.families for proto in args.protocols]
                total = len(plan) * args.rounds * len(args.levels)
                done = 0
                for fam, proto in plan:
                    model = f"{fam}_generate"
                    parts: dict[int, list] = {n: [] for n in args.levels}
                    for r in range(args.rounds):
                        order = list(args.levels) if r % 2 == 0 else list(reversed(args.levels))
                        for n in order:
                            report(f"{model} over {proto}: {n} stream(s), round {r + 1}/{args.rounds}", done, total)
                            parts[n].append(run_level(server, model, proto, n, prompts[fam], args, report))
                            done += 1
                    results["results"].setdefault(fam, {})[proto] = {
                        str(n): summarize(merge(parts[n])) for n in args.levels}
    results["targets"] = targets(results, args)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def targets(results: dict, args) -> list[dict]:
    out = []
    if 1 not in args.levels or 16 not in args.levels:
        return out
    for fam, by_proto in results["results"].items():
        for proto, levels in by_proto.items():
            v = levels["16"]["tokens_per_s"] / levels["1"]["tokens_per_s"]
            out.append({"name": f"{fam}_generate {proto}: tokens/s at 16 streams / 1 stream", "value": v,
                        "target": f">= {TARGET_RATIO:g}", "pass": v >= TARGET_RATIO})
    return out


# ---- output ---------------------------------------------------------------------------------------

def render(results: dict, console) -> None:
    from rich.table import Table

    m, cfg = results["machine"], results["config"]
    console.print(f"[bold]Continuous batching: generated tokens/s with N concurrent streams[/] - {m['cpu']}, "
                  f"{m['nproc']} CPUs; client (asyncio, one thread) and server on the same machine",
                  highlight=False)
    console.print(f"server: {results['server']['command']}", highlight=False, soft_wrap=True)
    console.print(f"each stream: max_tokens {cfg['max_tokens']}, temperature 0, a prompt of "
                  f"stdlib source lines; per level {cfg['warmup_seconds']:g} s warm-up + {cfg['seconds']:g} s "
                  f"measured, x {cfg['rounds']} round(s) (levels rising, then falling)", highlight=False)
    for fam, by_proto in results["results"].items():
        mc = results["models"][fam]["model_config"] or {}
        size = (f"{mc.get('n_layers')} layers, d_model {mc.get('d_model')}" if fam == "gpt"
                else f"{mc.get('num_layers')}x{mc.get('hidden_size')}")
        pr = results["models"][fam]["prompts"]
        tab = Table(title=f"{fam}_generate ({fam} small: {size}; {results['models'][fam]['trained_steps']} "
                          f"training steps; prompts {pr['chars_min']}-{pr['chars_max']} chars, median "
                          f"{pr['chars_median']:.0f})", title_justify="left")
        for col in ("protocol", "streams", "tokens/s", "vs 1\nstream", "rows per\nORT call", "ORT\nbusy",
                    "batch-1\nORT share", "TTFT p50\nms", "TTFT p99\nms", "ITL p50\nms", "ITL mean\nms", "ITL p99\nms",
                    "server\nCPU", "client\nCPU", "exact\ncount", "other\nload"):
            tab.add_column(col, justify="right" if col != "protocol" else "left")
        for proto, levels in by_proto.items():
            base = levels[next(iter(levels))]["tokens_per_s"] if "1" not in levels else levels["1"]["tokens_per_s"]
            for n, s in levels.items():
                ratio = s["tokens_per_s"] / base
                mark = (" " + _mark(ratio >= TARGET_RATIO)) if n == "16" and "1" in levels else ""
                other = s["other_processes_cpu_share"]
                tab.add_row(proto, n, f"{s['tokens_per_s']:.0f}", f"{ratio:.2f}x{mark}",
                            "-" if s["rows_per_ort_call"] is None else f"{s['rows_per_ort_call']:.1f}",
                            f"{s['ort_busy_share']:.0%}", "-" if n == "1" else f"{s['ort_batch1_share']:.0%}",
                            _ms(s["ttft"]["p50_ms"]), _ms(s["ttft"]["p99_ms"]),
                            _ms(s["itl"]["p50_ms"]), _ms(s["itl"]["mean_ms"]), _ms(s["itl"]["p99_ms"]),
                            f"{s['server_cpu_cores']:.0%}", f"{s['client_cpu_cores']:.0%}",
                            "yes" if s["exact"] else f"[red]{s['client_events_total']} vs "
                                                     f"{s['server_generated_tokens_total']}[/]",
                            f"[yellow]{other:.0%}[/]" if other > NOISY_SHARE else f"{other:.0%}",
                            end_section=n == list(levels)[-1])
        console.print(tab)
    if results["targets"]:
        tab = Table(title="Targets", title_justify="left")
        for col in ("", "value", "target", ""):
            tab.add_column(col, justify="right" if col else "left")
        for t in results["targets"]:
            tab.add_row(t["name"], f"{t['value']:.2f}x", t["target"], _mark(t["pass"]))
        console.print(tab)
    dev = max((abs(s["server_tokens_per_s"] / s["tokens_per_s"] - 1) for by in results["results"].values()
               for lv in by.values() for s in lv.values() if s["tokens_per_s"]), default=0.0)
    console.print(f"[dim]tokens/s: stream events inside the window (the server's own count - inference_count at the "
                  f"window's edges - differs by at most {dev:.1%}); ORT busy: share of the window the model's worker "
                  "spent in ORT calls; batch-1 ORT share: share of that ORT time in 1-row calls - at N > 1 nearly "
                  "all of them are prompt prefills; ITL: gaps between one stream's events as the client saw them (events "
                  "that arrive together in one read make p50 small; the mean is 1 / the per-stream rate); server / client CPU: CPU time in the window as a share of one "
                  "core (200% = both cores); exact count: client events over the whole level == change of "
                  "seqserve_generated_tokens on /metrics[/]", highlight=False)
    console.print(f"[dim]{results['elapsed_s']} s; onnxruntime {results['versions']['onnxruntime']}, "
                  f"tritonclient {results['versions']['tritonclient']}, grpcio {results['versions']['grpcio']}, "
                  f"aiohttp {results['versions']['aiohttp']}, uvicorn {results['versions']['uvicorn']}[/]",
                  highlight=False)


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def _mark(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]MISS[/]"


def add_window_args(ap) -> None:
    """The options every streams-vs-throughput script shares (this one and slot_pool.py): the
    measured windows, the prompts, the server's threads, the exports it trains, the output."""
    ap.add_argument("--seconds", type=float, default=8.0, help="measured window per level and round (default 8)")
    ap.add_argument("--warmup-seconds", type=float, default=2.0, help="warm-up before each window (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the levels (default 2)")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens per stream (default 128)")
    ap.add_argument("--prompts", type=int, default=64, help="distinct prompts (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="prompt selection seed")
    ap.add_argument("--threads", type=int, default=1, help="server ORT intra-op threads (default 1)")
    ap.add_argument("--train-steps", type=int, default=200, help="steps when training (default 200)")
    ap.add_argument("--max-corpus-bytes", type=int, default=4_000_000, help="training text read (default 4 MB)")
    ap.add_argument("--workdir", type=Path, help="keep trained exports here and reuse them (default: a temp folder)")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="wait up to this many seconds for other processes to go quiet (default 60)")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a level the machine was busy during (default 2)")
    ap.add_argument("--json", type=Path, dest="json_out", help="write the results to this file")


def parse_levels(ap, text: str) -> tuple[int, ...]:
    try:
        return tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        ap.error(f"--levels must be comma-separated integers, got {text!r}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Full description: the module docstring and benchmarks/README.md.")
    ap.add_argument("--lstm-export", type=Path, help="lstm export folder (default: train one)")
    ap.add_argument("--gpt-export", type=Path, help="gpt export folder (default: train one)")
    ap.add_argument("--families", default="lstm,gpt", help="comma-separated: lstm,gpt (default both)")
    ap.add_argument("--protocols", default="http,grpc", help="comma-separated: http,grpc (default both)")
    ap.add_argument("--levels", default="1,4,16,32", help="concurrent streams to measure (default 1,4,16,32)")
    add_window_args(ap)
    ap.add_argument("--plot", type=Path, help="write a PNG of tokens/s vs concurrent streams here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: levels 1,16, 1 s windows, one round; trains 5 steps on 1 MB")
    args = ap.parse_args(argv)
    args.families = tuple(dict.fromkeys(f.strip() for f in args.families.split(",") if f.strip()))
    args.protocols = tuple(dict.fromkeys(p.strip() for p in args.protocols.split(",") if p.strip()))
    args.levels = parse_levels(ap, args.levels)
    if not args.families or set(args.families) - set(FAMILIES):
        ap.error(f"--families must name some of {', '.join(FAMILIES)}")
    if not args.protocols or set(args.protocols) - set(PROTOCOLS):
        ap.error(f"--protocols must name some of {', '.join(PROTOCOLS)}")
    if not args.levels or min(args.levels) < 1:
        ap.error("--levels must be positive stream counts")
    if args.quick:
        args.seconds, args.warmup_seconds, args.rounds = 1.0, 0.5, 1
        args.wait_quiet, args.retries = min(args.wait_quiet, 1.0), 0
        if args.levels == (1, 4, 16, 32):
            args.levels = (1, 16)
        if args.lstm_export is None or args.gpt_export is None:
            args.train_steps, args.max_corpus_bytes = min(args.train_steps, 5), min(args.max_corpus_bytes, 1_000_000)
    for name in ("rounds", "max_tokens", "prompts", "threads", "train_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.warmup_seconds < 0:
        ap.error("--seconds must be > 0 and --warmup-seconds >= 0")
    return args


def plot(results: dict, path: Path) -> Path:
    """Aggregate tokens/s against the number of concurrent streams: one line per model and protocol."""
    from seqserve.bench.output import plot_lines

    series = {f"{fam}_generate, {proto}": ([int(n) for n in levels], [s["tokens_per_s"] for s in levels.values()])
              for fam, by_proto in results["results"].items() for proto, levels in by_proto.items()}
    return plot_lines(path, series, xlabel="concurrent streams", ylabel="generated tokens / s", log_x=True,
                      title="Continuous batching: aggregate tokens/s vs concurrency (continuous_batching.py)")


def main(argv=None) -> int:
    args = parse_args(argv)

    def render_all(results, console):
        render(results, console)
        if args.plot:
            console.print(f"plot written to {plot(results, args.plot)}", highlight=False)

    return bench_main(args, run, render_all, width=180)


if __name__ == "__main__":
    sys.exit(main())
