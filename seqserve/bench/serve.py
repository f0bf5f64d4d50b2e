"""Shared machinery of the serving benchmarks (benchmarks/serve_overhead.py, benchmarks/continuous_batching.py).

    prepare_export      an existing export folder, or train a model of the `small` preset briefly
                        and export it, in a child process (the timing process never imports torch)
    package_models      `seqserve package` into a (temporary) model repository
    ServerProcess       `seqserve serve` in a child process on port 0, read from its SEQSERVE_READY
                        line; stopped by pid (SIGTERM, then SIGKILL) on every way out
    FloorServer         the protocol stack alone: Starlette/uvicorn or grpc.aio answering a canned response
    CpuMeter            CPU time of this process, of the server (all its threads, ns from schedstat)
                        and of everything else on the machine, over a measured stretch
    stdlib_prompts      real text for prompts: lines of the Python standard library's sources
    pcts, machine, Reporter, write_json

The benchmark processes are clients: they load ONNX Runtime (for the in-process baseline) and
the protocol clients, never torch, so the client side looks like a real client.
"""

from __future__ import annotations

import atexit
import collections
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqserve.errors import SeqserveError

ROOT = Path(__file__).resolve().parents[2]          # the checkout: cli/ and seqserve/ live here
NOISY_SHARE = 0.10                                   # other processes' CPU share above which a run is flagged


# ---- exports ---------------------------------------------------------------------------------

_TRAIN_CODE = r"""
import sys
from seqserve.training import TrainConfig, train
from seqserve.export import export_checkpoint
family, preset, steps, ckpt, out, max_bytes = sys.argv[1:7]
def report(step, total, m):
    print(f"PROGRESS {step} {total} {m.get('train_bpc', float('nan')):.3f}", flush=True)
r = train(TrainConfig(family=family, preset=preset, steps=int(steps), max_corpus_bytes=int(max_bytes)),
          ckpt, progress=report)
print(f"TRAINED {r.steps} {r.val_bpc:.4f}", flush=True)
export_checkpoint(ckpt, out)
print("EXPORTED", flush=True)
"""


def child_env() -> dict:
    """Environment for child processes: they import this very checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def prepare_export(family: str, export: str | Path | None, workdir: Path, *, preset: str = "small",
                   steps: int = 200, max_corpus_bytes: int = 4_000_000, report=None) -> tuple[Path, dict]:
    """The export folder to serve, and a record of where it came from.

    `export` given: used as is (its family must match). Otherwise `seqserve train --family F
    --preset P --steps N` + `seqserve export` (library calls, in a child process) into
    `workdir`; an export already there from the same settings is reused."""
    from seqserve.export import load_export

    if export is not None:
        info = load_export(export)
        if info.family != family:
            raise SeqserveError(f"export {export} is a {info.family} model; expected {family}")
        tr = info.raw.get("training") or {}
        return Path(export), {"source": "given", "path": str(Path(export).resolve()),
                              "model_config": info.raw.get("model_config"), "trained_steps": tr.get("steps"),
                              "val_bpc": tr.get("val_bpc")}
    tag = f"{family}-{preset}-{steps}steps" + ("" if max_corpus_bytes == 4_000_000 else f"-{max_corpus_bytes}B")
    out, ckpt = workdir / f"{tag}-export", workdir / f"{tag}-checkpoint"
    if not (out / "seqserve.json").is_file():
        cmd = [sys.executable, "-c", _TRAIN_CODE, family, preset, str(steps), str(ckpt), str(out),
               str(max_corpus_bytes)]
        if report:
            report(f"training {family} ({preset}, {steps} steps) and exporting it", 0, steps)
        # stderr into the same pipe, so a chatty child can never block on a full stderr pipe
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
                                cwd=ROOT, start_new_session=True)
        other: collections.deque = collections.deque(maxlen=20)
        try:
            for line in proc.stdout:
                if line.startswith("PROGRESS"):
                    _, step, total, bpc = line.split()
                    if report:
                        report(f"training {family} ({preset}): {bpc} bits/char", int(step), int(total))
                elif line.startswith("TRAINED"):
                    if report:
                        report(f"exporting {family}", steps, steps)
                elif line.strip():
                    other.append(line.rstrip())
            proc.wait()
        except BaseException:
            _stop_pid(proc, 5.0)
            raise
        if proc.returncode != 0:
            lines = list(other)
            raise SeqserveError(f"training/exporting the {family} benchmark model failed: "
                                f"{lines[-1] if lines else f'exit code {proc.returncode}'}")
    info = load_export(out)
    tr = info.raw.get("training") or {}
    return out, {"source": "trained", "command": f"seqserve train --family {family} --preset {preset} "
                                                 f"--steps {steps}; seqserve export",
                 "model_config": info.raw.get("model_config"), "trained_steps": tr.get("steps"),
                 "val_bpc": tr.get("val_bpc")}


def package_models(exports: dict[str, Path], repository: Path) -> list[str]:
    """`seqserve package EXPORT --repository R --name NAME` for each; the model names written."""
    from seqserve.package import PackageOptions, package_export

    # A benchmark waits for a quiet machine between rounds, sometimes for minutes: its sequences
    # must outlive that (the default idle limit, 60 s, once expired one mid-run).
    options = PackageOptions(sequence_idle_seconds=3600)
    names = []
    for name, export in exports.items():
        names += [m.name for m in package_export(export, repository, name=name, options=options)]
    return names


# ---- the server process ----------------------------------------------------------------------

_LIVE: set = set()                                   # started servers not yet stopped (for atexit)


def _stop_pid(proc: subprocess.Popen, grace: float) -> int | None:
    """SIGTERM the process by its pid, wait up to `grace` seconds, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
    return proc.returncode


