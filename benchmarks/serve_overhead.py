#!/usr/bin/env python
"""Server overhead of one LSTM step: in-process ONNX Runtime vs `seqserve serve` over HTTP and gRPC.

    python benchmarks/serve_overhead.py                       # trains lstm/small 200 steps first (~1.5 min)
    python benchmarks/serve_overhead.py --export runs/lstm-onnx --json serve_overhead.json
    python benchmarks/serve_overhead.py --quick               # smoke run, < 60 s

Two rows, each timed over every path, one call at a time from one client thread:
    lstm_step   stateful: input_ids [1, 1] in one sequence kept open (sequence_start on the first
                request, then steps); the server keeps h/c between requests
    lstm        stateless full graph, input_ids [1, 1]
Paths:
    in-process  seqserve.runtime.ort.OrtBackend on the same graph with the same thread count, in
                this process; for the step graph the feeds are built and the state carried by
                DecodeState exactly as the server's sequence scheduler does
    http        tritonclient.http (binary input and output tensors), one client and connection
    grpc        tritonclient.grpc, one client (one HTTP/2 channel)
    http raw    http.client keep-alive, KServe JSON in and out (json.loads; logits to numpy)
    http raw bin  http.client keep-alive, Triton's binary tensor extension, no tritonclient
    floors      tritonclient.http / .grpc against bare servers built from the same libraries (Starlette
                on uvicorn with httptools; grpc.aio with Triton's service) that answer every infer with
                a canned logits response: what the protocol stack costs before seqserve does anything
The paths are interleaved in rounds (rotated order) after a warm-up, so drift hits all alike.
Per path the server's own view comes from /v2/models/M/stats (success / queue / compute ns per
request) and the server's CPU time from /proc/PID/task/*/schedstat, so the client's own cost and
the server's front end show up separately. benchmarks/README.md says how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import numpy as np  # noqa: E402

from seqserve.bench.serve import (bench_main, NOISY_SHARE, CpuMeter, FloorServer, ServerProcess, add_deltas,  # noqa: E402
                                  fresh_repository, wait_quiet, machine, package_models, pcts,
                                  prepare_export, stats_delta, versions, workdir)
from seqserve.errors import SeqserveError  # noqa: E402

TARGET_ADDED_MS = {"http": 0.3, "grpc": 0.5}   # issue 13 target 4: p50 added over in-process
TOKENS = np.arange(3, 19, dtype=np.int64)          # token ids cycled through (all in every vocabulary)
PATHS = ("inproc", "http", "grpc", "http_raw_json", "http_raw_bin", "http_floor", "grpc_floor", "grpc_sync_floor")
LABELS = {"inproc": "in-process ORT", "http": "HTTP tritonclient", "grpc": "gRPC tritonclient",
          "http_raw_json": "HTTP raw JSON", "http_raw_bin": "HTTP raw binary",
          "http_floor": "HTTP floor (canned)", "grpc_floor": "gRPC floor (canned)",
          "grpc_sync_floor": "gRPC sync floor (canned)"}
VARIANT_PATHS = ("inproc", "http", "grpc")     # timed again for every --variants entry


def parse_variant(text: str) -> dict:
    """'t2' (2 intra-op threads, ORT's default spinning), 't2-nospin', 't2-spin', 't1-nospin', ..."""
    head, _, spin = text.partition("-")
    if not head.startswith("t") or not head[1:].isdigit() or int(head[1:]) < 1 or spin not in ("", "spin", "nospin"):
        raise ValueError(f"variant {text!r}: expected tN, tN-spin or tN-nospin (N intra-op threads)")
    return {"name": text, "threads": int(head[1:]), "spinning": None if not spin else spin == "spin"}


def label(name: str) -> str:
    base, _, variant = name.partition("@")
    return LABELS[base] + (f" @{variant}" if variant else "")


# ---- one way of calling the model -------------------------------------------------------------

class Path_:
    """call(i) sends token TOKENS[i % len] and returns the logits as a numpy array.
    `pid`: the server process answering (None in-process); `stats`: whether it keeps Triton statistics."""
    pid: int | None = None
    stats = True

    def __init__(self, model: str, stateful: bool, seq_id: int):
        self.model, self.stateful, self.seq_id = model, stateful, seq_id
        self.first = True

    def seq_params(self) -> dict:
        if not self.stateful:
            return {}
        p = {"sequence_id": self.seq_id}
        if self.first:
            p["sequence_start"] = True
            self.first = False
        return p

    def close(self) -> None:
        pass


class InProcess(Path_):
    stats = False

    def __init__(self, model, stateful, seq_id, export, threads, spinning=None):
        super().__init__(model, stateful, seq_id)
        from seqserve.export import load_export
        from seqserve.generation.cache import DecodeState
        from seqserve.runtime import RuntimeOptions
        from seqserve.runtime.ort import OrtBackend

        info = load_export(export)
        self.backend = OrtBackend(info, "step" if stateful else "full", RuntimeOptions(intra_op_threads=threads,
                                                                                     allow_spinning=spinning))
        self.ids = [TOKENS[k:k + 1][None] for k in range(len(TOKENS))]          # (1, 1) each
        self.state = DecodeState.empty(self.backend.spec, 1, self.backend) if stateful else None

    def call(self, i):
        ids = self.ids[i % len(self.ids)]
        if self.state is None:
            return self.backend.run({"input_ids": ids})["logits"]
        feeds = self.state.feeds(ids)                    # what the server's scheduler does per step
        out = self.backend.run(feeds)
        self.state = self.state.advance(feeds, out)
        return out["logits"]


class TritonHttp(Path_):
    def __init__(self, model, stateful, seq_id, port):
        super().__init__(model, stateful, seq_id)
        import tritonclient.http as th

        self.client = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=60, network_timeout=60)
        self.inputs = []
        for k in range(len(TOKENS)):
            t = th.InferInput("input_ids", [1, 1], "INT64")
            t.set_data_from_numpy(TOKENS[k:k + 1][None], binary_data=True)
            self.inputs.append([t])
        self.outputs = [th.InferRequestedOutput("logits", binary_data=True)]

    def call(self, i):
        p = self.seq_params()
        r = self.client.infer(self.model, self.inputs[i % len(self.inputs)], outputs=self.outputs,
                              sequence_id=p.get("sequence_id", 0), sequence_start=p.get("sequence_start", False))
        return r.as_numpy("logits")

    def close(self):
        self.client.close()


