"""From the calls of one level to its numbers (a JSON-ready dict): what counts, and how.

Every call that belongs to the window is either a success (its latency enters the percentiles)
or an error counted by kind with one example message; errors outside the window (warm-up,
drain) are counted separately. Nothing is dropped: ok + errors == requests.
"""

from __future__ import annotations

import collections

import numpy as np

from seqserve.loadtest.calls import Call
from seqserve.loadtest.config import BEHIND_SHARE, LATE_MS
from seqserve.loadtest.metrics import breakdown
from seqserve.loadtest.stats import histogram, summarize


def _in_window(run, c: Call) -> bool:
    if run.cfg.closed_loop:
        return run.w0 <= c.end <= run.w1
    return run.w0 <= c.sched < run.w1


def _errors(calls: list[Call]) -> dict:
    kinds: dict = collections.OrderedDict()
    for c in calls:
        e = kinds.setdefault(c.error, {"count": 0, "example": c.message})
        e["count"] += 1
        if not e["example"] and c.message:
            e["example"] = c.message
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]["count"]))


def level_summary(run) -> dict:
    cfg = run.cfg
    window = [c for c in run.calls if _in_window(run, c)]
    outside = [c for c in run.calls if c.error and not _in_window(run, c)]
    ok = [c for c in window if not c.error]
    failed = [c for c in window if c.error]
    window_s = max(run.w1 - run.w0, 1) / 1e9
    ended_ok = sum(1 for c in run.calls if not c.error and run.w0 <= c.end <= run.w1)
    lat = np.array([c.end - c.sched for c in ok], dtype=np.float64) / 1e6
    sent = [c for c in window if c.sent and not c.waited]
    lag = np.array([c.sent - c.sched for c in sent], dtype=np.float64) / 1e6
    late = int((lag > LATE_MS).sum())
    waited = [c for c in window if c.waited]
    wait = np.array([(c.sent or c.end) - c.sched for c in waited], dtype=np.float64) / 1e6
    out = {
        "level": run.level,
        "window_s": window_s,
        "interrupted": run.interrupted,
        "requests": len(window),
        "ok": len(ok),
        "errors": len(failed),
        "error_kinds": _errors(failed),
        "errors_outside_window": len(outside),
        "error_kinds_outside_window": _errors(outside),
        "throughput_rps": ended_ok / window_s,
        "latency_ms": summarize(lat),
        "latency_histogram_ms": histogram(lat),
        "send_lag_ms": summarize(lag),
        "late_sends": late,
        "late_share": late / len(sent) if sent else 0.0,
        "client_behind": bool(sent) and late / len(sent) > BEHIND_SHARE,
        "waited_for_connection": len(waited),
        "connection_wait_ms": summarize(wait),
        "offered_rps": None if cfg.closed_loop else len(window) / window_s,
        "lanes": run.lanes_opened,
        "client_cpu_us_per_request": run.cpu_s * 1e6 / max(len(run.calls), 1),
        "server": breakdown(run.server_before, run.server_after),
        "server_note": run.s.scraper.problem,
        "streaming": _streaming(run, ok, window_s) if run.workload.streaming else None,
        "sequences": ({"started": run.seq_started, "completed": run.seq_completed}
                      if cfg.workload == "sequence" else None),
    }
    if not cfg.closed_loop:
        out["precise_timer"] = getattr(run, "precise_timer", False)
    return out


def _streaming(run, ok: list[Call], window_s: float) -> dict:
    ttft = np.array([c.times[0] - c.sched for c in ok if c.times], dtype=np.float64) / 1e6
    gaps = [np.diff(np.asarray(c.times, dtype=np.int64)) for c in ok if c.times and len(c.times) > 1]
    itl = (np.concatenate(gaps).astype(np.float64) / 1e6) if gaps else np.array([])
    in_window = sum(int(((np.asarray(c.times) >= run.w0) & (np.asarray(c.times) <= run.w1)).sum())
                    for c in run.calls if c.times)
    tokens = [c.tokens for c in ok]
    return {"ttft_ms": summarize(ttft), "ttft_histogram_ms": histogram(ttft),
            "itl_ms": summarize(itl), "itl_histogram_ms": histogram(itl),
            "output_tokens": int(sum(tokens)), "output_tokens_per_s": in_window / window_s,
            "tokens_per_request": summarize(tokens)}
