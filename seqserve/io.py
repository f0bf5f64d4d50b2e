"""Atomic writes: a failed save or export never leaves a half-written folder or file behind."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path


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


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    On any exception the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_sibling(target, "tmp", Path.mkdir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")        # move aside, then swap in: two renames, no copy
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old / "x", target)    # put the previous version back
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_sibling(path, "tmp", lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
