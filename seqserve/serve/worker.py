"""A model's worker thread: owns the ONNX Runtime session, runs batched iterations.

Requests are handed over from the asyncio loop with `submit` (a deque + condition variable: a few
microseconds), and results go back with one `call_soon_threadsafe` per iteration and loop, so a
batch of 16 answers wakes the event loop once, not 16 times. ORT releases the GIL while it runs,
so the loop keeps parsing and answering requests meanwhile.

A small request that is alone runs inline instead (`dispatch`): on the event loop's thread, under
the same lock the worker iterates under, skipping the two thread hand-offs (~0.1-0.2 ms on a
2-core machine, most of a batch-1 LSTM step's serving overhead). "Alone" is decided after one
yield to the loop, so requests that arrived together all reach the model first and go to the
worker as one batch: inline running never costs continuous batching. Items leave the inbox only
while that lock is held, so an inline run never overtakes a queued request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from typing import Callable

log = logging.getLogger("seqserve.serve")

_YIELDS = 3       # loop passes a small request waits before deciding it is alone (~5 µs each)


class Worker:
    def __init__(self, name: str):
        self.name = name
        self._cv = threading.Condition()
        self._inbox: deque = deque()
        self._closing = False
        self._run_lock = threading.Lock()    # held while an iteration runs (worker or inline)
        self._thread = threading.Thread(target=self._main, name=f"seqserve-{name}", daemon=True)
        self._started = False

    # -- called from the event loop ------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, item) -> None:
        with self._cv:
            self._inbox.append(item)
            self._cv.notify()

    async def dispatch(self, item, small: bool, pending: Callable[[], int]) -> None:
        """Hand `item` over: inline when `small`, the worker idle and `pending()` (the model's
        admitted, unanswered requests, this one included) is 1 after one yield to the loop."""
        if not small:
            self.submit(item)
            return
        try:
            # Requests read in the same selector pass as ours get admitted meanwhile: their
            # protocol callbacks run after our first resume, and their tasks a pass later.
            for _ in range(_YIELDS):
                await asyncio.sleep(0)
        finally:                       # (also when cancelled: the item is queued, so it runs)
            if pending() > 1:
                self.submit(item)
            else:
                self.submit_or_run(item)

    def submit_or_run(self, item) -> None:
        """Run `item` now on this thread if the worker is idle, else queue it (`submit`)."""
        if self._run_lock.acquire(blocking=False):
            try:
                with self._cv:
                    idle = not self._inbox and not self._closing
                if idle and not self.busy():
                    self._iterate([item])
                    return
            finally:
                self._run_lock.release()
        self.submit(item)

    def end_all(self) -> None:
        """Shutdown, when the drain time is up: give every queued and active item its terminal
        answer now (a generation stream its final event, a request 503). Blocking: it waits for a
        running iteration to finish, so call it from a thread pool, not the event loop."""
        with self._run_lock:
            with self._cv:
                new = list(self._inbox)
                self._inbox.clear()
            self.end_items(new)

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued and active, then stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._started:
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            with self._cv:
                while not self._inbox and not self.busy() and not self._closing:
                    self._cv.wait(self.wait_timeout())
                    if self._run_lock.acquire(blocking=False):   # not while an inline run is on
                        try:
                            self.on_idle_tick()
                        finally:
                            self._run_lock.release()
            with self._run_lock:
                with self._cv:
                    if self._closing and not self._inbox and not self.busy():
                        return
                    new = list(self._inbox)
                    self._inbox.clear()
                self._iterate(new)

    def _iterate(self, new: list) -> None:
        try:
            self.iteration(new)
        except Exception as e:   # a bug must not kill the thread and hang every client
            log.exception("model %s: iteration failed", self.name)
            self.fail_all(new, e)

    # -- for subclasses ----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Work remains without new submissions (active generation streams, waiting steps)."""
        return False

    def wait_timeout(self) -> float | None:
        return None

    def on_idle_tick(self) -> None:
        pass

    def iteration(self, new: list) -> None:
        raise NotImplementedError

    def fail_all(self, items: list, error: Exception) -> None:
        raise NotImplementedError

    def end_items(self, items: list) -> None:
        """Answer `items` (just taken from the inbox) and everything active: see end_all."""
        raise NotImplementedError


class Replies:
    """Collects (future, result-or-exception) pairs during an iteration; delivers them per loop in
    one thread-safe callback at the end."""

    def __init__(self):
        self._by_loop = defaultdict(list)

    def add(self, loop: asyncio.AbstractEventLoop, fn, *args) -> None:
        self._by_loop[loop].append((fn, args))

    def resolve(self, loop, fut: asyncio.Future, value) -> None:
        self.add(loop, _set, fut, value)

    def flush(self) -> None:
        for loop, calls in self._by_loop.items():
            try:
                loop.call_soon_threadsafe(_run_all, calls)
            except RuntimeError:       # the loop has closed (server stopped): nobody is waiting
                pass
        self._by_loop.clear()


def _run_all(calls) -> None:
    for fn, args in calls:
        fn(*args)


def _set(fut: asyncio.Future, value) -> None:
    if fut.done():                     # the client went away and the request was cancelled
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


def now_ns() -> int:
    return time.perf_counter_ns()
