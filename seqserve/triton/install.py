"""Where tritonserver comes from, and the Python its python-backend stub runs (see launcher.py).

`find_tritonserver()` takes an installed nvidia-pytriton (the `seqserve[triton]` extra), else a copy
already extracted into `<seqserve cache>/tritonserver/2.51.0/`; it never downloads.
`fetch_tritonserver()` makes that copy. `stub_python()`/`prepare_backends()` give the stub its
environment (this one, or the numpy-1 overlay of seqserve.triton.stub_env) and backend folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seqserve.errors import SeqserveError
from seqserve.tools.perf_analyzer import (
    PYTRITON_LIBS,
    PYTRITON_PLATFORM,
    PYTRITON_REQUIREMENT,
    build_once,
    cache_root,
    check_platform,
    pip_download,
)

TRITONSERVER_VERSION = "2.51.0"
TRITON_EXTRA = "seqserve[triton]"
FETCH_COMMAND = "python -m seqserve.triton.launcher fetch"

Progress = Callable[[str], None]


class TritonNotFoundError(SeqserveError):
    """No tritonserver binary: neither nvidia-pytriton installed nor a copy in the cache."""


# --------------------------------------------------------------------------------------------------
# where tritonserver is

@dataclass(frozen=True)
class TritonInstall:
    """Where tritonserver lives: `root` holds pytriton/tritonserver/ and nvidia_pytriton.libs/."""

    root: Path
    source: str = field(default="cache", compare=False)   # "installed" (nvidia-pytriton) or "cache"

    @property
    def server_dir(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root / PYTRITON_LIBS

    def stub(self, version: str | None = None) -> Path:
        """The python backend stub for Python `version` ('3.11'; default: this interpreter's)."""
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"


def default_cache_dir() -> Path:
    """`<seqserve cache>/tritonserver` ($SEQSERVE_CACHE, else $XDG_CACHE_HOME/seqserve, else ~/.cache/seqserve)."""
    return cache_root() / "tritonserver"


def installed_tritonserver() -> TritonInstall | None:
    """The tritonserver of an installed nvidia-pytriton (found without importing it), if any."""
    try:
        dist = importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return None
    install = TritonInstall(Path(str(dist.locate_file(""))), "installed")
    return install if install.binary.is_file() else None


def cached_tritonserver(cache_dir: Path | None = None) -> TritonInstall | None:
    """The copy fetch_tritonserver() extracted into the cache, if complete."""
    target = Path(cache_dir or default_cache_dir()) / TRITONSERVER_VERSION
    install = TritonInstall(target, "cache")
    return install if (target / "manifest.json").is_file() and install.binary.is_file() else None


def find_tritonserver(cache_dir: Path | None = None, *, search_installed: bool = True) -> TritonInstall:
    """tritonserver 2.51.0: an installed nvidia-pytriton's, else the cache's copy. Never downloads.
    TritonNotFoundError (naming the extra and the fetch command) when there is neither."""
    check_platform("tritonserver")
    if search_installed:
        found = installed_tritonserver()
        if found is not None:
            return found
    found = cached_tritonserver(cache_dir)
    if found is not None:
        return found
    where = Path(cache_dir or default_cache_dir()) / TRITONSERVER_VERSION
    fetch = FETCH_COMMAND + (f" --cache-dir {cache_dir}" if cache_dir is not None else "")
    raise TritonNotFoundError(
        f"tritonserver {TRITONSERVER_VERSION} not found: install the optional extra with "
        f"`pip install '{TRITON_EXTRA}'` ({PYTRITON_REQUIREMENT}), or fetch it into seqserve's cache "
        f"without installing anything with `{fetch}` (looked for "
        f"{'an installed nvidia-pytriton and ' if search_installed else ''}{where})")


def fetch_tritonserver(cache_dir: Path | None = None, progress: Progress | None = None) -> TritonInstall:
    """Download the nvidia-pytriton wheel (`pip download`, or one put by hand in `<cache>/wheels/`)
    and extract tritonserver into `<cache>/2.51.0/` once (file-locked, atomic; reused after).
    PackageDownloadError (a SeqserveError) when the wheel cannot be had."""
    check_platform("tritonserver")
    root = Path(cache_dir or default_cache_dir())
    target = root / TRITONSERVER_VERSION

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".downloads-", dir=tmp.parent) as dl:
            wheel = pip_download(PYTRITON_REQUIREMENT, Path(dl), platform_tag=PYTRITON_PLATFORM,
                                 progress=progress, wheels_dir=root / "wheels")
            if progress:
                progress(f"extracting tritonserver from {wheel.name}")
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    name = info.filename
                    if info.is_dir() or not name.startswith(("pytriton/tritonserver/", PYTRITON_LIBS + "/")):
                        continue
                    dest = tmp / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    executable = "/bin/" in name or "/python_backend_stubs/" in name
                    dest.chmod(0o755 if executable else 0o644)
        (tmp / "manifest.json").write_text(json.dumps(
            {"tritonserver": TRITONSERVER_VERSION, "from": wheel.name,
             "build_seconds": round(time.monotonic() - t0, 2)}, indent=2) + "\n")

    build_once(target, build)
    return TritonInstall(target, "cache")


