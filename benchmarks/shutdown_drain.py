#!/usr/bin/env python
"""How `seqserve serve` stops with streams in flight: SIGTERM with long SSE and gRPC generation
streams open, for a few --drain-seconds values.

    python benchmarks/shutdown_drain.py                      # tiny lstm, trained here (~15 s)
    python benchmarks/shutdown_drain.py --drain 0,2,5 --streams 4 --json drain.json

Per run it reports, measured from the SIGTERM: when each stream got its final event (finish_reason
"shutdown" expected, since the streams are longer than the drain), whether every SSE body ended
properly (chunked encoding terminated) and every gRPC stream ended with status OK, when the process
exited, and the exit beyond --drain-seconds (the documented bound is FINAL_SECONDS +
LISTENER_GRACE = 2 s, plus one model step and interpreter exit).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqserve.bench.serve import ServerProcess, bench_main, package_models, prepare_export, workdir  # noqa: E402
from seqserve.serve.server import FINAL_SECONDS, LISTENER_GRACE  # noqa: E402


def sse_stream(port: int, started: threading.Event, out: dict, t_term: list) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v2/models/lstm_generate/generate_stream",
              body=json.dumps({"text_input": "def ", "parameters": {"max_tokens": 10**9, "greedy": True}}))
    r = c.getresponse()
    last = None
    try:
        for line in r:
            if line.startswith(b"data:"):
                last = json.loads(line[5:])
                started.set()
        out["ended"] = "complete"
    except Exception as e:             # a cut chunked body
        out["ended"] = type(e).__name__
    out["final"] = (last or {}).get("finish_reason") or (last or {}).get("error")
    out["at"] = time.monotonic() - t_term[0] if t_term else None


def grpc_stream(port: int, started: threading.Event, out: dict, t_term: list) -> None:
    import numpy as np
    import tritonclient.grpc as tg

    q: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(f"127.0.0.1:{port}")
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    t = tg.InferInput("text_input", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"def "], dtype=object))
    c.async_stream_infer("lstm_generate", [t], parameters={"max_tokens": 10**9, "greedy": True})
    out["final"], out["ended"] = None, "no final response"
    while True:
        try:
            result, error = q.get(timeout=60)
        except queue.Empty:
            break
        if error is not None:
            out["ended"] = f"error: {error}"
            break
        started.set()
        if result.get_response().parameters["triton_final_response"].bool_param:
            out["final"] = result.as_numpy("finish_reason")[0].decode()
            out["ended"] = "complete"
            break
    out["at"] = time.monotonic() - t_term[0] if t_term else None
    c.stop_stream()


def one_run(repo: Path, drain: float, streams: int) -> dict:
    server = ServerProcess(repo, extra_args=["--drain-seconds", str(drain)])
    # ServerProcess adds --drain-seconds 2 itself; the last flag wins
    server.start()
    t_term: list = []
    results = [{"kind": "sse" if i % 2 == 0 else "grpc"} for i in range(streams)]
    threads = []
    for r in results:
        started = threading.Event()
        fn, port = (sse_stream, server.ports["http"]) if r["kind"] == "sse" else (grpc_stream, server.ports["grpc"])
        th = threading.Thread(target=fn, args=(port, started, r, t_term), daemon=True)
        th.start()
        if not started.wait(60):
            server.stop()
            raise RuntimeError("a stream never started")
        threads.append(th)
    time.sleep(0.5)
    t_term.append(time.monotonic())
    os.kill(server.pid, signal.SIGTERM)
    code = server.proc.wait(drain + 60)
    exited = time.monotonic() - t_term[0]
    for th in threads:
        th.join(30)
    server.stop()
    return {"drain_s": drain, "exit_s": exited, "beyond_drain_s": exited - drain, "exit_code": code,
            "streams": results}


def run(args, report) -> dict:
    drains = [float(x) for x in args.drain.split(",")]
    with workdir(args.workdir) as wd:
        report("preparing a tiny lstm export", 0, len(drains) + 1)
        export, source = prepare_export("lstm", args.export, wd, preset="tiny", steps=60)
        repo = wd / "repo"
        if not repo.exists():
            package_models({"lstm": export}, repo)
        runs = []
        for i, d in enumerate(drains):
            report(f"SIGTERM with {args.streams} streams, --drain-seconds {d:g}", i + 1, len(drains) + 1)
            runs.append(one_run(repo, d, args.streams))
    return {"source": source, "bound_s": FINAL_SECONDS + LISTENER_GRACE, "runs": runs}


def render(results: dict, out) -> None:
    from rich.table import Table

    t = Table(title=f"shutdown with streams in flight (documented bound: drain + {results['bound_s']:g} s)",
              title_justify="left")
    for col in ("drain s", "exit s", "beyond drain s", "exit code", "streams (kind: final @ s, end)"):
        t.add_column(col)
    for r in results["runs"]:
        streams = "; ".join(f"{s['kind']}: {s.get('final')} @ {s.get('at') or 0:.2f}, {s.get('ended')}"
                            for s in r["streams"])
        t.add_row(f"{r['drain_s']:g}", f"{r['exit_s']:.2f}", f"{r['beyond_drain_s']:+.2f}", str(r["exit_code"]),
                  streams)
    out.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", help="an lstm export to serve (default: train a tiny one)")
    ap.add_argument("--drain", default="0,1,3", help="comma-separated --drain-seconds values")
    ap.add_argument("--streams", type=int, default=4, help="streams in flight (half SSE, half gRPC)")
    ap.add_argument("--workdir", help="keep the trained model and repository here")
    ap.add_argument("--json", dest="json_out", help="write the results here")
    return bench_main(ap.parse_args(), run, render)


if __name__ == "__main__":
    sys.exit(main())
