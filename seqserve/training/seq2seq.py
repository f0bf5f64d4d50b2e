"""Training the seq2seq family: numbers in digits -> words (seqserve/data/translation.py).

Batches as the translate task's (seqserve.training.translation.batch): sources right-padded with
a source mask, the decoder fed `<bos> target` to predict `target <eos>`, padding ignored. The
held-out score is the exact match of greedily decoded targets (and per-token accuracy under
teacher forcing) on the first EVAL_PAIRS held-out numbers; the checkpoint keeps N_EXAMPLES held-out
pairs of 1 to 4 digits, which `seqserve export` moves into the sidecar (`generate --examples`).
"""

from __future__ import annotations

import numpy as np
import torch

from seqserve.data import Tokenizer
from seqserve.data.translation import Pairs, load_number_pairs
from seqserve.training import heldout
from seqserve.training.trainer import Task
from seqserve.training.translation import pairs_task, score_pairs

EVAL_PAIRS = 400        # held-out pairs scored at each evaluation


@torch.no_grad()
def greedy(model, tok: Tokenizer, source_ids, source_mask, max_tokens: int) -> list[str]:
    """Greedy targets for a padded batch (torch eager; the served loop is seqserve.generation)."""
    enc, keys, state = model.encode(source_ids, source_mask)

    def next_logits(ids):
        nonlocal state
        logits, state, _ = model.step(ids, state, enc, keys, source_mask)
        return logits

    return heldout.greedy(next_logits, tok, source_ids.shape[0], max_tokens)


@torch.no_grad()
def evaluate(model, tok: Tokenizer, data: Pairs, n: int = EVAL_PAIRS) -> dict:
    """Held-out loss (bits per token), token accuracy (teacher-forced) and exact match (greedy)."""
    return score_pairs(model, tok, data, np.arange(min(n, len(data))),
                       lambda s, m, x: greedy(model, tok, s, m, x.shape[1] + 8))


def setup(cfg, resume) -> Task:
    """The seq2seq task for seqserve.training.train (cfg: TrainConfig; corpus options unused).
    One torch thread while training: the recurrent ops' threads mostly wait on each other at these
    sizes (as training.translation measured on the shared 2-core machine)."""
    data = load_number_pairs()
    sources = data.train.sources + data.val.sources
    chars = "".join(sorted(set("".join(sources))))
    return pairs_task(cfg, resume, data, dict(source_chars=chars, max_source_len=max(max(map(len, sources)), 8)),
                      evaluate=lambda model, tok: evaluate(model, tok, data.val))
