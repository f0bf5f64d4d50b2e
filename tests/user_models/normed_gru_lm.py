"""A character-level GRU LM with a LayerNorm before its head and a forward that takes no state
(`forward(x) -> logits`, batch-first): the automatic adapter finds embedding, GRU and head but
not the norm between them, so its probe fails and it asks for an adapter
(adapter_normed_gru_lm.py)."""

import torch
from torch import nn


class NormedGRULM(nn.Module):
    def __init__(self, vocab: int, dim: int = 16, hidden: int = 24, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, layers, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        y, _ = self.gru(self.embed(x))
        return self.out(self.norm(y))


def build() -> NormedGRULM:
    torch.manual_seed(0)
    return NormedGRULM(vocab=44)
