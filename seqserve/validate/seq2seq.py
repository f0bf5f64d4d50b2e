"""Checks of the seq2seq task beyond the encoder-decoder gate (seqserve/validate/encdec.py, by
role: torch vs ORT per graph over batch 1/3, source and target lengths, padded sources, zero and
random state; the chain token by token, prefill + 1 at a time, in chunks == the full graph;
greedy, sampled and 4-beam tokens identical torch vs ORT on the sidecar's sources):

    sidecar              causal-lm's (tokenizer, vocabulary, spec == the checkpoint's), plus: the
                         source characters and the held-out examples encode, within max_source_len
    incremental_vs_full  encdec's, plus: a right-padded source gives exactly what it gives alone
                         (the reversed encoder direction reverses only the real prefix; padded
                         encoder outputs are zero and masked)
"""

from __future__ import annotations

import numpy as np

from seqserve.tasks import seq2seq as task
from seqserve.validate import encdec, static
from seqserve.validate.compare import compare
from seqserve.validate.results import CheckResult
from seqserve.validate.target import Target, guarded


def sidecar(t: Target) -> list[CheckResult]:
    info, rows = t.info, static.sidecar(t)
    chars, limit = info.spec.io.get("source_chars", ""), info.spec.io.get("max_source_len")

    def sources() -> list[CheckResult]:
        if chars:
            info.tokenizer.encode(chars)      # SeqserveError: a source character the tokenizer lacks
        # a user's module carries no held-out examples; a trained family's export must
        srcs, refs = ([], []) if t.brought and not info.raw.get("examples") else task.examples(info.raw)
        for s, r in zip(srcs, refs):
            task.source_inputs(info.spec, info.tokenizer, s)
            info.tokenizer.encode(r)
        return [CheckResult("sidecar", "examples", "source characters and examples encode", True,
                            detail=f"{len(chars)} source characters, {len(srcs)} examples, max_source_len {limit}")]

    return rows + guarded("sidecar", "examples", "source characters and examples encode", sources)


def _padded_mask(b: int, s: int) -> np.ndarray:
    """[b, s]: row 0 full, later rows shorter (right padding), every row at least one position."""
    lengths = [max(1, s - 3 * r) for r in range(b)]
    return (np.arange(s)[None] < np.asarray(lengths)[:, None]).astype(np.int64)


def incremental_vs_full(t: Target, length: int = 12, batch: int = 3) -> list[CheckResult]:
    """The encoder-decoder chain == the full graph (encdec), and a padded source == it alone."""
    from seqserve.generation import DecodeState, start_values

    c, spec = t.config, t.info.spec
    rng = np.random.default_rng(c.seed)
    vocab = spec.io["vocab_size"]
    src = {task.SOURCE_IDS: rng.integers(3, vocab, (batch, 7), dtype=np.int64), task.SOURCE_MASK_NAME: _padded_mask(batch, 7)}
    ids = rng.integers(3, vocab, (batch, length), dtype=np.int64)

    def chain(src: dict, ids: np.ndarray) -> np.ndarray:
        step = t.ort(spec.step.name)
        start = start_values([t.ort(task.ENCODER_GRAPH)], src, spec.step)     # the encoder, once
        state = DecodeState.empty(spec.step, ids.shape[0], step, start)
        return step.to_host(step.run(state.feeds(ids))[task.LOGITS_NAME])

    def alone() -> list[CheckResult]:
        n = int(src[task.SOURCE_MASK_NAME][-1].sum())
        padded = chain(src, ids)[-1:]
        single = chain({k: v[-1:, :n] for k, v in src.items()}, ids[-1:])
        r = compare(single, padded, c.atol, c.rtol, "alone", "padded")
        return [CheckResult("incremental_vs_full", "encoder+step", f"a source of {n} padded to 7 == alone",
                            r.passed, r.max_abs, r.max_rel, c.atol, c.rtol, r.detail)]

    return encdec.incremental_vs_full(t) + guarded("incremental_vs_full", "encoder+step", "padded == alone", alone)