class TritonGrpc(Path_):
    def __init__(self, model, stateful, seq_id, port):
        super().__init__(model, stateful, seq_id)
        import tritonclient.grpc as tg

        self.client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        self.inputs = []
        for k in range(len(TOKENS)):
            t = tg.InferInput("input_ids", [1, 1], "INT64")
            t.set_data_from_numpy(TOKENS[k:k + 1][None])
            self.inputs.append([t])
        self.outputs = [tg.InferRequestedOutput("logits")]

    def call(self, i):
        p = self.seq_params()
        r = self.client.infer(self.model, self.inputs[i % len(self.inputs)], outputs=self.outputs,
                              sequence_id=p.get("sequence_id", 0), sequence_start=p.get("sequence_start", False))
        return r.as_numpy("logits")

    def close(self):
        self.client.close()


class RawHttpJson(Path_):
    """http.client keep-alive, the KServe v2 JSON body both ways: the least client code possible."""

    def __init__(self, model, stateful, seq_id, port):
        super().__init__(model, stateful, seq_id)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.path = f"/v2/models/{model}/infer"
        self.headers = {"Content-Type": "application/json"}

    def body(self, i):
        tok = int(TOKENS[i % len(TOKENS)])
        doc = {"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [tok]}],
               "outputs": [{"name": "logits"}]}
        p = self.seq_params()
        if p:
            doc["parameters"] = p
        return json.dumps(doc).encode()

    def call(self, i):
        try:
            self.conn.request("POST", self.path, body=self.body(i), headers=self.headers)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed an idle keep-alive connection (30 s) while we waited for a quiet
            # machine: reconnect once (rare; a reconnect in a timed call costs one TCP handshake)
            self.conn.close()
            self.conn.request("POST", self.path, body=self.body(i), headers=self.headers)
            r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SeqserveError(f"{self.path} answered {r.status}: {data[:300]!r}")
        return self.parse(data, r)

    def parse(self, data, r):
        out = json.loads(data)["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    def close(self):
        self.conn.close()


class RawHttpBinary(RawHttpJson):
    """http.client keep-alive with Triton's binary tensor extension (what tritonclient.http sends)."""

    def body(self, i):
        tok = TOKENS[i % len(TOKENS)]
        doc = {"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64",
                           "parameters": {"binary_data_size": 8}}],
               "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
        p = self.seq_params()
        if p:
            doc["parameters"] = p
        head = json.dumps(doc).encode()
        self.headers = {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(head))}
        return head + struct.pack("<q", int(tok))

    def parse(self, data, r):
        n = int(r.getheader("Inference-Header-Content-Length"))
        out = json.loads(data[:n])["outputs"][0]
        return np.frombuffer(data, dtype=np.float32, count=int(np.prod(out["shape"])), offset=n).reshape(out["shape"])


