"""Comparing two arrays the way the gate judges them: np.allclose-style, with Polygraphy-style stats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    passed: bool
    max_abs: float | None
    max_rel: float | None
    detail: str = ""


def compare(actual, expected, atol: float, rtol: float, what: str = "actual", ref: str = "expected") -> Comparison:
    """Pass if |a - b| <= atol + rtol * |b| everywhere (b = the reference), shapes equal, all finite.

    max_abs is the smallest atol that would have passed with rtol=0; max_rel is max |a-b|/|b| over
    non-zero reference values (a zero reference has no relative error to speak of).
    """
    a, b = np.asarray(actual), np.asarray(expected)
    if a.shape != b.shape:
        return Comparison(False, None, None, f"shape {a.shape} from {what} differs from {b.shape} from {ref}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a - b)
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    nz = finite & (b != 0)
    max_rel = float((diff[nz] / np.abs(b[nz])).max()) if nz.any() else 0.0
    if not finite.all():
        # NaN/Inf fails even when both sides agree on it: such logits cannot be sampled from.
        na, nb = int((~np.isfinite(a)).sum()), int((~np.isfinite(b)).sum())
        return Comparison(False, max_abs, max_rel, f"non-finite values: {na} in {what}, {nb} in {ref}")
    bad = diff > atol + rtol * np.abs(b)
    if bad.any():
        worst = np.unravel_index(int(np.argmax(np.where(bad, diff, -1.0))), diff.shape)
        return Comparison(False, max_abs, max_rel,
                          f"{int(bad.sum())} of {bad.size} values outside tolerance; worst at index "
                          f"{tuple(int(i) for i in worst)}: {what} {a[worst]:.6g} vs {ref} {b[worst]:.6g}")
    return Comparison(True, max_abs, max_rel)
