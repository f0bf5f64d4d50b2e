"""A real Triton Inference Server (2.51.0, python backend only) for tests: seqserve.triton.launcher
with test defaults. Tests may download (the CLI never does):

    install = tritonserver_or_skip()          # fetched into the cache; pytest.skip only when it cannot be
    proc, http, grpc, metrics = start_tritonserver(repo_dir, tmp_path)
    try: ...
    finally: stop_tritonserver(proc)

or `with tritonserver(repo_dir, tmp_path) as (proc, http, grpc, metrics): ...`.

Test defaults, unlike `seqserve serve --engine triton`: the log and the backend folder go in
tmp_path (kept for the failure report), a model that fails to load fails the start (Triton's own
--exit-on-error=true, so a broken test model shows its reason at once), --exit-timeout-secs 5.
`proc` is the server's Popen; `proc.server` is the launcher's TritonServer (models(), log_tail()),
`proc.log_path`, `proc.shm_prefix` and `proc.ports` are kept for older callers.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from seqserve.triton.launcher import (  # noqa: F401 - re-exported for tests
    SHM_DIR,
    SHM_PREFIX,
    TRITONSERVER_VERSION,
    PackageDownloadError,
    TritonConfig,
    TritonInstall,
    ensure_tritonserver,
    prepare_stub_python,
    process_group_alive,
    server_env,
    start,
)
from seqserve.tools.perf_analyzer import PYTRITON_REQUIREMENT


def tritonserver_or_skip() -> TritonInstall:
    """tritonserver in the cache (fetched once) and the stub's numpy-1 environment where this one
    has numpy 2; pytest.skip only when they cannot be downloaded here."""
    import pytest

    try:
        install = ensure_tritonserver()
        prepare_stub_python()
    except PackageDownloadError as e:
        pytest.skip(f"no tritonserver: {PYTRITON_REQUIREMENT} (or numpy 1 for its stub) cannot be downloaded ({e})")
    return install


def start_tritonserver(repo_dir: Path, tmp_path: Path, *, install: TritonInstall | None = None,
                       extra_args: Sequence[str] = (), timeout: float = 90.0,
                       ) -> tuple[subprocess.Popen, int, int, int]:
    """Start tritonserver on `repo_dir` (free ports of 127.0.0.1) and wait until every model has
    loaded. Returns (proc, http_port, grpc_port, metrics_port); stop it with stop_tritonserver(proc).
    TritonStartError (a RuntimeError) with the log's tail if it does not start."""
    if install is None:
        install = ensure_tritonserver()
        prepare_stub_python()
    config = TritonConfig(repository=Path(repo_dir), work_dir=Path(tmp_path), exit_on_error=True,
                          exit_timeout_s=5, startup_timeout_s=timeout, extra_args=tuple(extra_args))
    server = start(config, install)
    proc = server.proc
    proc.server, proc.log_path, proc.shm_prefix = server, server.log_path, server.shm_prefix
    proc.ports = (server.ports["http"], server.ports["grpc"], server.ports["metrics"])
    return (proc, *proc.ports)


def shm_regions(proc: subprocess.Popen) -> list[Path]:
    """The python backend shared-memory regions of this server still in /dev/shm."""
    return proc.server.shm_regions()


def stop_tritonserver(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server and wait; then SIGKILL whatever is left of its process group (an orphaned
    python stub) by the group's id, and remove this server's leftover /dev/shm regions."""
    proc.server.stop(timeout)


@contextlib.contextmanager
def tritonserver(repo_dir: Path, tmp_path: Path, **kw) -> Iterator[tuple[subprocess.Popen, int, int, int]]:
    """start_tritonserver(...) as a context manager that always stops it."""
    started = start_tritonserver(repo_dir, tmp_path, **kw)
    try:
        yield started
    finally:
        stop_tritonserver(started[0])
