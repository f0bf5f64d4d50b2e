"""One request as the load tester sees it, and the error kinds it can end with.

Times are `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux, the clock the open loop's timer
uses). Latency is measured from `sched`: the scheduled send time in the open loop, the moment the
request was due in the closed loop; so a client that falls behind its schedule shows up in the
latency instead of being hidden (and separately as `sent - sched`).
"""

from __future__ import annotations

import time

now_ns = time.perf_counter_ns


class Call:
    __slots__ = ("sched", "sent", "end", "error", "message", "times", "tokens", "waited")

    def __init__(self, sched: int):
        self.sched = sched          # when it was due
        self.sent = 0               # when its bytes were handed to the socket / gRPC
        self.end = 0                # when the (last) response arrived, or the error happened
        self.error = ""             # "" = success; else the error kind (see below)
        self.message = ""           # the server's or the transport's words, for the report
        self.times = None           # streamed: arrival time of each response carrying output
        self.tokens = 0             # streamed: responses carrying output (one token each on seqserve)
        self.waited = False         # open loop: no idle connection when it was due (it waited for one)

    def fail(self, kind: str, message: str = "") -> None:
        if not self.error:          # the first failure is the one that counts
            self.error, self.message = kind, message[:300]
        if not self.end:
            self.end = now_ns()

    @property
    def latency_ns(self) -> int:
        return self.end - self.sched

    def __repr__(self) -> str:
        state = self.error or "ok"
        return f"Call({state}, {(self.end - self.sched) / 1e6:.3f} ms)"


# Error kinds, as they appear in reports (plus "HTTP <status>" and "gRPC <CODE>").
CONNECT = "connect failed"          # the connection could not be opened
CLOSED = "connection closed"        # the server closed or reset the connection mid-request
TIMEOUT = "timeout"                 # no (complete) answer within --timeout
STREAM = "stream error"             # a streamed response carried an error
BAD_RESPONSE = "bad response"       # not parseable as the protocol says
UNFINISHED = "unfinished"           # still in flight when the level ended (after the drain)
