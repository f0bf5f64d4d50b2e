#!/usr/bin/env python
"""seqserve loadtest vs perf_analyzer: the same server, model and data, side by side, ratios.

    python benchmarks/loadtest_vs_perf_analyzer.py                  # trains lstm/small 200 steps first; ~25 min
    python benchmarks/loadtest_vs_perf_analyzer.py --export runs/lstm-onnx --json lt.json
    python benchmarks/loadtest_vs_perf_analyzer.py --quick          # smoke run, ~2 min after training

One `seqserve serve` process (ORT intra-op 1 thread) serves `lstm` (the stateless full graph).
Both tools send the same 16 requests (a perf_analyzer --input-data JSON file of valid token ids,
given to seqserve loadtest as --prompts), over HTTP and gRPC, of two sizes (--inputs):
  1 token    input_ids [1, 1]: ~0.1 ms in the model, so the tools' own cost per request shows
  128 tokens input_ids [1, 128]: a few ms in the model, so the tools' own cost hardly matters and
             the numbers must agree

1. Closed loop at concurrency 1, 4, 16, for each size: perf_analyzer (`--concurrency-range N`, its default
   time windows until 3 stable ones) and `seqserve loadtest --concurrency N` (--warmup, then one
   window of --seconds), alternated in --rounds rounds (the order flips each round), medians over
   rounds. Ratios loadtest / perf_analyzer of throughput, p50 and p99; target: within 10%.
2. Open loop (1 token): the --rates in turn, Poisson arrivals for both tools (perf_analyzer's
   --request-distribution poisson); for each, the achieved throughput and whether the tool kept
   its schedule: perf_analyzer's "N% of the requests were delayed", loadtest's sends more than
   1 ms late plus requests that waited for a free connection. The highest rate a tool drives is
   the highest one with >= 95% of the rate achieved and < 5% late/delayed; a tool that misses a
   rate is not tried above it. (perf_analyzer measures latency from the actual send and caps the
   requests in flight at --max-threads, 16; loadtest from the scheduled send with no such cap:
   near and past the server's capacity their latencies mean different things, which is the
   point of an open loop.)

Both tools run as child processes (the command lines users would type); their CPU time comes
from the children's rusage, the server's from /proc. Other processes' CPU share during each run
is printed: on a 2-core machine another job skews everything.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import numpy as np  # noqa: E402

from seqserve.bench.serve import (bench_main, NOISY_SHARE, ROOT, CpuMeter, ServerProcess, child_env,  # noqa: E402
                                  fresh_repository, machine, package_models, prepare_export,
                                  versions, wait_quiet, workdir)
from seqserve.errors import SeqserveError  # noqa: E402
from seqserve.tools.perf_analyzer import ensure_perf_analyzer  # noqa: E402

TARGET = 0.10                  # within 10% of perf_analyzer
KEEP_UP = 0.95                 # achieved / offered rate to count as driven
LATE_OK = 0.05                 # at most this share of late (loadtest) / delayed (perf_analyzer) sends
_DELAYED = re.compile(r"([0-9.]+)% of the requests were delayed")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Tools:
    """Runs either tool against the server and returns one comparable row."""

    def __init__(self, server: ServerProcess, data: Path, tmp: Path, args, report):
        self.server, self.data, self.tmp, self.args, self.report = server, data, tmp, args, report
        self.pa = ensure_perf_analyzer()

    def address(self, proto: str) -> str:
        return f"127.0.0.1:{self.server.ports[proto]}"

    def _measure(self, run):
        """run() on a quiet machine; again (up to --retries times) when other processes used more
        than 10% of the CPUs meanwhile."""
        for attempt in range(self.args.retries + 1):
            wait_quiet(self.args.wait_quiet, self.report, exclude_pids=[self.server.pid])
            row = self._measure_once(run)
            row["attempts"] = attempt + 1
            if row["other_load"] <= NOISY_SHARE:
                break
        return row

    def _measure_once(self, run):
        meter = CpuMeter(self.server.pid)
        cpu0 = children_cpu_s()
        meter.start()
        row = run()
        meter.stop()
        tool_cpu = children_cpu_s() - cpu0
        other = max(meter.other_s - tool_cpu, 0.0)
        ncpu = machine()["nproc"] or 1
        row["other_load"] = round(min(other / (meter.wall_ns / 1e9 * ncpu), 1.0), 3)
        row["tool_cpu_s"] = round(tool_cpu, 3)
        row["server_cpu_s"] = round(meter.server_ns / 1e9, 3)
        row["tool_cpu_us_per_request"] = (tool_cpu * 1e6 / row["requests"]) if row.get("requests") else None
        return row

    def perf_analyzer(self, proto: str, mode: str, level, tokens: int = 1) -> dict:
        a = self.args
        load = (["--concurrency-range", str(level)] if mode == "concurrency"
                else ["--request-rate-range", str(level), "--request-distribution", "poisson"])
        cmd = ["-m", "lstm", "-u", self.address(proto), "-i", proto, *load, "--input-data", str(self.data[tokens]),
               "--measurement-interval", str(int(a.pa_window * 1000)), "--stability-percentage", "10",
               "--max-trials", "10"]

        def run():
            t0 = time.monotonic()
            try:
                res = self.pa.run(cmd, timeout=300)
            except SeqserveError as e:
                return {"error": str(e)[:300], "seconds": time.monotonic() - t0}
            r = res.rows[-1]
            delayed = _DELAYED.findall(res.stdout)
            seconds = time.monotonic() - t0
            return {"throughput": r["Inferences/Second"], "p50_ms": r["p50 latency"] / 1000,
                    "p99_ms": r["p99 latency"] / 1000, "avg_ms": r["Avg latency"] / 1000,
                    "late_share": float(delayed[-1]) / 100 if delayed else 0.0, "seconds": seconds,
                    # requests sent over the whole run (all its windows), for the CPU per request
                    "requests": r["Inferences/Second"] * seconds, "command": " ".join(res.command)}
        return self._measure(run)

    def loadtest(self, proto: str, mode: str, level, tokens: int = 1) -> dict:
        a = self.args
        rep = Path(tempfile.mkdtemp(prefix="lt-", dir=self.tmp))
        load = ["--concurrency", str(level)] if mode == "concurrency" else ["--request-rate", str(level)]
        seconds = a.seconds if mode == "concurrency" else a.rate_seconds
        cmd = [sys.executable, "-m", "cli.main", "loadtest", "--url", f"{proto}://{self.address(proto)}",
               "--model", "lstm", *load, "--duration", f"{seconds}s", "--warmup", f"{a.warmup}s",
               "--prompts", str(self.data[tokens]), "--metrics-url", f"http://127.0.0.1:{self.server.ports['metrics']}/metrics",
               "--report", str(rep)]

        def run():
            t0 = time.monotonic()
            p = subprocess.run(cmd, cwd=ROOT, env={**child_env(), "COLUMNS": "200"}, capture_output=True, text=True,
                               timeout=600)
            if p.returncode != 0:
                return {"error": (p.stdout + p.stderr).strip().splitlines()[-1][:300], "seconds": time.monotonic() - t0}
            lv = json.loads((rep / "results.json").read_text())["levels"][0]
            total = lv["requests"] + lv["errors_outside_window"]
            waited = lv.get("waited_for_connection", 0) / max(lv["requests"], 1)
            return {"throughput": lv["throughput_rps"], "p50_ms": lv["latency_ms"]["p50"],
                    "p99_ms": lv["latency_ms"]["p99"], "avg_ms": lv["latency_ms"]["mean"],
                    "late_share": lv["late_share"] + waited, "timer_late_share": lv["late_share"],
                    "waited_share": waited, "lanes": lv["lanes"],
                    "errors": lv["errors"], "seconds": time.monotonic() - t0,
                    "requests": total / max(seconds, 1e-9) * (seconds + a.warmup),
                    "in_process_cpu_us_per_request": lv["client_cpu_us_per_request"], "command": " ".join(cmd)}
        return self._measure(run)


def median_row(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return {"error": rows[-1].get("error", "failed")}
    out = {}
    for k in ("throughput", "p50_ms", "p99_ms", "avg_ms", "late_share", "other_load", "tool_cpu_us_per_request",
              "in_process_cpu_us_per_request"):
        vals = [r[k] for r in ok if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["rounds"] = len(ok)
    return out


def run(args, report) -> dict:
    results = {"machine": machine(), "versions": versions(), "args": {k: str(v) for k, v in vars(args).items()}}
    with workdir(args.workdir) as wd:
        export, origin = prepare_export("lstm", args.export, wd, steps=args.train_steps, report=report)
        results["model"] = origin
        with fresh_repository(wd) as repo:
            package_models({"lstm": export}, repo)
            report("starting seqserve serve")
            with ServerProcess(repo, models=["lstm"], intra_op_threads=args.threads) as server:
                results["server"] = server.command
                tmp = Path(tempfile.mkdtemp(prefix="lt-vs-pa-", dir=wd))
                rng = np.random.default_rng(0)
                data = {}
                for n in sorted({1, *(int(x) for x in args.inputs.split(","))}):
                    data[n] = tmp / f"data-{n}.json"
                    data[n].write_text(json.dumps({"data": [
                        {"input_ids": {"content": rng.integers(3, 90, n).tolist(), "shape": [n]}} for _ in range(16)]}))
                tools = Tools(server, data, tmp, args, report)
                parts = args.parts.split(",")
                results["concurrency"] = concurrency_rows(tools, args, report) if "concurrency" in parts else []
                results["request_rate"] = rate_rows(tools, args, report) if "rate" in parts else []
    return results


def concurrency_rows(tools: Tools, args, report) -> list[dict]:
    out = []
    levels = [int(x) for x in args.levels.split(",")]
    sizes = [int(x) for x in args.inputs.split(",")]
    protos = args.protocols.split(",")
    total = len(protos) * len(sizes) * args.rounds * len(levels) * 2
    done = 0
    for proto in protos:
        for tokens in sizes:
            raw = {(lvl, t): [] for lvl in levels for t in ("pa", "lt")}
            for rnd in range(args.rounds):
                for lvl in levels:
                    order = ("pa", "lt") if rnd % 2 == 0 else ("lt", "pa")
                    for t in order:
                        report(f"{proto}, {tokens} token(s), concurrency {lvl}, round {rnd + 1}/{args.rounds}: "
                               f"{'perf_analyzer' if t == 'pa' else 'seqserve loadtest'}", done, total)
                        fn = tools.perf_analyzer if t == "pa" else tools.loadtest
                        raw[(lvl, t)].append(fn(proto, "concurrency", lvl, tokens))
                        done += 1
            for lvl in levels:
                pa, lt = median_row(raw[(lvl, "pa")]), median_row(raw[(lvl, "lt")])
                out.append({"protocol": proto, "tokens": tokens, "concurrency": lvl, "perf_analyzer": pa,
                            "loadtest": lt, "runs": {"perf_analyzer": raw[(lvl, "pa")], "loadtest": raw[(lvl, "lt")]}})
    return out


def kept_up(row: dict, rate: float) -> bool:
    return "error" not in row and row["throughput"] >= KEEP_UP * rate and row["late_share"] < LATE_OK


def rate_rows(tools: Tools, args, report) -> list[dict]:
    out = []
    rates = [float(x) for x in args.rates.split(",")]
    for proto in args.protocols.split(","):
        alive = {"pa": True, "lt": True}
        for rate in rates:
            if not any(alive.values()):
                break
            row = {"protocol": proto, "rate": rate}
            for t in ("pa", "lt"):
                if not alive[t]:
                    continue
                report(f"{proto} request rate {rate:g}/s: {'perf_analyzer' if t == 'pa' else 'seqserve loadtest'}")
                fn = tools.perf_analyzer if t == "pa" else tools.loadtest
                r = fn(proto, "request_rate", int(rate) if rate == int(rate) else rate)
                r["kept_up"] = kept_up(r, rate)
                row["perf_analyzer" if t == "pa" else "loadtest"] = r
                if not r["kept_up"]:
                    alive[t] = False          # past this tool's (or the server's) limit: stop it here
            out.append(row)
    return out


def ratio(a, b):
    return None if a is None or b is None or not b else a / b


def render(results: dict, console) -> None:
    from rich.table import Table

    m = results["machine"]
    console.print(f"[bold]seqserve loadtest vs perf_analyzer 2.51[/] - {m.get('cpu', '?')}, {m.get('nproc')} CPUs; "
                  f"client(s) and server on the same machine", highlight=False)
    console.print(f"server: {results['server']}", highlight=False)
    t = Table(title="Closed loop: medians over rounds; ratio = loadtest / perf_analyzer (target: within 10%)",
              title_justify="left")
    for c in ("protocol", "tokens", "concurrency", "PA req/s", "LT req/s", "ratio", "PA p50 ms", "LT p50 ms", "ratio",
              "PA p99 ms", "LT p99 ms", "ratio", "", "PA CPU us/req", "LT CPU us/req", "other load"):
        t.add_column(c, justify="right" if c not in ("protocol", "") else "left")
    for r in results["concurrency"]:
        pa, lt = r["perf_analyzer"], r["loadtest"]
        if "error" in pa or "error" in lt:
            t.add_row(r["protocol"], str(r["tokens"]), str(r["concurrency"]), *(["-"] * 11),
                      pa.get("error", lt.get("error", ""))[:60])
            continue
        ratios = [ratio(lt[k], pa[k]) for k in ("throughput", "p50_ms", "p99_ms")]
        verdict = "PASS" if all(abs(x - 1) <= TARGET for x in ratios) else "MISS"
        t.add_row(r["protocol"], str(r["tokens"]), str(r["concurrency"]), f"{pa['throughput']:.0f}", f"{lt['throughput']:.0f}",
                  f"{ratios[0]:.2f}", f"{pa['p50_ms']:.3f}", f"{lt['p50_ms']:.3f}", f"{ratios[1]:.2f}",
                  f"{pa['p99_ms']:.3f}", f"{lt['p99_ms']:.3f}", f"{ratios[2]:.2f}", verdict,
                  _num(pa["tool_cpu_us_per_request"]), _num(lt["in_process_cpu_us_per_request"]),
                  f"{max(pa['other_load'] or 0, lt['other_load'] or 0):.0%}")
    console.print(t)
    t = Table(title="Open loop, Poisson arrivals: kept up = >= "
                    f"{KEEP_UP:.0%} of the rate achieved and < {LATE_OK:.0%} of sends delayed (PA) / late or waiting "
                    "for a connection (LT)", title_justify="left")
    for c in ("protocol", "rate/s", "PA req/s", "PA delayed", "PA p50 ms", "PA p99 ms", "PA kept up",
              "LT req/s", "LT late+waited", "LT p50 ms", "LT p99 ms", "LT kept up", "other load"):
        t.add_column(c, justify="right" if c != "protocol" else "left")
    best = {}
    for r in results["request_rate"]:
        cells = [r["protocol"], f"{r['rate']:g}"]
        for key in ("perf_analyzer", "loadtest"):
            x = r.get(key)
            if x is None:
                cells += ["-"] * 5
            elif "error" in x:
                cells += ["error", "", "", "", "no"]
            else:
                late = (f"{x['timer_late_share']:.1%}+{x['waited_share']:.1%}" if "timer_late_share" in x
                        else f"{x['late_share']:.1%}")
                cells += [f"{x['throughput']:.0f}", late, f"{x['p50_ms']:.3f}", f"{x['p99_ms']:.3f}",
                          "yes" if x["kept_up"] else "[red]no[/]"]
                if x["kept_up"]:
                    best[(r["protocol"], key)] = max(best.get((r["protocol"], key), 0), r["rate"])
        loads = [x.get("other_load") or 0 for x in (r.get("perf_analyzer"), r.get("loadtest")) if x]
        cells.append(f"{max(loads):.0%}" if loads else "-")
        t.add_row(*cells)
    console.print(t)
    for proto in dict.fromkeys(r["protocol"] for r in results["request_rate"]):
        console.print(f"{proto}: highest rate driven - perf_analyzer {best.get((proto, 'perf_analyzer'), 0):g}/s, "
                      f"seqserve loadtest {best.get((proto, 'loadtest'), 0):g}/s", highlight=False)
    console.print(f"{results['seconds']:.0f} s; " + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v),
                  highlight=False)


def _num(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--export", type=Path, help="lstm export folder (default: train lstm/small for --train-steps)")
    ap.add_argument("--protocols", default="http,grpc", help="comma-separated: http,grpc (default both)")
    ap.add_argument("--levels", default="1,4,16", help="concurrencies (default 1,4,16)")
    ap.add_argument("--inputs", default="1,128", help="tokens per request, one table block each (default 1,128)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per level (default 3)")
    ap.add_argument("--seconds", type=float, default=6.0, help="loadtest's window per closed-loop run (default 6)")
    ap.add_argument("--warmup", type=float, default=1.0, help="loadtest's warm-up per run (default 1)")
    ap.add_argument("--pa-window", type=float, default=2.0,
                    help="perf_analyzer's --measurement-interval, s (default 2; it needs 3 stable windows)")
    ap.add_argument("--rates", default="500,1000,1500,2000,3000,4000,6000,8000",
                    help="open-loop request rates, rising (default 500,1000,1500,2000,3000,4000,6000,8000)")
    ap.add_argument("--parts", default="concurrency,rate", help="concurrency,rate (default both)")
    ap.add_argument("--rate-seconds", type=float, default=4.0, help="loadtest's window per rate (default 4)")
    ap.add_argument("--threads", type=int, default=1, help="server ORT intra-op threads (default 1)")
    ap.add_argument("--train-steps", type=int, default=200, help="steps when training (default 200)")
    ap.add_argument("--workdir", type=Path, help="keep the trained export here and reuse it (default: a temp folder)")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="before each run, wait up to this long for other processes to use < 10%% of the CPUs")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a run the machine was busy during (default 2)")
    ap.add_argument("--json", type=Path, dest="json_out", help="write the results to this file")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, short windows, HTTP only")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.pa_window, args.rate_seconds = 1, 2.0, 1.0, 2.0
        args.protocols, args.rates, args.inputs = "http", "500,2000,4000", "1"
    return args


def main(argv=None) -> int:
    return bench_main(parse_args(argv), run, render, width=180)


if __name__ == "__main__":
    sys.exit(main())
