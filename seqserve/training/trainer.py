"""Training: one loop (`train`) for every task, AdamW, gradient clipping, truncated BPTT.

Each task gives the loop a `Task` (model, batches, loss, held-out evaluation, training-record
fields): causal-lm here, the others in the TASK_TRAINERS modules. The loop owns the optimizer,
the evaluation cadence, the --minutes budget, the history, Ctrl-C, checkpoints and --resume.

Recurrent families read the token stream as `batch_size` parallel lanes and walk them in chunks of
`seq_len`; the hidden state is carried from one chunk to the next and detached, so gradients flow
back at most `seq_len` steps (truncated BPTT) while the model still sees unbroken text.
The GPT family trains on random windows of `seq_len` tokens.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from seqserve.checkpoint import load_checkpoint, load_optimizer, read_checkpoint_info, save_checkpoint
from seqserve.data import Tokenizer, load_corpus
from seqserve.errors import SeqserveError
from seqserve.io import check_replaceable
from seqserve.models import build_model, get_family, make_config

DEFAULT_STEPS = 200
UNBOUNDED_STEPS = 1_000_000_000   # "train until --minutes runs out": more steps than any budget allows


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. `path`/`step`: the checkpoint saved at the last finished step,
    or None when no step had finished (nothing was saved)."""

    def __init__(self, path: Path | None, step: int | None):
        super().__init__()
        self.path, self.step = path, step