@atexit.register
def _stop_all() -> None:
    for s in list(_LIVE):
        s.stop()


def exit_on_sigterm() -> None:
    """SIGTERM to the benchmark behaves like Ctrl-C: `finally` blocks run and stop the server."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


class ServerProcess:
    """`seqserve serve --repository R --http-port 0 --grpc-port 0 --metrics-port 0 ...` as a child.

    It runs in its own session, so a Ctrl-C in the terminal reaches only the benchmark, which
    then stops the server by pid (also on errors and at interpreter exit)."""

    def __init__(self, repository: Path, models: list[str] = (), intra_op_threads: int = 1,
                 extra_args: list[str] = (), start_timeout: float = 120.0):
        self.args = ["serve", "--repository", str(repository), "--http-port", "0", "--grpc-port", "0",
                     "--metrics-port", "0", "--intra-op-threads", str(intra_op_threads), "--drain-seconds", "2",
                     *[a for m in models for a in ("--model", m)], *extra_args]
        self.command = "seqserve " + " ".join(self.args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.output: collections.deque = collections.deque(maxlen=200)
        self._ready = threading.Event()

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", *self.args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     env={**child_env(), "COLUMNS": "120"}, cwd=ROOT, start_new_session=True)
        _LIVE.add(self)
        threading.Thread(target=self._read, daemon=True, name="server-output").start()
        deadline = time.monotonic() + self.start_timeout
        try:
            while not self._ready.wait(0.05):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = "\n".join(list(self.output)[-15:])
                    why = f"exited with code {self.proc.returncode}" if self.proc.poll() is not None else \
                        f"was not ready after {self.start_timeout:g} s"
                    raise SeqserveError(f"the server ({self.command}) {why}; its last output:\n{tail}")
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            if line.startswith("SEQSERVE_READY"):
                self.ports = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
                self._ready.set()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = _stop_pid(self.proc, 10.0)
        _LIVE.discard(self)
        return code

    # -- small HTTP helpers (one short connection each; never inside a timed stretch) ------------

    def _get(self, port: int, path: str) -> bytes:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise SeqserveError(f"GET {path} answered {r.status}: {body[:200]!r}")
            return body
        finally:
            c.close()

    def model_stats(self, model: str) -> dict:
        """Triton's statistics JSON entry of one model (/v2/models/M/stats)."""
        return json.loads(self._get(self.ports["http"], f"/v2/models/{model}/stats"))["model_stats"][0]

    def metric(self, name: str, model: str) -> float:
        """One Prometheus counter/gauge of one model from the metrics port."""
        text = self._get(self.ports["metrics"], "/metrics").decode()
        prefix = f'{name}{{model="{model}",'
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        raise SeqserveError(f"/metrics has no {name} for model {model}")

    def cpu_ns(self) -> int:
        return process_cpu_ns(self.pid)


