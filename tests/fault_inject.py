"""Run the seqserve CLI and SIGKILL it right after its N-th rename or link (fault injection).

    python tests/fault_inject.py KILL_AFTER COUNT_FILE [--no-exchange] [--removals] -- seqserve-args...

Wraps os.replace, os.rename, os.link and seqserve.io.exchange (the atomic swap of two names): each
call that changes the filesystem is counted and appended to COUNT_FILE (one line: what, paths);
right after the KILL_AFTER-th the process kills itself with SIGKILL, as a crash or `kill -9` would.
KILL_AFTER 0 never kills: it measures how many such steps an unkilled run performs.
--no-exchange: behave as on a filesystem without RENAME_EXCHANGE (the two-rename fallback).
--removals: count (and kill after) os.unlink / os.remove / os.rmdir too (cleanups, rmtree's steps).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install(kill_after: int, count_file: str, no_exchange: bool, removals: bool = False) -> None:
    import seqserve.io as sio

    count = 0
    log = open(count_file, "a", buffering=1)

    def step(what: str, *paths) -> None:
        nonlocal count
        count += 1
        log.write(f"{count} {what} {' '.join(map(str, paths))}\n")
        if count == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name: str, real):
        def wrapped(src, dst, *args, **kwargs):
            out = real(src, dst, *args, **kwargs)
            step(name, src, dst)
            return out
        return wrapped

    for name in ("replace", "rename", "link"):
        setattr(os, name, wrap(name, getattr(os, name)))
    if removals:
        def wrap1(name: str, real):
            def wrapped(path, *args, **kwargs):
                out = real(path, *args, **kwargs)
                step(name, path)
                return out
            return wrapped

        for name in ("unlink", "remove", "rmdir"):
            setattr(os, name, wrap1(name, getattr(os, name)))
    real_exchange = getattr(sio, "exchange", None)     # absent before issue 10's fix
    if real_exchange is None:
        return

    def exchange(a, b):
        if no_exchange:
            return False
        done = real_exchange(a, b)
        if done:
            step("exchange", a, b)
        return done

    sio.exchange = exchange


def main() -> None:
    args = sys.argv[1:]
    kill_after, count_file = int(args[0]), args[1]
    rest = args[2:]
    no_exchange = "--no-exchange" in rest[: rest.index("--")]
    removals = "--removals" in rest[: rest.index("--")]
    cli_args = rest[rest.index("--") + 1:]
    sys.path.insert(0, str(ROOT))
    install(kill_after, count_file, no_exchange, removals)
    from cli.main import main as cli_main

    sys.argv = ["seqserve", *cli_args]
    cli_main()


if __name__ == "__main__":
    main()
