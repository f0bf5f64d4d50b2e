"""Triton's perf_analyzer, fetched into a cache without installing anything, run with its CSV parsed.

Where it comes from (PyPI's `perf-analyzer` package is an empty placeholder):
- the binary: member `tritonclient-2.51.0.data/data/bin/perf_analyzer` of the manylinux
  `tritonclient==2.51.0` wheel (`pip download`, that one member extracted);
- the shared libraries it needs that the system lacks (libb64.so.0d, libcudart.so.12, whatever else
  `ldd` reports missing): the `nvidia_pytriton.libs/` folder of `nvidia-pytriton==0.7.0`, where
  auditwheel stored them under hashed names (libb64-98cb6333.so.0d). They are taken from an installed
  nvidia-pytriton when there is one, else from its downloaded wheel, copied into `<cache>/lib` and
  linked there under their plain sonames; the binary runs with that folder on LD_LIBRARY_PATH.

Cache layout: `<cache_dir>/2.51.0/{bin/perf_analyzer, lib/, manifest.json}`, cache_dir defaulting
to `$SEQSERVE_CACHE/perf_analyzer`, else `$XDG_CACHE_HOME/seqserve/perf_analyzer`, else
`~/.cache/seqserve/perf_analyzer`. The version folder is built in a temporary sibling and renamed
into place under an exclusive file lock (fcntl.flock), so a failed or concurrent build never leaves
a half-built cache; manifest.json is written last and marks a complete build. Wheels put by hand in
`<cache_dir>/wheels/` are used instead of downloading (for machines without a package index).

`PerfAnalyzer.run(args, timeout)` adds `-f <tmp>/report.csv --verbose-csv` unless the caller gave
`-f`, and returns one dict per load level, in increasing load order (perf_analyzer orders its CSV by
throughput, so a saturated level can come first), with perf_analyzer's own column names (latencies
in microseconds). Columns written by 2.51.0 with --verbose-csv: Concurrency (or Request Rate),
Inferences/Second, Client Send, Network+Server Send/Recv, Server Queue, Server Compute Input,
Server Compute Infer, Server Compute Output, Client Recv, p50 latency, p90 latency, p95 latency,
p99 latency, Avg latency, request/response, response wait (+ GPU columns with --collect-metrics).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import importlib.metadata
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seqserve.errors import SeqserveError

PERF_ANALYZER_VERSION = "2.51.0"
TRITONCLIENT_REQUIREMENT = f"tritonclient=={PERF_ANALYZER_VERSION}"
TRITONCLIENT_PLATFORM = "manylinux1_x86_64"
PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
PYTRITON_PLATFORM = "manylinux_2_35_x86_64"
PYTRITON_LIBS = "nvidia_pytriton.libs"
_BINARY_MEMBER = f"tritonclient-{PERF_ANALYZER_VERSION}.data/data/bin/perf_analyzer"
# Not found on a machine without CUDA, whatever ldd says (libcudart is needed even on CPU-only runs).
_ALWAYS_NEEDED = ("libb64.so.0d", "libcudart.so.12")
_MANIFEST = "manifest.json"

Progress = Callable[[str], None]
Value = int | float | str | None


# --------------------------------------------------------------------------------------------------
# the cache: where, locking, atomic builds, downloads (also used by the tests' tritonserver fixture)

def cache_root() -> Path:
    """seqserve's download cache: $SEQSERVE_CACHE, else $XDG_CACHE_HOME/seqserve, else ~/.cache/seqserve."""
    env = os.environ.get("SEQSERVE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "seqserve"


def check_platform(what: str = "perf_analyzer") -> None:
    """SeqserveError unless this is Linux on x86_64 (the only platform the binaries exist for)."""
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise SeqserveError(
            f"{what} {PERF_ANALYZER_VERSION} exists only as a Linux x86_64 binary and this is "
            f"{platform.system()} {platform.machine()}: run it from a Linux x86_64 machine "
            f"(or NVIDIA's tritonserver SDK container)")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive fcntl.flock on `path` (created if missing); blocks other processes AND threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(target: Path, build: Callable[[Path], None], marker: str = _MANIFEST) -> Path:
    """Make folder `target` once: `build(tmp)` fills a temporary sibling (it must write `marker` last),
    which is renamed into place. Under a file lock, so concurrent callers build it once and wait."""
    if (target / marker).is_file():
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with file_lock(parent / f".{target.name}.lock"):
        if (target / marker).is_file():  # built by whoever held the lock before us
            return target
        for stale in parent.glob(f".{target.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        try:
            build(tmp)
            if not (tmp / marker).is_file():
                raise RuntimeError(f"build of {target} wrote no {marker}")
            if target.exists():  # an incomplete folder not made by this function
                shutil.rmtree(target)
            tmp.chmod(0o755)  # mkdtemp made it 0700
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


class PackageDownloadError(SeqserveError):
    """`pip download` of a wheel failed (no index, no network, package missing from the mirror)."""


def _last_lines(text: str, n: int = 6) -> str:
    """The last `n` non-blank lines on one line, leaving out the usage text an option error appends."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    usage = next((i for i, ln in enumerate(lines) if ln.startswith("Usage:")), None)
    if usage:  # "Error: ..." comes before perf_analyzer's 200-line usage text
        lines = lines[:usage]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _wheel_prefix(requirement: str) -> str:
    """'nvidia-pytriton==0.7.0' -> 'nvidia_pytriton-0.7.0-' (how its wheel file name starts)."""
    name, _, version = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def pip_download(requirement: str, dest: Path, *, platform_tag: str | None = None,
                 progress: Progress | None = None, wheels_dir: Path | None = None,
                 timeout: float = 900.0) -> Path:
    """The wheel of `requirement` ('name==version'): from `wheels_dir` if one was put there by hand,
    else `python -m pip download --no-deps --only-binary=:all: [--platform TAG]` into `dest`."""
    prefix = _wheel_prefix(requirement)
    if wheels_dir is not None and wheels_dir.is_dir():
        found = sorted(p for p in wheels_dir.glob("*.whl") if p.name.lower().startswith(prefix))
        if found:
            return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest)]
    if platform_tag:
        cmd += ["--platform", platform_tag]
    cmd.append(requirement)
    manual = ["pip", "download", "--no-deps", "--only-binary=:all:",
              *(["--platform", platform_tag] if platform_tag else []), requirement,
              "-d", str(wheels_dir) if wheels_dir is not None else "DIR"]
    by_hand = (f"; to do it by hand, run `{shlex.join(manual)}` where a package index is reachable"
               + (" (a wheel found there is used instead of downloading)" if wheels_dir is not None else ""))
    if progress:
        progress(f"downloading {requirement} with pip")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PackageDownloadError(f"`{shlex.join(cmd)}` did not finish within {timeout:g} s{by_hand}") from None
    except OSError as e:
        raise PackageDownloadError(f"could not run `{shlex.join(cmd)}`: {e}{by_hand}") from None
    if proc.returncode != 0:
        raise PackageDownloadError(
            f"could not download {requirement}: `{shlex.join(cmd)}` exited with {proc.returncode} "
            f"({_last_lines(proc.stdout + proc.stderr, 3)}){by_hand}")
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix))
    if not found:
        raise PackageDownloadError(f"`{shlex.join(cmd)}` succeeded but left no {prefix}*.whl in {dest}{by_hand}")
    return found[0]


# --------------------------------------------------------------------------------------------------
# building the perf_analyzer cache

def _missing_libs(path: Path, lib_dir: Path) -> set[str]:
    """Sonames `ldd` cannot resolve for `path` with `lib_dir` on LD_LIBRARY_PATH (empty without ldd)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib_dir))
    try:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {m.group(1) for m in re.finditer(r"^\s*(\S+)\s+=>\s+not found", out, re.MULTILINE)}


