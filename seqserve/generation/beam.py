"""Beam search over the one decoding loop's pieces: `prefill`, `decode_step`, `DecodeState.select`.

Each prompt keeps `beams` rows in one batched state. After every step each row's log-probabilities
are added to its running score, the best `2 * beams` (row, token) continuations of the whole
beam are taken in order, a continuation that samples <eos> becomes a finished hypothesis, and the
best `beams` of the others become the next rows: `state.select(rows)` copies each chosen row's
state (RNN h/c, KV cache, and any per-sequence constants) into its new place, so a parent with
two surviving children appears twice. Nothing computed once per sequence is recomputed.

Hypotheses are ranked by  sum(log p) / length ** length_penalty  (length = generated tokens,
<eos> included): 0 ranks by total log-probability, 1 by the mean per token. The search stops when
no row is left, at max_tokens (the rows then finish with reason "length"), or as soon as no row
can still beat the worst of `beams` finished hypotheses: a row's log-probability only falls, so
its best possible final score is its score now divided by the longest length it may reach (the
bound is exact for length_penalty >= 0, so with enough beams the result IS the exhaustive best).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.generation.loop import decode_step, encode_prompts, prefill

MAX_BEAMS = 64


@dataclass(frozen=True)
class BeamParams:
    beams: int = 4                  # hypotheses kept per prompt (1 = greedy)
    max_tokens: int = 64            # new tokens per hypothesis at most
    length_penalty: float = 1.0     # score = sum(log p) / length ** length_penalty
    stop_at_eos: bool = True        # a hypothesis that samples <eos> is finished

    def __post_init__(self):
        if isinstance(self.beams, bool) or not isinstance(self.beams, int) or not 1 <= self.beams <= MAX_BEAMS:
            raise SeqserveError(f"beams must be a whole number in 1..{MAX_BEAMS}, got {self.beams!r}")
        if self.max_tokens < 1:
            raise SeqserveError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (np.isfinite(self.length_penalty) and self.length_penalty >= 0):
            raise SeqserveError(f"length_penalty must be a finite number >= 0, got {self.length_penalty}")


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]         # generated ids, <eos> included if it ended there
    logprob: float                  # sum of the tokens' log-probabilities
    score: float                    # logprob / len(tokens) ** length_penalty
    finish_reason: str              # "eos" | "length"


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def beam_search(backend, ids: list[int], params: BeamParams, eos_id: int, start: dict | None = None) -> list[Hypothesis]:
    """One prompt (token ids) -> up to `beams` hypotheses, best first. start: the step state and
    constants its once graphs computed (loop.start_values), batch 1; select() copies them per beam."""
    p = params
    if not ids:
        raise SeqserveError("the prompt is empty; give at least one token")
    logits, state = prefill(backend, ids, start)
    finished: list[Hypothesis] = []
    # rows: (tokens so far, log-probability so far); all start from the one prefilled row
    rows: list[tuple[tuple[int, ...], float]] = [((), 0.0)]

    def score(logprob: float, length: int) -> float:
        return logprob / length ** p.length_penalty

    for step in range(1, p.max_tokens + 1):
        logp = _log_softmax(logits)                                    # (rows, V)
        total = np.array([lp for _, lp in rows])[:, None] + logp       # (rows, V)
        flat = total.reshape(-1)
        k = min(2 * p.beams, flat.size)
        best = np.argpartition(-flat, k - 1)[:k]
        best = best[np.lexsort((best, -flat[best]))]                   # by score, ties by index
        keep_rows, keep_tokens, nxt = [], [], []
        vocab = logp.shape[-1]
        for i in best:
            r, tok = divmod(int(i), vocab)
            tokens, lp = rows[r][0] + (tok,), float(flat[i])
            if p.stop_at_eos and tok == eos_id:
                finished.append(Hypothesis(tokens, lp, score(lp, step), "eos"))
                continue
            if step == p.max_tokens:
                finished.append(Hypothesis(tokens, lp, score(lp, step), "length"))
                continue
            if len(nxt) < p.beams:
                keep_rows.append(r)
                keep_tokens.append(tok)
                nxt.append((tokens, lp))
        finished = sorted(finished, key=lambda h: (-h.score, h.tokens))[:p.beams]
        if not nxt:
            break
        if len(finished) == p.beams:
            # a row's best possible final score: its log-probability now, divided by the longest
            # length it can reach (the log-probability can only fall from here)
            bound = max(lp for _, lp in nxt) / (p.max_tokens ** p.length_penalty)
            if bound <= finished[-1].score:
                break
        rows = nxt
        state = state.select(keep_rows, backend)
        logits, state = decode_step(backend, state, np.asarray(keep_tokens, np.int64))
    return finished


@dataclass(frozen=True)
class BeamText:
    text: str                       # the hypothesis as text (<eos> not shown)
    score: float
    finish_reason: str
    tokens: tuple[int, ...]


def beam_texts(backend, tokenizer, prompts: list[str], params: BeamParams,
               max_context: int | None = None, chain=None, once_inputs=None) -> list[list[BeamText]]:
    """Every prompt's hypotheses as text, best first (prompts checked before any work). chain /
    once_inputs: as for loop.generate (a task with once graphs: conditioned's init from features)."""
    from seqserve.generation.loop import start_values

    once = chain.once if chain is not None else ()
    if once and (once_inputs is None or len(once_inputs) != len(prompts)):
        raise SeqserveError(f"this task runs {[b.spec.name for b in once]} first: give one set of their inputs "
                            f"per prompt ({len(prompts)} prompts)")
    encoded = encode_prompts(tokenizer, prompts, params.max_tokens, max_context, bool(chain and chain.bos))
    out = []
    for i, ids in enumerate(encoded):
        start = start_values(once, once_inputs[i], backend.spec) if once else None
        hyps = beam_search(backend, ids, params, tokenizer.eos_id, start)
        out.append([BeamText(tokenizer.decode([t for t in h.tokens if t != tokenizer.eos_id]), h.score,
                             h.finish_reason, h.tokens) for h in hyps])
    return out
