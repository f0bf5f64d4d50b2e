"""Decoder-only Transformer (GPT): masked multi-head self-attention with a KV cache.

The step graph takes `past_key_values.{i}.key/value` of any past length, 0 included, so ONE
graph does prefill and decode (no merged `If` node). It also takes `attention_mask [B, P+S]`
and `position_ids [B, S]` so that sequences of different lengths can share a batch (left
padding): that is what batched prompts and continuous batching need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqserve.tasks.causal_lm import LOGITS_NAME, TOKENS_NAME, causal_lm_spec
from seqserve.tasks.spec import BATCH, MASK_NAME, PAST, POSITIONS_NAME, TaskSpec


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    d_model: int = 64            # residual stream width
    n_heads: int = 4             # attention heads; head_dim = d_model // n_heads
    n_layers: int = 2            # transformer blocks
    d_ff: int = 256              # feed-forward hidden width
    max_seq_len: int = 256       # longest position the model knows (learned positions)
    dropout: float = 0.0         # attention/residual dropout (training only)
    positional: str = "learned"  # "learned" | "sinusoidal"
    tie_weights: bool = True     # share token embedding and head weights

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positional not in ("learned", "sinusoidal"):
            raise ValueError(f"positional must be learned or sinusoidal, got {self.positional!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table                                                    # (n, d)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)

    def forward(self, x, past_k, past_v, mask):
        """x (B, S, D); past_k/v (B, nh, P, hd); mask (B, 1, S, P+S) bool, True = attend."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, S, self.c.n_heads, self.c.head_dim).transpose(1, 2) for t in (q, k, v))
        k = torch.cat([past_k, k], dim=2)                            # (B, nh, P+S, hd)
        v = torch.cat([past_v, v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, S, hd)
        y = y.transpose(1, 2).reshape(B, S, D)
        return self.proj(y), k, v


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = Attention(c)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.d_model))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, past_k, past_v, mask):
        a, k, v = self.attn(self.ln1(x), past_k, past_v, mask)     # pre-norm residual blocks
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x))), k, v


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        if c.positional == "learned":
            self.pos = nn.Embedding(c.max_seq_len, c.d_model)
        else:
            self.register_buffer("pos_table", sinusoidal_table(c.max_seq_len, c.d_model), persistent=False)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.head.weight = self.tok.weight
        self.drop = nn.Dropout(c.dropout)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # GPT-2 initialisation: with N(0, 1) embeddings tied to the head, the first logits are
        # huge and early training wastes steps bringing them down.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        c = self.config
        z = self.head.weight.new_zeros(batch, c.n_heads, 0, c.head_dim)
        return tuple(z for _ in range(2 * c.n_layers))

    def step(self, input_ids, past, attention_mask=None, position_ids=None):
        """input_ids (B, S); past: 2*n_layers tensors (B, nh, P, hd), k and v per layer;
        attention_mask (B, P+S) 1 = real token; position_ids (B, S).
        Returns logits (B, S, V) and present: 2*n_layers tensors (B, nh, P+S, hd)."""
        B, S = input_ids.shape
        P = past[0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(B, P + S, dtype=torch.int64, device=input_ids.device)
        if position_ids is None:
            position_ids = (torch.arange(S, device=input_ids.device) + P).expand(B, S)
        q_pos = torch.arange(S, device=input_ids.device) + P                   # (S,)
        k_pos = torch.arange(P + S, device=input_ids.device)                  # (P+S,)
        causal = k_pos[None, :] <= q_pos[:, None]                             # (S, P+S)
        # A query may see real keys at or before it. Every query also sees itself, so a padding
        # row never has all keys masked (softmax of all -inf is NaN, and NaN would leak into
        # the cache of later layers even though real tokens never attend to padding).
        real = attention_mask.bool()[:, None, :]                              # (B, 1, P+S)
        mask = causal[None] & (real | (k_pos[None, :] == q_pos[:, None])[None])
        mask = mask[:, None]                                                   # (B, 1, S, P+S)

        x = self.tok(input_ids) + self._positions(position_ids)
        x = self.drop(x)
        present = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past[2 * i], past[2 * i + 1], mask)
            present += [k, v]
        return self.head(self.ln_f(x)), tuple(present)

    def _positions(self, position_ids):
        if self.config.positional == "learned":
            return self.pos(position_ids)
        return self.pos_table[position_ids]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full sequence, no cache: input_ids (B, S) -> logits (B, S, V)."""
        return self.step(input_ids, self.initial_state(input_ids.shape[0]))[0]

    # --- named-tensor interface used by export, validation and the torch backend ---

    def spec(self) -> TaskSpec:
        """causal-lm; a KV cache per layer, [B, heads, past, head_dim], growing along axis 2."""
        c = self.config
        dims = (BATCH, c.n_heads, PAST, c.head_dim)
        return causal_lm_spec("gpt", c.vocab_size,
                              [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}", dims, 2)
                               for i in range(c.n_layers) for kv in ("key", "value")],
                              extra={"n_layers": c.n_layers, "n_heads": c.n_heads, "head_dim": c.head_dim,
                                     "max_seq_len": c.max_seq_len})

    def run_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = self.config.n_layers
        past = tuple(inputs[f"past_key_values.{i}.{kv}"] for i in range(n) for kv in ("key", "value"))
        logits, present = self.step(inputs[TOKENS_NAME], past, inputs[MASK_NAME], inputs[POSITIONS_NAME])
        names = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        return {LOGITS_NAME: logits, **dict(zip(names, present))}