def _hashed_name_pattern(soname: str) -> re.Pattern[str]:
    """auditwheel's renaming: 'libcudart.so.12' -> 'libcudart-<8 hex>.so.12[.6.77]',
    'libldap-2.5.so.0' -> 'libldap-2-<8 hex>.5.so.0[.1.13]' (hash inserted before the first dot)."""
    head, dot, rest = soname.partition(".")
    return re.compile(re.escape(head) + r"-[0-9a-f]{8}" + re.escape(dot + rest) + r"(\.[0-9A-Za-z]+)*$")


class _LibSource:
    """Shared libraries by file name from a folder, or from a wheel's nvidia_pytriton.libs/."""

    def __init__(self, where: str, folder: Path | None = None, wheel: Path | None = None):
        self.where, self.folder, self.wheel = where, folder, wheel
        if folder is not None:
            self._files = {p.name: p for p in folder.iterdir() if p.is_file()}
        else:
            with zipfile.ZipFile(wheel) as z:
                self._files = {Path(n).name: n for n in z.namelist()
                               if n.startswith(PYTRITON_LIBS + "/") and not n.endswith("/")}

    def find(self, soname: str) -> str | None:
        if soname in self._files:  # a hashed name, needed by another hashed library
            return soname
        pat = _hashed_name_pattern(soname)
        hits = sorted(n for n in self._files if pat.match(n))
        return hits[0] if hits else None

    def copy(self, name: str, dest: Path) -> None:
        if self.folder is not None:
            shutil.copyfile(self._files[name], dest)
        else:
            with zipfile.ZipFile(self.wheel) as z, z.open(self._files[name]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        dest.chmod(0o755)


def installed_pytriton_libs() -> Path | None:
    """nvidia_pytriton.libs/ of an installed nvidia-pytriton, if any (found without importing it)."""
    try:
        dist = importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(PYTRITON_LIBS)))
    return folder if folder.is_dir() else None


