"""A real tritonserver (Triton Inference Server 2.51.0, python backend) run as a child process.

Finding and fetching the binary and preparing the stub's environment live in install.py (re-exported
here); this module starts, watches and stops the server.

Where the binary comes from: the `nvidia-pytriton==0.7.0` wheel (the `seqserve[triton]` extra),
which ships `tritonserver`, its python backend and python-backend stubs built for Python 3.8-3.13.
`find_tritonserver()` takes an installed nvidia-pytriton, else a copy already extracted into
`<seqserve cache>/tritonserver/2.51.0/`; it never downloads. `fetch_tritonserver()` makes that copy
(`pip download` of the wheel, two folders extracted; installing nvidia-pytriton would pin numpy<2):

    python -m seqserve.triton.launcher fetch      # tritonserver + the stub's numpy-1 environment

How a server is started (`start(TritonConfig(repository=...))`, measured on Debian 12, no GPU):
- a backend folder `<seqserve cache>/tritonserver/backends/py<X.Y>-<hash>/python/` with
  libtriton_python.so, triton_python_backend_utils.py and the stub built for that Python version;
- the stub is an embedded Python that ignores PYTHONPATH: it takes the first `python3` on PATH as
  its home, so the environment's `bin/` goes first on PATH (no model needs an EXECUTION_ENV_PATH,
  which would have to be set per model in its config.pbtxt), and the interpreter's LIBDIR (its
  libpython) plus the wheel's libraries go on LD_LIBRARY_PATH (the copied stub and backend lose
  the wheel's $ORIGIN RPATH). That environment is this one when its numpy is 1.x; under numpy 2
  it is the numpy-1 overlay of seqserve.triton.stub_env (the stub is built for numpy 1's ABI:
  under numpy 2 tensors are silently wrong, BYTES inputs crash the stub);
- HTTP/gRPC/metrics on `host` (port 0 = a free port picked here), in a session of its own
  (setsid) so a terminal's Ctrl-C reaches only us: `serve()` forwards SIGINT/SIGTERM;
- `--exit-on-error=false`: a model that fails to load (its model.py raises, a corrupt ONNX file,
  an unreadable config.pbtxt) is UNAVAILABLE with its reason and the others serve. Triton's
  default (`true`) makes the whole server exit with "failed to load all models";
- readiness = `/v2/health/live` answering 200: tritonserver opens its HTTP port only after
  loading every model. `/v2/health/ready` stays strict (all models READY), as the embedded server;
- the python backend's shared-memory regions get a prefix of this server's own
  (`--backend-config=python,shm-region-prefix-name=...`); stop() SIGKILLs what is left of the
  process group (an orphaned stub), by the group's id, and removes exactly those /dev/shm files;
- started from the main thread, tritonserver gets SIGTERM if we die (PR_SET_PDEATHSIG), so even a
  SIGKILLed `seqserve serve` leaves no server behind.
On SIGTERM tritonserver 2.51 waits up to --exit-timeout-secs for in-flight requests AND for
clients' open HTTP keep-alive connections, then exits 1 ("Exit timeout expired"): clients should
close() theirs. Start-up takes 1-4 s; noise about NVML/DCGM/CUDA without a GPU is harmless.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqserve.errors import SeqserveError
from seqserve.tools.perf_analyzer import (
    PYTRITON_REQUIREMENT,
    PackageDownloadError,
)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

from seqserve.triton.install import (  # noqa: F401 - re-exported: the launcher's public API
    FETCH_COMMAND, TRITONSERVER_VERSION, TRITON_EXTRA, Progress, StubPython, TritonInstall, TritonNotFoundError, cached_backends, default_cache_dir, ensure_tritonserver, fetch_tritonserver, find_tritonserver, installed_tritonserver, cached_tritonserver, prepare_backends, prepare_stub_python, server_env, stub_python, _missing_libraries, _stub_for,
)


__all__ = [
    "FETCH_COMMAND", "ModelState", "PackageDownloadError", "SHM_PREFIX", "TRITONSERVER_VERSION", "TRITON_EXTRA", "StubPython",
    "TritonConfig", "TritonInstall", "TritonInterrupted", "TritonNotFoundError", "TritonServer",
    "TritonStartError", "ensure_tritonserver", "fetch_tritonserver", "find_tritonserver",
    "cached_backends", "prepare_backends", "prepare_stub_python", "process_group_alive", "repository_index", "running",
    "serve", "server_env", "start", "stop", "stub_python",
]


class TritonStartError(SeqserveError, RuntimeError):
    """tritonserver exited, or did not become live, while starting (message ends with its log's tail)."""


class TritonInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived while tritonserver was starting; it was stopped."""


# --------------------------------------------------------------------------------------------------
# configuration and a running server

@dataclass(frozen=True)
class TritonConfig:
    repository: Path                      # Triton model repository: <model>/config.pbtxt + <model>/<version>/
    host: str = "127.0.0.1"               # address of all three endpoints (0.0.0.0 exposes them)
    http_port: int = 0                    # 0 = a free port; HTTP is always on (readiness and index need it)
    grpc_port: int = 0                    # 0 = a free port, -1 = off
    metrics_port: int = 0                 # 0 = a free port, -1 = off
    models: tuple[str, ...] = ()          # load only these (--model-control-mode=explicit); () = all
    backend_dir: Path | None = None       # a --backend-directory used as is; None = cached_backends()
    python_env: Path | None = None        # prefix of the stub's environment; None = see stub_python()
    work_dir: Path | None = None          # cwd and log; None = log_file's folder, else a temporary one removed by stop()
    log_file: Path | None = None          # tritonserver's stdout+stderr; None = work_dir/tritonserver-<http>.log
    log_verbose: int = 0                  # --log-verbose
    exit_timeout_s: int = 30              # --exit-timeout-secs: how long SIGTERM waits for in-flight work
    exit_on_error: bool = False           # True: a model that fails to load stops the server (Triton's default)
    strict_readiness: bool = True         # /v2/health/ready = every model READY (Triton's default)
    startup_timeout_s: float = 120.0      # until /v2/health/live answers
    extra_args: tuple[str, ...] = ()      # more tritonserver flags, last (a later flag wins)


@dataclass(frozen=True)
class ModelState:
    name: str
    version: str          # '' when Triton could not read the model's config
    state: str            # READY, UNAVAILABLE, LOADING, ...
    reason: str = ""      # Triton's reason in full (a python traceback spans lines)
    backend: str = ""     # backend or platform named in config.pbtxt

    @property
    def summary(self) -> str:
        """The reason's first line ('Internal: RuntimeError: ...')."""
        return next((ln.strip() for ln in self.reason.splitlines() if ln.strip()), "")


def _probe_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _http(host: str, port: int, method: str, path: str, body: bytes | None = None,
          timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    h = _probe_host(host)
    url = f"http://{'[' + h + ']' if ':' in h else h}:{port}{path}"
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def repository_index(host: str, http_port: int, timeout: float = 10.0) -> list[dict]:
    """POST /v2/repository/index: one dict per model (and version) with name, version, state, reason.
    An entry without `state` is a model Triton could not read (or did not load: explicit mode)."""
    status, body = _http(host, http_port, "POST", "/v2/repository/index", b"{}", timeout)
    if status != 200:
        raise SeqserveError(f"tritonserver's repository index answered {status or 'nothing'}: {body[:300]!r}")
    return json.loads(body)


def _free_ports(n: int, host: str) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host or "0.0.0.0", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# "Poll failed for model directory 'm': failed to read text proto from m/config.pbtxt" (log, 2.51)
_POLL_FAILED = re.compile(r"""(?:Poll failed for model directory|failed to poll model) '(?P<name>[^']+)': (?P<reason>.*?)"?\s*$""")
_PROTOBUF_ERROR = re.compile(r"^\[libprotobuf ERROR [^\]]*\] (?P<msg>.*)$")
# harmless on a machine without a GPU; left out of the log tails put in errors
_NOISE = re.compile(r"CudaDriverHelper|NVML|DCGM|pinned memory pool|CUDA memory pool|Collecting CPU metrics")


class TritonServer:
    """A started tritonserver. `ports`: {'http': P, 'grpc': P, 'metrics': P}, without those turned off."""

    def __init__(self, config: TritonConfig, install: TritonInstall, proc: subprocess.Popen, command: list[str],
                 ports: dict[str, int], log_path: Path, shm_prefix: str, work_dir: Path, owns_work_dir: bool):
        self.config, self.install, self.proc, self.command = config, install, proc, command
        self.ports, self.log_path, self.shm_prefix = ports, log_path, shm_prefix
        self.work_dir, self._owns_work_dir = work_dir, owns_work_dir

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        h = _probe_host(self.config.host)
        return f"http://{'[' + h + ']' if ':' in h else h}:{self.ports['http']}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def live(self) -> bool:
        return _http(self.config.host, self.ports["http"], "GET", "/v2/health/live", timeout=1.0)[0] == 200

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole process group (server and stubs), by its id."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def shm_regions(self) -> list[Path]:
        """This server's python-backend shared-memory regions still in /dev/shm."""
        return sorted(SHM_DIR.glob(self.shm_prefix + "*"))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 25) -> str:
        """The last `n` informative lines (no ASCII tables, no GPU-less noise), after the error
        lines (E...) that came before them: a model's load failure is often followed by many lines."""
        lines = [ln for ln in self.log_text().splitlines()
                 if ln.strip() and not ln.startswith(("+", "|")) and not _NOISE.search(ln)]
        if not lines:
            return "(empty log)"
        errors = [ln for ln in lines[:-n] if re.match(r"E\d{4} ", ln)][-10:]
        return "\n".join([*errors, "..."] if errors else []) + ("\n" if errors else "") + "\n".join(lines[-n:])

    def _log_reasons(self) -> dict[str, str]:
        """Why a model has no state in the index, from the log ('Poll failed for model directory')."""
        reasons: dict[str, str] = {}
        previous = ""
        for line in self.log_text().splitlines():
            m = _POLL_FAILED.search(line)
            if m:
                reason = m.group("reason").replace("\\n", "\n").strip()
                pb = _PROTOBUF_ERROR.match(previous)
                reasons[m.group("name")] = reason + (f" ({pb.group('msg').strip()})" if pb else "")
            previous = line
        return reasons

    def models(self) -> list[ModelState]:
        """Every model of the repository (or of config.models) with its state and, if it failed, why."""
        rows = repository_index(self.config.host, self.ports["http"])
        wanted = set(self.config.models)
        reasons = None
        out: list[ModelState] = []
        for row in rows:
            name = row.get("name", "")
            if wanted and name not in wanted:
                continue
            backend = _config_backend(Path(self.config.repository) / name / "config.pbtxt")
            if "state" in row:
                out.append(ModelState(name, row.get("version", ""), row["state"], row.get("reason", ""), backend))
                continue
            if reasons is None:
                reasons = self._log_reasons()
            out.append(ModelState(name, row.get("version", ""), "UNAVAILABLE",
                                  reasons.get(name, "not loaded (see tritonserver's log)"), backend))
        return out

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM and wait (exit_timeout_s + 30 s by default), then SIGKILL what is left of the
        process group (an orphaned stub), remove this server's /dev/shm regions and a temporary
        work folder. Returns tritonserver's exit code. Safe to call twice."""
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.config.exit_timeout_s + 30 if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()
        self.kill()   # start_new_session: the group id is the server's pid
        deadline = time.monotonic() + 5   # until the kernel has removed them (SIGKILL is asynchronous)
        while process_group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.shm_prefix.startswith(SHM_PREFIX + "seqserve"):
            for region in self.shm_regions():
                with contextlib.suppress(OSError):
                    region.unlink()
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer(pid={self.pid}, ports={self.ports})"


def _config_backend(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]*)"', text, re.MULTILINE)
    return m.group(1) if m else ""


