"""An RNN encoder-decoder with Luong / Bahdanau attention (task seq2seq, seqserve/tasks/seq2seq.py).

    encoder  embedding -> per layer a GRU/LSTM forward (and, bidirectional, one over each row's
             real positions reversed), outputs zeroed at padding; bidirectional: a linear map 2H -> H
             e_s = encoder_outputs [B, SRC, H]; the attention's source side k_s = W·e_s computed here
             decoder initial state = tanh(W_init · masked mean of e_s), per layer (h, and c for LSTM)
    decoder  embedding -> GRU/LSTM stack -> h_t [B, T, H]; attention over e_s (below) -> context c_t
             -> o_t = tanh(W_c [c_t; h_t]) -> logits. attention none: o_t = h_t.
    scores   dot       score(h_t, e_s) = h_t · e_s                          (Luong dot)
             general   score(h_t, e_s) = h_t · (W_a e_s)                    (Luong general)
             additive  score(h_t, e_s) = v · tanh(W_1 h_t + W_2 e_s)        (Bahdanau additive/concat)
             a_t = softmax over the real source positions (padding masked), c_t = sum_s a_ts e_s

Attention reads the decoder's output h_t (Luong's placement) for every score, so a step over T
target tokens is ONE recurrent op over T followed by attention at all T positions: chunked
decoding equals token-by-token decoding. Bahdanau's own decoder attends from s_{t-1} and feeds c_t
into the RNN input, a dependency between the positions of a chunk that would need an ONNX Loop;
here `additive` is his score function in Luong's placement (Luong's "concat").

Padding: the reversed direction reverses only each row's real prefix (a gather), and padded
outputs are zeroed, so a padded source gives exactly what it gives alone. State is batch-first,
[B, layers, hidden], like the causal-lm recurrent families.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqserve.tasks import seq2seq as task

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class Seq2SeqConfig:
    vocab_size: int
    cell: str = "gru"            # "gru" | "lstm", encoder and decoder
    attention: str = "additive"  # "none" | "dot" | "general" | "additive"
    bidirectional: bool = False  # encoder reads both ways (its outputs mapped back to hidden_size)
    embed_dim: int = 32          # token embedding width (source and target tables are separate)
    hidden_size: int = 64        # recurrent width per layer, encoder and decoder
    num_layers: int = 1          # 1-4 layers, encoder and decoder alike
    attention_dim: int = 0       # additive only: the score's width A; 0 = hidden_size
    max_source_len: int = 32     # longest source the servers accept (the RNN itself has no limit)
    source_chars: str = ""       # characters of the training sources ("" = any in the vocabulary)
    dropout: float = 0.0         # on embeddings and between layers (training only)

    def __post_init__(self):
        if self.cell not in _CELLS:
            raise ValueError(f"cell must be gru or lstm, got {self.cell!r}")
        if self.attention not in task.ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(task.ATTENTIONS)}, got {self.attention!r}")
        for name in ("vocab_size", "embed_dim", "hidden_size", "max_source_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.num_layers <= 4:
            raise ValueError(f"num_layers must be 1-4, got {self.num_layers}")
        if self.attention_dim < 0:
            raise ValueError(f"attention_dim must be >= 0, got {self.attention_dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class Attention(nn.Module):
    """Scores of decoder outputs h [B, T, H] against the source; keys() runs once per source."""

    def __init__(self, kind: str, hidden: int, width: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.w_a = nn.Linear(hidden, hidden, bias=False)
        elif kind == "additive":
            self.w_1 = nn.Linear(hidden, width, bias=False)
            self.w_2 = nn.Linear(hidden, width)
            self.v = nn.Linear(width, 1, bias=False)

    @property
    def has_keys(self) -> bool:
        return self.kind in ("general", "additive")

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        """enc [B, S, H] -> the source side of the score [B, S, A] (general: W_a e_s, additive: W_2 e_s)."""
        return self.w_a(enc) if self.kind == "general" else self.w_2(enc)

    def forward(self, h, enc, keys, mask):
        """h [B, T, H], enc [B, S, H], keys [B, S, A] or None, mask [B, S] -> context [B, T, H], weights [B, T, S]."""
        if self.kind == "additive":
            e = torch.tanh(self.w_1(h)[:, :, None] + keys[:, None])       # (B, T, S, A)
            scores = self.v(e).squeeze(-1)                                # (B, T, S)
        else:
            scores = h @ (enc if keys is None else keys).transpose(1, 2)   # (B, T, S)
        scores = scores.masked_fill(mask[:, None, :] == 0, -1e9)
        weights = torch.softmax(scores, dim=-1)
        return weights @ enc, weights                                      # (B, T, H), (B, T, S)


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        rnn = _CELLS[c.cell]
        dirs = 2 if c.bidirectional else 1
        self.src_embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.tgt_embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.drop = nn.Dropout(c.dropout)
        widths = [c.embed_dim] + [c.hidden_size * dirs] * (c.num_layers - 1)
        self.enc_fwd = nn.ModuleList(rnn(w, c.hidden_size, batch_first=True) for w in widths)
        self.enc_bwd = nn.ModuleList(rnn(w, c.hidden_size, batch_first=True) for w in widths) if c.bidirectional else None
        self.enc_proj = nn.Linear(2 * c.hidden_size, c.hidden_size) if c.bidirectional else None
        self.names = task.state_names(c.cell)
        self.init = nn.Linear(c.hidden_size, len(self.names) * c.num_layers * c.hidden_size)
        self.dec = rnn(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True,
                       dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.attn = Attention(c.attention, c.hidden_size, c.attention_dim or c.hidden_size) if c.attention != "none" else None
        self.combine = nn.Linear(2 * c.hidden_size, c.hidden_size) if self.attn is not None else None
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    # --- encoder ---

    def encode(self, src: torch.Tensor, mask: torch.Tensor):
        """src, mask [B, S] -> encoder outputs [B, S, H], keys [B, S, A] or None, decoder state ([B, L, H], ...)."""
        c = self.config
        keep = mask.to(torch.float32)[..., None]                          # (B, S, 1)
        x = self.drop(self.src_embed(src))                                # (B, S, E)
        if self.enc_bwd is not None:
            # each row's real prefix reversed (padding stays behind it): an involution
            lengths = mask.sum(1, keepdim=True)                           # (B, 1)
            t = torch.arange(src.shape[1], device=src.device)[None]       # (1, S)
            rev = torch.where(t < lengths, lengths - 1 - t, t)            # (B, S)
        for i, fwd in enumerate(self.enc_fwd):
            y = fwd(x)[0]                                                 # (B, S, H)
            if self.enc_bwd is not None:
                idx = rev[..., None].expand(-1, -1, x.shape[-1])
                yb = self.enc_bwd[i](torch.gather(x, 1, idx))[0]
                y = torch.cat([y, torch.gather(yb, 1, rev[..., None].expand(-1, -1, yb.shape[-1]))], -1)  # (B, S, 2H)
            x = y * keep
            if i + 1 < len(self.enc_fwd):
                x = self.drop(x)
        enc = (self.enc_proj(x) if self.enc_proj is not None else x) * keep  # (B, S, H)
        mean = (enc * keep).sum(1) / keep.sum(1).clamp(min=1.0)          # (B, H)
        h0 = torch.tanh(self.init(mean)).reshape(src.shape[0], len(self.names), c.num_layers, c.hidden_size)
        keys = self.attn.keys(enc) if self.attn is not None and self.attn.has_keys else None
        return enc, keys, tuple(h0[:, i] for i in range(len(self.names)))   # state (B, L, H) each

    # --- decoder ---

    def step(self, ids, state, enc=None, keys=None, mask=None):
        """ids [B, T] + state ([B, L, H], ...) + source -> logits [B, T, V], next state, weights [B, T, S] or None."""
        x = self.drop(self.tgt_embed(ids))                                # (B, T, E)
        hx = tuple(s.transpose(0, 1).contiguous() for s in state)        # (L, B, H) each
        h, hn = self.dec(x, hx if self.config.cell == "lstm" else hx[0])  # (B, T, H)
        hn = hn if isinstance(hn, tuple) else (hn,)
        weights = None
        if self.attn is not None:
            context, weights = self.attn(h, enc, keys, mask)
            h = torch.tanh(self.combine(torch.cat([context, h], -1)))     # (B, T, H)
        return self.head(self.drop(h)), tuple(s.transpose(0, 1) for s in hn), weights

    def forward(self, src, mask, ids) -> torch.Tensor:
        """Teacher-forced: source [B, S] + mask [B, S] + target input ids [B, T] -> logits [B, T, V]."""
        enc, keys, state = self.encode(src, mask)
        return self.step(ids, state, enc, keys, mask)[0]

    # --- named-tensor interface used by export, validation and the torch backend ---

    def spec(self):
        c = self.config
        width = None
        if c.attention == "general":
            width = c.hidden_size
        elif c.attention == "additive":
            width = c.attention_dim or c.hidden_size
        io = {"max_source_len": c.max_source_len}
        if c.source_chars:
            io["source_chars"] = c.source_chars
        return task.rnn_spec("seq2seq", c.vocab_size, c.cell, c.num_layers, c.hidden_size, c.attention, width,
                                 extra={"cell": c.cell, "attention": c.attention, "bidirectional": c.bidirectional,
                                        "num_layers": c.num_layers, "hidden_size": c.hidden_size}, io=io)

    def run_encoder(self, inputs: dict) -> dict:
        enc, keys, state = self.encode(inputs[task.SOURCE_IDS], inputs[task.SOURCE_MASK_NAME])
        out = {p: s for (p, _), s in zip(self.names, state)}
        if self.attn is not None:
            out[task.OUTPUTS_NAME] = enc
            if keys is not None:
                out[task.KEYS_NAME] = keys
        return out

    def run_step(self, inputs: dict) -> dict:
        state = tuple(inputs[p] for p, _ in self.names)
        logits, nxt, weights = self.step(inputs[task.TARGET_IDS], state, inputs.get(task.OUTPUTS_NAME),
                                         inputs.get(task.KEYS_NAME), inputs.get(task.SOURCE_MASK_NAME))
        out = {task.LOGITS_NAME: logits, **{o: s for (_, o), s in zip(self.names, nxt)}}
        if weights is not None:
            out[task.WEIGHTS_NAME] = weights
        return out
