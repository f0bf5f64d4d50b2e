"""A batch-first LSTM language model with a projected hidden state (proj_size): forward(x,
hidden=None) -> (logits [B, S, V], (h, c)); h is [L, B, proj], c is [L, B, hidden]."""

import torch
from torch import nn


class ProjectedLSTMLM(nn.Module):
    def __init__(self, vocab, dim=12, hidden=20, proj=8, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True, proj_size=proj)
        self.head = nn.Linear(proj, vocab)

    def forward(self, x, hidden=None):
        y, hidden = self.lstm(self.embed(x), hidden)
        return self.head(y), hidden


def build():
    torch.manual_seed(0)
    return ProjectedLSTMLM(vocab=36)
