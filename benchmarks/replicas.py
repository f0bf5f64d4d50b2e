#!/usr/bin/env python
"""Replicas behind the sequence-sticky router (HAProxy on `seqserve deploy`'s haproxy.cfg).

    python benchmarks/replicas.py                         # trains lstm/small 100 steps first (~1 min)
    python benchmarks/replicas.py --export runs/lstm-onnx --seconds 5 --json replicas.json

Two `seqserve serve` replicas and two routers run at once, from the same file: one router holds
replica 0 only, the other both. Measured with `seqserve loadtest` (sequence workload on
lstm_step, 20 steps per sequence, every step carrying x-sequence-id), interleaved in rounds:
    throughput   closed loop, --concurrency lanes: through the 1-replica router vs the 2-replica one
    overhead     one lane: straight to replica 0 vs through the 1-replica router (p50 per request),
                 HTTP and gRPC
On a 2-core machine two replicas share the same cores the one replica had (and the router and the
load generator run there too): expect no throughput gain. This is a correctness set-up first;
the overhead row is what the router costs a request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

from seqserve.bench.serve import ServerProcess, bench_main, machine, package_models, prepare_export, workdir  # noqa: E402
from seqserve.errors import SeqserveError  # noqa: E402


def _loadtest(url: str, concurrency: int, seconds: float) -> dict:
    from seqserve.loadtest import run_loadtest
    from seqserve.loadtest.config import LoadTestConfig, parse_target

    cfg = LoadTestConfig(target=parse_target(url, None), model="lstm_step", workload="sequence",
                         levels=(concurrency,), duration_s=seconds, warmup_s=1.0, sequence_length=20,
                         metrics_url=None)
    level = run_loadtest(cfg)["levels"][0]
    if level["errors"]:
        kinds = level["error_kinds"]
        raise SeqserveError(f"{url}: {level['errors']} errors under load, e.g. {next(iter(kinds.values()))}")
    return {"rps": level["throughput_rps"], "p50_ms": level["latency_ms"]["p50"], "requests": level["requests"]}


def run(args, report) -> dict:
    from seqserve.deploy import DeployOptions, deploy_kubernetes
    from seqserve.deploy.local import find_haproxy, start_router

    if find_haproxy() is None:
        raise SeqserveError("haproxy is not installed (Debian: apt-get install -y haproxy)")
    with workdir(args.workdir) as wd:
        export, source = prepare_export("lstm", args.export, wd, preset="small", steps=100, report=report)
        repo = wd / "replicas-repository"
        if not repo.exists():
            package_models({"lstm": export}, repo)
        cfg = deploy_kubernetes(DeployOptions(repository=repo, out=wd / "replicas-deploy", replicas=2)).out / "haproxy.cfg"
        servers, routers = [], {}
        try:
            for i in range(2):
                report(f"starting replica {i}")
                servers.append(ServerProcess(repo, ["lstm_step"]))
                servers[-1].start()
            addr = [("127.0.0.1", s.ports["http"], s.ports["grpc"]) for s in servers]
            routers[1] = start_router(cfg, addr[:1], wd / "haproxy-1.log")
            routers[2] = start_router(cfg, addr, wd / "haproxy-2.log")
            paths = {
                "throughput, 1 replica": (f"http://{routers[1].http_address}", args.concurrency),
                "throughput, 2 replicas": (f"http://{routers[2].http_address}", args.concurrency),
                "overhead http, direct": (f"http://127.0.0.1:{addr[0][1]}", 1),
                "overhead http, via router": (f"http://{routers[1].http_address}", 1),
                "overhead grpc, direct": (f"grpc://127.0.0.1:{addr[0][2]}", 1),
                "overhead grpc, via router": (f"grpc://{routers[1].grpc_address}", 1),
            }
            runs: dict[str, list] = {k: [] for k in paths}
            for r in range(args.rounds):
                names = list(paths)
                names = names[r % len(names):] + names[:r % len(names)]     # rotate: drift hits every path
                for j, name in enumerate(names):
                    report(f"round {r + 1}/{args.rounds}: {name}", r * len(names) + j, args.rounds * len(names))
                    runs[name].append(_loadtest(*paths[name], args.seconds))
        finally:
            for router in routers.values():
                router.stop()
            for s in servers:
                s.stop()
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_ms")} for k, v in runs.items()}
    return {"benchmark": "replicas", "export": source, "concurrency": args.concurrency, "seconds": args.seconds,
            "rounds": args.rounds, "machine": machine(), "runs": runs, "median": med}


def render(res: dict, out) -> None:
    from rich.table import Table

    med = res["median"]
    t = Table(title=f"lstm_step sequences through HAProxy (x-sequence-id, consistent hash); median of "
                    f"{res['rounds']} rounds, {res['seconds']:g} s each, {res['machine'].get('logical_cpus', '?')} CPUs",
              title_justify="left")
    for col in ("path", "lanes", "requests/s", "p50 ms"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for name, m in med.items():
        lanes = res["concurrency"] if name.startswith("throughput") else 1
        t.add_row(name, str(lanes), f"{m['rps']:.0f}", f"{m['p50_ms']:.3f}")
    out.print(t)
    gain = med["throughput, 2 replicas"]["rps"] / med["throughput, 1 replica"]["rps"]
    out.print(f"2 replicas / 1 replica throughput: {gain:.2f}x", highlight=False)
    for proto in ("http", "grpc"):
        d = med[f"overhead {proto}, via router"]["p50_ms"] - med[f"overhead {proto}, direct"]["p50_ms"]
        out.print(f"router overhead per request ({proto}, p50): {d * 1000:+.0f} us", highlight=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", help="lstm export folder (default: train lstm/small 100 steps)")
    p.add_argument("--workdir", help="keep trained exports here (default: a temporary folder)")
    p.add_argument("--seconds", type=float, default=4.0, help="measured window per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16, help="lanes (sequences in flight) for throughput")
    p.add_argument("--json", dest="json_out", help="write the results here")
    return bench_main(p.parse_args(), run, render, width=110)


if __name__ == "__main__":
    raise SystemExit(main())
