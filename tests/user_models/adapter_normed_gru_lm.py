"""The adapter for normed_gru_lm.py: which recurrent core to step, and what runs around it.

    seqserve export --module tests/user_models/normed_gru_lm.py:build \\
        --adapter tests/user_models/adapter_normed_gru_lm.py:adapter --task causal-lm ...

seqserve steps `core` with its state held batch-first ([B, layers, hidden]) and checks on random
inputs that embed -> core -> head equals the module's own forward before exporting anything.
"""

from seqserve.adapters.protocol import RecurrentPieces


def adapter(model) -> RecurrentPieces:
    return RecurrentPieces(
        core=model.gru,                                   # nn.GRU, batch_first
        embed=model.embed,                                # ids [B, S] -> [B, S, 16]
        head=lambda y: model.out(model.norm(y)),          # [B, S, 24] -> logits [B, S, 44]
    )
