"""A recurrent LM conditioned on a feature vector: the feature sets the initial state.

    init   h0 (and c0) = tanh(Linear(features)), reshaped to [B, layers, hidden] per state tensor
    step   embedding -> nn.LSTM / nn.GRU stack -> linear head, state batch-first [B, layers, hidden]
    full   init, then step over the whole (teacher-forced) sequence

The task is seqserve.tasks.conditioned (graphs init/step/full); state is batch-first like the
causal-lm recurrent families, so servers stack rows on axis 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqserve.tasks.causal_lm import LOGITS_NAME, TOKENS_NAME
from seqserve.tasks.conditioned import FEATURES_NAME, conditioned_spec
from seqserve.tasks.spec import BATCH, TaskSpec


@dataclass(frozen=True)
class ConditionedConfig:
    vocab_size: int
    features: int = 64           # width F of the conditioning vector (8x8 digits: 64)
    cell: str = "gru"            # "lstm" | "gru"
    embed_dim: int = 32          # token embedding width
    hidden_size: int = 64        # recurrent state width per layer
    num_layers: int = 1          # 1-4 stacked layers
    dropout: float = 0.0         # between recurrent layers (training only)

    def __post_init__(self):
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be lstm or gru, got {self.cell!r}")
        for name in ("vocab_size", "features", "embed_dim", "hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.num_layers <= 4:
            raise ValueError(f"num_layers must be 1-4, got {self.num_layers}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class ConditionedLM(nn.Module):
    def __init__(self, config: ConditionedConfig):
        super().__init__()
        self.config = c = config
        n = len(self.state_names)
        self.init = nn.Linear(c.features, n * c.num_layers * c.hidden_size)
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[c.cell](
            c.embed_dim, c.hidden_size, c.num_layers, batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    @property
    def state_names(self) -> list[str]:
        return ["hidden", "cell"] if self.config.cell == "lstm" else ["hidden"]

    def initial_state(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """features [B, F] -> state ([B, L, H], ...)."""
        c = self.config
        h = torch.tanh(self.init(features))                                  # (B, n * L * H)
        h = h.reshape(features.shape[0], len(self.state_names), c.num_layers, c.hidden_size)
        return tuple(h[:, i] for i in range(len(self.state_names)))          # (B, L, H) each

    def step(self, input_ids: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """input_ids [B, S] + state ([B, L, H], ...) -> logits [B, S, V], next state."""
        x = self.embed(input_ids)                                   # (B, S, E)
        hx = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, B, H) each
        y, hn = self.rnn(x, hx if self.config.cell == "lstm" else hx[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        return self.head(y), tuple(h.transpose(0, 1) for h in hn)   # (B, S, V), (B, L, H)...

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced: input_ids [B, S] (+ features [B, F]; None: zeros) -> logits [B, S, V]."""
        if features is None:
            features = self.head.weight.new_zeros(input_ids.shape[0], self.config.features)
        return self.step(input_ids, self.initial_state(features))[0]

    # --- named-tensor interface used by export, validation and the torch backend ---

    def spec(self) -> TaskSpec:
        c = self.config
        dims = (BATCH, c.num_layers, c.hidden_size)
        return conditioned_spec("conditioned", c.vocab_size, c.features,
                                [(f"past_{n}", f"present_{n}", dims) for n in self.state_names],
                                extra={"cell": c.cell, "num_layers": c.num_layers, "hidden_size": c.hidden_size})

    def run_init(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"past_{n}": s for n, s in zip(self.state_names, self.initial_state(inputs[FEATURES_NAME]))}

    def run_step(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = tuple(inputs[f"past_{n}"] for n in self.state_names)
        logits, nxt = self.step(inputs[TOKENS_NAME], state)
        return {LOGITS_NAME: logits, **{f"present_{n}": s for n, s in zip(self.state_names, nxt)}}
