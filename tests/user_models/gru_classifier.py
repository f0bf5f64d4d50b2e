"""A batch-first GRU text classifier: forward(x [B, S]) -> raw logits [B, C] from the last
layer's final hidden state (no hidden argument, no softmax)."""

import torch
from torch import nn


class GRUClassifier(nn.Module):
    def __init__(self, vocab_size, embed_dim, hidden_dim, num_classes, num_layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden_dim, num_layers=num_layers, batch_first=True, dropout=0.1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(hidden_dim, num_classes)

    def forward(self, x):
        embedded = self.embedding(x)
        _, hidden = self.gru(embedded)
        return self.fc(self.dropout(hidden[-1]))


def build():
    torch.manual_seed(0)
    return GRUClassifier(vocab_size=30, embed_dim=8, hidden_dim=12, num_classes=3)