def _check_repository(config: TritonConfig) -> Path:
    repo = Path(config.repository).absolute()   # Triton reports paths relative to the flag as given
    if not repo.is_dir():
        raise SeqserveError(f"model repository {repo} is not a folder")
    have = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [m for m in config.models if m not in have]
    if unknown:
        raise SeqserveError(f"no model {', '.join(map(repr, unknown))} in {repo} (it has: {', '.join(have) or 'none'})")
    return repo


def _command(config: TritonConfig, install: TritonInstall, repo: Path, backends: Path, shm_prefix: str,
             ports: dict[str, int]) -> list[str]:
    host = config.host
    cmd = [str(install.binary), "--model-repository", str(repo), "--backend-directory", str(backends),
           f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
           "--http-address", host, "--http-port", str(ports["http"])]
    for name in ("grpc", "metrics"):
        cmd += ([f"--{name}-address", host, f"--{name}-port", str(ports[name])] if name in ports
                else [f"--allow-{name}=false"])
    cmd += [f"--exit-on-error={str(config.exit_on_error).lower()}",
            f"--strict-readiness={str(config.strict_readiness).lower()}",
            f"--exit-timeout-secs={int(config.exit_timeout_s)}"]
    if config.log_verbose:
        cmd.append(f"--log-verbose={int(config.log_verbose)}")
    if config.models:
        cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in config.models)]
    return cmd + list(config.extra_args)


