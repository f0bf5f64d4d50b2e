"""One load level: closed loop (N lanes, each sends its next request when the last one ends) or open
loop (Poisson arrivals at a rate, each sent on an idle lane at its scheduled time).

A lane carries one request at a time: a keep-alive connection (HTTP), or a stream slot on a shared
HTTP/2 connection (gRPC), with the workload's state for it (the sequence it is in). Everything
runs on one event loop; completions come back through `lane.on_done`, so no task or future is
made per request.

Windows (what counts, after --warmup):
- closed loop: requests that ENDED in the window (as perf_analyzer counts them); with --requests
  N the window closes at the N-th;
- open loop: requests SCHEDULED in the window, each followed to its end (up to drain_s, 10 s,
  after the window; still unanswered then = an "unfinished" error). Their latency runs from the scheduled
  time, so queueing — in the server or in a client that fell behind — is never hidden.
The open loop never waits for a free lane: with none idle it opens another (up to
--max-connections) and the request waits in a backlog meanwhile, which shows as send lag.
"""

from __future__ import annotations

import asyncio
import collections
import time

import numpy as np

from seqserve.loadtest import calls as C
from seqserve.loadtest.calls import Call, now_ns
from seqserve.loadtest.ticker import Ticker

PROGRESS_S = 0.5          # how often the live display is updated
TIMEOUT_CHECK_S = 0.25