_FLOOR_CODE = r"""
import asyncio, json, sys
import numpy as np
kind, vocab = sys.argv[1], int(sys.argv[2])
logits = np.zeros((1, 1, vocab), np.float32)
if kind == "http":
    import socket
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    head = json.dumps({"model_name": "floor", "model_version": "1", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [1, 1, vocab],
         "parameters": {"binary_data_size": logits.nbytes}}]}).encode()
    body = head + logits.tobytes()
    async def infer(request):
        await request.body()
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})
    app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])
    # proto IPPROTO_TCP, as uvicorn's own bind gets: asyncio sets TCP_NODELAY only on such sockets
    # (with proto 0 Nagle's algorithm holds the response body back until the client's delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"SEQSERVE_READY http={sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, loop="asyncio", http="httptools", lifespan="off", access_log=False,
                                  log_level="warning")).run(sockets=[sock])
else:
    import grpc
    from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pbg
    resp = pb.ModelInferResponse(model_name="floor", model_version="1")
    t = resp.outputs.add(); t.name, t.datatype = "logits", "FP32"; t.shape.extend([1, 1, vocab])
    resp.raw_output_contents.append(logits.tobytes())
    if kind == "grpc_sync":        # synchronous grpcio on a thread pool: the other way to serve gRPC
        from concurrent import futures
        class SyncServicer(pbg.GRPCInferenceServiceServicer):
            def ModelInfer(self, request, context):
                return resp
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pbg.add_GRPCInferenceServiceServicer_to_server(SyncServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"SEQSERVE_READY grpc={port}", flush=True)
        server.wait_for_termination()
        sys.exit(0)
    class Servicer(pbg.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            return resp
    async def main():
        server = grpc.aio.server()
        pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"SEQSERVE_READY grpc={port}", flush=True)
        await server.wait_for_termination()
    asyncio.run(main())
"""