def ensure_tritonserver(cache_dir: Path | None = None, progress: Progress | None = None) -> TritonInstall:
    """find_tritonserver(), else fetch_tritonserver() (for tests and the fetch command; the CLI never fetches)."""
    try:
        return find_tritonserver(cache_dir)
    except TritonNotFoundError:
        return fetch_tritonserver(cache_dir, progress)


# --------------------------------------------------------------------------------------------------
# the Python the python-backend stub runs

@dataclass(frozen=True)
class StubPython:
    """The environment the stub embeds: `bin` goes first on PATH, `libdir` (libpython) on LD_LIBRARY_PATH."""

    bin: Path          # holds the `python3` the stub takes as its home
    version: str       # '3.11': which stub to use
    libdir: str        # sysconfig LIBDIR of that interpreter ('' if unknown)


def _stub_env_module():
    """seqserve.triton.stub_env (the numpy-1 overlay), or None where it does not exist."""
    try:
        from seqserve.triton import stub_env
    except ImportError:
        return None
    return stub_env


def _numpy_version() -> str | None:
    try:
        return importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return None


def stub_python(python_env: Path | None = None) -> StubPython:
    """The stub's environment: `python_env` (a prefix with bin/python3) as given; by default this
    interpreter's, or its numpy-1 overlay when this environment has numpy 2 (TritonNotFoundError
    naming the fetch command when that overlay has not been prepared)."""
    if python_env is None:
        numpy = _numpy_version()
        if numpy is None or int(numpy.split(".")[0]) < 2:
            return StubPython(Path(sys.executable).parent, f"{sys.version_info.major}.{sys.version_info.minor}",
                              sysconfig.get_config_var("LIBDIR") or "")
        stub_env = _stub_env_module()
        overlay = stub_env.find_stub_env() if stub_env is not None else None
        if overlay is None:
            raise TritonNotFoundError(
                f"this environment has numpy {numpy} and tritonserver {TRITONSERVER_VERSION}'s python-backend "
                f"stub is built for numpy 1 (under numpy 2 its tensors are wrong): prepare its numpy-1 "
                f"environment once with `{FETCH_COMMAND}`, or install `{TRITON_EXTRA}` (which pins numpy<2)")
        python_env = Path(overlay)
    python_env = Path(python_env).absolute()
    python3 = python_env / "bin" / "python3"
    if not python3.exists():
        raise SeqserveError(f"python environment {python_env} has no bin/python3")
    probe = ("import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
             "print(sysconfig.get_config_var('LIBDIR') or '')")
    try:
        out = subprocess.run([str(python3), "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SeqserveError(f"cannot run {python3}: {e}") from None
    version, libdir = (out.splitlines() + ["", ""])[:2]
    return StubPython(python3.parent, version.strip(), libdir.strip())


def prepare_stub_python(progress: Progress | None = None) -> Path | None:
    """Prepare the stub's numpy-1 overlay when this environment needs one (a download; for the
    fetch command and tests). Returns its prefix, or None where seqserve.triton.stub_env is absent."""
    stub_env = _stub_env_module()
    return Path(stub_env.prepare_overlay(progress=progress)) if stub_env is not None else None


def server_env(install: TritonInstall, stub: StubPython | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with the stub's bin/ first on PATH and its LIBDIR plus the wheel's
    libraries first on LD_LIBRARY_PATH."""
    stub = stub or stub_python()
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (stub.libdir, str(install.libs), env.get("LD_LIBRARY_PATH"))
                                             if p)
    env["PATH"] = os.pathsep.join(p for p in (str(stub.bin), env.get("PATH")) if p)
    return env


def _stub_for(install: TritonInstall, python_version: str | None) -> Path:
    stub = install.stub(python_version)
    if not stub.is_file():
        stubs = install.server_dir / "python_backend_stubs"
        have = sorted(p.name for p in stubs.iterdir() if p.is_dir()) if stubs.is_dir() else []
        raise SeqserveError(f"tritonserver {TRITONSERVER_VERSION} has no python-backend stub for Python "
                            f"{stub.parent.name} (it has: {', '.join(have) or 'none'})")
    return stub


def prepare_backends(install: TritonInstall, dest: Path, python_version: str | None = None) -> Path:
    """`dest/python/` with the python backend and the stub for `python_version` (default: this
    interpreter's); returns `dest` (tritonserver's --backend-directory)."""
    stub = _stub_for(install, python_version)
    python = Path(dest) / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (*sorted((install.server_dir / "backends" / "python").iterdir()), stub):
        if src.is_file() and not (python / src.name).exists():
            shutil.copy2(src, python / src.name)
    return Path(dest)


def cached_backends(install: TritonInstall, python_version: str | None = None) -> Path:
    """prepare_backends() once per tritonserver and Python version, in `<seqserve cache>/tritonserver/
    backends/` (file-locked, atomic), so a server's own folder holds only its log."""
    stub = _stub_for(install, python_version)
    st = stub.stat()
    key = hashlib.sha1(f"{install.root.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = default_cache_dir() / "backends" / f"py{stub.parent.name}-{key}"

    def build(tmp: Path) -> None:
        prepare_backends(install, tmp, python_version)
        (tmp / "manifest.json").write_text(json.dumps({"from": str(install.root), "stub": str(stub)}) + "\n")

    return build_once(target, build)


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """Shared libraries `ldd` cannot find for `binary` under `env` ([] when ldd is unavailable)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^\s*(\S+)\s+=>\s+not found", out, re.MULTILINE)
