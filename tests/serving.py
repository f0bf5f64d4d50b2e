"""A real `seqserve serve` process for tests: start on free ports, talk to it, stop it.

    server = start_server(repo, log_dir)                # waits for the SEQSERVE_READY line
    try:
        status, headers, body = server.request("POST", "/v2/models/lstm/infer", body)
        tritonclient.http.InferenceServerClient(server.http_address)
        tritonclient.grpc.InferenceServerClient(server.grpc_address)
    finally:
        server.stop()                                   # SIGTERM by pid, wait, SIGKILL on timeout

or `with start_server(repo, log_dir) as server: ...`.

The server is `python -m cli.main serve` with this interpreter (the test's virtual environment),
listening on port 0 (any free port) for HTTP, gRPC and metrics; the ports come from its one
machine-readable line `SEQSERVE_READY http=P grpc=P metrics=P`. Its stdout and stderr go to a
log file: a start-up failure raises with the log's tail, and `server_log_sections` (called from
conftest's report hook) adds the tail to any failed test that used a server.
ONNX Runtime gets one intra-op thread unless told otherwise (the test models are tiny and the
test run shares few cores with xdist workers).

For a task's test module: `serve_export` packages an export and serves it (in-process or behind
tritonserver), `assert_rejected` checks a bad generate request is a 4xx naming what was wrong,
`assert_full_graph_served` that the served full graph equals in-process ORT.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(rb"SEQSERVE_READY http=(\d+) grpc=(-?\d+) metrics=(-?\d+)")
_started: list[Server] = []        # every server this process started, for failure reports


class ServerStartError(RuntimeError):
    pass


class Server:
    def __init__(self, proc: subprocess.Popen, log_path: Path, ports: tuple[int, int, int],
                 host: str, owner: str):
        self.proc, self.log_path, self.host, self.owner = proc, log_path, host, owner
        self.http_port, self.grpc_port, self.metrics_port = ports

    # -- addresses -----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_address(self) -> str:          # tritonclient.http.InferenceServerClient(url=...)
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:          # tritonclient.grpc.InferenceServerClient(url=...)
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:              # seqserve generate --url
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    # -- raw HTTP -------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | str | dict | list | None = None,
                headers: dict | None = None, port: int | None = None,
                timeout: float = 30.0) -> tuple[int, dict, bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body). A dict or list
        body is sent as JSON."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        c = http.client.HTTPConnection(self.host, port or self.http_port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, method: str, path: str, body=None, headers: dict | None = None):
        """The JSON body of a request that must succeed (200)."""
        status, _, data = self.request(method, path, body, headers)
        assert status == 200, f"{method} {path} -> {status}: {data[:500]!r}"
        return json.loads(data)

    def metrics(self) -> str:
        status, _, data = self.request("GET", "/metrics", port=self.metrics_port)
        assert status == 200, data[:500]
        return data.decode()

    # -- lifecycle ------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM, by pid: the server drains in-flight requests, then exits."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it has not exited after `timeout` s. Returns the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if self.alive():
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f"seqserve serve (pid {self.pid}) did not exit within {timeout:g} s "
                                 f"of SIGTERM and was killed; log tail:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log_path}: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Server(pid={self.pid}, http={self.http_port}, grpc={self.grpc_port}, metrics={self.metrics_port})"


def server_command(repository: str | Path, *args: str, threads: int | None = 1) -> list[str]:
    cmd = [sys.executable, "-m", "cli.main", "serve", "--repository", str(repository),
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    if threads is not None and "--intra-op-threads" not in args:
        cmd += ["--intra-op-threads", str(threads)]
    return cmd + [str(a) for a in args]


def start_server(repository: str | Path, log_dir: str | Path, *args: str, timeout: float = 90.0,
                 env: dict | None = None, threads: int | None = 1) -> Server:
    """Start `seqserve serve` on free ports and wait for its READY line (at most `timeout` s).
    Extra CLI arguments go in `args` (e.g. "--api-key", "k"); `env` adds environment variables
    ($SEQSERVE_API_KEY is removed unless given there)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"seqserve-{len(_started)}-{time.monotonic_ns()}.log"
    full_env = {k: v for k, v in os.environ.items() if k != "SEQSERVE_API_KEY"}
    full_env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    PYTHONUNBUFFERED="1", COLUMNS="120", NO_COLOR="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    cmd = server_command(repository, *args, threads=threads)
    owner = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=full_env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        m = READY.search(log_path.read_bytes())
        if m:
            server = Server(proc, log_path, tuple(int(g) for g in m.groups()), "127.0.0.1", owner)
            _started.append(server)
            return server
        if proc.poll() is not None:
            raise ServerStartError(f"seqserve serve exited with {proc.returncode} before it was ready; "
                                   f"log tail ({log_path}):\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise ServerStartError(f"seqserve serve printed no SEQSERVE_READY line within {timeout:g} s "
                                   f"and was killed; log tail ({log_path}):\n{_tail(log_path)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_log_sections(item) -> list[tuple[str, str]]:
    """(title, log tail) for each server a test used: its fixtures' servers and the ones it
    started itself. For pytest's report sections."""
    nodeid = item.nodeid
    servers = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Server)]
    servers += [s for s in _started if s.owner == nodeid and s not in servers]
    return [(f"seqserve serve log (pid {s.pid}, {s.log_path})", s.log_tail()) for s in servers]


