"""Stacks of nn.TransformerEncoderLayer whose attention seqserve cannot rebuild with a KV cache:
extra learned key/value biases (add_bias_kv=True), keys of another width (kdim != embed_dim)."""

import torch
from torch import nn


class BiasKVLM(nn.Module):
    def __init__(self, vocab=30, d_model=16, nhead=2, nlayers=2, kdim=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        for block in self.encoder.layers:   # the researcher's tweak: attention with extra key/value slots
            block.self_attn = (nn.MultiheadAttention(d_model, nhead, add_bias_kv=True, batch_first=True)
                               if kdim is None else nn.MultiheadAttention(d_model, nhead, kdim=kdim, vdim=kdim,
                                                                          batch_first=True))
        self.out = nn.Linear(d_model, vocab)

    def forward(self, ids):
        S = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(S)
        return self.out(self.encoder(self.embed(ids), mask=mask))


def build():
    torch.manual_seed(0)
    return BiasKVLM().eval()


def build_kdim():
    torch.manual_seed(0)
    return BiasKVLM(kdim=8).eval()