# ---- measurement ----------------------------------------------------------------------------

def make_paths(model: str, stateful: bool, export: Path, server: ServerProcess, floors: dict, threads: int,
               base_id: int, variants: dict = {}) -> dict:
    ports = server.ports
    paths = {"inproc": InProcess(model, stateful, base_id, export, threads),
             "http": TritonHttp(model, stateful, base_id + 1, ports["http"]),
             "grpc": TritonGrpc(model, stateful, base_id + 2, ports["grpc"]),
             "http_raw_json": RawHttpJson(model, stateful, base_id + 3, ports["http"]),
             "http_raw_bin": RawHttpBinary(model, stateful, base_id + 4, ports["http"])}
    for n in ("http", "grpc", "http_raw_json", "http_raw_bin"):
        paths[n].pid = server.pid
    if floors:
        # The same client calls, the same sequence parameters, answered by a canned response.
        paths["http_floor"] = TritonHttp(model, stateful, base_id + 5, floors["http"].ports["http"])
        paths["grpc_floor"] = TritonGrpc(model, stateful, base_id + 6, floors["grpc"].ports["grpc"])
        paths["grpc_sync_floor"] = TritonGrpc(model, stateful, base_id + 7, floors["grpc_sync"].ports["grpc"])
        for n in ("http", "grpc", "grpc_sync"):
            paths[f"{n}_floor"].pid, paths[f"{n}_floor"].stats = floors[n].pid, False
    for k, (v, (spec, vserver)) in enumerate(variants.items()):
        b = base_id + 10 * (k + 1)
        paths[f"inproc@{v}"] = InProcess(model, stateful, b, export, spec["threads"], spec["spinning"])
        paths[f"http@{v}"] = TritonHttp(model, stateful, b + 1, vserver.ports["http"])
        paths[f"grpc@{v}"] = TritonGrpc(model, stateful, b + 2, vserver.ports["grpc"])
        for n in ("http", "grpc"):
            paths[f"{n}@{v}"].pid = vserver.pid
            paths[f"{n}@{v}"].server = vserver
    return paths