def _build(tmp: Path, downloads: Path, wheels_dir: Path, progress: Progress | None) -> None:
    t0 = time.monotonic()
    bin_dir, lib_dir = tmp / "bin", tmp / "lib"
    bin_dir.mkdir()
    lib_dir.mkdir()
    binary = bin_dir / "perf_analyzer"

    wheel = pip_download(TRITONCLIENT_REQUIREMENT, downloads, platform_tag=TRITONCLIENT_PLATFORM,
                         progress=progress, wheels_dir=wheels_dir)
    if progress:
        progress(f"extracting perf_analyzer from {wheel.name}")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(_BINARY_MEMBER) as src, open(binary, "wb") as out:
            shutil.copyfileobj(src, out)
    except (KeyError, zipfile.BadZipFile) as e:
        raise SeqserveError(f"{wheel.name} holds no usable {_BINARY_MEMBER} ({e})") from None
    binary.chmod(0o755)

    sources: list[_LibSource] = []
    installed = installed_pytriton_libs()
    if installed is not None:
        sources.append(_LibSource(f"installed {installed}", folder=installed))

    def source_for(soname: str) -> tuple[_LibSource, str] | None:
        for s in sources:
            name = s.find(soname)
            if name:
                return s, name
        if not any(s.wheel for s in sources):  # download the wheel only when something is missing
            w = pip_download(PYTRITON_REQUIREMENT, downloads, platform_tag=PYTRITON_PLATFORM,
                             progress=progress, wheels_dir=wheels_dir)
            sources.append(_LibSource(w.name, wheel=w))
            name = sources[-1].find(soname)
            if name:
                return sources[-1], name
        return None

    libs: dict[str, str] = {}  # soname (as NEEDED) -> file in lib/
    origins: set[str] = set()
    unresolved: set[str] = set()
    wanted = set(_ALWAYS_NEEDED) | _missing_libs(binary, lib_dir)
    for _ in range(20):  # follow the copied libraries' own hashed dependencies
        todo = sorted(wanted - set(libs) - unresolved)
        if not todo:
            break
        for soname in todo:
            hit = source_for(soname)
            if hit is None:
                unresolved.add(soname)
                continue
            src, name = hit
            if not (lib_dir / name).exists():
                src.copy(name, lib_dir / name)
            if soname != name:
                (lib_dir / soname).symlink_to(name)
            libs[soname] = name
            origins.add(src.where)
        wanted = _missing_libs(binary, lib_dir)
        for name in set(libs.values()):
            wanted |= _missing_libs(lib_dir / name, lib_dir)
    still_missing = sorted(_missing_libs(binary, lib_dir))
    if still_missing:
        raise SeqserveError(
            f"perf_analyzer needs {', '.join(still_missing)}, which neither this system nor "
            f"{PYTRITON_REQUIREMENT}'s {PYTRITON_LIBS}/ provides")

    pa = PerfAnalyzer(binary, lib_dir)
    try:
        version = pa.version()
    except SeqserveError as e:
        raise SeqserveError(f"the extracted perf_analyzer does not run: {e}") from None
    if PERF_ANALYZER_VERSION not in version:
        raise SeqserveError(f"the extracted perf_analyzer reports {version!r}, not {PERF_ANALYZER_VERSION}")
    manifest = {
        "perf_analyzer": PERF_ANALYZER_VERSION, "version_output": version, "from": wheel.name,
        "libs": libs, "libs_from": sorted(origins),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(time.monotonic() - t0, 2),
    }
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _complete(folder: Path) -> PerfAnalyzer | None:
    binary = folder / "bin" / "perf_analyzer"
    if (folder / _MANIFEST).is_file() and binary.is_file() and os.access(binary, os.X_OK):
        return PerfAnalyzer(binary, folder / "lib")
    return None


