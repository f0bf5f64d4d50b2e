"""The one model interface seqserve exports, validates and runs, and the pieces users point at.

Every model seqserve handles — its own families (seqserve/models) and a user's module after
adaptation — is an nn.Module that provides the same few things, which the exporter, the gate and
the torch backend read through `seqserve.tasks.run_graph`:

    spec() -> TaskSpec                         the task's graphs, tensors by role, state pairs
    the graph methods of its task, by tensor names:
        causal-lm, classify, tag   forward(ids [B, S]) = the full graph; run_step(dict) -> dict
        conditioned                run_init(dict), forward(ids, features), run_step(dict)
        seq2seq                    run_encoder(dict), forward(source, source_mask, target), run_step(dict)

A brought model (`Adapted`) adds what its export records in the sidecar: `decisions` (how the
adapter read the user's module: layout, state form, output form, ...) and `export_with` (the
ONNX exporter and opset its graphs need). Its full graph calls the user's own forward, in the
user's own layout, so the gate's torch side for that graph IS the user's module; its step graph
is rebuilt from the user's weights (a KV cache for stock Transformer layers, the recurrent core
with its state batch-first).

For what the automatic adapters cannot read, a user writes a function `adapter(model) -> pieces`
(`seqserve export --adapter FILE.py:NAME`), returning one of the piece dataclasses below: the
handful of callables and modules seqserve rebuilds the step graph from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

# Graph exporters by model kind (measured with torch 2.13, DESIGN.md "Export choices").
RECURRENT_EXPORT = ("torchscript", 17)     # nn.RNN/LSTM/GRU -> native ONNX ops, dynamic lengths
ATTENTION_EXPORT = ("dynamo", 23)          # scaled_dot_product_attention -> ONNX Attention


class Adapted(torch.nn.Module):
    """A user's module wrapped in the model interface above. `self.user` is the user's module,
    unchanged (its weights are the adapter's weights: nothing is copied)."""

    export_with: tuple[str, int] = RECURRENT_EXPORT

    def __init__(self, user: torch.nn.Module):
        super().__init__()
        self.user = user
        self.decisions: dict[str, Any] = {}

    def spec(self):                      # pragma: no cover - every adapter defines it
        raise NotImplementedError


# --- pieces a user's adapter function returns ----------------------------------------------------

@dataclass(frozen=True)
class DecoderPieces:
    """A decoder-only LM built from stock Transformer layers (nn.TransformerEncoderLayer, or
    nn.TransformerDecoderLayer without memory).

    embed(ids [B, S], positions [B, S]) -> [B, S, D]: token embedding, scaling and positional
        encoding exactly as the user's forward applies them (positions let a cached step embed
        token P+s at position P+s)
    layers: the layers in order (rebuilt with a KV cache from their own weights)
    norm: the final norm (the encoder's `norm`), or None
    head(x [B, S, D]) -> logits or log-probabilities [B, S, V]
    max_positions: the longest position `embed` knows (a positional table's length), or None
    """

    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    layers: Sequence[torch.nn.Module]
    head: Callable[[torch.Tensor], torch.Tensor]
    norm: torch.nn.Module | None = None
    max_positions: int | None = None


@dataclass(frozen=True)
class EncoderDecoderPieces:
    """An encoder-decoder from stock Transformer layers (nn.Transformer, or nn.TransformerEncoder
    + nn.TransformerDecoder).

    embed_source(ids, positions) / embed_target(ids, positions) -> [B, S, D]
    encoder_layers, encoder_norm; decoder_layers, decoder_norm: rebuilt from their own weights
    head(x [B, T, D]) -> logits [B, T, V]
    """

    embed_source: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    embed_target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    encoder_layers: Sequence[torch.nn.Module]
    decoder_layers: Sequence[torch.nn.Module]
    head: Callable[[torch.Tensor], torch.Tensor]
    encoder_norm: torch.nn.Module | None = None
    decoder_norm: torch.nn.Module | None = None
    max_positions: int | None = None


@dataclass(frozen=True)
class RecurrentPieces:
    """A recurrent model whose forward seqserve cannot call step by step (it runs its own loop,
    or takes no state):

    core: the nn.RNN / nn.LSTM / nn.GRU
    embed(ids [B, S]) -> [B, S, E] (batch-first; seqserve transposes for a sequence-first core)
    head(y [B, S, H]) -> [B, S, V] (causal-lm, tag) or (y_last [B, H]) -> [B, C] (classify)
    """

    core: torch.nn.Module
    embed: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
