"""Training for the classify and tag tasks: batching, loss and held-out accuracy.

The training loop (seqserve/training/trainer.py) asks `setup` here for the classify and tag
families' Task (TASK_TRAINERS). Data: seqserve/data/labelled.py (stdlib packages / tokenize tags).

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

import torch
import torch.nn.functional as F

from seqserve.data import Tokenizer
from seqserve.data.labelled import load_classify, load_tag
from seqserve.errors import SeqserveError
from seqserve.models import build_model, get_family, make_config
from seqserve.training.trainer import Task, resume_or_build

N_EXAMPLES = 6            # held-out examples the checkpoint (and so the export sidecar) carries
EVAL_SEED = 1234


def setup(cfg, resume) -> Task:
    """The classify or tag task for seqserve.training.train (cfg: TrainConfig)."""
    tag = get_family(cfg.family).task == "tag"
    if cfg.corpus is not None:
        raise SeqserveError(f"--corpus applies to language models; {cfg.family} learns from the standard "
                            f"library's {'tokenize tags' if tag else 'packages'}")
    data = (load_tag if tag else load_classify)(cfg.max_corpus_bytes)

    def build():
        tok = Tokenizer.fit("".join(t for t, _ in data.train + data.val), cfg.tokenizer)
        return build_model(cfg.family, make_config(cfg.family, cfg.preset, tok.vocab_size, labels=data.labels,
                                                   **cfg.model_overrides)), tok

    model, tok = resume_or_build(cfg, resume, build)
    if not model.config.recurrent and cfg.seq_len > model.config.max_seq_len:
        raise SeqserveError(f"seq_len {cfg.seq_len} is longer than the transformer's max_seq_len "
                            f"{model.config.max_seq_len}; lower --seq-len")
    train_set = _encoded(data.train, tok, cfg.seq_len)
    val_set = _encoded(data.val, tok, cfg.seq_len)
    if not train_set or not val_set:
        raise SeqserveError(f"no file has {cfg.seq_len + 1} characters in the training or held-out part; "
                            "lower --seq-len or raise --max-corpus-mb")

    def batches(start_step: int):
        gen = torch.Generator().manual_seed(cfg.seed + start_step)
        while True:
            length = cfg.seq_len if tag else int(torch.randint(cfg.seq_len // 2, cfg.seq_len + 1, (1,), generator=gen))
            yield _batch(train_set, cfg.batch_size, max(length, 1), gen)

    def loss(b):
        x, y = b
        return _loss(model(x), y)

    scores = ("val_loss", "val_accuracy")
    return Task(model, tok, batches, loss, evaluate=lambda: evaluate(model, val_set, cfg, tag),
                record=lambda m: {"val_bpc": None, **({k: m[k] for k in scores} if m else {}),
                                  "corpus": data.source, "labels": list(data.labels),
                                  "train_tokens": sum(len(x) for x, _ in train_set),
                                  "examples": _examples(data, tok, tag)},
                val_bpc=lambda m: m["val_loss"] / math.log(2), scores=scores, bits=False)


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
