"""Training text: the Python standard library's own source (default) or the user's files.

The split is deterministic: a file goes to validation when the CRC32 of its relative path
falls in the last tenth (the byte budget is shared 90/10 between the parts, so both get text);
a single file is split at 90% of its length, and so is the concatenation of a folder's files
when they all fall into the same part.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

from seqserve.errors import SeqserveError


@dataclass(frozen=True)
class Corpus:
    train: str
    val: str
    source: str      # where it came from, for the checkpoint's record
    files: int


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def load_corpus(path: str | Path | None = None, max_bytes: int = 4_000_000) -> Corpus:
    """Read up to max_bytes of text. path: None (stdlib sources), a text file, or a folder."""
    if path is None:
        root = stdlib_dir()
        files = [p for p in sorted(root.rglob("*.py"))
                 if not {"site-packages", "test", "tests", "idlelib"} & set(p.relative_to(root).parts)]
        return _from_files(root, files, max_bytes, f"python-stdlib:{root}")
    p = Path(path)
    if not p.exists():
        raise SeqserveError(f"corpus {p} does not exist; expected a text file or a folder of text files")
    if p.is_file():
        try:
            text = _read(p, max_bytes)
        except UnicodeDecodeError as e:
            raise SeqserveError(f"corpus {p} is not UTF-8 text (byte {e.start}); expected a text file") from None
        if len(text) < 100:
            raise SeqserveError(f"corpus {p} holds {len(text)} characters; need at least 100")
        cut = int(len(text) * 0.9)
        return Corpus(text[:cut], text[cut:], str(p), 1)
    return _from_files(p, sorted(f for f in p.rglob("*") if f.is_file()), max_bytes, str(p))


def _from_files(root: Path, files: list[Path], max_bytes: int, source: str) -> Corpus:
    # Each part has its own share of the budget (90/10), so that the first files in sorted
    # order cannot use it all up before a validation file is reached.
    parts = {"train": [], "val": []}
    budget = {"val": max(max_bytes // 10, 1)}
    budget["train"] = max(max_bytes - budget["val"], 1)
    size, used = {"train": 0, "val": 0}, 0
    for f in files:
        rel = f.relative_to(root).as_posix()
        part = "val" if zlib.crc32(rel.encode()) % 10 == 9 else "train"
        if size[part] >= budget[part]:
            if all(size[k] >= budget[k] for k in budget):
                break
            continue
        try:
            text = _read(f, budget[part] - size[part])
        except (UnicodeDecodeError, SeqserveError):
            continue                                    # binary or unreadable: not text
        parts[part].append(text)
        used += 1
        size[part] += len(text.encode("utf-8"))
    train, val = parts["train"], parts["val"]
    if any(train) and any(val):                         # both parts hold some text
        return Corpus("\n".join(train), "\n".join(val), source, used)
    # Every file with text hashed into the same part (likely with a handful of files): read them
    # again with the whole budget and split their concatenation 90/10, as for a single file.
    texts, size = [], 0
    for f in files:
        if size >= max_bytes:
            break
        try:
            texts.append(_read(f, max_bytes - size))
        except (UnicodeDecodeError, SeqserveError):
            continue
        size += len(texts[-1].encode("utf-8"))
    text = "\n".join(texts)
    if len(text) < 100:
        raise SeqserveError(f"corpus {source} holds {len(text)} characters of UTF-8 text in {len(texts)} "
                            f"readable file(s); need at least 100")
    cut = int(len(text) * 0.9)
    return Corpus(text[:cut], text[cut:], source, len(texts))


def _read(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(max(limit, 0))
    except OSError as e:
        raise SeqserveError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Cut at the limit inside a multi-byte character: drop only that partial character.
        # Anything else is not UTF-8 text, however much of the file was read.
        if len(data) == limit and e.reason == "unexpected end of data":
            return data[: e.start].decode("utf-8")
        raise