def start(config: TritonConfig, install: TritonInstall | None = None, *,
          cancelled: Callable[[], bool] | None = None) -> TritonServer:
    """Start tritonserver and wait until it is live (every model loaded or failed). Never downloads.
    TritonStartError with the log's tail if it exits or is not live within startup_timeout_s;
    TritonInterrupted if `cancelled()` turns true meanwhile (it is stopped either way)."""
    install = install or find_tritonserver()
    repo = _check_repository(config)
    stub = stub_python(config.python_env)
    # a temporary folder only when there is nowhere else to put the log (a SIGKILLed caller leaks it)
    owns_work_dir = config.work_dir is None and config.log_file is None
    work_dir = (Path(config.work_dir) if config.work_dir is not None
                else Path(config.log_file).absolute().parent if config.log_file is not None
                else Path(tempfile.mkdtemp(prefix="seqserve-triton-")))
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        backends = (Path(config.backend_dir) if config.backend_dir is not None
                    else cached_backends(install, stub.version))
        env = server_env(install, stub)
        missing = _missing_libraries(backends / "python" / "triton_python_backend_stub", env)
        if missing:
            raise SeqserveError(
                f"the python-backend stub cannot load {', '.join(missing)} (LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}): "
                f"use a Python {stub.version} built with a shared libpython (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
        return _launch(config, install, repo, backends, env, work_dir, owns_work_dir, cancelled)
    except BaseException:
        if owns_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise


def _launch(config, install, repo, backends, env, work_dir, owns_work_dir, cancelled) -> TritonServer:
    requested = {"http": config.http_port, "grpc": config.grpc_port, "metrics": config.metrics_port}
    for attempt in range(3):   # a port picked here can be taken before tritonserver binds it
        free = iter(_free_ports(3, config.host))
        ports = {k: (p if p > 0 else next(free)) for k, p in requested.items() if p >= 0 or k == "http"}
        shm_prefix = f"{SHM_PREFIX}seqserve{os.getpid()}x{secrets.token_hex(4)}_"
        log_path = Path(config.log_file) if config.log_file else work_dir / f"tritonserver-{ports['http']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = _command(config, install, repo, backends, shm_prefix, ports)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=work_dir, start_new_session=True, preexec_fn=_die_with_parent())
        # the server owns the work folder only once it is returned; until then we remove it
        server = TritonServer(config, install, proc, cmd, ports, log_path, shm_prefix, work_dir, False)
        try:
            deadline = time.monotonic() + config.startup_timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                if cancelled is not None and cancelled():
                    raise TritonInterrupted()
                if server.live():
                    server._owns_work_dir = owns_work_dir
                    return server
                time.sleep(0.1)
        except BaseException:
            server.stop(timeout=10)
            raise
        exited = proc.poll()
        tail = server.log_tail()
        server.stop(timeout=10)
        # "failed to start HTTP service: Unavailable - Socket '127.0.0.1:P' already in use": retry only
        # when P is a port picked here, not one the caller asked for
        taken = {int(p) for p in re.findall(r"Socket '[^']*:(\d+)' already in use", tail)}
        picked = [ports[k] for k in ports if requested[k] == 0]
        conflict = any(p in taken for p in picked) if taken else "already in use" in tail and bool(picked)
        if exited is not None and attempt < 2 and conflict:
            continue
        why = (f"exited with {exited}" if exited is not None
               else f"was not live within {config.startup_timeout_s:g} s")
        kept = f" (log: {log_path})" if config.log_file or not owns_work_dir else ""
        raise TritonStartError(f"tritonserver {why}{kept}; command: {' '.join(cmd)}\n"
                               f"--- tritonserver log (tail) ---\n{tail}")
    raise AssertionError("unreachable")


def _die_with_parent() -> Callable[[], None] | None:
    """In the child: SIGTERM it when we die, even by SIGKILL (Linux PR_SET_PDEATHSIG), so a killed
    `seqserve serve` leaves no tritonserver behind. The signal follows the THREAD that started it,
    so only a start from the main thread asks for it."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:   # we died before prctl took effect
            os._exit(1)

    return preexec


def stop(server: TritonServer, timeout: float | None = None) -> int:
    """server.stop(timeout): SIGTERM, wait, clean up; returns tritonserver's exit code."""
    return server.stop(timeout)


@contextlib.contextmanager
def running(config: TritonConfig, install: TritonInstall | None = None) -> Iterator[TritonServer]:
    """start(config) as a context manager that always stops it."""
    server = start(config, install)
    try:
        yield server
    finally:
        server.stop()


def serve(config: TritonConfig, install: TritonInstall | None = None,
          on_ready: Callable[[TritonServer], None] | None = None) -> int:
    """Run tritonserver until SIGINT/SIGTERM (main thread only): start, on_ready(server), forward the
    first signal to it (a second one kills its process group), wait, clean up.

    Returns tritonserver's exit code after a forwarded signal: 0 for a clean stop, 1 when it hit
    exit_timeout_s first (2.51 also waits for clients' idle keep-alive HTTP connections) and stopped
    anyway. SeqserveError with its log's tail when it exits on its own with an error;
    TritonInterrupted when the signal arrives during start-up."""
    received: list[int] = []
    holder: list[TritonServer] = []

    def on_signal(signum, frame):
        received.append(signum)
        if holder:
            holder[0].send_signal(signum) if len(received) == 1 else holder[0].kill()

    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        server = start(config, install, cancelled=lambda: bool(received))
        holder.append(server)
        try:
            if received:   # arrived after start()'s last look
                server.send_signal(received[0])
            if on_ready is not None:
                on_ready(server)
            rc = _wait(server, received)
            tail = server.log_tail() if rc != 0 and not received else ""
        finally:
            server.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc != 0 and not received:
        kept = f" (log: {server.log_path})" if server.log_path.exists() else ""
        raise SeqserveError(f"tritonserver exited with {rc} on its own{kept}\n--- tritonserver log (tail) ---\n{tail}")
    return rc


def _wait(server: TritonServer, received: list[int]) -> int:
    """Wait for tritonserver to exit; once a signal was forwarded, at most exit_timeout_s + 30 s."""
    deadline = None
    while True:
        try:
            return server.proc.wait(0.25)
        except subprocess.TimeoutExpired:
            pass
        if received and deadline is None:
            deadline = time.monotonic() + server.config.exit_timeout_s + 30
        if deadline is not None and time.monotonic() > deadline:
            server.kill()


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------------
# python -m seqserve.triton.launcher fetch|where

def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m seqserve.triton.launcher",
                                description=f"tritonserver {TRITONSERVER_VERSION} for `seqserve serve --engine triton`.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help=f"download {PYTRITON_REQUIREMENT} and extract tritonserver into seqserve's "
                                     "cache (nothing is installed), and prepare the stub's numpy-1 environment")
    f.add_argument("--cache-dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    w = sub.add_parser("where", help="print where tritonserver is found (never downloads)")
    w.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args(argv)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.command == "fetch":
            install = ensure_tritonserver(args.cache_dir, progress)
            prepare_stub_python(progress)
        else:
            install = find_tritonserver(args.cache_dir)
        print(f"tritonserver {TRITONSERVER_VERSION} ({install.source}): {install.binary}")
        stub = stub_python()
        print(f"python-backend stub environment: {stub.bin.parent} (Python {stub.version})")
    except SeqserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