def measure_row(model: str, paths: dict, server: ServerProcess, args, report) -> dict:
    names = list(paths)
    times = {n: [] for n in names}
    stats = {n: None for n in names}
    pids = [p.pid for p in paths.values() if p.pid]
    cpu = {n: CpuMeter(paths[n].pid) for n in names}
    counter = {n: 0 for n in names}
    # Warm-up (untimed): sessions, connections, allocators; the first stateful call starts the sequence.
    for n in names:
        for _ in range(args.warmup):
            paths[n].call(counter[n])
            counter[n] += 1
    # A round during which other processes used more than NOISY_SHARE of the CPUs is dropped and
    # run again (after waiting for a quiet machine), at most `rounds` times in all.
    whole = CpuMeter(pids)
    r, dropped, retries = 0, 0, args.rounds
    gc.collect()
    gc.disable()
    try:
        while r < args.rounds:
            order = names[r % len(names):] + names[:r % len(names)]
            got = {n: {"times": [], "stats": None, "cpu": CpuMeter(paths[n].pid)} for n in names}
            this = CpuMeter(pids)
            this.start()
            for n in order:
                report(f"{model}: round {r + 1}/{args.rounds}, {label(n)}"
                       + (f" ({dropped} dropped: machine busy)" if dropped else ""), r, args.rounds)
                p, g = paths[n], got[n]
                srv = getattr(p, "server", server)
                before = srv.model_stats(model) if p.stats else None
                g["cpu"].start()
                t = g["times"]
                i = counter[n]
                for _ in range(args.calls):
                    t0 = time.perf_counter_ns()
                    p.call(i)
                    t.append(time.perf_counter_ns() - t0)
                    i += 1
                counter[n] = i
                g["cpu"].stop()
                if p.stats:
                    g["stats"] = stats_delta(before, srv.model_stats(model))
            this.stop()
            share = this.other_share()
            if share is not None and share > NOISY_SHARE and retries > 0:
                retries -= 1
                dropped += 1
                gc.collect()
                wait_quiet(args.wait_quiet, report, exclude_pids=pids)
                continue
            for n in names:
                times[n] += got[n]["times"]
                if got[n]["stats"] is not None:
                    stats[n] = add_deltas(stats[n], got[n]["stats"])
                cpu[n].add(got[n]["cpu"])
            whole.add(this)
            r += 1
    finally:
        gc.enable()
    rows = {}
    for n in names:
        s, c = stats[n], cpu[n]
        calls = len(times[n])
        row = {"latency": pcts(times[n]), "client_cpu_us_per_call": c.client_ns / calls / 1e3,
               "server_cpu_us_per_call": c.server_ns / calls / 1e3 if paths[n].pid else None}
        if s is not None:
            k = max(s["success"]["count"], 1)
            row["server_stats_us_per_request"] = {ph: s[ph]["ns"] / k / 1e3 for ph in
                                                  ("success", "queue", "compute_input", "compute_infer",
                                                   "compute_output")}
            row["server_requests"] = s["success"]["count"]
            row["server_failures"] = s["fail"]["count"]
        rows[n] = row
    for n in names:     # over the in-process path with the same ORT settings
        variant = n.partition("@")[2]
        base = rows["inproc" + (f"@{variant}" if variant else "")]["latency"]["p50_ms"]
        rows[n]["p50_added_ms"] = rows[n]["latency"]["p50_ms"] - base
    return {"paths": rows, "other_processes_cpu_share": whole.other_share(), "rounds_dropped_busy": dropped}


def logits_check(paths: dict) -> float:
    """Largest |logit| difference between the paths for one fresh call each (stateless row only)."""
    outs = [np.asarray(p.call(0), dtype=np.float32).reshape(-1) for n, p in paths.items() if not n.endswith("_floor")]
    return float(max(np.max(np.abs(o - outs[0])) for o in outs))


