"""A whole load test: check the model, probe it once, run the levels, return the results.

    results = run_loadtest(cfg, progress=None)     # SeqserveError before any load if something is wrong

Ctrl-C (SIGINT) while levels run ends the current level at that moment (its window is cut
there and marked interrupted), skips the rest and returns what was measured; a second Ctrl-C
raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import asyncio
import gc
import platform
import signal
import threading
import time
from dataclasses import asdict

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.loadtest.calls import Call
from seqserve.loadtest.config import LoadTestConfig
from seqserve.loadtest.discovery import ModelInfo, describe_model
from seqserve.loadtest.metrics import Scraper, default_metrics_url
from seqserve.loadtest.results import level_summary
from seqserve.loadtest.runner import ClosedLoop, OpenLoop
from seqserve.loadtest.workloads import build_workload

MAX_PLOT_POINTS = 20_000        # per level, for the latency-over-time plot


class Session:
    def __init__(self, cfg: LoadTestConfig, info: ModelInfo, progress=None, on_level=None):
        self.cfg, self.info, self.progress, self.on_level = cfg, info, progress, on_level
        metrics_url = default_metrics_url(cfg.target) if cfg.metrics_url == "" else cfg.metrics_url
        self.scraper = Scraper(metrics_url, info.name)
        self.interrupted: asyncio.Event | None = None
        self.grpc = None
        self.grpc_client = None          # gRPC: "h2" (lean) or "grpc.aio"

    # -- protocol ---------------------------------------------------------------------------------

    def _setup_protocol(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.target.protocol == "grpc":
            from seqserve.loadtest.grpc_client import GrpcEncoder
            from seqserve.loadtest.h2_client import INFER, STREAM, H2Pool

            self.workload = build_workload(info, cfg, GrpcEncoder(info.name), "grpc")
            pool = H2Pool(cfg.target, STREAM if self.workload.streaming else INFER, cfg.api_key)
            self.open_lane = pool.lane
            self.grpc_client = "h2"
        else:
            from seqserve.loadtest.http_client import HttpEncoder, HttpLane

            encoder = HttpEncoder(cfg.target, info.name, cfg.api_key, tuple(o.name for o in info.outputs))
            self.workload = build_workload(info, cfg, encoder, "http")
            self.open_lane = lambda on_done: HttpLane.open(cfg.target, on_done)
        self.probe_payload = self.workload.probe()

    def _use_grpc_aio(self) -> None:
        """grpc.aio lanes instead of the lean HTTP/2 ones (requests larger than the server's window)."""
        from seqserve.loadtest.grpc_client import GrpcClient, GrpcLane

        self.grpc = GrpcClient(self.cfg.target, self.cfg.api_key, self.cfg.timeout_s)
        self.open_lane = lambda on_done: GrpcLane.open(self.grpc, on_done)
        self.grpc_client = "grpc.aio"

    async def probe(self) -> Call:
        """One request before any load: the inputs fit and the model answers (else SeqserveError)."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            lane = await self.open_lane(lambda lane, call: done.done() or done.set_result(call))
        except (OSError, asyncio.TimeoutError) as e:
            raise SeqserveError(f"cannot reach a server at {self.cfg.target.url}: {e or type(e).__name__}") from None
        if hasattr(lane, "fits") and not lane.fits(self.workload.largest + 64):
            lane.close()
            self._use_grpc_aio()
            lane = await self.open_lane(lambda lane, call: done.done() or done.set_result(call))
        lane.send(Call(time.perf_counter_ns()), self.probe_payload, self.workload.streaming)
        try:
            call = await asyncio.wait_for(done, self.cfg.timeout_s)
        except asyncio.TimeoutError:
            raise SeqserveError(f"model '{self.info.name}' did not answer a first request within "
                                f"{self.cfg.timeout_s:g} s (--timeout); no load was sent") from None
        finally:
            lane.close()
        if call.error:
            hint = "" if self.cfg.prompts else " (inputs synthesized from the model's metadata; give --prompts FILE)"
            raise SeqserveError(f"the first request to model '{self.info.name}' failed, so no load was sent: "
                                f"{call.error}: {call.message}{hint}")
        return call

    # -- levels -----------------------------------------------------------------------------------

    async def run(self) -> tuple[list[dict], dict]:
        loop = asyncio.get_running_loop()
        self.interrupted = asyncio.Event()
        self._setup_protocol()
        await self.probe()
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        levels, samples = [], {}
        try:
            for i, level in enumerate(self.cfg.levels):
                if self.interrupted.is_set():
                    break
                wl = self.workload
                seq0 = (getattr(wl, "started", 0), getattr(wl, "completed", 0))
                gc.collect()
                gc.disable()            # no collector pauses inside a window
                try:
                    run = await (ClosedLoop if self.cfg.closed_loop else OpenLoop)(self, i, level).run()
                finally:
                    gc.enable()
                run.seq_started = getattr(wl, "started", 0) - seq0[0]
                run.seq_completed = getattr(wl, "completed", 0) - seq0[1]
                levels.append(level_summary(run))
                samples[i] = _plot_samples(run)
                if self.on_level is not None:
                    self.on_level(levels[-1])
        finally:
            if on_main:
                loop.remove_signal_handler(signal.SIGINT)
            if self.grpc is not None:
                await self.grpc.close()
        return levels, samples

    def _interrupt(self) -> None:
        self.interrupted.set()
        # a second Ctrl-C: Python's own handler (KeyboardInterrupt) from here on
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _plot_samples(run) -> dict:
    """(scheduled time from the window start in s, latency in ms, ok) of the window's calls, at most
    MAX_PLOT_POINTS (evenly thinned), plus every streamed call's token gaps for the histograms."""
    from seqserve.loadtest.results import _in_window

    calls = [c for c in run.calls if _in_window(run, c)]
    step = max(1, len(calls) // MAX_PLOT_POINTS)
    calls = calls[::step]
    return {"t_s": np.array([(c.sched - run.w0) / 1e9 for c in calls]),
            "latency_ms": np.array([(c.end - c.sched) / 1e6 for c in calls]),
            "ok": np.array([not c.error for c in calls], dtype=bool)}


def _new_loop(protocol: str):
    """uvloop when installed (faster callbacks, same semantics); the stock loop when grpc.aio may be
    needed (gRPC requests too large for the lean HTTP/2 lanes), which is built for it."""
    if protocol in ("http", "grpc"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def run_loadtest(cfg: LoadTestConfig, progress=None, on_level=None, info: ModelInfo | None = None) -> dict:
    """Check, probe, run every level; the results as one JSON-ready dict (plus "_samples" for the
    plots). `progress(snapshot)` is called twice a second from the running level (see
    runner.LevelRun._progress), `on_level(summary)` after each level."""
    info = info or describe_model(cfg)
    session = Session(cfg, info, progress, on_level)
    started = time.time()
    loop = _new_loop(cfg.target.protocol)
    try:
        levels, samples = loop.run_until_complete(session.run())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    interrupted = session.interrupted is not None and session.interrupted.is_set()
    return {
        "tool": "seqserve loadtest",
        "config": _config_json(cfg),
        "model": asdict(info),
        "server_metrics": session.scraper.url,
        "client": "http (httptools)" if cfg.target.protocol == "http" else f"grpc ({session.grpc_client})",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        "interrupted": interrupted,
        "levels_planned": list(cfg.levels),
        "levels": levels,
        "machine": {"node": platform.node(), "python": platform.python_version(), "cpus": _cpus()},
        "_samples": samples,           # not written to results.json: for the plots
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _config_json(cfg: LoadTestConfig) -> dict:
    d = asdict(cfg)
    d["target"] = {**d["target"], "url": cfg.target.url}
    d["prompts"] = str(cfg.prompts) if cfg.prompts else None
    d["report_dir"] = str(cfg.report_dir) if cfg.report_dir else None
    d["api_key"] = "(set)" if cfg.api_key else None
    return d
