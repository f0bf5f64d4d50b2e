"""A real Triton Inference Server (2.51.0, python backend only) for tests, without installing anything.

The `tritonserver` binary, its python backend and the python-backend stubs come from the
`nvidia-pytriton==0.7.0` wheel: an installed nvidia-pytriton is used as is; otherwise the wheel is
`pip download`ed once and its `pytriton/tritonserver/` and `nvidia_pytriton.libs/` folders are
extracted into `<seqserve cache>/tritonserver/2.51.0/` (same atomic, file-locked build as
seqserve.tools.perf_analyzer; `pip install nvidia-pytriton` would downgrade numpy below 2, so it
is avoided). The binary finds its libraries through its own RPATH ($ORIGIN/../../../nvidia_pytriton.libs).

    install = tritonserver_or_skip()          # pytest.skip only when the wheel cannot be had
    proc, http, grpc, metrics = start_tritonserver(repo_dir, tmp_path)
    try: ...
    finally: stop_tritonserver(proc)

or `with tritonserver(repo_dir, tmp_path) as (proc, http, grpc, metrics): ...`.

How the server is run (measured on Debian 12, Python 3.11, no GPU):
- a backend folder `<tmp_path>/triton_backends/python/` with libtriton_python.so,
  triton_python_backend_utils.py and the stub built for THIS interpreter's Python version;
- the stub is an embedded Python that ignores PYTHONPATH: it finds this virtual environment because
  its `bin/` is first on PATH (models need no EXECUTION_ENV_PATH), and it loads libpython from
  sysconfig's LIBDIR, put on LD_LIBRARY_PATH;
- HTTP, gRPC and metrics on free ports of 127.0.0.1, in its own session/process group (setsid);
- the python backend's shared-memory regions get a prefix unique to this server
  (`--backend-config=python,shm-region-prefix-name=...`), so stop_tritonserver removes exactly the
  /dev/shm/triton_python_backend_shm_region_* files this server made, never another server's.
Start-up takes 1-4 s; noise about NVML/DCGM/CUDA on a machine without a GPU is harmless.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqserve.tools.perf_analyzer import (
    PYTRITON_LIBS,
    PYTRITON_PLATFORM,
    PYTRITON_REQUIREMENT,
    PackageDownloadError,
    build_once,
    cache_root,
    check_platform,
    pip_download,
)

TRITONSERVER_VERSION = "2.51.0"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


@dataclass(frozen=True)
class TritonInstall:
    """Where tritonserver lives: `root` holds pytriton/tritonserver/ and nvidia_pytriton.libs/."""

    root: Path

    @property
    def server_dir(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root / PYTRITON_LIBS

    def stub(self, version: str | None = None) -> Path:
        """The python backend stub for Python `version` ('3.11'; default: this interpreter's)."""
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"


def _installed() -> TritonInstall | None:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return None
    install = TritonInstall(Path(str(dist.locate_file(""))))
    return install if install.binary.is_file() else None


def ensure_tritonserver(cache_dir: Path | None = None, progress=None) -> TritonInstall:
    """tritonserver 2.51.0: the installed nvidia-pytriton's, else extracted once into the cache.
    Raises PackageDownloadError (a SeqserveError) when the wheel cannot be downloaded."""
    check_platform("tritonserver")
    installed = _installed()
    if installed is not None:
        return installed
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "tritonserver"
    target = root / TRITONSERVER_VERSION

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".downloads-", dir=tmp.parent) as dl:
            wheel = pip_download(PYTRITON_REQUIREMENT, Path(dl), platform_tag=PYTRITON_PLATFORM,
                                 progress=progress, wheels_dir=root / "wheels")
            if progress:
                progress(f"extracting tritonserver from {wheel.name}")
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    name = info.filename
                    if info.is_dir() or not name.startswith(("pytriton/tritonserver/", PYTRITON_LIBS + "/")):
                        continue
                    dest = tmp / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    executable = "/bin/" in name or "/python_backend_stubs/" in name
                    dest.chmod(0o755 if executable else 0o644)
        (tmp / "manifest.json").write_text(json.dumps(
            {"tritonserver": TRITONSERVER_VERSION, "from": wheel.name,
             "build_seconds": round(time.monotonic() - t0, 2)}, indent=2) + "\n")

    build_once(target, build)
    return TritonInstall(target)


