"""Training for the classify and tag tasks: batching, loss and held-out accuracy.

The trainer (seqserve/training/trainer.py) hands a family whose task is not causal-lm to
`train` here (TASK_TRAINERS). Data: seqserve/data/labelled.py (stdlib packages / tokenize tags).

    classify  a batch is B random windows, each of a class drawn uniformly (then a file of that
              class by its length), labelled with its file's package; the window length is drawn per batch from [seq_len/2, seq_len] so a
              streaming (step-graph) classifier is right on prefixes too; loss: cross-entropy
              of class_logits; score: accuracy on held-out windows of length seq_len, classes
              balanced the same way (chance: 1 / classes)
    tag       a batch is B random windows of seq_len characters with their tags; loss:
              cross-entropy over every position; score: token (character) accuracy held out
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from seqserve.checkpoint import load_checkpoint, load_optimizer, save_checkpoint
from seqserve.data import Tokenizer
from seqserve.data.labelled import load_classify, load_tag
from seqserve.errors import SeqserveError
from seqserve.io import check_replaceable
from seqserve.models import build_model, get_family, make_config

N_EXAMPLES = 6            # held-out examples the checkpoint (and so the export sidecar) carries
EVAL_SEED = 1234


def train(cfg, out: str | Path, resume=None, progress=None):
    from seqserve.training.trainer import TrainingInterrupted, TrainResult

    fam = get_family(cfg.family)
    if cfg.corpus is not None:
        raise SeqserveError(f"--corpus applies to language models; {cfg.family} learns from the standard "
                            f"library's {'packages' if fam.task == 'classify' else 'tokenize tags'}")
    check_replaceable(Path(out), "config.json")
    torch.manual_seed(cfg.seed)
    data = (load_classify if fam.task == "classify" else load_tag)(cfg.max_corpus_bytes)
    start_step, history = 0, []
    if resume:
        ckpt = load_checkpoint(resume)
        if ckpt.family != cfg.family:
            raise SeqserveError(f"cannot resume a {ckpt.family} checkpoint as {cfg.family}")
        model, tok = ckpt.model.train(), ckpt.tokenizer
    else:
        tok = Tokenizer.fit("".join(t for t, _ in data.train + data.val), cfg.tokenizer)
        model = build_model(cfg.family, make_config(cfg.family, cfg.preset, tok.vocab_size, labels=data.labels,
                                                    **cfg.model_overrides))
    if not model.config.recurrent and cfg.seq_len > model.config.max_seq_len:
        raise SeqserveError(f"seq_len {cfg.seq_len} is longer than the transformer's max_seq_len "
                            f"{model.config.max_seq_len}; lower --seq-len")
    train_set = _encoded(data.train, tok, cfg.seq_len)
    val_set = _encoded(data.val, tok, cfg.seq_len)
    if not train_set or not val_set:
        raise SeqserveError(f"no file has {cfg.seq_len + 1} characters in the training or held-out part; "
                            "lower --seq-len or raise --max-corpus-mb")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume:
        st = load_optimizer(resume, opt)
        start_step, history = st["step"], st.get("history", [])
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
    tag = fam.task == "tag"
    gen = torch.Generator().manual_seed(cfg.seed + start_step)
    t0, done_step, loss_ema = time.monotonic(), start_step, None

    def save(scores: dict, **extra):
        training = {"config": asdict(cfg), "steps": done_step, "val_bpc": None, **scores,
                    "corpus": data.source, "labels": list(data.labels),
                    "train_tokens": sum(len(x) for x, _ in train_set), "examples": _examples(data, tok, tag),
                    **extra}
        save_checkpoint(out, cfg.family, model.eval(), tok, training, opt, {"step": done_step, "history": history})

    model.train()
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            length = cfg.seq_len if tag else int(torch.randint(cfg.seq_len // 2, cfg.seq_len + 1, (1,), generator=gen))
            x, y = _batch(train_set, cfg.batch_size, max(length, 1), gen)
            loss = _loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            done_step = step
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            metrics = {"step": step, "train_loss": loss_ema}
            done = cfg.minutes is not None and time.monotonic() - t0 > cfg.minutes * 60
            if step % cfg.eval_every == 0 or step == cfg.steps or done:
                metrics.update(evaluate(model, val_set, cfg, tag))
                history.append(metrics)
            if progress:
                progress(step, cfg.steps, metrics)
            if done:
                break
    except KeyboardInterrupt:
        if done_step == start_step:
            raise TrainingInterrupted(None, None) from None
        save(_scores(history), interrupted=True)
        raise TrainingInterrupted(Path(out), done_step) from None
    if not history or history[-1]["step"] != done_step:
        history.append({"step": done_step, "train_loss": loss_ema, **evaluate(model, val_set, cfg, tag)})
    scores = _scores(history)
    save(scores)
    return TrainResult(Path(out), done_step, (loss_ema or 0) / math.log(2),
                       history[-1]["val_loss"] / math.log(2), history, scores)


def _scores(history: list[dict]) -> dict:
    return {k: history[-1][k] for k in ("val_loss", "val_accuracy")} if history else {}


def _encoded(items, tok: Tokenizer, seq_len: int) -> list[tuple[torch.Tensor, object]]:
    """(ids [N], label index or tag ids [N]) per file long enough for one window."""
    out = []
    for text, label in items:
        if len(text) <= seq_len:
            continue
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
        if tok.kind == "byte" and not isinstance(label, int):
            continue                      # byte ids do not line up with per-character tags
        out.append((ids, torch.tensor(label, dtype=torch.long)))
    return out


def _batch(items, batch: int, length: int, gen: torch.Generator):
    """B windows of `length`: a file drawn by its length (classify: within a class drawn
    uniformly), an offset inside it. -> x [B, L], y [B] (class) or [B, L] (tags)."""
    sizes = torch.tensor([len(ids) - length for ids, _ in items], dtype=torch.float).clamp(min=1)
    if items[0][1].dim() == 0:                      # classify: every class equally often
        classes = torch.stack([label for _, label in items])
        per_class = torch.zeros(int(classes.max()) + 1).index_add_(0, classes, sizes)
        sizes = sizes / per_class[classes]
    files = torch.multinomial(sizes, batch, replacement=True, generator=gen).tolist()
    xs, ys = [], []
    for f in files:
        ids, label = items[f]
        s = int(torch.randint(0, len(ids) - length + 1, (1,), generator=gen))
        xs.append(ids[s:s + length])
        ys.append(label if label.dim() == 0 else label[s:s + length])
    return torch.stack(xs), torch.stack(ys)


def _loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model, items, cfg, tag: bool) -> dict:
    """Held-out loss and accuracy (per window for classify, per character for tag) over
    `eval_batches` fixed batches of full-length windows."""
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    loss, right, total = 0.0, 0, 0
    for _ in range(cfg.eval_batches):
        x, y = _batch(items, cfg.batch_size, cfg.seq_len, gen)
        scores = model(x)
        loss += _loss(scores, y).item()
        right += int((scores.argmax(-1) == y).sum())
        total += y.numel()
    model.train(was)
    return {"val_loss": loss / cfg.eval_batches, "val_accuracy": right / total}


def _examples(data, tok: Tokenizer, tag: bool) -> list[dict]:
    """A handful of held-out inputs with the expected output: one per class (classify) or the
    first lines of held-out files (tag), each short enough to read."""
    out, seen = [], set()
    for text, label in data.val:
        key = label if not tag else len(out)
        if key in seen or len(out) >= N_EXAMPLES:
            continue
        start = len(text) // 3
        start = text.find("\n", start) + 1 or start
        snippet = text[start:start + 48]
        try:
            tok.encode(snippet)
        except SeqserveError:
            continue
        seen.add(key)
        expected = [data.labels[i] for i in label[start:start + 48]] if tag else data.labels[label]
        out.append({"input": snippet, "expected": expected})
    return out
