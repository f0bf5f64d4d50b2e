"""A causal LM the way the PyTorch tutorial ("Language Modeling with nn.Transformer") writes it:
sequence-first input [S, B], its own sinusoidal PositionalEncoding module (a `pe` buffer
[max_len, 1, d_model] and dropout), nn.TransformerEncoder under generate_square_subsequent_mask.
seqserve cannot guess the positional module: adapter_transformer_lm.py says how it embeds."""

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        """x: [seq_len, batch_size, embedding_dim]"""
        x = x + self.pe[:x.size(0)]
        return self.dropout(x)


class TransformerModel(nn.Module):
    def __init__(self, ntoken: int, d_model: int, nhead: int, d_hid: int, nlayers: int, dropout: float = 0.5,
                 max_len: int = 5000):
        super().__init__()
        self.model_type = "Transformer"
        self.pos_encoder = PositionalEncoding(d_model, dropout, max_len)
        encoder_layers = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout)
        self.transformer_encoder = nn.TransformerEncoder(encoder_layers, nlayers, enable_nested_tensor=False)
        self.embedding = nn.Embedding(ntoken, d_model)
        self.d_model = d_model
        self.linear = nn.Linear(d_model, ntoken)
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        self.embedding.weight.data.uniform_(-initrange, initrange)
        self.linear.bias.data.zero_()
        self.linear.weight.data.uniform_(-initrange, initrange)

    def forward(self, src, src_mask=None):
        """src: [seq_len, batch_size] -> [seq_len, batch_size, ntoken]"""
        src = self.embedding(src) * math.sqrt(self.d_model)
        src = self.pos_encoder(src)
        if src_mask is None:
            src_mask = nn.Transformer.generate_square_subsequent_mask(len(src)).to(src.device)
        output = self.transformer_encoder(src, src_mask)
        return self.linear(output)


def build(ntoken: int = 50, d_model: int = 32, nhead: int = 4, d_hid: int = 64, nlayers: int = 2,
          max_len: int = 512) -> TransformerModel:
    torch.manual_seed(0)
    return TransformerModel(ntoken, d_model, nhead, d_hid, nlayers, dropout=0.2, max_len=max_len).eval()


class LearnedPositionLM(nn.Module):
    """A GPT-style LM from stock layers that seqserve reads with no adapter: batch-first,
    learned positions, pre-norm, the causal mask built in forward."""

    def __init__(self, vocab: int, d_model: int, nhead: int, nlayers: int, max_len: int, norm_first: bool = True,
                 activation: str = "gelu", batch_first: bool = True, log_probs: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.1, activation=activation,
                                           batch_first=batch_first, norm_first=norm_first)
        self.blocks = nn.TransformerEncoder(layer, nlayers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.batch_first, self.log_probs = batch_first, log_probs

    def forward(self, ids, mask=None):
        """ids [B, S] (batch_first) or [S, B] -> logits (or log-probabilities) in the same layout."""
        S = ids.shape[1] if self.batch_first else ids.shape[0]
        positions = torch.arange(S, device=ids.device)
        x = self.tok(ids) + (self.pos(positions) if self.batch_first else self.pos(positions)[:, None])
        if mask is None:
            mask = nn.Transformer.generate_square_subsequent_mask(S, device=ids.device)
        logits = self.lm_head(self.blocks(x, mask=mask, is_causal=True))
        return torch.log_softmax(logits, -1) if self.log_probs else logits


def build_auto(vocab: int = 40, d_model: int = 32, nhead: int = 4, nlayers: int = 2, max_len: int = 64,
               **kw) -> LearnedPositionLM:
    torch.manual_seed(0)
    return LearnedPositionLM(vocab, d_model, nhead, nlayers, max_len, **kw).eval()


class LoopedBlocksLM(nn.Module):
    """Blocks in an nn.ModuleList the forward loops over, a final LayerNorm, a tied head, the
    mask as a bool (True = not allowed) the caller passes."""

    def __init__(self, vocab=40, d_model=32, nhead=4, nlayers=2, max_len=64):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(max_len, d_model)
        self.h = nn.ModuleList(nn.TransformerEncoderLayer(d_model, nhead, 64, 0.0, "gelu", batch_first=True,
                                                          norm_first=True) for _ in range(nlayers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx, causal_mask):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x, src_mask=causal_mask)
        return self.head(self.ln_f(x))


def build_looped() -> LoopedBlocksLM:
    torch.manual_seed(0)
    return LoopedBlocksLM().eval()
