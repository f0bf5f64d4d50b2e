"""Timing machinery: interleaved rounds, per-step timers, and how busy the rest of the machine was."""

from __future__ import annotations

import gc
import os
import time
from typing import Callable

import numpy as np

NOISY_SHARE = 0.10            # other processes' CPU share above which rounds are rerun / flagged
LOAD_WINDOW_S = 0.25          # rounds are checked for other processes' load in windows this long


def stats(times: list[float]) -> dict:
    a = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


class Variant:
    """One way of decoding: run_round() decodes from the prefilled context and returns step times."""

    def __init__(self, name: str, run_round: Callable[[int, int], tuple[list[float], np.ndarray]],
                 steps: int, warmup: int):
        self.name, self._run, self.steps, self.warmup = name, run_round, steps, warmup
        self.times: list[float] = []
        self.first_logits: np.ndarray | None = None

    def round(self) -> None:
        times, first = self._run(self.warmup, self.steps)
        self.times += times
        self.first_logits = first


def interleave(variants: list[Variant], rounds: int, progress, label: str) -> dict:
    """Round-robin: every round runs each variant once, in a rotated order.

    Other processes matter a lot on a small machine: with one of 2 cores busy elsewhere, torch's
    OpenMP threads wait for time slices (a 1 ms step becomes 100+ ms). Rounds are checked in
    windows of at least LOAD_WINDOW_S (/proc/stat counts in 10 ms ticks); a window during which
    other processes used more than NOISY_SHARE of the CPUs is dropped and run again, for at most
    `rounds` extra rounds in all. Returns {"share": CPU share other processes used during the kept
    rounds (0-1; None without /proc/stat), "dropped": rounds dropped}.
    """
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    kept_load, kept_time, dropped, retries, r = 0.0, 0.0, 0, rounds, 0
    try:
        for v in variants:                                # one untimed round: caches, allocators, pools
            v._run(v.warmup, min(v.steps, 2))
        while r < rounds:
            marks = [len(v.times) for v in variants]
            load, first = _OtherLoad(), r
            while r < rounds and (r == first or load.elapsed() < LOAD_WINDOW_S):
                if progress:
                    progress(f"{label}: round {r + 1}/{rounds}"
                             + (f" ({dropped} dropped: machine busy)" if dropped else ""))
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    v.round()
                r += 1
            share, wall = load.share(), load.elapsed()
            if share is not None and share > NOISY_SHARE and retries >= r - first:
                retries -= r - first
                dropped += r - first
                for v, m in zip(variants, marks):
                    del v.times[m:]
                r = first
                continue
            if share is not None:
                kept_load, kept_time = kept_load + share * wall, kept_time + wall
        return {"share": round(kept_load / kept_time, 3) if kept_time else None, "dropped": dropped}
    finally:
        if gc_was_enabled:
            gc.enable()


class _OtherLoad:
    """CPU time used by other processes since construction, as a share of all CPUs' time."""

    def __init__(self):
        self.wall, self.own, self.busy = time.perf_counter(), _own_cpu(), _busy_cpu()

    def elapsed(self) -> float:
        return time.perf_counter() - self.wall

    def share(self) -> float | None:
        busy = _busy_cpu()
        if busy is None or self.busy is None:
            return None
        wall = self.elapsed()
        ncpu = os.cpu_count() or 1
        other = (busy - self.busy) - (_own_cpu() - self.own)
        return round(min(max(other / (wall * ncpu), 0.0), 1.0), 3) if wall > 0 else None


def _own_cpu() -> float:
    return time.process_time()                            # all threads of this process, ns resolution


def _busy_cpu() -> float | None:
    """Seconds all CPUs spent busy since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def timed(warmup: int, steps: int, step: Callable[[int], object]) -> tuple[list[float], np.ndarray]:
    """Run step(i) for i < warmup + steps; times of the last `steps` calls, logits of the first timed."""
    times, first = [], None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        last = step(i)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
        if i == warmup:
            first = np.array(last, dtype=np.float32, copy=True)
    return times, first
