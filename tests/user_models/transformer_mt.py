"""A translation model the way users write it around nn.Transformer (batch_first=True): token
embeddings (one shared by both sides, or one per side), learned or sinusoidal positions, a
generator head; forward(src, tgt, src_key_padding_mask=None) -> logits [B, T, V]."""

import math

import torch
from torch import nn


class SinusoidalPositions(nn.Module):
    def __init__(self, d_model: int, max_len: int = 256):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x):                           # x [B, S, d_model]
        return x + self.pe[: x.size(1)]


class Translator(nn.Module):
    def __init__(self, vocab: int, d_model: int = 32, nhead: int = 4, layers: int = 2, ff: int = 64,
                 shared: bool = True, positional: str = "learned", max_len: int = 64, norm_first: bool = False):
        super().__init__()
        self.d_model, self.positional = d_model, positional
        self.src_embed = nn.Embedding(vocab, d_model)
        self.tgt_embed = self.src_embed if shared else nn.Embedding(vocab, d_model)
        if positional == "learned":
            self.pos_embed = nn.Embedding(max_len, d_model)
        else:
            self.pos_embed = SinusoidalPositions(d_model, max_len)
        self.transformer = nn.Transformer(d_model, nhead, layers, layers, ff, dropout=0.1, batch_first=True,
                                          norm_first=norm_first)
        self.generator = nn.Linear(d_model, vocab)

    def embed(self, emb, ids):
        x = emb(ids) * math.sqrt(self.d_model)
        if self.positional == "learned":
            return x + self.pos_embed(torch.arange(ids.size(1), device=ids.device))
        return self.pos_embed(x)

    def forward(self, src, tgt, src_key_padding_mask=None):
        tgt_mask = self.transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device)
        out = self.transformer(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt), tgt_mask=tgt_mask,
                               src_key_padding_mask=src_key_padding_mask,
                               memory_key_padding_mask=src_key_padding_mask)
        return self.generator(out)


def build(vocab: int = 40, **kw) -> Translator:
    torch.manual_seed(0)
    return Translator(vocab, **kw).eval()


def adapter(model: Translator):
    """For positional="sinusoidal" (a module seqserve cannot read): how each side embeds."""
    from seqserve.adapters.protocol import EncoderDecoderPieces

    pe = model.pos_embed.pe                          # [max_len, d_model]

    def side(emb):
        return lambda ids, positions: emb(ids) * math.sqrt(model.d_model) + pe[positions]

    t = model.transformer
    return EncoderDecoderPieces(embed_source=side(model.src_embed), embed_target=side(model.tgt_embed),
                                encoder_layers=list(t.encoder.layers), decoder_layers=list(t.decoder.layers),
                                head=model.generator, encoder_norm=t.encoder.norm, decoder_norm=t.decoder.norm,
                                max_positions=pe.shape[0])
