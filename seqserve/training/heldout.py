"""Teacher-forced loss and accuracy, and greedy decoding, for the tasks that generate text from an
input (conditioned, seq2seq, translate): batches whose labels are -100 on padding."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from seqserve.data import Tokenizer


def masked_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits [B, T, V] against labels [B, T], ignoring -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)


def teacher_forced(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss in nats, token accuracy) of logits [B, T, V] against labels [B, T] (-100: padding)."""
    real = y != -100
    token_acc = ((logits.argmax(-1) == y) & real).sum().item() / real.sum().item()
    return masked_loss(logits, y).item(), token_acc


@torch.no_grad()
def greedy(next_logits: Callable[[torch.Tensor], torch.Tensor], tok: Tokenizer, batch: int,
           max_tokens: int) -> list[str]:
    """Greedy texts for `batch` rows, from <bos> until <eos> or `max_tokens` (torch eager; the served
    loop is seqserve.generation). `next_logits(ids [B, 1]) -> logits [B, 1, V]` keeps its own state."""
    ids = torch.full((batch, 1), tok.bos_id, dtype=torch.long)
    out, done = [[] for _ in range(batch)], torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_tokens):
        ids = next_logits(ids)[:, -1].argmax(-1, keepdim=True)
        for r, t in enumerate(ids[:, 0].tolist()):
            if not done[r] and t != tok.eos_id:
                out[r].append(t)
        done |= ids[:, 0] == tok.eos_id
        if done.all():
            break
    return [tok.decode(o) for o in out]
