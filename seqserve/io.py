"""Atomic writes: a failed save or export never leaves a half-written folder or file behind."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from seqserve.errors import SeqserveError


def _unique_sibling(target: Path, tag: str, make) -> Path:
    """Create a uniquely named sibling of `target` with `make(path)`, which must fail if it exists.

    Unlike tempfile.mkdtemp/mkstemp (modes 0700/0600), the new folder or file gets the usual
    umask-derived mode, so a checkpoint or export can be read by other users (a serving container).
    """
    while True:
        p = target.parent / f".{target.name}.{tag}-{secrets.token_hex(4)}"
        try:
            make(p)
            return p
        except FileExistsError:
            continue


def check_replaceable(target: Path, marker: str) -> None:
    """Fail unless `target` is absent, an empty folder, or a folder holding `marker`."""
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file())):
        what = "a file" if not target.is_dir() else f"a folder without {marker}"
        raise SeqserveError(f"{target} exists and is {what}; refusing to replace it "
                            "(choose another output path or remove it first)")


@contextlib.contextmanager
def atomic_dir(target: str | Path, marker: str):
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    An existing `target` is replaced only if it is an empty folder or holds `marker` (the file
    that says it is what we write: `seqserve.json`, `config.json`), so a mistyped --out never
    deletes someone's data. On any exception the temporary folder is removed and `target` is left
    as it was.
    """
    target = Path(target)
    check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_sibling(target, "tmp", Path.mkdir)
    old = None
    try:
        yield tmp
        if target.exists():
            old = _unique_sibling(target, "old", Path.mkdir)
            os.replace(target, old / "x")        # move aside, then swap in: two renames, no copy
        os.replace(tmp, target)
    except BaseException:
        if old is not None and (old / "x").exists():
            os.replace(old / "x", target)        # put the previous version back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise SeqserveError(f"cannot write {path}: it is a folder; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _unique_sibling(path, "tmp", lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    except OSError as e:
        raise SeqserveError(f"cannot write {path}: {e.strerror}") from None
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