def run(args, report) -> dict:
    from seqserve.export import load_export

    started = time.perf_counter()
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine(), "versions": versions()}
    with workdir(args.workdir) as wd:
        export, source = prepare_export("lstm", args.export, wd, steps=args.train_steps,
                                        max_corpus_bytes=args.max_corpus_bytes, report=report)
        results["model"] = source
        vocab = load_export(export).tokenizer.vocab_size
        with fresh_repository(wd) as repo, contextlib.ExitStack() as stack:
            package_models({"lstm": export}, repo)
            report("starting the server")
            server = stack.enter_context(ServerProcess(repo, ["lstm", "lstm_step"], intra_op_threads=args.threads))
            floors = {}
            if args.floors:
                report("starting the protocol floor servers")
                floors = {k: stack.enter_context(FloorServer(k, vocab)) for k in ("http", "grpc", "grpc_sync")}
            variants = {}
            for spec in args.variants:
                report(f"starting the server for variant {spec['name']}")
                extra = [] if spec["spinning"] is None else ["--ort-spinning" if spec["spinning"] else "--no-ort-spinning"]
                variants[spec["name"]] = (spec, stack.enter_context(ServerProcess(
                    repo, ["lstm", "lstm_step"], intra_op_threads=spec["threads"], extra_args=extra)))
            results["variants"] = {v: {**spec, "command": vs.command} for v, (spec, vs) in variants.items()}
            pids = [server.pid] + [f.pid for f in floors.values()] + [vs.pid for _, vs in variants.values()]
            results["other_processes_cpu_share_at_start"] = wait_quiet(args.wait_quiet, report, pids)
            results["server"] = {"command": server.command, "intra_op_threads": args.threads,
                                 "inter_op_threads": 1, "client_ort_intra_op_threads": args.threads}
            results["rows"] = {}
            for k, (model, stateful) in enumerate((("lstm_step", True), ("lstm", False))):
                paths = make_paths(model, stateful, export, server, floors, args.threads, 1000 * (k + 1), variants)
                try:
                    rows = measure_row(model, paths, server, args, report)
                    rows["max_abs_logit_diff_between_paths"] = None if stateful else logits_check(paths)
                finally:
                    for p in paths.values():
                        p.close()
                results["rows"][model] = rows
    results["targets"] = targets(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def targets(results: dict) -> list[dict]:
    out = []
    for model, rows in results["rows"].items():
        for n in ("http", "grpc"):
            v = rows["paths"][n]["p50_added_ms"]
            floor = rows["paths"].get(f"{n}_floor")
            f = floor["latency"]["p50_ms"] if floor else None
            out.append({"name": f"{model} {LABELS[n]}: p50 added over in-process", "value_ms": v,
                        "target": f"<= {TARGET_ADDED_MS[n]} ms", "pass": v <= TARGET_ADDED_MS[n],
                        "protocol_floor_p50_ms": f, "rest_ms": None if f is None else v - f})
    return out


# ---- output -------------------------------------------------------------------------------------

def render(results: dict, console=None) -> None:
    from rich.table import Table

    from seqserve.bench.output import console as wide_console

    console = console or wide_console()
    m, cfg, src = results["machine"], results["config"], results["model"]
    mc = src["model_config"] or {}
    console.print(f"[bold]Server overhead of one LSTM step[/] - {m['cpu']}, {m['nproc']} CPUs; ORT intra-op "
                  f"{results['server']['intra_op_threads']} thread(s), inter-op 1, in the server and in-process; "
                  f"one client thread; {cfg['rounds']} interleaved rounds x {cfg['calls']} calls per path after "
                  f"{cfg['warmup']} warm-up calls", highlight=False)
    console.print(f"server: {results['server']['command']}", highlight=False, soft_wrap=True)
    console.print(f"model: lstm {mc.get('num_layers')}x{mc.get('hidden_size')}, embed {mc.get('embed_dim')}, "
                  f"vocab {mc.get('vocab_size')} ({src['source']}, {src.get('trained_steps')} training steps)",
                  highlight=False)
    for model, rows in results["rows"].items():
        what = ("stateful step: input_ids [1,1], one sequence kept open" if model.endswith("_step")
                else "stateless full graph: input_ids [1,1]")
        tab = Table(title=f"{model} ({what}): client ms per call; server and CPU columns us per request",
                    title_justify="left")
        for col in ("path", "p50", "p90", "p99", "p50 added\nvs in-proc", "server\nrequest", "of which\nqueue",
                    "of which\nORT run", "server CPU\n/ call", "client CPU\n/ call"):
            tab.add_column(col, justify="right" if col != "path" else "left")
        order = [n for n in PATHS if n in rows["paths"]] + [n for n in rows["paths"] if "@" in n]
        for n in order:
            r = rows["paths"][n]
            lat, s = r["latency"], r.get("server_stats_us_per_request")
            added = "" if n.startswith("inproc") or n.endswith("_floor") else f"{r['p50_added_ms']:+.3f}"
            if n.partition("@")[0] in ("http", "grpc"):
                added += " " + _mark(r["p50_added_ms"] <= TARGET_ADDED_MS[n.partition("@")[0]])
            tab.add_row(label(n), f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['p99_ms']:.3f}", added,
                        _us(s and s["success"]), _us(s and s["queue"]), _us(s and s["compute_infer"]),
                        _us(r["server_cpu_us_per_call"]), _us(r["client_cpu_us_per_call"]))
        console.print(tab)
        share, dropped = rows["other_processes_cpu_share"], rows["rounds_dropped_busy"]
        note = f"other processes' CPU share during the kept rounds: {'?' if share is None else f'{share:.0%}'}"
        if dropped:
            note += f"; {dropped} round(s) dropped and rerun because the machine was busy"
        if rows["max_abs_logit_diff_between_paths"] is not None:
            note += f"; same input on every path: max |logit difference| {rows['max_abs_logit_diff_between_paths']:.1e}"
        console.print(("[yellow]" if share is not None and share > NOISY_SHARE else "[dim]") + note + "[/]",
                      highlight=False)
    tab = Table(title="Targets; the added p50 split into the protocol floor (same client, canned answer from the same "
                      "server libraries) and the rest (seqserve's request path)", title_justify="left")
    for col in ("", "value", "target", "", "protocol floor\np50", "rest"):
        tab.add_column(col, justify="right" if col else "left")
    for t in results["targets"]:
        f, rest = t["protocol_floor_p50_ms"], t["rest_ms"]
        tab.add_row(t["name"], f"{t['value_ms']:.3f} ms", t["target"], _mark(t["pass"]),
                    "-" if f is None else f"{f:.3f} ms", "-" if rest is None else f"{rest:.3f} ms")
    console.print(tab)
    console.print(f"[dim]{results['elapsed_s']} s; onnxruntime {results['versions']['onnxruntime']}, "
                  f"tritonclient {results['versions']['tritonclient']}, grpcio {results['versions']['grpcio']}, "
                  f"uvicorn {results['versions']['uvicorn']}[/]", highlight=False)


