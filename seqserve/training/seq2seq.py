"""Training the seq2seq family: numbers in digits -> words (seqserve/data/translation.py).

Batches as the translate task's (seqserve.training.translation.batch): sources right-padded with
a source mask, the decoder fed `<bos> target` to predict `target <eos>`, padding ignored. The
held-out score is the exact match of greedily decoded targets (and per-token accuracy under
teacher forcing) on the first EVAL_PAIRS held-out numbers; the checkpoint keeps N_EXAMPLES held-out
pairs of 1 to 4 digits, which `seqserve export` moves into the sidecar (`generate --examples`).
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
from seqserve.data.translation import Pairs, load_number_pairs
from seqserve.errors import SeqserveError
from seqserve.io import check_replaceable
from seqserve.models import build_model, make_config
from seqserve.training.translation import batch

N_EXAMPLES = 6          # held-out examples an export carries
EVAL_PAIRS = 400        # held-out pairs scored at each evaluation
EXAMPLE_ROWS = (0, 3, 14, 77, 342, 1599)   # held-out rows: numbers of 1 to 4 digits


@torch.no_grad()
def greedy(model, tok: Tokenizer, source_ids, source_mask, max_tokens: int) -> list[str]:
    """Greedy targets for a padded batch (torch eager; the served loop is seqserve.generation)."""
    B = source_ids.shape[0]
    enc, keys, state = model.encode(source_ids, source_mask)
    ids = torch.full((B, 1), tok.bos_id, dtype=torch.long)
    out, done = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool)
    for _ in range(max_tokens):
        logits, state, _ = model.step(ids, state, enc, keys, source_mask)
        ids = logits[:, -1].argmax(-1, keepdim=True)
        for r, t in enumerate(ids[:, 0].tolist()):
            if not done[r] and t != tok.eos_id:
                out[r].append(t)
        done |= ids[:, 0] == tok.eos_id
        if done.all():
            break
    return [tok.decode(o) for o in out]


@torch.no_grad()
def evaluate(model, tok: Tokenizer, data: Pairs, n: int = EVAL_PAIRS) -> dict:
    """Held-out loss (bits per token), token accuracy (teacher-forced) and exact match (greedy)."""
    was = model.training
    model.eval()
    rows = np.arange(min(n, len(data)))
    s, m, x, y = batch(tok, data, rows)
    logits = model(s, m, x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100).item()
    real = y != -100
    token_acc = ((logits.argmax(-1) == y) & real).sum().item() / real.sum().item()
    got = greedy(model, tok, s, m, x.shape[1] + 8)
    exact = float(np.mean([g == data.targets[i] for g, i in zip(got, rows)]))
    model.train(was)
    return {"val_bpc": loss / math.log(2), "token_accuracy": token_acc, "exact_match": exact}


def train(cfg, out: str | Path, resume=None, progress=None):
    """seqserve.training.train for the seq2seq family (cfg: TrainConfig; corpus options unused)."""
    # The recurrent ops' threads mostly wait on each other at these sizes (as training.translation
    # measured on the shared 2-core machine): one torch thread while training, then as before.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(cfg, out, resume, progress)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, out: str | Path, resume=None, progress=None):
    from seqserve.training.trainer import TrainingInterrupted, TrainResult

    check_replaceable(Path(out), "config.json")
    torch.manual_seed(cfg.seed)
    data = load_number_pairs()
    if resume:
        ckpt = load_checkpoint(resume)
        if ckpt.family != cfg.family:
            raise SeqserveError(f"cannot resume a {ckpt.family} checkpoint as {cfg.family}")
        model, tok = ckpt.model.train(), ckpt.tokenizer
    else:
        tok = Tokenizer.fit(data.text, "char")
        chars = "".join(sorted(set("".join(data.train.sources + data.val.sources))))
        longest = max(map(len, data.train.sources + data.val.sources))
        model = build_model(cfg.family, make_config(cfg.family, cfg.preset, tok.vocab_size, source_chars=chars,
                                                    max_source_len=max(longest, 8), **cfg.model_overrides))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_step, history = 0, []
    if resume:
        st = load_optimizer(resume, opt)
        start_step, history = st["step"], st.get("history", [])
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
    rng = np.random.default_rng(cfg.seed + start_step)
    t0, done_step, loss_ema = time.monotonic(), start_step, None
    examples = [{"source": data.val.sources[i], "target": data.val.targets[i]}
                for i in EXAMPLE_ROWS[:N_EXAMPLES] if i < len(data.val)]

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
            s, m, x, y = batch(tok, data.train, rng.integers(0, len(data.train), cfg.batch_size))
            logits = model(s, m, x)
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
