"""Run the router here: a real HAProxy on the haproxy.cfg `seqserve deploy` wrote, in front of
replicas on this machine (the test suite and benchmarks/replicas.py use it).

    router = start_router(out / "haproxy.cfg", [(host, http_port, grpc_port), ...], log_path)
    ... router.http_address, router.grpc_address ...
    router.stop()                        # SIGTERM by pid, then SIGKILL

The file is run as written: only the environment says where the replicas are (haproxy.local_env).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from seqserve.deploy.haproxy import local_env
from seqserve.errors import SeqserveError


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                            if os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Router:
    proc: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    health_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(cannot read {self.log_path}: {e})"


def start_router(config: str | Path, replicas: list[tuple[str, int, int]], log_path: str | Path,
                 host: str = "127.0.0.1", timeout: float = 20.0) -> Router:
    """HAProxy on `config` with the replicas [(host, http_port, grpc_port)] in its slots, on free
    ports of `host`; returns once its health endpoint answers (SeqserveError if it does not)."""
    binary = find_haproxy()
    if binary is None:
        raise SeqserveError("haproxy is not installed (Debian: apt-get install -y haproxy)")
    ports = [free_port(host) for _ in range(3)]
    env = {**os.environ, **local_env(replicas, *(f"{host}:{p}" for p in ports))}
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    router = Router(proc, host, *ports, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not router.alive():
            raise SeqserveError(f"haproxy exited with {proc.returncode}: {router.log_tail()}")
        if _answers(host, ports[2], "/healthz"):
            return router
        time.sleep(0.05)
    router.stop()
    raise SeqserveError(f"haproxy did not answer on {host}:{ports[2]} within {timeout:g} s: {router.log_tail()}")


def _answers(host: str, port: int, path: str) -> bool:
    try:
        c = http.client.HTTPConnection(host, port, timeout=1)
        try:
            c.request("GET", path)
            return c.getresponse().status == 200
        finally:
            c.close()
    except OSError:
        return False