@dataclass(frozen=True)
class TrainConfig:
    family: str = "lstm"
    preset: str = "tiny"
    corpus: str | None = None        # None: the Python standard library's sources
    max_corpus_bytes: int = 4_000_000
    tokenizer: str = "char"          # "char" | "byte"
    steps: int = DEFAULT_STEPS       # total optimizer steps (a resumed run continues up to it)
    minutes: float | None = None     # wall-clock budget; stops early when reached
    batch_size: int = 32             # parallel lanes (recurrent) / windows (gpt)
    seq_len: int = 64                # BPTT chunk / GPT context window
    lr: float | None = None          # AdamW learning rate; None: the family's default_lr
    weight_decay: float = 0.01
    clip: float = 1.0                # max global gradient norm
    eval_every: int = 50             # steps between validation passes
    eval_batches: int = 8
    seed: int = 0
    model_overrides: dict = field(default_factory=dict)   # e.g. {"num_layers": 3}

    def __post_init__(self):
        if self.lr is None:
            object.__setattr__(self, "lr", get_family(self.family).default_lr)
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise SeqserveError(f"{name} must be >= 1, got {getattr(self, name)}")
        # `not x > 0` (rather than `x <= 0`) also rejects NaN.
        for name in ("lr", "clip", "max_corpus_bytes") + (("minutes",) if self.minutes is not None else ()):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise SeqserveError(f"{name} must be a number > 0, got {value}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise SeqserveError(f"weight_decay must be a number >= 0, got {self.weight_decay}")
        if self.corpus is not None:
            # Absolute, so that a checkpoint can be resumed from another working directory.
            object.__setattr__(self, "corpus", str(Path(self.corpus).expanduser().resolve()))


@dataclass
class TrainResult:
    path: Path
    steps: int
    train_bpc: float
    val_bpc: float
    history: list[dict]
    scores: dict = field(default_factory=dict)   # task-specific held-out scores (exact_match, ...)


@dataclass(frozen=True)
class Task:
    """What one task gives the training loop (`train`); the loop owns the optimizer, the evaluation
    cadence, the time budget, the history, checkpoints and --resume. Built by `setup(cfg, resume)`
    (here for causal-lm, in the family's `trainer` module for the others)."""
    model: torch.nn.Module
    tokenizer: Tokenizer
    batches: Callable[[int], Iterator]           # start step -> training batches (a resumed run goes on)
    loss: Callable[[Any], torch.Tensor]          # batch -> mean loss in nats (backward is the loop's)
    evaluate: Callable[[], dict]                 # held-out metrics, every eval_every steps
    record: Callable[[dict], dict]               # latest held-out metrics ({} if none) -> training-record fields
    val_bpc: Callable[[dict], float] = lambda m: m["val_bpc"]   # held-out metrics -> TrainResult.val_bpc
    scores: tuple[str, ...] = ()                 # held-out metrics TrainResult.scores reports
    bits: bool = True                            # progress shows train_bpc (bits); False: train_loss (nats)
    final_evaluate: Callable[[], dict] | None = None   # a fuller pass at the end; None: reuse the last
    threads: int | None = None                   # torch threads while training (None: leave as is)


def resume_or_build(cfg: TrainConfig, resume, build: Callable[[], tuple]) -> tuple:
    """(model, tokenizer): the checkpoint's when resuming (same family), else `build()`."""
    if not resume:
        return build()
    ckpt = load_checkpoint(resume)
    if ckpt.family != cfg.family:
        raise SeqserveError(f"cannot resume a {ckpt.family} checkpoint as {cfg.family}")
    return ckpt.model.train(), ckpt.tokenizer


def train(cfg: TrainConfig, out: str | Path, resume: str | Path | None = None, progress=None) -> TrainResult:
    """Train and save a checkpoint folder at `out`. `progress(step, total, metrics)` is called often."""
    trainer = get_family(cfg.family).trainer
    setup = importlib.import_module(trainer).setup if trainer else _causal_lm
    check_replaceable(Path(out), "config.json")   # fail now, not at the save after the run
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(cfg.seed)
        task = setup(cfg, resume)
        model = task.model
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        start_step, history = 0, []
        if resume:
            st = load_optimizer(resume, opt)
            start_step, history = st["step"], st.get("history", [])
            for group in opt.param_groups:                 # the saved groups hold the old run's values
                group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        if task.threads:
            torch.set_num_threads(task.threads)
        train_key, unit = ("train_bpc", math.log(2)) if task.bits else ("train_loss", 1.0)
        batches = task.batches(start_step)
        t0, done_step, loss_ema = time.monotonic(), start_step, None

        def save(metrics, **extra):
            training = {"config": asdict(cfg), "steps": done_step, **task.record(metrics), **extra}
            save_checkpoint(out, cfg.family, model.eval(), task.tokenizer, training, opt,
                            {"step": done_step, "history": history})

        model.train()
        try:
            for step in range(start_step + 1, cfg.steps + 1):
                loss = task.loss(next(batches))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                done_step = step
                loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
                metrics = {"step": step, train_key: loss_ema / unit}
                done = cfg.minutes is not None and time.monotonic() - t0 > cfg.minutes * 60
                if step % cfg.eval_every == 0 or step == cfg.steps or done:
                    metrics.update(task.evaluate())
                    history.append(metrics)
                if progress:
                    progress(step, cfg.steps, metrics)
                if done:
                    break
        except KeyboardInterrupt:
            # Keep what was trained: save the last finished step (resumable), then stop as asked.
            if done_step == start_step:
                raise TrainingInterrupted(None, None) from None
            save(history[-1] if history else {}, interrupted=True)
            raise TrainingInterrupted(Path(out), done_step) from None
        last = history[-1] if history else {}
        if task.final_evaluate is not None:
            last = {**last, "step": done_step, **task.final_evaluate()}
        elif last.get("step") != done_step:            # no step ran (a finished run resumed): score it now
            last = {"step": done_step, train_key: loss_ema and loss_ema / unit, **task.evaluate()}
            history.append(last)
        save(last)
        return TrainResult(Path(out), done_step, (loss_ema or 0) / math.log(2), task.val_bpc(last), history,
                           {k: last[k] for k in task.scores})
    finally:
        torch.set_num_threads(threads)


def _causal_lm(cfg: TrainConfig, resume) -> Task:
    """The causal-lm task: next-token loss on the corpus (lanes with truncated BPTT, or windows)."""
    fam = get_family(cfg.family)
    corpus = load_corpus(cfg.corpus, cfg.max_corpus_bytes)

    def build():
        tok = Tokenizer.fit(corpus.train + corpus.val, cfg.tokenizer)
        return build_model(cfg.family, make_config(cfg.family, cfg.preset, tok.vocab_size, **cfg.model_overrides)), tok

    model, tok = resume_or_build(cfg, resume, build)
    max_len = getattr(model.config, "max_seq_len", None)
    if max_len is not None and cfg.seq_len > max_len:
        raise SeqserveError(f"seq_len {cfg.seq_len} is longer than the {cfg.family} model's "
                            f"max_seq_len {max_len}; lower --seq-len")
    train_ids = torch.tensor(tok.encode(corpus.train), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(corpus.val), dtype=torch.long)
    if min(len(train_ids), len(val_ids)) < cfg.batch_size * (cfg.seq_len + 1):
        raise SeqserveError(f"corpus too small for batch {cfg.batch_size} x seq_len {cfg.seq_len}: "
                            f"{len(train_ids)} train / {len(val_ids)} validation tokens")
    state = None

    def loss(batch):
        nonlocal state
        x, y, reset = batch                                # (B, T), (B, T), first chunk of a pass
        if fam.recurrent:
            if state is None or reset:
                state = model.initial_state(x.shape[0])
            logits, state = model.step(x, state)
            state = tuple(s.detach() for s in state)       # truncate BPTT at the chunk edge
        else:
            logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return Task(
        model, tok, loss=loss,
        batches=lambda start: _lanes(train_ids, cfg, start) if fam.recurrent else _windows(train_ids, cfg, cfg.seed + start),
        evaluate=lambda: {"val_bpc": evaluate(model, val_ids, cfg, fam.recurrent)},
        record=lambda m: {"val_bpc": m.get("val_bpc"), "corpus": corpus.source, "corpus_files": corpus.files,
                          "train_tokens": len(train_ids)})


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, cfg: TrainConfig, recurrent: bool) -> float:
    """Mean validation loss in bits per character over `eval_batches` deterministic batches."""
    was_training = model.training
    model.eval()
    batches = _lanes(ids, cfg) if recurrent else _windows(ids, cfg, seed=1234)
    total, state = 0.0, None
    for _ in range(cfg.eval_batches):
        x, y, reset = next(batches)
        if recurrent:
            if state is None or reset:
                state = model.initial_state(x.shape[0])
            logits, state = model.step(x, state)
        else:
            logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    model.train(was_training)
    return total / cfg.eval_batches / math.log(2)


