"""The embedded server vs tritonserver (python backend) on one repository (benchmarks/triton_vs_embedded.py).

    prepare_triton   tritonserver 2.51 in seqserve's cache and the python-backend stub's numpy-1
                     environment (each downloaded once; nothing is installed)
    EngineServer     `seqserve serve` (engine "seqserve") or `seqserve serve --engine triton` as a
                     child process on port 0, read from its SEQSERVE_READY line, stopped by pid
    Workload         what perf_analyzer drives: lstm_step sequences (gRPC, HTTP) and streamed
                     gpt_generate requests (gRPC streaming)
    run_level        one perf_analyzer run at one concurrency, with the CPU time of the server's
                     whole process tree, of the client (perf_analyzer) and of everyone else, and
                     (generation) the tokens counted from perf_analyzer's profile export
    warm_up          one sequence and one stream per model through tritonclient, before measuring

Both servers get the same repository (packaged with --target triton-python: the embedded server
serves it too), the same models, the same load generator with the same arguments, and one ONNX
Runtime intra-op thread per model: `--intra-op-threads 1` for the embedded server, the
`seqserve.intra_op_threads` config parameter's default (1) for the python-backend models, whose
model.py runs the SAME served model classes (seqserve.triton.python_model). They run one at a
time, never together.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqserve.bench.serve import (ServerProcess, _LIVE, _stop_pid, machine_busy_s, process_cpu_ns,
                                  stats_delta)
from seqserve.errors import SeqserveError

ENGINES = ("seqserve", "triton")
LABELS = {"seqserve": "embedded", "triton": "Triton python"}


# ---- tritonserver and its stub environment -----------------------------------------------------

def prepare_triton(progress=None) -> dict:
    """tritonserver (installed nvidia-pytriton, else the cache's copy, else downloaded into the cache
    once) and the numpy-1 overlay the python-backend stub needs under numpy 2 (built once)."""
    try:
        from seqserve.triton.launcher import TRITONSERVER_VERSION, ensure_tritonserver
    except ImportError as e:
        raise SeqserveError(f"seqserve.triton.launcher is not available in this checkout ({e})") from None
    from seqserve.triton.stub_env import find_stub_env, prepare_overlay

    install = ensure_tritonserver(progress=progress)
    prepare_overlay(progress=progress)
    return {"version": TRITONSERVER_VERSION, "binary": str(install.binary),
            "stub_environment": str(find_stub_env())}


# ---- servers -----------------------------------------------------------------------------------

class EngineServer(ServerProcess):
    """`seqserve serve [--engine triton --triton-log L] --repository R --http-port 0 --grpc-port 0
    --metrics-port 0 --intra-op-threads T --drain-seconds 2 --model M ...` as a child in its own
    session, stopped by pid (the CLI forwards SIGTERM to tritonserver and cleans up after it).

    For the triton engine the CLI ignores --intra-op-threads (it prints a note): the python-backend
    models take their thread count from their config (`seqserve.intra_op_threads`, default 1).
    `tree_pids()`: the child and its descendants (tritonserver and one python stub per model)."""

    def __init__(self, engine: str, repository: Path, models: list[str], intra_op_threads: int = 1,
                 triton_log: Path | None = None, start_timeout: float = 180.0):
        if engine not in ENGINES:
            raise SeqserveError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}")
        self.engine = engine
        self.triton_log = triton_log if engine == "triton" else None
        extra = (["--engine", "triton"] + (["--triton-log", str(triton_log)] if triton_log else [])
                 if engine == "triton" else [])
        super().__init__(repository, models, intra_op_threads=intra_op_threads, extra_args=extra,
                         start_timeout=start_timeout)

    def stop(self) -> int | None:
        # the CLI waits for tritonserver (exit timeout = --drain-seconds) before it exits itself
        if self.proc is None:
            return None
        code = _stop_pid(self.proc, 45.0)
        _LIVE.discard(self)
        return code

    def tree_pids(self) -> list[int]:
        return process_tree(self.pid)

    def stats(self, model: str) -> dict:
        return self.model_stats(model)

    def error_lines(self, n: int = 6) -> list[str]:
        """The last lines of the server's output (and tritonserver's log, where a python stub's
        stderr goes) that report a failure."""
        lines = list(self.output)
        if self.triton_log is not None:
            try:
                lines += self.triton_log.read_text(errors="replace").splitlines()
            except OSError:
                pass
        bad = [ln.strip() for ln in lines if re.search(r"failed|Error|Traceback|exception", ln)
               and not re.search(r"NVML|DCGM|CUDA|cuda|GPU", ln)]
        return bad[-n:]


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


# ---- CPU over one run --------------------------------------------------------------------------

class RunMeter:
    """CPU seconds over a stretch: the server's process tree (in all, and per process name:
    tritonserver, its python stubs, the seqserve process), this process plus its waited-for
    children (perf_analyzer), and everything else on the machine (/proc/stat minus those two)."""

    def __init__(self, server_pids: list[int]):
        self.pids = server_pids

    def _own(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def _per_pid(self) -> dict[int, int]:
        return {p: process_cpu_ns(p) for p in self.pids}

    def __enter__(self) -> "RunMeter":
        self._t0, self._own0, self._srv0, self._busy0 = (time.perf_counter(), self._own(), self._per_pid(),
                                                         machine_busy_s())
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.client_s = self._own() - self._own0
        srv1 = self._per_pid()
        self.by_process: dict[str, float] = collections.defaultdict(float)
        for p, ns in srv1.items():
            self.by_process[_process_name(p)] += max(ns - self._srv0.get(p, 0), 0) / 1e9
        self.server_s = sum(self.by_process.values())
        busy1 = machine_busy_s()
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self._busy0 is None or busy1 is None or self.wall_s <= 0:
            self.other_share = None
        else:
            other = max((busy1 - self._busy0) - self.client_s - self.server_s, 0.0)
            self.other_share = round(min(other / (self.wall_s * ncpu), 1.0), 3)


def _process_name(pid: int) -> str:
    """tritonserver | python stub | seqserve (a python process: the embedded server, or the CLI
    process that runs tritonserver)."""
    comm = _comm(pid)
    if not comm:
        return "gone"
    if comm.startswith("triton_python"):
        return "python stub"
    if comm.startswith("tritonserver"):
        return "tritonserver"
    return "seqserve" if comm.startswith("python") else comm


# ---- workloads ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    key: str                 # "lstm_step grpc"
    model: str
    protocol: str            # grpc | http
    args: tuple[str, ...]    # perf_analyzer arguments besides -m/-u/-i/--concurrency-range
    generation: bool = False
    what: str = ""


def lstm_workload(protocol: str, sequence_length: int) -> Workload:
    return Workload(f"lstm_step {protocol}", "lstm_step", protocol,
                    ("--shape", "input_ids:1", "--input-data", "zero", "--sequence-length", str(sequence_length)),
                    what=f"stateful LSTM steps: input_ids [1,1], sequences of {sequence_length} steps +-20% "
                         f"(perf_analyzer's START ... END, correlation ids; the server keeps h/c per sequence)")


def generation_data(prompts: list[str], max_tokens: int, path: Path) -> Path:
    """perf_analyzer's --input-data JSON: one entry per prompt (used round-robin); BYTES inputs are
    lists of strings."""
    data = {"data": [{"text_input": [p], "max_tokens": [max_tokens], "temperature": [0.0]} for p in prompts]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def gpt_workload(data_file: Path, max_tokens: int) -> Workload:
    return Workload("gpt_generate grpc-stream", "gpt_generate", "grpc",
                    ("--streaming", "--input-data", str(data_file)), generation=True,
                    what=f"streamed generation: max_tokens {max_tokens}, temperature 0 (every request runs to "
                         f"max_tokens), one response per token over gRPC ModelStreamInfer")


@dataclass
class WindowSettings:
    interval_ms: int = 3000
    stability: int = 30
    max_trials: int = 6


_REQUEST_COUNT = re.compile(r"Request count: (\d+)")


class LevelFailed(SeqserveError):
    """perf_analyzer got no answers (the server hung) or did not finish: the level has no numbers."""


_SEQUENCE_IDS = iter(range(1, 1 << 40, 1_000_000))


def run_level(pa, server: EngineServer, w: Workload, concurrency: int, ws: WindowSettings, tmp: Path) -> dict:
    """perf_analyzer at one concurrency: its row, CPU per request, server counters; generation:
    tokens, finish reasons, TTFT from the profile export. An unstable level is measured again with
    the stability check off (`--stability-percentage 1000`) and flagged. LevelFailed when
    perf_analyzer records no responses or does not finish (a hung server)."""
    host_port = f"127.0.0.1:{server.ports[w.protocol]}"
    base = ["-m", w.model, "-u", host_port, "-i", w.protocol, *w.args, "--concurrency-range", str(concurrency),
            "--measurement-interval", str(ws.interval_ms), "--max-trials", str(ws.max_trials)]
    if not w.generation:
        # fresh correlation ids for every run: never a START on an id a previous run left open
        base += ["--sequence-id-range", str(next(_SEQUENCE_IDS))]
    export = tmp / f"profile-{server.engine}-{w.model}-{w.protocol}-{concurrency}.json"
    extra = ["--profile-export-file", str(export)] if w.generation else []
    timeout = ws.interval_ms / 1000 * (ws.max_trials + 1) + 10
    stable = True
    for stability in (ws.stability, 1000):
        before = server.stats(w.model)
        tokens0 = _metric_or_none(server, "seqserve_generated_tokens", w.model) if w.generation else None
        watchdog = _Watchdog(server, w.model)
        try:
            with RunMeter(server.tree_pids()) as meter, watchdog:
                res = pa.run([*base, "--stability-percentage", str(stability), *extra], timeout=timeout)
        except SeqserveError as e:
            msg = str(e)
            if watchdog.fired:
                raise LevelFailed(f"the server answered no request for {STALL_S:g} s; perf_analyzer was stopped "
                                  f"({msg[:200]})") from None
            if "Failed to obtain stable" in msg and "No valid requests" not in msg and stability != 1000:
                stable = False
                continue
            raise LevelFailed(msg) from None
        break
    after = server.stats(w.model)
    delta = stats_delta(before, after)
    (row,) = [r for r in res.rows if r.get("Concurrency") == concurrency] or res.rows[:1]
    requests = max(delta["success"]["count"], 1)
    counted = _REQUEST_COUNT.search(res.stdout)
    out = {
        "concurrency": concurrency,
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": row["p50 latency"] / 1e3, "p90_ms": row["p90 latency"] / 1e3,
        "p99_ms": row["p99 latency"] / 1e3, "avg_ms": row["Avg latency"] / 1e3,
        "stable": stable, "stability_percentage": stability,
        "requests_measured": int(counted.group(1)) if counted else None,
        "server_requests_in_run": delta["success"]["count"], "server_failures": delta["fail"]["count"],
        "server_executions_in_run": delta["execution_count"],
        "requests_per_execution": delta["success"]["count"] / max(delta["execution_count"], 1),
        "server_cpu_us_per_request": meter.server_s / requests * 1e6,
        "client_cpu_us_per_request": meter.client_s / requests * 1e6,
        "server_cpu_us_per_request_by_process": {k: v / requests * 1e6 for k, v in sorted(meter.by_process.items())},
        "run_s": meter.wall_s, "other_cpu_share": meter.other_share,
        "perf_analyzer_row": row, "command": " ".join(res.command),
    }
    if w.generation:
        out.update(_generation_numbers(export, row, out, requests))
        if tokens0 is not None:
            tokens1 = _metric_or_none(server, "seqserve_generated_tokens", w.model)
            out["server_generated_tokens_in_run"] = None if tokens1 is None else tokens1 - tokens0
        export.unlink(missing_ok=True)
    return out


STALL_S = 6.0          # no request completed for this long while perf_analyzer runs: the server hung


class _Watchdog:
    """While perf_analyzer runs: polls the model's request counters once a second; when none has
    completed for STALL_S, kills perf_analyzer (our child, by its process group id, which is its
    pid: PerfAnalyzer runs it in a session of its own), so that a hung server costs seconds, not
    the whole timeout."""

    def __init__(self, server: EngineServer, model: str):
        self.server, self.model, self.fired = server, model, False
        self._stop = threading.Event()

    def _count(self) -> int | None:
        try:
            st = self.server.stats(self.model)["inference_stats"]
        except (SeqserveError, OSError, KeyError, ValueError):
            return None
        return st["success"]["count"] + st["fail"]["count"]

    def _run(self) -> None:
        last, since = self._count(), time.monotonic()
        while not self._stop.wait(1.0):
            n = self._count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > STALL_S:
                me = os.getpid()
                for pid in process_tree(me):
                    if pid != me and _comm(pid) == "perf_analyzer":
                        self.fired = True
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass
                return

    def __enter__(self) -> "_Watchdog":
        self._thread = threading.Thread(target=self._run, daemon=True, name="hang-watchdog")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _metric_or_none(server: EngineServer, name: str, model: str) -> float | None:
    if server.engine != "seqserve":
        return None
    try:
        return server.metric(name, model)
    except SeqserveError:
        return None


def _generation_numbers(export: Path, row: dict, out: dict, requests_in_run: int) -> dict:
    """From perf_analyzer's profile export (every measured request with its response timestamps and
    outputs): tokens per request, finish reasons, TTFT and full-request latency percentiles."""
    try:
        doc = json.loads(export.read_text())
    except (OSError, ValueError) as e:
        raise SeqserveError(f"perf_analyzer's profile export {export} is unreadable: {e}") from None
    reqs = [q for ex in doc.get("experiments", []) for q in ex.get("requests", [])]
    if not reqs:
        raise SeqserveError(f"perf_analyzer's profile export {export} holds no requests")
    tokens, responses, reasons, ttft, full = [], [], collections.Counter(), [], []
    for q in reqs:
        ts, outs = q.get("response_timestamps") or [], q.get("response_outputs") or []
        responses.append(len(ts))
        tokens.append(sum(1 for o in outs if o.get("text_output")))
        reasons[next((o["finish_reason"] for o in reversed(outs) if o.get("finish_reason")), "none")] += 1
        if ts:
            ttft.append((ts[0] - q["timestamp"]) / 1e6)
            full.append((ts[-1] - q["timestamp"]) / 1e6)
    tok_per_req = float(np.mean(tokens))
    resp_per_req = float(np.mean(responses))
    response_tput = float(row.get("Response Throughput") or 0.0)
    # one response per token: tokens/s = responses/s x (tokens / responses), exact when equal
    tokens_s = response_tput * (sum(tokens) / max(sum(responses), 1))
    return {
        "requests_in_export": len(reqs), "tokens_per_request": tok_per_req,
        "tokens_per_request_min": int(min(tokens)), "responses_per_request": resp_per_req,
        "finish_reasons": dict(reasons), "response_throughput": response_tput, "tokens_per_s": tokens_s,
        "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "request_latency_p50_ms_from_export": float(np.percentile(full, 50)),
        "server_cpu_us_per_token": out["server_cpu_us_per_request"] / max(tok_per_req, 1e-9),
    }


# ---- warm-up (tritonclient; untimed) ----------------------------------------------------------

def warm_up(server: EngineServer, sequence_length: int, prompt: str, max_tokens: int,
            lstm: bool = True, gpt: bool = True) -> None:
    """One lstm_step sequence and one gpt_generate stream, so that sessions, allocators and the
    stubs' first calls are behind us before perf_analyzer's first window."""
    import queue

    import tritonclient.grpc as g

    client = g.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
    try:
        if lstm:
            t = g.InferInput("input_ids", [1, 1], "INT64")
            t.set_data_from_numpy(np.zeros((1, 1), np.int64))
            for i in range(sequence_length):
                client.infer("lstm_step", [t], sequence_id=987654321, sequence_start=i == 0,
                             sequence_end=i == sequence_length - 1, client_timeout=60)
        if gpt:
            got: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: got.put((result, error)))
            inputs = []
            for name, dt, arr in (("text_input", "BYTES", np.array([prompt.encode()], dtype=object)),
                                  ("max_tokens", "INT32", np.array([max_tokens], np.int32)),
                                  ("temperature", "FP32", np.array([0.0], np.float32))):
                x = g.InferInput(name, [1], dt)
                x.set_data_from_numpy(arr)
                inputs.append(x)
            client.async_stream_infer("gpt_generate", inputs)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                result, error = got.get(timeout=max(deadline - time.monotonic(), 0.1))
                if error is not None:
                    raise SeqserveError(f"warm-up generation on the {LABELS[server.engine]} server failed: {error}")
                finish = result.as_numpy("finish_reason")
                if finish is not None and finish.size and finish.reshape(-1)[0]:
                    break
            client.stop_stream()
    except queue.Empty:
        raise SeqserveError(f"warm-up generation on the {LABELS[server.engine]} server got no answer") from None
    finally:
        client.close()


@dataclass
class Cell:
    """All rounds of one (workload, concurrency, engine)."""

    rounds: list[dict] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        v = [r[key] for r in self.rounds if r.get(key) is not None]
        return float(np.median(v)) if v else None