# -- a packaged export, served: the checks every generate task's test module makes -------------

def serve_export(export, root: Path, name: str, target: str | None = None) -> Server:
    """Package `export` as NAME (+ NAME_generate) into root/repo and serve it. target None: the
    default package served in-process; "triton-python": the real tritonserver behind seqserve
    (`--engine triton`, its own threads, a longer start-up)."""
    from seqserve.package import PackageOptions, package_export

    if target is None:
        package_export(export, root / "repo", name)
        return start_server(root / "repo", root)
    package_export(export, root / "repo", name, options=PackageOptions(target=target))
    return start_server(root / "repo", root, "--engine", "triton", threads=None, timeout=240)


def assert_rejected(server: Server, model: str, body: dict, words=(), still_ready: bool = True) -> None:
    """POST body to MODEL's /generate: a 4xx whose text names each of `words`; then (still_ready)
    the server still answers /v2/health/ready."""
    status, _, text = server.request("POST", f"/v2/models/{model}/generate", json.dumps(body))
    assert 400 <= status < 500, (status, text)
    for w in words:
        assert w in text.decode(), text
    if still_ready:
        assert server.request("GET", "/v2/health/ready")[0] == 200       # still serving


def assert_full_graph_served(server: Server, model: str, export, feeds: dict) -> None:
    """The full graph (NAME) over HTTP/tritonclient: its logits for `feeds` (numpy, by input
    name) equal in-process ORT's."""
    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import np_to_triton_dtype

    from seqserve.export import load_export
    from seqserve.runtime import OrtBackend

    local = OrtBackend(load_export(export), "full").run(feeds)["logits"]
    xs = []
    for k, v in feeds.items():
        x = th.InferInput(k, list(v.shape), np_to_triton_dtype(v.dtype))
        x.set_data_from_numpy(v)
        xs.append(x)
    got = th.InferenceServerClient(server.http_address).infer(model, xs).as_numpy("logits")
    np.testing.assert_allclose(got, local, atol=1e-5)


def assert_streams(server: Server, model: str, requests: list[dict], want: list[str], finished: bool = True) -> None:
    """Each request's SSE stream (MODEL's generate_stream) spells its wanted text. finished: every
    event carries text_output and the last a finish_reason (tritonserver's empty final response
    carries neither: finished=False)."""
    from test_serve import sse

    for fields, w in zip(requests, want):
        events = sse(server, model, fields)
        if finished:
            assert "".join(e["text_output"] for e in events) == w and events[-1]["finish_reason"]
        else:
            assert "".join(e.get("text_output", "") for e in events) == w
