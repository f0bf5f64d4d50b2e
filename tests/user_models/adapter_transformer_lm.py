"""The adapter for transformer_lm.py: how its forward embeds tokens, for seqserve's cached step.

    seqserve export --module tests/user_models/transformer_lm.py:build \\
        --adapter tests/user_models/adapter_transformer_lm.py:adapter --task causal-lm ...

The tutorial's PositionalEncoding adds `pe[:S]` (sequence-first, [max_len, 1, d_model]); a cached
step embeds token P+s at position P+s, so `embed` takes the positions and indexes the same table.
"""

import math

from seqserve.adapters.protocol import DecoderPieces


def adapter(model) -> DecoderPieces:
    pe = model.pos_encoder.pe                   # [max_len, 1, d_model], the module's own buffer

    def embed(ids, positions):                  # ids, positions [B, S] -> [B, S, d_model]
        x = model.embedding(ids) * math.sqrt(model.d_model)
        return x + pe[positions, 0]             # dropout is the identity in eval

    encoder = model.transformer_encoder
    return DecoderPieces(embed=embed, layers=list(encoder.layers), norm=encoder.norm,
                         head=model.linear, max_positions=pe.shape[0])
