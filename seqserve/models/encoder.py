"""Sequence encoders with a classification or tagging head (the `classifier` and `tagger` families).

    embedding -> encoder -> head
    encoder: rnn | lstm | gru (nn.RNN/LSTM/GRU, batch-first state [B, layers, hidden] as the
             language models keep it), or transformer (learned positions, pre-norm self-attention
             over the whole sequence, no mask: rows of a batch have one length)
    classifier head: the encoder output at the last token (recurrent: what it has read so far,
             so the step graph classifies a stream incrementally) or the mean over tokens
             (transformer) -> class_logits [B, C]
    tagger head: every token's output -> tag_logits [B, S, T]

A bidirectional recurrent encoder (tagger only) reads right to left too: full graph only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqserve.tasks.classify import classify_spec
from seqserve.tasks.spec import BATCH, TaskSpec
from seqserve.tasks.tag import tag_spec

ENCODERS = ("rnn", "lstm", "gru", "transformer")
HEADS = ("classify", "tag")


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    labels: tuple[str, ...] = ("a", "b")  # class (classify) or tag (tag) names, from the data
    head: str = "classify"               # "classify" | "tag" (the family pins it)
    encoder: str = "lstm"                # "rnn" | "lstm" | "gru" | "transformer"
    embed_dim: int = 64                  # token embedding width (recurrent; transformer: hidden_size)
    hidden_size: int = 128               # recurrent state width / transformer model width
    num_layers: int = 1                  # 1-4 recurrent or transformer layers
    n_heads: int = 4                     # transformer attention heads (divide hidden_size)
    max_seq_len: int = 256               # transformer positions; recurrent: no limit
    dropout: float = 0.0                 # training only
    bidirectional: bool = False          # recurrent tagger only; then no step graph

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be classify or tag, got {self.head!r}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be at least 2 distinct names, got {list(self.labels)}")
        for name in ("vocab_size", "embed_dim", "hidden_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.num_layers <= 4:
            raise ValueError(f"num_layers must be 1-4, got {self.num_layers}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.encoder == "transformer" and self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}")
        if self.bidirectional and (self.encoder == "transformer" or self.head != "tag"):
            raise ValueError("bidirectional applies to a recurrent tagger only")

    @property
    def recurrent(self) -> bool:
        return self.encoder != "transformer"

    @property
    def streams(self) -> bool:
        """Has a step graph: a unidirectional recurrent encoder."""
        return self.recurrent and not self.bidirectional


_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class _Block(nn.Module):
    """Pre-norm transformer layer: x + attn(ln(x)); x + ff(ln(x)). Written out (no nn.MultiheadAttention
    fast path, which the exporters cannot take)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads), dim=-1)   # (B, h, S, S)
        y = (att @ v).transpose(1, 2).reshape(B, S, D)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.ln2(x)))


class SequenceEncoderModel(nn.Module):
    """One model class for both families; `config.head` says which output it has."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        width = c.hidden_size if not c.recurrent else c.embed_dim
        self.embed = nn.Embedding(c.vocab_size, width)
        if c.recurrent:
            self.rnn = _CELLS[c.encoder](width, c.hidden_size, c.num_layers, batch_first=True,
                                         dropout=c.dropout if c.num_layers > 1 else 0.0,
                                         bidirectional=c.bidirectional)
            out_width = c.hidden_size * (2 if c.bidirectional else 1)
        else:
            self.pos = nn.Embedding(c.max_seq_len, c.hidden_size)
            self.blocks = nn.ModuleList(_Block(c.hidden_size, c.n_heads, c.dropout) for _ in range(c.num_layers))
            self.ln = nn.LayerNorm(c.hidden_size)
            out_width = c.hidden_size
        self.head = nn.Linear(out_width, len(c.labels))

    @property
    def state_names(self) -> list[str]:
        return ["hidden", "cell"] if self.config.encoder == "lstm" else ["hidden"]

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        c = self.config
        return tuple(self.head.weight.new_zeros(batch, c.num_layers, c.hidden_size) for _ in self.state_names)

    def encode(self, input_ids: torch.Tensor, state=None):
        """input_ids [B, S] -> per-token outputs [B, S, W] (and next state when recurrent)."""
        c = self.config
        x = self.embed(input_ids)
        if not c.recurrent:
            x = x + self.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
            for b in self.blocks:
                x = b(x)
            return self.ln(x), None
        if c.bidirectional:
            return self.rnn(x)[0], None
        state = self.initial_state(input_ids.shape[0]) if state is None else state
        hx = tuple(s.transpose(0, 1).contiguous() for s in state)              # (L, B, H) each
        y, hn = self.rnn(x, hx if c.encoder == "lstm" else hx[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        return y, tuple(h.transpose(0, 1) for h in hn)

    def scores(self, y: torch.Tensor) -> torch.Tensor:
        """Per-token outputs [B, S, W] -> class_logits [B, C] or tag_logits [B, S, T]."""
        if self.config.head == "tag":
            return self.head(y)
        return self.head(y[:, -1] if self.config.recurrent else y.mean(dim=1))

    def step(self, input_ids: torch.Tensor, state):
        y, nxt = self.encode(input_ids, state)
        return self.scores(y), nxt

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The full graph: input_ids [B, S] -> class_logits [B, C] / tag_logits [B, S, T]."""
        return self.scores(self.encode(input_ids)[0])

    # --- named-tensor interface used by export, validation and the torch backend ---

    def spec(self) -> TaskSpec:
        c = self.config
        dims = (BATCH, c.num_layers, c.hidden_size)
        state = [(f"past_{n}", f"present_{n}", dims) for n in self.state_names] if c.streams else []
        extra = {"encoder": c.encoder, "num_layers": c.num_layers, "hidden_size": c.hidden_size}
        if not c.recurrent:
            extra["max_seq_len"] = c.max_seq_len
        build = classify_spec if c.head == "classify" else tag_spec
        return build("classifier" if c.head == "classify" else "tagger", c.vocab_size, list(c.labels), state, extra)

    def run_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        graph = self.spec().step
        state = tuple(inputs[f"past_{n}"] for n in self.state_names)
        out, nxt = self.step(inputs[graph.inputs[0].name], state)
        return {graph.outputs[0].name: out, **{f"present_{n}": s for n, s in zip(self.state_names, nxt)}}
