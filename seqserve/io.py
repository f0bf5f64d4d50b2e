"""Atomic, crash-safe writes: a failed, interrupted or SIGKILLed save or export never leaves a
half-written folder or file in place, and the next write cleans up what a killed one left.

Renames go through `os.replace`/`os.rename` or `exchange` (and links through `os.link`) so tests
can kill the process right after any one of them (tests/test_crash_safe_writes.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from seqserve.errors import SeqserveError

try:
    import fcntl
except ImportError:         # not POSIX: no locks (concurrent writers of one target are unsupported)
    fcntl = None

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = None          # resolved on first use; False when libc has no renameat2


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):     # not Linux/glibc >= 2.28
            _renameat2 = False
    return _renameat2


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap the paths `a` and `b` (both must exist) in one atomic step: Linux renameat2 with
    RENAME_EXCHANGE. Returns False, having changed nothing, where the platform or filesystem
    cannot (no renameat2 in libc, ENOSYS, EINVAL); the caller then falls back to two renames."""
    fn = _libc_renameat2()
    if not fn:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


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


# ---- locks: a live writer's temporary sibling is never taken for a killed writer's leftover ------

_held: dict[tuple[int, int], int] = {}     # (st_dev, st_ino) -> how often this process holds it


class _Lock:
    def __init__(self, fd: int | None, key: tuple[int, int]):
        self.fd, self.key = fd, key


def lock_path(path: Path, blocking: bool = True) -> _Lock | None:
    """An exclusive flock on `path` (a folder or a file); keep the returned lock and `unlock` it.
    None if `blocking` is False and another holder has it (this process included: a live write's
    temporary sibling), or if `path` cannot be opened. The kernel drops it when the holder dies.
    Blocking locks are re-entrant within this process (flock would deadlock on a second fd)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    if key in _held:
        os.close(fd)
        if not blocking:
            return None
        _held[key] += 1
        return _Lock(None, key)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    _held[key] = 1
    return _Lock(fd, key)


def unlock(lock: _Lock | None) -> None:
    if lock is None:
        return
    _held[lock.key] -= 1
    if _held[lock.key] == 0:
        del _held[lock.key]
    if lock.fd is not None:
        with contextlib.suppress(OSError):
            os.close(lock.fd)


def remove_tree(path: Path, marker: str | None = None) -> None:
    """Remove a folder (or file); its `marker` first, so a half-removed folder never looks whole."""
    if marker is not None:
        with contextlib.suppress(OSError):
            os.unlink(path / marker)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _leftovers(target: Path) -> list[tuple[str, Path]]:
    """(tag, path) of `.NAME.tmp-*` / `.NAME.old-*` siblings of `target` (killed writes)."""
    pat = re.compile(r"\." + re.escape(target.name) + r"\.(tmp|old)-[0-9a-f]+")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    return [(m.group(1), p) for p in entries if (m := pat.fullmatch(p.name))]


@contextlib.contextmanager
def _parent_locked(target: Path):
    """Hold the parent folder's flock while temporary siblings are made and locked or cleaned,
    so a cleaner never sees a live writer's sibling between its creation and its lock."""
    fd = lock_path(target.parent)
    try:
        yield
    finally:
        unlock(fd)


def _locked_sibling(target: Path, tag: str, make) -> tuple[Path, _Lock | None]:
    with _parent_locked(target):
        p = _unique_sibling(target, tag, make)
        return p, lock_path(p)


def recover(target: str | Path) -> None:
    """Finish what a killed atomic_dir/atomic_write_text for `target` left: put the previous
    folder back if `target` is missing and a moved-aside copy exists (the two-rename fallback was
    killed between its renames), then remove the temporary siblings no live writer holds."""
    target = Path(target)
    held = []
    with _parent_locked(target):
        _recover(target, held)


def _recover(target: Path, held: list) -> None:
    try:
        free = []
        for tag, p in _leftovers(target):
            fd = lock_path(p, blocking=False)
            if fd is None and p.exists():
                continue                       # a live writer's (or unreadable: leave it)
            held.append(fd)
            free.append((tag, p))
        if not os.path.lexists(target):
            for tag, p in free:
                if tag == "old" and (p / "x").is_dir():
                    os.replace(p / "x", target)
                    break
        for _, p in free:
            remove_tree(p)
    finally:
        for fd in held:
            unlock(fd)


@contextlib.contextmanager
def atomic_dir(target: str | Path, marker: str):
    """Yield a temporary folder beside `target`; on success it replaces `target` in one atomic step.

    An existing `target` is replaced only if it is an empty folder or holds `marker` (the file
    that says it is what we write: `seqserve.json`, `config.json`), so a mistyped --out never
    deletes someone's data. On any exception the temporary folder is removed and `target` is left
    as it was. After a SIGKILL at any instant `target` is the old folder or the new one (where the
    filesystem can exchange two names atomically; elsewhere it may be missing between two renames,
    and the next write puts the old one back), and the next write removes the hidden siblings.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    check_replaceable(target, marker)
    tmp, tmp_lock = _locked_sibling(target, "tmp", Path.mkdir)
    old = old_lock = None
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            if not exchange(tmp, target):      # one atomic swap: tmp now holds the old folder
                old, old_lock = _locked_sibling(target, "old", Path.mkdir)
                os.replace(target, old / "x")  # move aside, then swap in: two renames, no copy
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if old is not None and (old / "x").exists() and not target.exists():
            os.replace(old / "x", target)      # put the previous version back
        remove_tree(tmp)
        raise
    finally:
        remove_tree(tmp)                       # after a swap: the previous folder
        if old is not None:
            remove_tree(old)
        unlock(tmp_lock)
        unlock(old_lock)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file by renaming a complete temporary sibling over it: readers see the old text or
    the new, never a part. Temporary siblings of killed writes are removed first."""
    path = Path(path)
    if path.is_dir():
        raise SeqserveError(f"cannot write {path}: it is a folder; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover(path)
        tmp, fd = _locked_sibling(path, "tmp", lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    except OSError as e:
        raise SeqserveError(f"cannot write {path}: {e.strerror}") from None
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        unlock(fd)


def write_json(path: str | Path, obj) -> None:
    """A JSON file, written atomically (readers never see a half-written one)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