def poisson_gaps(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    """n gaps (ns) between Poisson arrivals at `rate` per second: exponential, mean 1/rate."""
    return rng.exponential(1e9 / rate, n).astype(np.int64)


class LevelRun:
    """Run one level; `await LevelRun(session, index, level).run()` -> self, with `calls` (every
    finished call of the level, window or not), `w0`/`w1` (ns) and the server counters."""

    def __init__(self, session, index: int, level: float):
        self.s, self.cfg, self.index, self.level = session, session.cfg, index, level
        self.workload = session.workload
        self.calls: list[Call] = []
        self.lanes: set = set()
        self.connecting = 0
        self.pending = 0                    # calls made and not finished (in flight or in the backlog)
        self.stopping = False               # no new calls (the window is over, or Ctrl-C)
        self.interrupted = False
        self.w0 = self.w1 = 0
        self.counted = 0                    # --requests: calls counted into the window so far
        self.server_before: dict = {}
        self.server_after: dict = {}
        self.cpu_s = 0.0
        self.lanes_opened = 0
        self.tasks: set[asyncio.Future] = set()     # helpers and lane openings, cancelled at the end

    def spawn(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- lanes --------------------------------------------------------------------------------------

    async def _open_lane(self, then) -> None:
        """Open a lane and hand it to `then`; a failure is a counted error, retried after a pause."""
        self.connecting += 1
        lane = None
        while lane is None and not self.stopping:
            t = now_ns()
            try:
                lane = await self.s.open_lane(self._done)
            except (OSError, asyncio.TimeoutError) as e:
                call = Call(t)
                call.fail(C.CONNECT, str(e) or type(e).__name__)
                self.calls.append(call)
                await asyncio.sleep(0.1)
        self.connecting -= 1
        if lane is None:
            return
        if self.stopping:
            lane.close()
            return
        lane.slot = self.workload.new_slot()
        lane.keep_answer = getattr(self.workload, "needs_answer", False)
        self.lanes.add(lane)
        self.lanes_opened += 1
        then(lane)

    def _send(self, lane, call: Call) -> None:
        lane.send(call, self.workload.next(lane.slot), self.workload.streaming)

    def _done(self, lane, call: Call) -> None:
        self.pending -= 1
        self.calls.append(call)
        if getattr(self.workload, "needs_answer", False):      # client-held state: feed it back
            self.workload.answered(None if lane.dead else lane.slot, call, lane)
        if lane.dead:
            self.lanes.discard(lane)
            lane.close()
            self._lane_lost(lane)
        else:
            self._lane_free(lane, call)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.stopping and self.pending == 0 and not self.drained.is_set():
            self.drained.set()

    # -- the level ----------------------------------------------------------------------------------

    async def run(self) -> "LevelRun":
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.window_over = asyncio.Event()
        self.drained = asyncio.Event()
        cpu0 = time.process_time()
        self.t0 = now_ns()
        self.w0 = self.t0 + int(self.cfg.warmup_s * 1e9)
        if self.cfg.duration_s is not None:
            self.w1 = self.w0 + int(self.cfg.duration_s * 1e9)
        self.spawn(self._watch_timeouts())
        self.spawn(self._progress())
        scrape_at = loop.call_later(max(self.w0 - now_ns(), 0) / 1e9, self._scrape_before)
        self.start()
        await asyncio.wait([self.spawn(self.window_over.wait()), self.spawn(self.s.interrupted.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if self.s.interrupted.is_set() and not self.window_over.is_set():
            self.interrupted = True
            self.w1 = min(self.w1, now_ns()) if self.w1 else now_ns()
        if not self.w1:
            self.w1 = now_ns()
        scrape_at.cancel()
        self.stop_scheduling()
        self.stopping = True
        self.server_after_f = loop.run_in_executor(None, self.s.scraper.scrape)
        self._check_drained()
        drain = 1.0 if self.interrupted else self.cfg.drain_s
        try:
            await asyncio.wait_for(self.drained.wait(), drain)
        except asyncio.TimeoutError:
            pass
        self._abort_rest()
        await self._end_sequences(2.0 if self.interrupted else 5.0)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for lane in list(self.lanes):
            lane.close()
        self.cpu_s = time.process_time() - cpu0
        self.server_after = await self.server_after_f
        return self

    async def _end_sequences(self, timeout: float) -> None:
        """End the sequences left in the middle (one last step each, flagged sequence_end; not
        counted: the window is over)."""
        closing = getattr(self.workload, "closing", None)
        if closing is None:
            return
        waits = []
        for lane in list(self.lanes):
            payload = None if lane.dead or lane.busy else closing(lane.slot)
            if payload is None:
                continue
            fut = self.loop.create_future()
            lane.on_done = lambda _lane, call, fut=fut: fut.done() or fut.set_result(call)
            lane.send(Call(now_ns()), payload, False)
            waits.append(fut)
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    def _scrape_before(self) -> None:
        fut = self.loop.run_in_executor(None, self.s.scraper.scrape)
        fut.add_done_callback(lambda f: setattr(self, "server_before", f.result() if not f.exception() else {}))

    def _abort_rest(self) -> None:
        """Whatever is still in flight after the drain: failed as unfinished, lanes closed."""
        for call in self._backlog_calls():
            call.fail(C.UNFINISHED, "still waiting to be sent when the level ended")
            self.pending -= 1
            self.calls.append(call)
        for lane in list(self.lanes):
            if lane.busy:
                lane.abort(C.UNFINISHED, f"no answer {self.cfg.drain_s:g} s after the window ended")

    async def _watch_timeouts(self) -> None:
        limit = int(self.cfg.timeout_s * 1e9)
        while True:
            await asyncio.sleep(TIMEOUT_CHECK_S)
            t = now_ns()
            for lane in list(self.lanes):
                call = lane.call
                if call is not None and t - call.sched > limit:
                    lane.abort(C.TIMEOUT, f"no answer within {self.cfg.timeout_s:g} s")
            self._expire_backlog(t, limit)

    async def _progress(self) -> None:
        seen = 0
        while True:
            await asyncio.sleep(PROGRESS_S)
            if self.s.progress is None:
                continue
            recent = self.calls[seen:]
            seen = len(self.calls)
            lat = [c.end - c.sched for c in recent if not c.error]
            t = now_ns()
            self.s.progress({
                "index": self.index, "level": self.level, "phase": "warm-up" if t < self.w0 else
                ("draining" if self.stopping else "measuring"),
                "elapsed_s": (t - self.t0) / 1e9, "planned_s": (self.w1 - self.t0) / 1e9 if self.w1 else None,
                "counted": self.counted, "requests": self.cfg.requests,
                "done": len(self.calls), "errors": sum(1 for c in recent if c.error),
                "rate": len(recent) / PROGRESS_S, "in_flight": self.pending,
                "p50_ms": float(np.percentile(lat, 50)) / 1e6 if lat else None,
                "p99_ms": float(np.percentile(lat, 99)) / 1e6 if lat else None})

    # -- overridden by the two loops ----------------------------------------------------------------

    def start(self) -> None: ...
    def stop_scheduling(self) -> None: ...
    def _lane_free(self, lane, call: Call) -> None: ...
    def _lane_lost(self, lane) -> None: ...
    def _backlog_calls(self) -> list[Call]: return []
    def _expire_backlog(self, t: int, limit: int) -> None: ...


class ClosedLoop(LevelRun):
    """`level` lanes; each sends its next request as soon as the previous one ends."""

    def start(self) -> None:
        for _ in range(int(self.level)):
            self.spawn(self._open_lane(self._issue))
        if self.w1:
            self.loop.call_later((self.w1 - now_ns()) / 1e9, self.window_over.set)

    def _issue(self, lane) -> None:
        if self.stopping:
            return
        self.pending += 1
        self._send(lane, Call(now_ns()))

    def _lane_free(self, lane, call: Call) -> None:
        if self.cfg.requests is not None and call.end >= self.w0 and not self.window_over.is_set():
            self.counted += 1
            if self.counted >= self.cfg.requests:
                self.w1 = call.end
                self.window_over.set()
                return
        self._issue(lane)

    def _lane_lost(self, lane) -> None:
        if not self.stopping:
            self.spawn(self._open_lane(self._issue))

    def stop_scheduling(self) -> None:
        self.stopping = True


class OpenLoop(LevelRun):
    """Poisson arrivals at `level` requests/s: exponential gaps from a seeded generator."""

    def start(self) -> None:
        self.idle: collections.deque = collections.deque()
        self.backlog: collections.deque = collections.deque()
        self.rng = np.random.default_rng([self.cfg.seed, self.index])
        self.gaps: list[int] = []
        self.scheduling = True
        self.late = 0
        self.next_t = self.t0 + self._gap()
        self.ticker = Ticker(self.loop, self._fire)
        self.precise_timer = self.ticker.precise
        # lanes for the expected load, opened before the first send (more are opened on demand)
        for _ in range(min(4, self.cfg.max_connections)):
            self.spawn(self._open_lane(self._lane_ready))
        self.ticker.at(self._wake_at())

    def _gap(self) -> int:
        if not self.gaps:
            self.gaps = poisson_gaps(self.rng, self.level, 4096).tolist()[::-1]
        return self.gaps.pop()

    def _wake_at(self) -> int:
        return min(self.next_t, self.w1) if self.w1 else self.next_t

    def _fire(self) -> None:
        if not self.scheduling:
            return
        t = now_ns()
        while self.next_t <= t and not (self.w1 and self.next_t >= self.w1):
            sched = self.next_t
            if self.cfg.requests is not None and sched >= self.w0:
                self.counted += 1
                if self.counted >= self.cfg.requests:
                    self.w1 = sched + 1          # the window: w0 <= sched < w1
            self.next_t = sched + self._gap()
            self._arrive(Call(sched))
        if self.w1 and t >= self.w1:
            self.scheduling = False
            self.window_over.set()
            return
        self.ticker.at(self._wake_at())

    def _arrive(self, call: Call) -> None:
        self.pending += 1
        while self.idle:
            lane = self.idle.popleft()
            if not lane.dead:
                self._send(lane, call)
                return
        call.waited = True
        self.backlog.append(call)
        if (self.connecting < len(self.backlog)
                and len(self.lanes) + self.connecting < self.cfg.max_connections):
            self.spawn(self._open_lane(self._lane_ready))

    def _lane_ready(self, lane) -> None:
        if self.backlog:
            self._send(lane, self.backlog.popleft())
        else:
            self.idle.append(lane)

    def _lane_free(self, lane, call: Call) -> None:
        self._lane_ready(lane)

    def _lane_lost(self, lane) -> None:
        if self.backlog and len(self.lanes) + self.connecting < self.cfg.max_connections:
            self.spawn(self._open_lane(self._lane_ready))

    def stop_scheduling(self) -> None:
        self.scheduling = False
        self.ticker.close()

    def _backlog_calls(self) -> list[Call]:
        out = list(self.backlog)
        self.backlog.clear()
        return out

    def _expire_backlog(self, t: int, limit: int) -> None:
        while self.backlog and t - self.backlog[0].sched > limit:
            call = self.backlog.popleft()
            call.fail(C.TIMEOUT, f"not sent within {self.cfg.timeout_s:g} s: no free connection "
                                 f"(--max-connections {self.cfg.max_connections})")
            self.pending -= 1
            self.calls.append(call)
        self._check_drained()
