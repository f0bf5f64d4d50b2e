"""Training the conditioned family: feature vector -> text, teacher-forced, on 8x8 digits.

Each batch is B (features, text) pairs: the model sees `<bos> text` after the init graph has
turned the features into its initial state, and learns to predict `text <eos>` (padding ignored).
The held-out score is the exact match of greedily generated text (and per-token accuracy under
teacher forcing); the checkpoint's training record keeps a handful of held-out examples, which
`seqserve export` moves into the sidecar for `seqserve generate EXPORT --examples`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqserve.checkpoint import load_checkpoint, load_optimizer, save_checkpoint
from seqserve.data import Tokenizer
from seqserve.data.digits import Captions, load_digit_captions
from seqserve.errors import SeqserveError
from seqserve.io import check_replaceable
from seqserve.models import build_model, make_config

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
    ids = torch.full((features.shape[0], 1), tok.bos_id, dtype=torch.long)
    out, done = [[] for _ in range(features.shape[0])], torch.zeros(features.shape[0], dtype=torch.bool)
    for _ in range(max_tokens):
        logits, state = model.step(ids, state)
        ids = logits[:, -1].argmax(-1, keepdim=True)
        for r, t in enumerate(ids[:, 0].tolist()):
            if not done[r] and t != tok.eos_id:
                out[r].append(t)
        done |= ids[:, 0] == tok.eos_id
        if done.all():
            break
    return [tok.decode(o) for o in out]


@torch.no_grad()
def evaluate(model, tok: Tokenizer, data: Captions) -> dict:
    """Held-out loss (bits per token), token accuracy (teacher-forced) and exact match (greedy)."""
    was = model.training
    model.eval()
    feats, x, y = batch(tok, data, np.arange(len(data)))
    logits = model(x, feats)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100).item()
    real = y != -100
    token_acc = ((logits.argmax(-1) == y) & real).sum().item() / real.sum().item()
    exact = float(np.mean([g == t for g, t in zip(greedy(model, tok, feats), data.texts)]))
    model.train(was)
    return {"val_bpc": loss / math.log(2), "token_accuracy": token_acc, "exact_match": exact}


def train(cfg, out: str | Path, resume=None, progress=None):
    """seqserve.training.train for the conditioned family (cfg: TrainConfig; corpus options unused)."""
    from seqserve.training.trainer import TrainingInterrupted, TrainResult

    check_replaceable(Path(out), "config.json")
    torch.manual_seed(cfg.seed)
    data = load_digit_captions()
    if resume:
        ckpt = load_checkpoint(resume)
        if ckpt.family != cfg.family:
            raise SeqserveError(f"cannot resume a {ckpt.family} checkpoint as {cfg.family}")
        model, tok = ckpt.model.train(), ckpt.tokenizer
    else:
        tok = Tokenizer.fit("".join(data.train.texts + data.val.texts), "char")
        model = build_model(cfg.family, make_config(cfg.family, cfg.preset, tok.vocab_size,
                                                    features=data.train.features.shape[1], **cfg.model_overrides))
    if model.config.features != data.train.features.shape[1]:
        raise SeqserveError(f"the model takes {model.config.features} features; the digits have "
                            f"{data.train.features.shape[1]}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_step, history = 0, []
    if resume:
        st = load_optimizer(resume, opt)
        start_step, history = st["step"], st.get("history", [])
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
    rng = np.random.default_rng(cfg.seed + start_step)
    t0, done_step, loss_ema = time.monotonic(), start_step, None
    firsts = list({t: i for i, t in reversed(list(enumerate(data.val.texts)))}.values())[::-1]   # one per digit
    examples = [{"features": [round(float(v), 6) for v in data.val.features[i]], "text": data.val.texts[i]}
                for i in sorted(firsts)[:N_EXAMPLES]]

    def save(metrics, **extra):
        training = {"config": asdict(cfg), "steps": done_step, "data": data.source,
                    "train_examples": len(data.train), "val_examples": len(data.val),
                    **{k: metrics.get(k) for k in ("val_bpc", "token_accuracy", "exact_match")},
                    "examples": examples, **extra}
        save_checkpoint(out, cfg.family, model.eval(), tok, training, opt, {"step": done_step, "history": history})

    model.train()
    last = history[-1] if history else {}
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            feats, x, y = batch(tok, data.train, rng.integers(0, len(data.train), cfg.batch_size))
            logits = model(x, feats)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            done_step = step
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            metrics = {"step": step, "train_bpc": loss_ema / math.log(2)}
            done = cfg.minutes is not None and time.monotonic() - t0 > cfg.minutes * 60
            if step % cfg.eval_every == 0 or step == cfg.steps or done:
                metrics.update(evaluate(model, tok, data.val))
                history.append(metrics)
                last = metrics
            if progress:
                progress(step, cfg.steps, metrics)
            if done:
                break
    except KeyboardInterrupt:
        if done_step == start_step:
            raise TrainingInterrupted(None, None) from None
        save(last, interrupted=True)
        raise TrainingInterrupted(Path(out), done_step) from None
    if not last or last.get("step") != done_step:
        last = {"step": done_step, **evaluate(model, tok, data.val)}
    save(last)
    return TrainResult(Path(out), done_step, (loss_ema or 0) / math.log(2), last["val_bpc"], history,
                       {k: last[k] for k in ("token_accuracy", "exact_match")})
