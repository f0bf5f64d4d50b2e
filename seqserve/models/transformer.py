"""Encoder-decoder Transformer: encoder self-attention, decoder masked self-attention with a KV
cache, and cross-attention over K/V computed once per source.

    encoder  tokens + sinusoidal positions -> n_enc_layers pre-norm blocks (self-attention under the
             source mask) -> memory [B, SRC, D]; then each decoder layer's cross-attention K/V
             projections of the memory [B, nh, SRC, hd]: the step never recomputes them
    step     target tokens [B, T] + self past [B, nh, P, hd] (P = 0 allowed) + cross K/V + source
             mask -> logits [B, T, V] + present self K/V [B, nh, P+T, hd]
    full     the same as encoder once + step over the whole target from an empty past

Attention is F.scaled_dot_product_attention, which the dynamo exporter at opset 23 turns into ONNX
`Attention`. Layers are written from their weights (stock nn.TransformerDecoder has no KV cache).
The task is seqserve.tasks.seq2seq (transformer_spec).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqserve.models.gpt import GPT, sinusoidal_table
from seqserve.tasks.spec import BATCH, PAST, SOURCE, TaskSpec
from seqserve.tasks.seq2seq import (SELF_MASK, SELF_POSITIONS, SOURCE_IDS, SOURCE_MASK_NAME, TARGET_IDS, MEMORY,
                                      LOGITS_NAME, cross_cache_names, self_cache_names, transformer_spec)


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    d_model: int = 64            # residual stream width
    n_heads: int = 4             # attention heads; head_dim = d_model // n_heads
    n_enc_layers: int = 2        # encoder blocks
    n_dec_layers: int = 2        # decoder blocks (self-attention, cross-attention, MLP)
    d_ff: int = 256              # feed-forward hidden width
    max_seq_len: int = 64        # longest source and longest target (sinusoidal positions)
    dropout: float = 0.0         # attention/residual dropout (training only)
    tie_weights: bool = True     # share the (one, both-sides) token embedding and the head
    source_chars: str = ""       # characters of the training sources ("" = any in the vocabulary)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_enc_layers", "n_dec_layers", "d_ff", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, S, D = x.shape
    return x.view(B, S, n_heads, D // n_heads).transpose(1, 2)        # (B, nh, S, hd)


def _merge(y: torch.Tensor) -> torch.Tensor:
    B, nh, S, hd = y.shape
    return y.transpose(1, 2).reshape(B, S, nh * hd)                    # (B, S, D)


class SelfAttention(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)

    def forward(self, x, mask, past_k=None, past_v=None):
        """x (B, S, D); mask (B, 1, S, P+S) bool, True = attend; past_k/v (B, nh, P, hd) or None."""
        q, k, v = (_heads(t, self.n_heads) for t in self.qkv(x).split(x.shape[-1], dim=2))
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)                          # (B, nh, P+S, hd)
            v = torch.cat([past_v, v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # (B, nh, S, hd)
        return self.proj(_merge(y)), k, v


class CrossAttention(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.q = nn.Linear(c.d_model, c.d_model)
        self.kv = nn.Linear(c.d_model, 2 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)

    def keys_values(self, memory):
        """memory (B, SRC, D) -> k, v (B, nh, SRC, hd): computed once per source."""
        k, v = self.kv(memory).split(memory.shape[-1], dim=2)
        return _heads(k, self.n_heads), _heads(v, self.n_heads)

    def forward(self, x, k, v, mask):
        """x (B, S, D); k/v (B, nh, SRC, hd); mask (B, 1, S, SRC) bool."""
        y = F.scaled_dot_product_attention(_heads(self.q(x), self.n_heads), k, v, attn_mask=mask)
        return self.proj(_merge(y))


def _mlp(c: TransformerConfig) -> nn.Module:
    return nn.Sequential(nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.d_model))


class EncoderBlock(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn, self.mlp, self.drop = SelfAttention(c), _mlp(c), nn.Dropout(c.dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.ln1(x), mask)[0])             # pre-norm residual blocks
        return x + self.drop(self.mlp(self.ln2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attn, self.cross, self.mlp = SelfAttention(c), CrossAttention(c), _mlp(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, self_mask, past_k, past_v, cross_k, cross_v, cross_mask):
        a, k, v = self.self_attn(self.ln1(x), self_mask, past_k, past_v)
        x = x + self.drop(a)
        x = x + self.drop(self.cross(self.ln2(x), cross_k, cross_v, cross_mask))
        return x + self.drop(self.mlp(self.ln3(x))), k, v


class TransformerSeq2Seq(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.register_buffer("pos_table", sinusoidal_table(c.max_seq_len, c.d_model), persistent=False)
        self.enc = nn.ModuleList(EncoderBlock(c) for _ in range(c.n_enc_layers))
        self.ln_enc = nn.LayerNorm(c.d_model)
        self.dec = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_dec_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.head.weight = self.tok.weight
        self.drop = nn.Dropout(c.dropout)
        self.apply(GPT._init_weights)                    # GPT-2 initialisation, as models/gpt.py

    def _embed(self, ids, positions):
        return self.drop(self.tok(ids) * self.config.d_model ** 0.5 + self.pos_table[positions])

    def encode(self, source_ids, source_mask):
        """source_ids/mask (B, SRC) -> memory (B, SRC, D) and cross K/V per decoder layer,
        [k0, v0, k1, v1, ...] each (B, nh, SRC, hd)."""
        B, S = source_ids.shape
        real = source_mask.bool()
        # A query sees every real source position, and itself, so a padding row never has all keys
        # masked (softmax of all -inf is NaN, which would reach real rows through later layers).
        me = torch.eye(S, dtype=torch.bool, device=source_ids.device)
        mask = (real[:, None, :] | me[None])[:, None]                               # (B, 1, SRC, SRC)
        x = self._embed(source_ids, torch.arange(S, device=source_ids.device)[None].expand(B, S))
        for block in self.enc:
            x = block(x, mask)
        memory = self.ln_enc(x)
        cross = [t for block in self.dec for t in block.cross.keys_values(memory)]
        return memory, cross

    def decode(self, input_ids, past, cross, source_mask, attention_mask=None, position_ids=None):
        """input_ids (B, T); past: 2*n_dec tensors (B, nh, P, hd); cross: 2*n_dec (B, nh, SRC, hd);
        source_mask (B, SRC); attention_mask (B, P+T) 1 = real target token; position_ids (B, T).
        -> logits (B, T, V), present self K/V: 2*n_dec tensors (B, nh, P+T, hd)."""
        B, T = input_ids.shape
        P = past[0].shape[2]
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, P + T, dtype=torch.int64, device=dev)
        if position_ids is None:
            position_ids = (torch.arange(T, device=dev) + P).expand(B, T)
        q_pos = torch.arange(T, device=dev) + P                                     # (T,)
        k_pos = torch.arange(P + T, device=dev)                                     # (P+T,)
        causal = k_pos[None, :] <= q_pos[:, None]                                   # (T, P+T)
        real = attention_mask.bool()[:, None, :]                                    # (B, 1, P+T)
        self_mask = (causal[None] & (real | (k_pos[None, :] == q_pos[:, None])[None]))[:, None]
        # ONNX Attention does not broadcast the mask's query axis: spell it out.
        cross_mask = source_mask.bool()[:, None, None, :].expand(B, 1, T, source_mask.shape[1])  # (B, 1, T, SRC)
        x = self._embed(input_ids, position_ids)
        present = []
        for i, block in enumerate(self.dec):
            x, k, v = block(x, self_mask, past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1], cross_mask)
            present += [k, v]
        return self.head(self.ln_f(x)), tuple(present)

    def empty_past(self, batch: int) -> tuple[torch.Tensor, ...]:
        c = self.config
        z = self.head.weight.new_zeros(batch, c.n_heads, 0, c.head_dim)
        return tuple(z for _ in range(2 * c.n_dec_layers))

    def forward(self, source_ids, source_mask, input_ids):
        """Teacher-forced: source (B, SRC) + mask, target input_ids (B, T) -> logits (B, T, V)."""
        _, cross = self.encode(source_ids, source_mask)
        return self.decode(input_ids, self.empty_past(input_ids.shape[0]), cross, source_mask)[0]

    # --- named-tensor interface used by export, validation and the torch backend ---

    @property
    def _self_names(self) -> list[tuple[str, str]]:
        return [p for i in range(self.config.n_dec_layers) for p in self_cache_names(i)]

    @property
    def _cross_names(self) -> list[str]:
        return [n for i in range(self.config.n_dec_layers) for n in cross_cache_names(i)]

    def spec(self) -> TaskSpec:
        c = self.config
        return transformer_spec("transformer", c.vocab_size, c.d_model,
                              [(i, o, (BATCH, c.n_heads, PAST, c.head_dim), 2) for i, o in self._self_names],
                              [(n, (BATCH, c.n_heads, SOURCE, c.head_dim)) for n in self._cross_names],
                              extra={"n_enc_layers": c.n_enc_layers, "n_dec_layers": c.n_dec_layers,
                                     "n_heads": c.n_heads, "head_dim": c.head_dim, "max_seq_len": c.max_seq_len,
                                     "max_source_len": c.max_seq_len},
                              io={"max_source_len": c.max_seq_len, **({"source_chars": c.source_chars} if c.source_chars else {})})

    def run_encoder(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        memory, cross = self.encode(inputs[SOURCE_IDS], inputs[SOURCE_MASK_NAME])
        return {MEMORY: memory, **dict(zip(self._cross_names, cross))}

    def run_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        past = tuple(inputs[i] for i, _ in self._self_names)
        cross = tuple(inputs[n] for n in self._cross_names)
        logits, present = self.decode(inputs[TARGET_IDS], past, cross, inputs[SOURCE_MASK_NAME],
                                      inputs[SELF_MASK], inputs[SELF_POSITIONS])
        return {LOGITS_NAME: logits, **{o: t for (_, o), t in zip(self._self_names, present)}}
