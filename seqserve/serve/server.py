"""Runs the embedded server: HTTP (KServe v2), gRPC and metrics in one asyncio loop.

Start-up: load every model (ORT sessions, worker threads), then open the listeners on
127.0.0.1 unless told otherwise. Shutdown (SIGTERM, Ctrl-C): stop taking new requests (503,
readiness goes false), let in-flight requests and streams finish (up to `drain_seconds`), then
end what is left with a terminal answer (queued requests 503; every stream a final event with
finish_reason "shutdown"), close the listeners, then stop the model workers. A second Ctrl-C
skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from seqserve.errors import SeqserveError
from seqserve.runtime import RuntimeOptions
from seqserve.serve.repository import ModelRepository

log = logging.getLogger("seqserve.serve")

# Shutdown bounds past --drain-seconds: time for the final events of ended streams to be written,
# then for the listeners to close their connections (streams have ended by then, so neither wait
# is normally used up).
FINAL_SECONDS = 1.0
LISTENER_GRACE = 1.0


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000          # 0 = any free port (the bound ports are in Server.ports)
    grpc_port: int = 8001          # -1 = no gRPC listener
    metrics_port: int = 8002       # -1 = no metrics listener
    api_key: str | None = None
    max_request_bytes: int = 64 << 20
    drain_seconds: float = 30.0
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    models: tuple[str, ...] = ()   # load only these (default: every model in the repository)

    def __post_init__(self):
        for what, port in (("http", self.http_port), ("grpc", self.grpc_port), ("metrics", self.metrics_port)):
            if not -1 <= port <= 65535 or (what == "http" and port < 0):
                raise SeqserveError(f"--{what}-port {port} is not a port number (0 = any free port"
                                    f"{'' if what == 'http' else ', -1 = off'})")
        if self.max_request_bytes < 1024:
            raise SeqserveError(f"--max-request-bytes {self.max_request_bytes} is too small; expected >= 1024")
        if self.drain_seconds < 0:
            raise SeqserveError(f"--drain-seconds must be >= 0, got {self.drain_seconds}")


class _Uvicorn:
    """uvicorn.Server without its own signal handling (we run two of them and handle signals once)."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        class Quiet(uvicorn.Server):
            def capture_signals(self):
                return contextlib.nullcontext()

        cfg = uvicorn.Config(app, host=host, port=port, loop="none", http="httptools", lifespan="off",
                             access_log=False, log_level="warning", timeout_graceful_shutdown=LISTENER_GRACE,
                             timeout_keep_alive=30)
        self.server = Quiet(cfg)
        self.task: asyncio.Task | None = None

    async def start(self) -> int:
        # Bind here, not in uvicorn: its bind error is a logged message and sys.exit() from a task.
        host, port = self.server.config.host, self.server.config.port
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
        # listening socket says TCP (with 0 every response waited ~40 ms for a delayed ACK).
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                try:
                    self.task.result()
                except (Exception, SystemExit) as e:      # uvicorn exits on start-up errors
                    raise SeqserveError(f"the HTTP server on {host}:{port} failed to start: {e!r}") from None
                raise SeqserveError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        return sock.getsockname()[1]

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await self.task


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.repo = ModelRepository(config.repository, config.runtime)
        self.ports: dict[str, int] = {}
        self._http = self._metrics = self._grpc = None
        self._stop = asyncio.Event()
        self._force = False

    def load(self, progress=None) -> None:
        self.repo.load_all(list(self.config.models) or None, progress)

    async def start(self) -> None:
        from seqserve.serve.grpc_service import make_grpc_server
        from seqserve.serve.http import make_app, make_metrics_app

        c = self.config
        what = f"HTTP port {c.http_port}"
        try:
            self._http = _Uvicorn(make_app(self.repo, api_key=c.api_key, max_request_bytes=c.max_request_bytes),
                                  c.host, c.http_port)
            self.ports["http"] = await self._http.start()
            if c.grpc_port >= 0:
                what = f"gRPC port {c.grpc_port}"
                self._grpc = make_grpc_server(self.repo, host=c.host, port=c.grpc_port, api_key=c.api_key,
                                              max_request_bytes=c.max_request_bytes)
                self.ports["grpc"] = self._grpc.bound_port
                await self._grpc.start()
            if c.metrics_port >= 0:
                what = f"metrics port {c.metrics_port}"
                self._metrics = _Uvicorn(make_metrics_app(self.repo, api_key=c.api_key), c.host,
                                         c.metrics_port)
                self.ports["metrics"] = await self._metrics.start()
        except OSError as e:
            await self._close_listeners()
            raise SeqserveError(f"cannot listen on {c.host}, {what}: {e.strerror or e} (is another server "
                                "using it? choose others with --http-port/--grpc-port/--metrics-port, "
                                "0 = any free port)") from None

    def request_stop(self) -> None:
        if self._stop.is_set():
            self._force = True           # second Ctrl-C: stop waiting for in-flight work
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Drain, then end what is left, then close: the process exits within drain_seconds +
        FINAL_SECONDS + LISTENER_GRACE (+ joining the model threads, one iteration each)."""
        loop = asyncio.get_running_loop()
        self.repo.draining = True        # new requests: 503; readiness: false
        await self._wait_idle(self.config.drain_seconds)
        # Drain time is up: every queued request gets 503, every open stream its final event
        # (finish_reason "shutdown"); gRPC streams then end with status OK once written.
        await loop.run_in_executor(None, self.repo.end_all)
        if self._grpc is not None:
            self._grpc.servicer.end_streams()
        await self._wait_idle(FINAL_SECONDS)
        await self._close_listeners()
        await loop.run_in_executor(None, self.repo.close)

    async def _wait_idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.repo.busy() and time.monotonic() < deadline and not self._force:
            await asyncio.sleep(0.02)

    async def _close_listeners(self) -> None:
        # Together, so the listeners' grace periods overlap: LISTENER_GRACE bounds them all.
        closing = [s.stop() for s in (self._http, self._metrics) if s is not None]
        if self._grpc is not None:
            closing.append(self._grpc.stop(grace=LISTENER_GRACE))
        await asyncio.gather(*closing)


def run_server(config: ServerConfig, on_loaded=None, on_ready=None) -> None:
    """Load, listen, serve until SIGTERM/SIGINT, drain, exit. Blocks.

    on_loaded(repo) runs after models load; on_ready(server) after the listeners are open (in the
    event loop: keep it short or start a thread).
    """
    async def main():
        server = Server(config)
        loop = asyncio.get_running_loop()
        restore_signals = _catch_signals(loop, server.request_stop)
        try:
            await loop.run_in_executor(None, server.load)
            if on_loaded:
                on_loaded(server.repo)
            try:
                await server.start()
            except BaseException:
                await loop.run_in_executor(None, server.repo.close)
                raise
            if on_ready:
                on_ready(server)
            await server.wait_stopped()
        finally:
            restore_signals()

    asyncio.run(main())


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _catch_signals(loop: asyncio.AbstractEventLoop, on_signal) -> Callable[[], None]:
    """Run on_signal() in the loop for each SIGINT/SIGTERM; returns a function that undoes this.

    Not loop.add_signal_handler: asyncio passes signals through the socket that
    call_soon_threadsafe also writes to, and the model workers call that once per iteration. Each
    1-byte write takes a whole socket-buffer slot (about 280 fit), so when the loop lags behind a
    generating worker the socket is full, the signal's byte is dropped ("Exception ignored when
    trying to write to the signal wakeup fd") and the signal never reaches asyncio: a SIGTERM sent
    during a long stream under load was ignored. Here signals get a pipe of their own.
    """
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)

    def read_signals() -> None:
        try:
            data = os.read(rfd, 64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:            # one byte per signal delivered
            if signum in _STOP_SIGNALS:
                on_signal()

    loop.add_reader(rfd, read_signals)
    # The C-level handler (installed with any Python handler) writes the signal number to the
    # wakeup fd; the Python-level handler has nothing left to do.
    old_handlers = {sig: signal.signal(sig, _ignore_in_python) for sig in _STOP_SIGNALS}
    old_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)

    def restore() -> None:
        signal.set_wakeup_fd(old_fd)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        loop.remove_reader(rfd)
        os.close(rfd)
        os.close(wfd)

    return restore


def _ignore_in_python(signum, frame) -> None:
    pass
