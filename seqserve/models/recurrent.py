"""Recurrent language models: embedding -> nn.RNN / nn.LSTM / nn.GRU stack -> linear head.

State is kept batch-first, `[B, layers, hidden]`, in every graph and API. nn.RNN wants
`[layers, B, hidden]`; we transpose at the boundary so that a serving system that batches on
the first axis (Triton's sequence batcher, seqserve's continuous batcher) can stack states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqserve.tasks.causal_lm import LOGITS_NAME, TOKENS_NAME, causal_lm_spec
from seqserve.tasks.spec import BATCH, TaskSpec


@dataclass(frozen=True)
class RecurrentConfig:
    vocab_size: int
    cell: str = "lstm"           # "rnn" | "lstm" | "gru"
    embed_dim: int = 64          # token embedding width
    hidden_size: int = 128       # recurrent state width per layer
    num_layers: int = 2          # 1-4 stacked layers
    dropout: float = 0.0         # between recurrent layers (training only)
    nonlinearity: str = "tanh"   # vanilla RNN only: "tanh" | "relu"
    tie_weights: bool = False    # share embedding and head weights (needs embed_dim == hidden_size;
                                 # make_config sets embed_dim = hidden_size unless embed_dim is given)

    def __post_init__(self):
        if self.cell not in ("rnn", "lstm", "gru"):
            raise ValueError(f"cell must be rnn, lstm or gru, got {self.cell!r}")
        for name in ("vocab_size", "embed_dim", "hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 1 <= self.num_layers <= 4:
            raise ValueError(f"num_layers must be 1-4, got {self.num_layers}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be tanh or relu, got {self.nonlinearity!r}")
        if self.cell != "rnn" and self.nonlinearity != "tanh":
            raise ValueError(f"nonlinearity applies to the vanilla rnn cell only, not {self.cell}")
        if self.tie_weights and self.embed_dim != self.hidden_size:
            raise ValueError("tie_weights needs embed_dim == hidden_size")


_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentLM(nn.Module):
    def __init__(self, config: RecurrentConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        kwargs = {"nonlinearity": c.nonlinearity} if c.cell == "rnn" else {}
        self.rnn = _CELLS[c.cell](
            c.embed_dim, c.hidden_size, c.num_layers, batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0, **kwargs,
        )
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    @property
    def state_names(self) -> list[str]:
        return ["hidden", "cell"] if self.config.cell == "lstm" else ["hidden"]

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        c = self.config
        w = self.head.weight
        return tuple(w.new_zeros(batch, c.num_layers, c.hidden_size) for _ in self.state_names)

    def step(self, input_ids: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """input_ids [B, S] + state ([B, L, H], ...) -> logits [B, S, V], next state."""
        x = self.embed(input_ids)                                   # (B, S, E)
        hx = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, B, H) each
        y, hn = self.rnn(x, hx if self.config.cell == "lstm" else hx[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        return self.head(y), tuple(h.transpose(0, 1) for h in hn)   # (B, S, V), (B, L, H)...

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full sequence from a zero state: input_ids [B, S] -> logits [B, S, V]."""
        return self.step(input_ids, self.initial_state(input_ids.shape[0]))[0]

    # --- named-tensor interface used by export, validation and the torch backend ---

    def spec(self) -> TaskSpec:
        """causal-lm; state h (and c for lstm), batch-first [B, layers, hidden], fixed size."""
        c = self.config
        dims = (BATCH, c.num_layers, c.hidden_size)
        return causal_lm_spec(c.cell, c.vocab_size,
                              [(f"past_{n}", f"present_{n}", dims, None) for n in self.state_names],
                              extra={"num_layers": c.num_layers, "hidden_size": c.hidden_size})

    def run_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = tuple(inputs[f"past_{n}"] for n in self.state_names)
        logits, nxt = self.step(inputs[TOKENS_NAME], state)
        return {LOGITS_NAME: logits, **{f"present_{n}": s for n, s in zip(self.state_names, nxt)}}