def ensure_perf_analyzer(cache_dir: Path | None = None, progress: Progress | None = None) -> PerfAnalyzer:
    """perf_analyzer 2.51.0 from the cache, built there first if missing (a download of ~14 MB, plus
    ~55 MB when nvidia-pytriton is not installed; a few seconds from a nearby mirror).

    `progress(message)` is called before each slow step. Raises SeqserveError off Linux x86_64, when a
    download fails (PackageDownloadError, saying how to fetch the wheel by hand), or when the binary
    does not run."""
    check_platform()
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "perf_analyzer"
    target = root / PERF_ANALYZER_VERSION
    found = _complete(target)
    if found is not None:
        return found

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".downloads-", dir=tmp.parent) as downloads:
            _build(tmp, Path(downloads), root / "wheels", progress)

    build_once(target, build)
    found = _complete(target)
    if found is None:  # pragma: no cover - build_once guarantees the manifest
        raise SeqserveError(f"{target} is incomplete after building it; delete it and retry")
    return found


# --------------------------------------------------------------------------------------------------
# running it

def _value(cell: str) -> Value:
    s = cell.strip()
    if not s:
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def parse_csv_report(text: str) -> list[dict[str, Value]]:
    """The rows of perf_analyzer's `-f` CSV: one dict per load level in increasing load order (its CSV
    is ordered by throughput), header names as keys, numbers as int/float, empty cells as None.
    Stops at the first blank line (sections that may follow)."""
    header: list[str] | None = None
    rows: list[dict[str, Value]] = []
    for rec in csv.reader(io.StringIO(text)):
        if not any(c.strip() for c in rec):
            if header is not None and rows:
                break
            continue
        if header is None:
            header = [c.strip() for c in rec]
            continue
        if not isinstance(_value(rec[0]), (int, float)):
            break
        rows.append({h: _value(v) for h, v in zip(header, rec)})
    if header:  # perf_analyzer writes them sorted by throughput (measured); give them in load order
        rows.sort(key=lambda r: r[header[0]])
    return rows


def _report_path(args: Sequence[str]) -> Path | None:
    for i, a in enumerate(args):
        if a == "-f" and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("-f") and len(a) > 2:
            return Path(a[2:])
    return None


_UNSTABLE = re.compile(r"Failed to obtain stable measurement within \d+ measurement windows for "
                       r"(?:concurrency|request rate) ([0-9.]+)")


