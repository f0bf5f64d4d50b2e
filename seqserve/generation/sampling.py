"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seqserve.errors import SeqserveError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64              # new tokens per prompt
    greedy: bool = False              # argmax; ignores temperature/top_k/top_p
    temperature: float = 1.0          # divides logits; 0 means greedy
    top_k: int = 0                    # keep the k most likely tokens; 0 = all
    top_p: float = 1.0                # keep the smallest set with probability >= top_p; 1 = all
    seed: int | None = None           # per-prompt generators are seeded (seed, prompt index)
    stop: tuple[str, ...] = ()        # stop strings: the text ends before the first match
    stop_at_eos: bool = True          # end a sequence when <eos> is sampled

    def __post_init__(self):
        if self.max_tokens < 1:
            raise SeqserveError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SeqserveError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SeqserveError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SeqserveError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise SeqserveError(f"seed must be an integer in 0..2**64-1, got {self.seed}")
        if any(not s for s in self.stop):
            raise SeqserveError("stop strings must not be empty")

    @property
    def is_greedy(self) -> bool:
        # Below ~1e-5, logits / temperature overflow float64 into inf - inf = NaN; the limit is argmax.
        return self.greedy or self.temperature < 1e-5


def filtered_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """logits (V,) -> probabilities (V,) after temperature, top-k and top-p."""
    z = logits.astype(np.float64) / p.temperature
    if 0 < p.top_k < z.size:
        kth = np.partition(z, -p.top_k)[-p.top_k]
        z = np.where(z < kth, -np.inf, z)
    z = np.exp(z - z.max())
    probs = z / z.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, p.top_p)) + 1]   # smallest prefix reaching top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample_next(logits: np.ndarray, p: SamplingParams, rngs: list[np.random.Generator]) -> np.ndarray:
    """logits (B, V) -> next token ids (B,) int64; row b draws from rngs[b]."""
    if p.is_greedy:
        return logits.argmax(axis=-1).astype(np.int64)
    return np.array([rng.choice(logits.shape[-1], p=filtered_probs(row, p)) for row, rng in zip(logits, rngs)],
                    dtype=np.int64)


def sample_rows(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator]) -> np.ndarray:
    """Like sample_next, but every row has its own parameters (a server batch mixes requests)."""
    out = np.empty(len(params), np.int64)
    greedy = [r for r, p in enumerate(params) if p.is_greedy]
    if greedy:
        out[greedy] = logits[greedy].argmax(axis=-1)    # one vectorized argmax for all greedy rows
    for r, p in enumerate(params):
        if not p.is_greedy:
            out[r] = sample_next(logits[r:r + 1], p, [rngs[r]])[0]
    return out


def make_rngs(p: SamplingParams, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(None if p.seed is None else (p.seed, i)) for i in range(n)]
