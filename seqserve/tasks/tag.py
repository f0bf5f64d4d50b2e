"""tag: many-to-many, same length. Token ids -> one score per tag and token (spec.io["labels"]).

    full   input_ids [B, S] -> tag_logits [B, S, T]
    step   input_ids [B, S] + state -> tag_logits [B, S, T] + next state; unidirectional
           recurrent encoders only (a transformer or bidirectional encoder needs the whole
           sequence, so it has the full graph alone)

As for classify: no padding, no mask; `step` chunk by chunk, concatenated, equals `full`.
"""

from __future__ import annotations

from seqserve.tasks.classify import _spec, run_graph  # noqa: F401  (same graph runner)
from seqserve.tasks.spec import BATCH, SEQ, TAG_LOGITS, TaskSpec

NAME = "tag"
OUTPUT_NAME = "tag_logits"


def tag_spec(family: str, vocab_size: int, labels: list[str], state: list[tuple[str, str, tuple]],
             extra: dict) -> TaskSpec:
    return _spec(NAME, family, vocab_size, labels, state, extra, OUTPUT_NAME, TAG_LOGITS, (BATCH, SEQ, len(labels)))
