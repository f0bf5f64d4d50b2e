"""Training the conditioned family: feature vector -> text, teacher-forced, on 8x8 digits.

Each batch is B (features, text) pairs: the model sees `<bos> text` after the init graph has
turned the features into its initial state, and learns to predict `text <eos>` (padding ignored).
The held-out score is the exact match of greedily generated text (and per-token accuracy under
teacher forcing); the checkpoint's training record keeps a handful of held-out examples, which
`seqserve export` moves into the sidecar for `seqserve generate EXPORT --examples`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from seqserve.data import Tokenizer
from seqserve.data.digits import Captions, load_digit_captions
from seqserve.errors import SeqserveError
from seqserve.models import build_model, make_config
from seqserve.training import heldout
from seqserve.training.trainer import Task, resume_or_build

N_EXAMPLES = 6          # held-out examples an export carries


def batch(tok: Tokenizer, data: Captions, rows: np.ndarray):
    """-> features [B, F], inputs [B, T] (<bos> text, padded), targets [B, T] (text <eos>, -100 pad)."""
    enc = [tok.encode(data.texts[i]) for i in rows]
    T = max(len(e) for e in enc) + 1
    x = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for r, e in enumerate(enc):
        x[r, :len(e) + 1] = torch.tensor([tok.bos_id, *e])
        y[r, :len(e) + 1] = torch.tensor([*e, tok.eos_id])
    return torch.from_numpy(data.features[rows]), x, y


@torch.no_grad()
def greedy(model, tok: Tokenizer, features: torch.Tensor, max_tokens: int = 12) -> list[str]:
    """Greedy texts for features [B, F] (torch eager; the served loop is seqserve.generation)."""
    state = model.initial_state(features)

    def next_logits(ids):
        nonlocal state
        logits, state = model.step(ids, state)
        return logits

    return heldout.greedy(next_logits, tok, features.shape[0], max_tokens)


@torch.no_grad()
def evaluate(model, tok: Tokenizer, data: Captions) -> dict:
    """Held-out loss (bits per token), token accuracy (teacher-forced) and exact match (greedy)."""
    was = model.training
    model.eval()
    feats, x, y = batch(tok, data, np.arange(len(data)))
    loss, token_acc = heldout.teacher_forced(model(x, feats), y)
    exact = float(np.mean([g == t for g, t in zip(greedy(model, tok, feats), data.texts)]))
    model.train(was)
    return {"val_bpc": loss / math.log(2), "token_accuracy": token_acc, "exact_match": exact}


def setup(cfg, resume) -> Task:
    """The conditioned task for seqserve.training.train (cfg: TrainConfig; corpus options unused)."""
    data = load_digit_captions()

    def build():
        tok = Tokenizer.fit("".join(data.train.texts + data.val.texts), "char")
        return build_model(cfg.family, make_config(cfg.family, cfg.preset, tok.vocab_size,
                                                   features=data.train.features.shape[1], **cfg.model_overrides)), tok

    model, tok = resume_or_build(cfg, resume, build)
    if model.config.features != data.train.features.shape[1]:
        raise SeqserveError(f"the model takes {model.config.features} features; the digits have "
                            f"{data.train.features.shape[1]}")
    firsts = list({t: i for i, t in reversed(list(enumerate(data.val.texts)))}.values())[::-1]   # one per digit
    examples = [{"features": [round(float(v), 6) for v in data.val.features[i]], "text": data.val.texts[i]}
                for i in sorted(firsts)[:N_EXAMPLES]]

    def batches(start_step: int):
        rng = np.random.default_rng(cfg.seed + start_step)
        while True:
            yield batch(tok, data.train, rng.integers(0, len(data.train), cfg.batch_size))

    def loss(b):
        feats, x, y = b
        return heldout.masked_loss(model(x, feats), y)

    return Task(model, tok, batches, loss, evaluate=lambda: evaluate(model, tok, data.val),
                record=lambda m: {"data": data.source, "train_examples": len(data.train), "val_examples": len(data.val),
                                  **{k: m.get(k) for k in ("val_bpc", "token_accuracy", "exact_match")},
                                  "examples": examples},
                scores=("token_accuracy", "exact_match"))
