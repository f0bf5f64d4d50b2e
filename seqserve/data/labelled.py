"""Labelled text for the classify and tag tasks, from the Python standard library on this machine.

Nothing is downloaded: the interpreter's own sources are always there, versioned with it, and
large enough (a few MB) for a small model to learn something real in a minute or two.

    classify  which stdlib package a snippet of source comes from (asyncio, email, ...): the
              style, names and docstrings of each package tell them apart, and a held-out file
              of a package was never seen in training
    tag       per-character token type of Python source from the stdlib's own `tokenize`
              module (name, keyword, op, number, string, comment, space)

Train/held-out split by file (CRC32 of the path, as seqserve.data.corpus), so held-out scores
measure code the model never read.
"""

from __future__ import annotations

import io
import keyword
import tokenize
import zlib
from dataclasses import dataclass
from pathlib import Path

from seqserve.data.corpus import stdlib_dir
from seqserve.errors import SeqserveError

PACKAGES = ("asyncio", "email", "multiprocessing", "tkinter", "unittest", "xml")
TAGS = ("space", "name", "keyword", "op", "number", "string", "comment")
_SKIP = {"test", "tests", "site-packages", "idlelib"}


@dataclass(frozen=True)
class LabelledText:
    """Text per split, each a list of (text, label) with label a class index (classify) or a
    list of tag indices, one per character (tag)."""
    labels: tuple[str, ...]     # class or tag names, index = id
    train: list[tuple[str, object]]
    val: list[tuple[str, object]]
    source: str                 # where it came from, for the checkpoint's record


def _held_out(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % 5 == 4


def _files(root: Path, package: str) -> list[Path]:
    return [p for p in sorted((root / package).rglob("*.py")) if not _SKIP & set(p.relative_to(root).parts)]


def _read(p: Path, limit: int) -> str:
    try:
        return p.read_text("utf-8")[:limit]
    except (OSError, UnicodeDecodeError):
        return ""


def load_classify(max_bytes: int = 4_000_000) -> LabelledText:
    """Each file's text (up to an equal share of max_bytes per package) labelled with its package.
    Every package gets a held-out file even where the hash puts none there."""
    root, share = stdlib_dir(), max(max_bytes // len(PACKAGES), 1)
    train, val = [], []
    for label, package in enumerate(PACKAGES):
        files = _files(root, package)
        if not files:
            raise SeqserveError(f"the standard library at {root} has no {package} package to learn from")
        held = [f for f in files if _held_out(f.relative_to(root).as_posix())] or files[-1:]
        used = 0
        for f in sorted(files, key=lambda f: f not in held):         # held-out files first: both get text
            if used >= share:
                break
            text = _read(f, share - used)
            if text:
                (val if f in held else train).append((text, label))
                used += len(text)
    if not train:
        raise SeqserveError(f"max_corpus_bytes {max_bytes} leaves no training text; raise it")
    return LabelledText(PACKAGES, train, val, f"python-stdlib-packages:{root}")


def char_tags(source: str) -> list[int] | None:
    """One TAGS index per character of Python source; None when tokenize cannot read it."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    tags = [0] * len(source)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            kind = {tokenize.NAME: 2 if keyword.iskeyword(tok.string) else 1, tokenize.OP: 3,
                    tokenize.NUMBER: 4, tokenize.STRING: 5, tokenize.COMMENT: 6}.get(tok.type)
            if kind is None:
                continue
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            tags[a:b] = [kind] * (b - a)
    except (tokenize.TokenError, IndentationError, SyntaxError, IndexError):
        return None
    return tags


def load_tag(max_bytes: int = 4_000_000) -> LabelledText:
    """Whole stdlib files with their per-character tags, until max_bytes (10% held out)."""
    root = stdlib_dir()
    files = [p for p in sorted(root.rglob("*.py")) if not _SKIP & set(p.relative_to(root).parts)]
    budget = {"val": max(max_bytes // 10, 1)}
    budget["train"] = max(max_bytes - budget["val"], 1)
    parts, size = {"train": [], "val": []}, {"train": 0, "val": 0}
    for f in files:
        part = "val" if _held_out(f.relative_to(root).as_posix()) else "train"
        if size[part] >= budget[part]:
            if all(size[k] >= budget[k] for k in budget):
                break
            continue
        text = _read(f, 10**9)
        if not text or len(text) > 2 * budget[part]:
            continue
        tags = char_tags(text)
        if tags is None:
            continue
        parts[part].append((text, tags))
        size[part] += len(text)
    if not parts["train"] or not parts["val"]:
        raise SeqserveError(f"max_corpus_bytes {max_bytes} leaves no training or held-out text; raise it")
    return LabelledText(TAGS, parts["train"], parts["val"], f"python-stdlib-tokenize:{root}")
