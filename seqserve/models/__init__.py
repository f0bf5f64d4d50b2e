"""Model families, registered by name. Each has a config dataclass, a module and presets.

Every model implements the same small interface, which export, validation, training and the
torch backend use:
    initial_state(batch) -> tuple of state tensors
    step(input_ids, state, ...) -> (logits, next state)
    forward(input_ids) -> logits          # full sequence from the initial state
    spec() -> TaskSpec                    # the task spec: graphs, tensors by role, state pairs
    run_step(dict name -> tensor) -> dict name -> tensor   # the step graph, by tensor names
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from seqserve.errors import SeqserveError
from seqserve.models.encoder import EncoderConfig, SequenceEncoderModel
from seqserve.models.conditioned import ConditionedConfig, ConditionedLM
from seqserve.models.gpt import GPT, GPTConfig
from seqserve.models.recurrent import RecurrentConfig, RecurrentLM
from seqserve.models.seq2seq import Seq2Seq, Seq2SeqConfig
from seqserve.models.transformer import TransformerConfig, TransformerSeq2Seq


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    build: Callable[[Any], Any]           # config -> nn.Module
    presets: dict[str, dict]              # preset name -> config fields (vocab_size comes from data)
    fixed: dict = dataclasses.field(default_factory=dict)  # fields the family pins (cell=...)
    recurrent: bool = True                # trained with truncated BPTT, state carried
    default_lr: float = 3e-3              # AdamW learning rate when the user gives none
    task: str = "causal-lm"               # the task its spec() builds (seqserve.tasks.MODULES)
    trainer: str | None = None            # module whose setup(cfg, resume) -> training Task; None: causal-lm's


_RNN_PRESETS = {
    "tiny": dict(embed_dim=32, hidden_size=64, num_layers=2),
    "small": dict(embed_dim=128, hidden_size=256, num_layers=2, dropout=0.1),
}

_ENCODER_PRESETS = {
    "tiny": dict(embed_dim=32, hidden_size=64, num_layers=1, n_heads=2, max_seq_len=128),
    "small": dict(embed_dim=64, hidden_size=192, num_layers=1, n_heads=4, max_seq_len=256, dropout=0.1),
}

FAMILIES: dict[str, Family] = {
    "rnn": Family("rnn", RecurrentConfig, RecurrentLM, _RNN_PRESETS, {"cell": "rnn"}),
    "lstm": Family("lstm", RecurrentConfig, RecurrentLM, _RNN_PRESETS, {"cell": "lstm"}),
    "gru": Family("gru", RecurrentConfig, RecurrentLM, _RNN_PRESETS, {"cell": "gru"}),
    "gpt": Family(
        "gpt", GPTConfig, GPT,
        {
            "tiny": dict(d_model=64, n_heads=4, n_layers=2, d_ff=128, max_seq_len=256),
            "small": dict(d_model=256, n_heads=4, n_layers=4, d_ff=1024, max_seq_len=2048, dropout=0.1),
        },
        recurrent=False,
        # Measured, small preset, 1 minute on 2 cores: 2.6 bits/char at 5e-4 vs 3.0 at 1e-3 and
        # 3.4 at 2e-3 (no warmup schedule: higher rates stall on the unigram plateau).
        default_lr=5e-4,
    ),
    # Many-to-one / many-to-many (seqserve/models/encoder.py); labels come from the data.
    "classifier": Family("classifier", EncoderConfig, SequenceEncoderModel, _ENCODER_PRESETS,
                         {"head": "classify"}, recurrent=False, task="classify",
                         trainer="seqserve.training.labelled"),
    "tagger": Family("tagger", EncoderConfig, SequenceEncoderModel, _ENCODER_PRESETS,
                     {"head": "tag"}, recurrent=False, task="tag",
                     trainer="seqserve.training.labelled"),
    # One-to-many: an LSTM/GRU LM whose initial state is a projection of a feature vector
    # (trained on scikit-learn's 8x8 digits, seqserve/training/conditioned.py).
    "conditioned": Family("conditioned", ConditionedConfig, ConditionedLM,
                          {"tiny": dict(embed_dim=16, hidden_size=32, num_layers=1),
                           "small": dict(embed_dim=32, hidden_size=128, num_layers=1)},
                          recurrent=False, default_lr=1e-2, task="conditioned",
                          trainer="seqserve.training.conditioned"),
    # Encoder-decoder Transformer (task seq2seq: encoder once with cross K/V, then decoder steps),
    # trained on numbers in digits -> words (seqserve/data/translation.py).
    "transformer": Family("transformer", TransformerConfig, TransformerSeq2Seq,
                          {"tiny": dict(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, d_ff=64),
                           "small": dict(d_model=128, n_heads=4, n_enc_layers=2, n_dec_layers=2, d_ff=256)},
                          # Measured, small, batch 32, 2 minutes: held-out exact match 0.38 at 2e-3
                          # vs 0.04 at 3e-3 (unstable without warmup).
                          recurrent=False, default_lr=2e-3, task="seq2seq",
                          trainer="seqserve.training.translation"),
    # RNN encoder-decoder with Luong/Bahdanau attention (task seq2seq), numbers in digits -> words;
    # --cell/--attention/--bidirectional pick the variant (seqserve/models/seq2seq.py).
    "seq2seq": Family("seq2seq", Seq2SeqConfig, Seq2Seq,
                      {"tiny": dict(embed_dim=16, hidden_size=32, num_layers=1),
                       "small": dict(embed_dim=64, hidden_size=128, num_layers=1)},
                      # measured, small, batch 64, 2 minutes on the shared 2-core machine: held-out
                      # exact match 0.396 at 8e-3 (1569 steps) vs 0.064 at 4e-3 (1107 steps)
                      recurrent=False, default_lr=8e-3, task="seq2seq",
                      trainer="seqserve.training.seq2seq"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise SeqserveError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def make_config(family: str, preset: str, vocab_size: int, **overrides):
    fam = get_family(family)
    if preset not in fam.presets:
        raise SeqserveError(f"unknown preset {preset!r} for {family}; expected one of {', '.join(fam.presets)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fields = {**fam.presets[preset], **overrides, **fam.fixed}
    if fam.config_cls is RecurrentConfig and fields.get("tie_weights") and "embed_dim" not in overrides:
        # Tying shares one (vocab, width) matrix between embedding and head, so both widths must
        # match; the presets have a narrower embedding, which tying widens to hidden_size.
        fields["embed_dim"] = fields.get("hidden_size", RecurrentConfig.hidden_size)
    try:
        return fam.config_cls(vocab_size=vocab_size, **fields)
    except (TypeError, ValueError) as e:
        raise SeqserveError(f"bad {family} config: {e}") from None


def config_from_dict(family: str, d: dict):
    fam = get_family(family)
    known = {f.name for f in dataclasses.fields(fam.config_cls)}
    return fam.config_cls(**{k: v for k, v in d.items() if k in known})


def build_model(family: str, config):
    return get_family(family).build(config)


__all__ = ["ConditionedConfig", "ConditionedLM", "FAMILIES", "EncoderConfig", "Family", "GPT", "GPTConfig", "RecurrentConfig", "RecurrentLM",
           "SequenceEncoderModel", "TransformerConfig", "TransformerSeq2Seq", "build_model", "config_from_dict", "get_family", "make_config"]