def unstable_levels(stdout: str) -> list[int | float]:
    """Load levels perf_analyzer gave up on: it prints "Failed to obtain stable measurement within 10
    measurement windows for concurrency 2", leaves that level out of the CSV and still exits 0 when an
    earlier level was measured (2 when none was)."""
    return [v for v in (_value(m.group(1).rstrip(".")) for m in _UNSTABLE.finditer(stdout))
            if isinstance(v, (int, float))]


@dataclass(frozen=True)
class PerfResult:
    """One perf_analyzer run: `rows` (one per load level, perf_analyzer's CSV column names, latencies
    in microseconds), `stdout` (its whole console output, stderr included), the command, the CSV, and
    `unstable`: the load levels that did not stabilize, which have no row."""

    rows: list[dict[str, Value]]
    stdout: str
    command: list[str]
    csv: str
    unstable: list[int | float] = field(default_factory=list)

    @property
    def load_column(self) -> str:
        """'Concurrency' or 'Request Rate': what the rows vary."""
        return next(iter(self.rows[0])) if self.rows else ""


@dataclass(frozen=True)
class PerfAnalyzer:
    """A runnable perf_analyzer: the binary and the folder that must be on LD_LIBRARY_PATH."""

    binary: Path
    lib_dir: Path

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with lib_dir first on LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = str(self.lib_dir) + (os.pathsep + old if old else "")
        return env

    def command(self, args: Sequence[str]) -> list[str]:
        return [str(self.binary), *[str(a) for a in args]]

    def _run(self, cmd: list[str], timeout: float) -> tuple[int, str]:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", env=self.env(), start_new_session=True)
        except OSError as e:
            raise SeqserveError(f"could not start {cmd[0]}: {e}") from None
        try:
            out, _ = proc.communicate(timeout=timeout)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            if isinstance(e, subprocess.TimeoutExpired):
                raise SeqserveError(f"perf_analyzer did not finish within {timeout:g} s and was killed "
                                    f"(`{shlex.join(cmd)}`); last output: {_last_lines(out)}") from None
            raise
        return proc.returncode, out

    def version(self, timeout: float = 30.0) -> str:
        """'Perf Analyzer Version 2.51.0 (commit unknown)' (it prints that on stderr)."""
        rc, out = self._run(self.command(["--version"]), timeout)
        if rc != 0:
            raise SeqserveError(f"`{self.binary} --version` exited with {rc}: {_last_lines(out)}")
        return out.strip()

    def run(self, args: Sequence[str], timeout: float) -> PerfResult:
        """Run perf_analyzer with `args` (e.g. -m MODEL -u 127.0.0.1:8000 -i grpc --concurrency-range 1:4)
        and parse its CSV report. Adds `-f <tmp>.csv` unless `args` has -f, and `--verbose-csv`.
        SeqserveError (with its last output lines) when it fails, times out or reports no rows."""
        args = [str(a) for a in args]
        with tempfile.TemporaryDirectory(prefix="seqserve-perf-") as tmp:
            report = _report_path(args)
            extra: list[str] = []
            if report is None:
                report = Path(tmp) / "report.csv"
                extra += ["-f", str(report)]
            if "--verbose-csv" not in args:
                extra.append("--verbose-csv")
            cmd = self.command(args + extra)
            rc, out = self._run(cmd, timeout)
            if rc != 0:
                hint = ""
                if "Failed to obtain stable measurement" in out:
                    hint = (" (the throughput/latency did not settle within --max-trials windows: give a "
                            "longer --measurement-interval, a larger --stability-percentage, or "
                            "--request-count)")
                raise SeqserveError(f"perf_analyzer exited with {rc}{hint}: {_last_lines(out)} "
                                    f"(command: {shlex.join(cmd)})")
            text = report.read_text() if report.is_file() else ""
        rows = parse_csv_report(text)
        if not rows:
            raise SeqserveError(f"perf_analyzer wrote no result rows to {report}: {_last_lines(out)}")
        return PerfResult(rows=rows, stdout=out, command=cmd, csv=text, unstable=unstable_levels(out))
