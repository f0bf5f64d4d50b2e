"""Percentiles and histograms of latencies, and the summary of one load level.

Percentiles are nearest-rank (the value of the ceil(q/100 * n)-th smallest sample), so every
reported percentile is a latency that was actually measured and p100 is the maximum — the usual
definition for latency reports (perf_analyzer's too). Histograms have log-spaced bins: latency
distributions span orders of magnitude and are read on a log axis.
"""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: np.ndarray, q: float) -> float:
    """Nearest-rank percentile of an ascending array; q in (0, 100]."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(math.ceil(q / 100.0 * n), 1)
    return float(sorted_values[min(rank, n) - 1])


def summarize(values, qs=PERCENTILES) -> dict:
    """{"n", "min", "mean", "std", "p50", ..., "max"} of a 1-D sample (same unit); None fields when empty."""
    a = np.sort(np.asarray(values, dtype=np.float64))
    if a.size == 0:
        return {"n": 0, "min": None, "mean": None, "std": None, **{f"p{q}": None for q in qs}, "max": None}
    return {"n": int(a.size), "min": float(a[0]), "mean": float(a.mean()), "std": float(a.std()),
            **{f"p{q}": percentile(a, q) for q in qs}, "max": float(a[-1])}


def log_edges(lo: float, hi: float, per_decade: int = 20) -> np.ndarray:
    """Bin edges spaced evenly in log10, covering [lo, hi], at fixed positions (10^(k/per_decade)),
    so histograms of different levels and runs share their edges."""
    lo, hi = max(lo, 1e-6), max(hi, lo * 1.0001)
    k0 = math.floor(math.log10(lo) * per_decade)
    k1 = math.ceil(math.log10(hi) * per_decade)
    if k1 <= k0:
        k1 = k0 + 1
    return 10.0 ** (np.arange(k0, k1 + 1) / per_decade)


def histogram(values, per_decade: int = 20) -> dict:
    """{"edges": [...], "counts": [...]} with log-spaced edges; counts add up to the sample size
    (the last bin includes its right edge). Empty sample: no bins."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"edges": [], "counts": []}
    pos = a[a > 0]
    lo = float(pos.min()) if pos.size else 1e-6
    edges = log_edges(lo, float(a.max()), per_decade)
    counts, _ = np.histogram(np.clip(a, edges[0], edges[-1]), bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def histogram_quantile(hist: dict, q: float) -> float:
    """The q-th percentile read back from a histogram (geometric interpolation inside a bin)."""
    counts, edges = np.asarray(hist["counts"]), np.asarray(hist["edges"])
    total = counts.sum()
    if total == 0:
        return math.nan
    target = q / 100.0 * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, target))
    i = min(i, len(counts) - 1)
    before = cum[i - 1] if i > 0 else 0
    frac = (target - before) / counts[i] if counts[i] else 0.0
    return float(edges[i] * (edges[i + 1] / edges[i]) ** frac)