def _us(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _mark(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]MISS[/]"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Full description: the module docstring and benchmarks/README.md.")
    ap.add_argument("--export", type=Path, help="lstm export folder (seqserve export); default: train one")
    ap.add_argument("--train-steps", type=int, default=200, help="steps when training (default 200)")
    ap.add_argument("--max-corpus-bytes", type=int, default=4_000_000, help="training text read (default 4 MB)")
    ap.add_argument("--workdir", type=Path, help="keep the trained export here and reuse it (default: a temp folder)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per path and round (default 300)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed calls per path first (default 200)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads, server and in-process (default 1)")
    ap.add_argument("--wait-quiet", type=float, default=30.0,
                    help="wait up to this many seconds for other processes to go quiet, at the start and "
                         "after a busy round (default 30; the step model drops a sequence idle for 60 s)")
    ap.add_argument("--no-floors", dest="floors", action="store_false",
                    help="skip the protocol floor paths (canned answers from bare Starlette/grpc.aio servers)")
    ap.add_argument("--variants", default="",
                    help="also time in-process, HTTP and gRPC with these ORT settings, one more server each, "
                         "interleaved in the same rounds: comma-separated tN[-spin|-nospin] (N intra-op threads; "
                         "session.intra_op.allow_spinning on/off), e.g. t2,t2-nospin")
    ap.add_argument("--json", type=Path, dest="json_out", help="write the results to this file")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 rounds x 50 calls; trains 10 steps on 1 MB")
    args = ap.parse_args(argv)
    try:
        args.variants = [parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    except ValueError as e:
        ap.error(str(e))
    if args.quick:
        args.rounds, args.calls, args.warmup, args.wait_quiet = 3, 50, 20, min(args.wait_quiet, 3.0)
        if args.export is None:
            args.train_steps, args.max_corpus_bytes = min(args.train_steps, 10), min(args.max_corpus_bytes, 1_000_000)
    for name in ("rounds", "calls", "train_steps", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first call starts the sequence)")
    return args


def main(argv=None) -> int:
    return bench_main(parse_args(argv), run, render, width=150)


if __name__ == "__main__":
    sys.exit(main())