class FloorServer(ServerProcess):
    """The protocol stack's floor: the same libraries seqserve serves with (Starlette on uvicorn with
    httptools; grpc.aio with Triton's service) answering every infer with a canned logits response,
    no model, no parsing of the request beyond reading it. kind: "http", "grpc" or "grpc_sync"
    (synchronous grpcio on a 4-thread pool)."""

    def __init__(self, kind: str, vocab: int):
        super().__init__(Path("."))
        self.kind, self.vocab = kind, vocab
        self.command = f"{kind} floor server (canned response)"

    def start(self) -> None:
        self.args = []
        self.proc = subprocess.Popen([sys.executable, "-c", _FLOOR_CODE, self.kind, str(self.vocab)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, env=child_env(), cwd=ROOT, start_new_session=True)
        _LIVE.add(self)
        threading.Thread(target=self._read, daemon=True, name="floor-output").start()
        if not self._ready.wait(60):
            self.stop()
            raise SeqserveError(f"the {self.command} did not start: " + " | ".join(list(self.output)[-5:]))


def stats_delta(before: dict, after: dict) -> dict:
    """Per phase {count, ns} differences of two statistics entries, plus inference/execution counts."""
    out = {p: {"count": after["inference_stats"][p]["count"] - before["inference_stats"][p]["count"],
               "ns": after["inference_stats"][p]["ns"] - before["inference_stats"][p]["ns"]}
           for p in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}
    out["inference_count"] = after["inference_count"] - before["inference_count"]
    out["execution_count"] = after["execution_count"] - before["execution_count"]
    return out


def add_deltas(a: dict | None, b: dict) -> dict:
    if a is None:
        return json.loads(json.dumps(b))
    for k, v in b.items():
        if isinstance(v, dict):
            for kk in v:
                a[k][kk] += v[kk]
        else:
            a[k] += v
    return a


# ---- CPU accounting --------------------------------------------------------------------------

def process_cpu_ns(pid: int) -> int:
    """On-CPU time of all live threads of a process, in ns (/proc/PID/task/*/schedstat); falls back
    to /proc/PID/stat (10 ms ticks, includes exited threads)."""
    total, found = 0, False
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        return 0
    if found:
        return total
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int((int(fields[11]) + int(fields[12])) * 1e9 / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0


def machine_busy_s() -> float | None:
    """Seconds all CPUs spent busy since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used over a stretch: this process (client), the server(s), and everyone else.

    `m = CpuMeter(pid or [pids])`, then `m.start()` ... `m.stop()` any number of times; the sums are
    in `m.client_ns`, `m.server_ns` (all given processes), `m.wall_ns`, `m.other_s`."""

    def __init__(self, server_pids):
        self.pids = [p for p in (server_pids if isinstance(server_pids, (list, tuple)) else [server_pids]) if p]
        self.client_ns = self.server_ns = self.wall_ns = 0
        self.other_s = 0.0
        self._mark = None

    def _servers(self) -> int:
        return sum(process_cpu_ns(p) for p in self.pids)

    def start(self) -> None:
        self._mark = (time.perf_counter_ns(), time.process_time_ns(), self._servers(), machine_busy_s())

    def stop(self) -> None:
        wall0, own0, srv0, busy0 = self._mark
        srv1 = self._servers()
        own1, wall1, busy1 = time.process_time_ns(), time.perf_counter_ns(), machine_busy_s()
        self.wall_ns += wall1 - wall0
        self.client_ns += own1 - own0
        self.server_ns += srv1 - srv0
        if busy0 is not None and busy1 is not None:
            self.other_s += max((busy1 - busy0) - (own1 - own0) / 1e9 - (srv1 - srv0) / 1e9, 0.0)

    def add(self, other: "CpuMeter") -> None:
        for k in ("client_ns", "server_ns", "wall_ns", "other_s"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def other_share(self) -> float | None:
        """Share of all CPUs' time that other processes used (0-1); /proc/stat counts 10 ms ticks,
        so short stretches are noisy and only the sum over many means something."""
        if not self.wall_ns:
            return None
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return round(min(self.other_s / (self.wall_ns / 1e9 * ncpu), 1.0), 3)


def other_load_now(seconds: float = 0.5, exclude_pids=()) -> float | None:
    """Share of all CPUs that processes other than this one (and `exclude_pids`) use right now."""
    meter = CpuMeter(list(exclude_pids))
    meter.start()
    time.sleep(seconds)
    meter.stop()
    return meter.other_share()


def wait_quiet(max_wait: float, report=None, exclude_pids=()) -> float | None:
    """Wait (up to max_wait seconds) until other processes use at most NOISY_SHARE of the CPUs;
    returns the last share measured."""
    deadline = time.monotonic() + max_wait
    share = other_load_now(0.5, exclude_pids)
    while share is not None and share > NOISY_SHARE and time.monotonic() < deadline:
        if report:
            report(f"waiting for a quiet machine: other processes use {share:.0%} of the CPUs")
        share = other_load_now(1.0, exclude_pids)
    return share


def console(width: int = 150):
    """The result tables' console: seqserve/bench/output.py's (no 80-column cut when redirected)."""
    from seqserve.bench.output import console as wide

    return wide(width)


# ---- prompts ---------------------------------------------------------------------------------

def stdlib_prompts(tokenizer, count: int, seed: int = 0, min_chars: int = 40, max_chars: int = 200) -> list[str]:
    """`count` prompts of real text: runs of consecutive non-blank lines of the Python standard
    library's .py files (the default training corpus), between min_chars and max_chars long,
    that the tokenizer encodes; deterministic for a seed."""
    from seqserve.data.corpus import stdlib_dir

    root = stdlib_dir()
    files = sorted(p for p in root.glob("*.py"))
    rng = random.Random(seed)
    rng.shuffle(files)
    prompts: list[str] = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        start = rng.randrange(max(len(lines) - 20, 1))
        chunk = ""
        for line in lines[start:start + 40]:
            if not line.strip():
                if len(chunk) >= min_chars:
                    break
                continue
            if len(chunk) + len(line) + 1 > max_chars:
                break
            chunk += line + "\n"
        if len(chunk) < min_chars:
            continue
        try:
            if not tokenizer.encode(chunk):
                continue
        except SeqserveError:
            continue                                  # a character outside the vocabulary
        prompts.append(chunk)
        if len(prompts) == count:
            return prompts
    if not prompts:
        raise SeqserveError("no prompt from the standard library's sources could be encoded by the tokenizer")
    return (prompts * (count // len(prompts) + 1))[:count]


# ---- numbers, machine, output ------------------------------------------------------------------

def pcts(ns, qs=(50, 90, 99)) -> dict:
    """Percentiles (ms) of durations given in ns, plus mean and count."""
    a = np.asarray(ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {**{f"p{q}_ms": None for q in qs}, "mean_ms": None, "n": 0}
    return {**{f"p{q}_ms": float(np.percentile(a, q)) for q in qs}, "mean_ms": float(a.mean()), "n": int(a.size)}


def machine() -> dict:
    from seqserve.bench.decode import _machine

    return {**_machine(), "nproc": os.cpu_count()}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__     # the wheel may be onnxruntime-gpu
    except ImportError:
        pass
    for p in ("numpy", "tritonclient", "grpcio", "uvicorn", "starlette", "aiohttp", "httptools"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    out["python"] = sys.version.split()[0]
    return out


def write_json(results: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=_plain) + "\n")
    except OSError as e:
        raise SeqserveError(f"cannot write {path}: {e.strerror}") from None


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, Path):
        return str(v)
    raise TypeError(type(v).__name__)


@dataclass
class Reporter:
    """One transient rich progress line on stderr: what is happening now, with a bar when a total is known."""

    progress: object = None
    task: int | None = None

    def __enter__(self) -> "Reporter":
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        self.progress.update(self.task, description=message, completed=done or 0, total=total)

    def log(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/]", highlight=False)


def workdir(path: str | Path | None):
    """A context manager giving the folder for trained exports and the repository: `path` (kept,
    and exports in it reused) or a temporary folder removed afterwards."""
    import contextlib

    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(Path(path))
    return _TempDir()


class _TempDir:
    def __enter__(self) -> Path:
        self._t = tempfile.TemporaryDirectory(prefix="seqserve-bench-serve-")
        return Path(self._t.name)

    def __exit__(self, *exc) -> None:
        self._t.cleanup()


class fresh_repository:
    """`with fresh_repository(root) as repo:` a new, empty repository folder under root (packaging
    into an old one would add versions), removed afterwards."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="repository-", dir=self.root))
        return self.path

    def __exit__(self, *exc) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def bench_main(args, run, render, width: int = 150) -> int:
    """What every benchmark script's main() does: run(args, report) under a progress Reporter,
    SeqserveError as one line (exit 2), Ctrl-C with the server stopped (130), then render the
    results on a `width`-column console and write --json if asked. Adds "seconds" (wall time)."""
    from rich.console import Console
    from rich.markup import escape

    exit_on_sigterm()
    out = console(width)
    t0 = time.monotonic()
    try:
        with Reporter() as report:
            results = run(args, report)
    except SeqserveError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; server stopped")
        return 130
    results.setdefault("seconds", time.monotonic() - t0)
    render(results, out)
    if getattr(args, "json_out", None):
        write_json(results, args.json_out)
        out.print(f"results written to {args.json_out}", highlight=False)
    return 0

