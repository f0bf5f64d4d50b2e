#!/usr/bin/env python
"""Client-held vs server-held state for one LSTM step (lstm small), over HTTP and gRPC.

    python benchmarks/stateless_step.py                      # trains lstm/small 20 steps first (weights barely matter)
    python benchmarks/stateless_step.py --export runs/lstm-onnx --steps 2000 --json stateless_step.json

One `seqserve serve` on a repository packaged with --stateless-step; four paths, one call at a
time from one client thread, input_ids [1, 1] per step:
    server-held  lstm_step: one sequence (sequence_id; sequence_start on its first step); the
                 server keeps h/c between requests
    client-held  lstm_step_state through seqserve's StepStateClient: every request carries
                 past_hidden/past_cell, every response present_hidden/present_cell (fed back)
each over tritonclient.http (binary tensors) and tritonclient.grpc. The paths are interleaved in
rounds (rotated order) after a warm-up, so drift hits all alike. Reported: p50/p90 per step
(all rounds' samples), what client-held adds, and the bytes per request: the state sent (the same
comes back) against the logits every step returns anyway.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import numpy as np  # noqa: E402

from seqserve.bench.serve import ServerProcess, bench_main, machine, pcts, prepare_export, workdir  # noqa: E402

TOKENS = np.arange(3, 19, dtype=np.int64)
PATHS = ("http server-held", "http client-held", "grpc server-held", "grpc client-held")


class ServerHeld:
    """lstm_step over tritonclient: one sequence, kept open; a new one every `restart` steps."""

    def __init__(self, scheme: str, address: str, restart: int = 10_000):
        import tritonclient.grpc as tg
        import tritonclient.http as th

        self.tc = tg if scheme == "grpc" else th
        self.client = self.tc.InferenceServerClient(address)
        self.sid, self.n, self.restart = 1000 + (scheme == "grpc"), 0, restart

    def step(self, i: int) -> np.ndarray:
        ids = TOKENS[i % len(TOKENS)].reshape(1, 1)
        x = self.tc.InferInput("input_ids", [1, 1], "INT64")
        x.set_data_from_numpy(ids)
        start = self.n % self.restart == 0
        if start:
            self.sid += 2
        self.n += 1
        return self.client.infer("lstm_step", [x], sequence_id=self.sid, sequence_start=start).as_numpy("logits")

    def close(self) -> None:
        self.client.close()


class ClientHeld:
    """lstm_step_state through seqserve's StepStateClient (the state fed back by the client)."""

    def __init__(self, url: str, restart: int = 10_000):
        from seqserve.serve.client import StepStateClient

        self.client = StepStateClient(url, "lstm")
        self.seq, self.n, self.restart = self.client.sequence(), 0, restart

    def step(self, i: int) -> np.ndarray:
        if self.n and self.n % self.restart == 0:
            self.seq = self.client.sequence()
        self.n += 1
        return self.seq.step(TOKENS[i % len(TOKENS)].reshape(1, 1))

    def close(self) -> None:
        self.client.close()