def _lanes(ids: torch.Tensor, cfg: TrainConfig, skip: int = 0):
    """Yield (x, y, reset) chunks (B, T) walking B contiguous lanes; reset at each wrap-around.

    The first `skip` chunks are skipped (a resumed run goes on where it stopped, with a fresh state).
    """
    B, T = cfg.batch_size, cfg.seq_len
    L = len(ids) // B
    lanes = ids[: B * L].view(B, L)                                  # (B, L)
    starts = range(0, L - T, T)                                      # every chunk with T + 1 tokens
    if not starts:
        raise SeqserveError(f"{len(ids)} tokens are too few for {B} lanes of {T + 1}")
    first = skip % len(starts)
    while True:
        for i in range(first, len(starts)):
            chunk = lanes[:, starts[i]: starts[i] + T + 1]
            yield chunk[:, :-1], chunk[:, 1:], i == first
        first = 0


def _windows(ids: torch.Tensor, cfg: TrainConfig, seed: int):
    """Yield (x, y, False) batches of random windows (B, T), reproducible from seed."""
    g = torch.Generator().manual_seed(seed)
    B, T = cfg.batch_size, cfg.seq_len
    while True:
        starts = torch.randint(0, len(ids) - T, (B,), generator=g)       # ids[s: s + T + 1] fits
        chunk = torch.stack([ids[s: s + T + 1] for s in starts.tolist()])
        yield chunk[:, :-1], chunk[:, 1:], False


def resume_config(path: str | Path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (to continue it with more steps)."""
    cfg = (read_checkpoint_info(path).get("training") or {}).get("config")
    if not cfg:
        raise SeqserveError(f"checkpoint {path} has no training record to resume from")
    return TrainConfig(**cfg)


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was saved at (0 when it has no training record)."""
    return int((read_checkpoint_info(path).get("training") or {}).get("steps") or 0)