def tritonserver_or_skip() -> TritonInstall:
    """ensure_tritonserver(), or pytest.skip when nvidia-pytriton cannot be downloaded here."""
    import pytest

    try:
        return ensure_tritonserver()
    except PackageDownloadError as e:
        pytest.skip(f"no tritonserver: {PYTRITON_REQUIREMENT} cannot be downloaded ({e})")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _backend_dir(install: TritonInstall, tmp_path: Path) -> Path:
    backends = tmp_path / "triton_backends"
    python = backends / "python"
    stub = install.stub()
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no python backend stub for Python "
                           f"{sys.version_info.major}.{sys.version_info.minor} ({stub})")
    python.mkdir(parents=True, exist_ok=True)
    for src in (*sorted((install.server_dir / "backends" / "python").iterdir()), stub):
        if src.is_file() and not (python / src.name).exists():
            shutil.copy2(src, python / src.name)
    return backends


def server_env(install: TritonInstall) -> dict[str, str]:
    """PATH with this venv's bin/ first (the stub finds the venv that way), LD_LIBRARY_PATH with
    this interpreter's LIBDIR (libpython for the stub) and the wheel's libraries."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(install.libs), env.get("LD_LIBRARY_PATH"))
                                             if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    return env


def _log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_tritonserver(repo_dir: Path, tmp_path: Path, *, install: TritonInstall | None = None,
                       extra_args: Sequence[str] = (), timeout: float = 90.0,
                       ) -> tuple[subprocess.Popen, int, int, int]:
    """Start tritonserver on `repo_dir` and wait until /v2/health/ready answers 200 (all models
    loaded). Returns (proc, http_port, grpc_port, metrics_port); stop it with stop_tritonserver(proc).
    The log is `proc.log_path` (in tmp_path). RuntimeError with the log's tail if it does not start."""
    install = install or ensure_tritonserver()
    backends = _backend_dir(install, tmp_path)
    env = server_env(install)
    for attempt in range(3):  # a free port can be taken between choosing it and the server binding it
        http, grpc, metrics = _free_ports(3)
        prefix = f"{SHM_PREFIX}seqserve{os.getpid()}x{secrets.token_hex(4)}_"
        log_path = tmp_path / f"tritonserver-{http}.log"
        cmd = [str(install.binary), "--model-repository", str(repo_dir), "--backend-directory", str(backends),
               f"--backend-config=python,shm-region-prefix-name={prefix}",
               "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--exit-timeout-secs", "5", *extra_args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=tmp_path, start_new_session=True)
        proc.log_path, proc.shm_prefix, proc.ports = log_path, prefix, (http, grpc, metrics)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ready(http):
                return proc, http, grpc, metrics
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        exited = proc.poll()
        stop_tritonserver(proc)
        tail = _log_tail(log_path)
        if exited is not None and "already in use" in tail.lower() and attempt < 2:
            continue
        why = f"exited with {exited}" if exited is not None else f"was not ready within {timeout:g} s"
        raise RuntimeError(f"tritonserver {why}: {' '.join(cmd)}\n--- {log_path} (tail) ---\n{tail}")
    raise AssertionError("unreachable")


def shm_regions(proc: subprocess.Popen) -> list[Path]:
    """The python backend shared-memory regions of this server still in /dev/shm."""
    return sorted(SHM_DIR.glob(proc.shm_prefix + "*"))


def stop_tritonserver(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server and wait; then SIGKILL whatever is left of its process group (an orphaned
    python stub) by the group's id, and remove this server's leftover /dev/shm regions."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the server's pid
    prefix = getattr(proc, "shm_prefix", None)
    if prefix and prefix.startswith(SHM_PREFIX + "seqserve"):
        for region in SHM_DIR.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                region.unlink()


@contextlib.contextmanager
def tritonserver(repo_dir: Path, tmp_path: Path, **kw) -> Iterator[tuple[subprocess.Popen, int, int, int]]:
    """start_tritonserver(...) as a context manager that always stops it."""
    started = start_tritonserver(repo_dir, tmp_path, **kw)
    try:
        yield started
    finally:
        stop_tritonserver(started[0])


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