def run(args, report) -> dict:
    from seqserve.package import PackageOptions, package_export
    from seqserve.serve.client import StepStateClient

    with workdir(args.workdir) as wd:
        export, source = prepare_export("lstm", args.export, wd, preset="small", steps=20, report=report)
        repo = wd / "stateless-step-repository"
        if not (repo / "lstm_step_state").exists():
            package_export(export, repo, name="lstm",
                           options=PackageOptions(stateless_step=True, sequence_idle_seconds=3600))
        report("starting seqserve serve")
        with ServerProcess(repo, ["lstm_step", "lstm_step_state"]) as server:
            http, grpc = f"127.0.0.1:{server.ports['http']}", f"127.0.0.1:{server.ports['grpc']}"
            paths = {"http server-held": ServerHeld("http", http), "http client-held": ClientHeld(f"http://{http}"),
                     "grpc server-held": ServerHeld("grpc", grpc), "grpc client-held": ClientHeld(f"grpc://{grpc}")}
            with StepStateClient(f"grpc://{grpc}", "lstm") as probe:
                seq = probe.sequence()
                logits = seq.step([[3]])
                sizes = {"state_bytes": seq.state_bytes, "logits_bytes": int(logits.nbytes),
                         "state": {n: list(a.shape) for n, a in seq.state.items()}}
            # the two agree on the numbers before anything is timed
            a, b = paths["grpc server-held"], paths["grpc client-held"]
            for i in range(8):
                np.testing.assert_allclose(a.step(i), b.step(i), atol=1e-5)
            samples: dict[str, list[int]] = {k: [] for k in PATHS}
            per_round: dict[str, list[float]] = {k: [] for k in PATHS}
            for name in PATHS:                                   # warm-up
                for i in range(args.warmup):
                    paths[name].step(i)
            for r in range(args.rounds):
                order = list(PATHS[r % len(PATHS):] + PATHS[:r % len(PATHS)])
                for j, name in enumerate(order):
                    report(f"round {r + 1}/{args.rounds}: {name}", r * len(order) + j, args.rounds * len(order))
                    p, ts = paths[name], []
                    for i in range(args.steps):
                        t0 = time.perf_counter_ns()
                        p.step(i)
                        ts.append(time.perf_counter_ns() - t0)
                    samples[name] += ts
                    per_round[name].append(float(np.percentile(ts, 50)) / 1e6)
            for p in paths.values():
                p.close()
    stats = {k: {**pcts(v), "median_round_p50_ms": statistics.median(per_round[k]), "n": len(v)}
             for k, v in samples.items()}
    return {"benchmark": "stateless_step", "export": source, "steps": args.steps, "rounds": args.rounds,
            "machine": machine(), "sizes": sizes, "paths": stats, "per_round_p50_ms": per_round}


def _ms(stats: dict, q: str) -> float:
    return stats[f"{q}_ms"]


def render(res: dict, out) -> None:
    from rich.table import Table

    sz, st = res["sizes"], res["paths"]
    t = Table(title=f"lstm small, one step (input_ids [1, 1]): server-held vs client-held state; "
                    f"{res['rounds']} rounds x {res['steps']} steps per path, "
                    f"{res['machine'].get('logical_cpus', '?')} CPUs", title_justify="left")
    for col in ("protocol", "state", "p50 ms", "p90 ms", "median round p50 ms", "client-held adds (p50)",
                "state bytes / request"):
        t.add_column(col, justify="left" if col in ("protocol", "state") else "right")
    for proto in ("http", "grpc"):
        s, c = st[f"{proto} server-held"], st[f"{proto} client-held"]
        t.add_row(proto, "server-held (lstm_step)", f"{_ms(s, 'p50'):.3f}", f"{_ms(s, 'p90'):.3f}",
                  f"{s['median_round_p50_ms']:.3f}", "", "0")
        d = _ms(c, "p50") - _ms(s, "p50")
        t.add_row(proto, "client-held (lstm_step_state)", f"{_ms(c, 'p50'):.3f}", f"{_ms(c, 'p90'):.3f}",
                  f"{c['median_round_p50_ms']:.3f}", f"{d * 1000:+.0f} us ({d / _ms(s, 'p50') * 100:+.0f}%)",
                  f"{sz['state_bytes']} out + {sz['state_bytes']} back")
    out.print(t)
    shapes = ", ".join(f"{n} {s}" for n, s in sz["state"].items())
    out.print(f"state per request: {shapes} float32 = {sz['state_bytes']} bytes sent and the same returned; "
              f"the logits every step returns anyway: {sz['logits_bytes']} bytes", highlight=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", help="lstm export folder (default: train lstm/small 20 steps)")
    p.add_argument("--workdir", help="keep trained exports here (default: a temporary folder)")
    p.add_argument("--steps", type=int, default=500, help="timed steps per path per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--json", dest="json_out", help="write the results here")
    return bench_main(p.parse_args(), run, render, width=150)


if __name__ == "__main__":
    raise SystemExit(main())
