"""Wake the event loop at an exact time: the open loop's send schedule.

asyncio's timers (and uvloop's) round a wait up to the next millisecond: at 50 requests/s every
send would be ~0.5 ms late on average, and since latency is measured from the scheduled time,
that lateness would be reported as server latency. On Linux a timerfd (CLOCK_MONOTONIC, the
clock of time.perf_counter_ns) armed at the absolute time and watched with `loop.add_reader`
fires within tens of microseconds. Elsewhere `loop.call_at` is used (millisecond precision).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_CLOCK_MONOTONIC, _TFD_NONBLOCK, _TFD_CLOEXEC, _TFD_TIMER_ABSTIME = 1, 0o4000, 0o2000000, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    return _libc


class Ticker:
    """`Ticker(loop, fire)`; `at(t_ns)` arms it: fire() runs on the loop at perf_counter_ns() >= t_ns
    (re-arming replaces the previous time); `close()` when done."""

    def __init__(self, loop, fire):
        self.loop, self.fire = loop, fire
        self.fd = -1
        self._handle = None
        if sys.platform.startswith("linux"):
            try:
                lib = _lib()
                fd = lib.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
                if fd >= 0:
                    self.fd, self._spec = fd, _Itimerspec()
                    loop.add_reader(fd, self._ready)
            except (OSError, AttributeError, NotImplementedError):
                self.fd = -1
        self.precise = self.fd >= 0

    def at(self, t_ns: int) -> None:
        if self.fd >= 0:
            t_ns = max(t_ns, 1)
            self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(t_ns, 1_000_000_000)
            if _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
                raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        else:
            if self._handle is not None:
                self._handle.cancel()
            import time
            self._handle = self.loop.call_later(max(t_ns - time.perf_counter_ns(), 0) / 1e9, self.fire)

    def _ready(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:       # re-armed after it fired: nothing to do yet
            return
        self.fire()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self._handle is not None:
            self._handle.cancel()
