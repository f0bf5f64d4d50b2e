"""The Python environment Triton's python-backend stub runs our model.py in.

The stub is an embedded Python that ignores PYTHONPATH: it takes the first `python3` on PATH as
its home, so a virtual environment whose bin/ comes first on PATH becomes its environment.

Trap (measured with tritonserver 2.51.0 from nvidia-pytriton 0.7.0): the stub is compiled for the
numpy 1 ABI. Under numpy 2 every output tensor a model builds with `pb_utils.Tensor` reaches the
client EMPTY (HTTP: `binary_data_size: 0`; JSON: "output tensor shape does not match size of
output") — inputs still read fine, so models load and look healthy. nvidia-pytriton itself pins
numpy<2 for that reason.

So the stub gets:
- this environment as it is, when its numpy is 1.x (e.g. installed with `seqserve[triton]`);
- otherwise an OVERLAY: a small venv of the same interpreter holding only numpy 1.26, whose .pth
  file appends this environment's site-packages after its own — numpy 1 shadows numpy 2 and every
  other package (seqserve, onnxruntime, tritonclient) is this environment's. Extensions built
  against numpy 2 (onnxruntime's) run on numpy 1, which numpy 2's ABI promises.
  `prepare_overlay()` builds it once in the seqserve cache (a download: `seqserve serve --engine
  triton` never does that itself; `python -m seqserve.triton.launcher fetch` and the tests do).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from seqserve.errors import SeqserveError

NUMPY_FOR_STUB = "numpy==1.26.4"
_MARKER = "seqserve-overlay.txt"


def _numpy_major() -> int:
    try:
        return int(importlib.metadata.version("numpy").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def needs_overlay() -> bool:
    return _numpy_major() >= 2


def overlay_dir(cache: Path | None = None) -> Path:
    from seqserve.tools.perf_analyzer import cache_root

    tag = f"py{sys.version_info.major}.{sys.version_info.minor}-{Path(sys.prefix).resolve().as_posix().strip('/').replace('/', '_')}"
    return (cache or cache_root()) / "triton-stub-env" / tag


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def find_stub_env(cache: Path | None = None) -> Path | None:
    """The environment (a prefix whose bin/ goes first on PATH) for the stub; None when the overlay
    this environment needs has not been prepared."""
    if not needs_overlay():
        return Path(sys.prefix)
    d = overlay_dir(cache)
    return d if (d / _MARKER).is_file() else None


def prepare_overlay(cache: Path | None = None, progress=None) -> Path:
    """Build the numpy-1 overlay venv once (downloads numpy 1.26.4 with pip); returns its prefix.
    Returns sys.prefix unchanged when this environment's numpy is already 1.x."""
    from seqserve.tools.perf_analyzer import PackageDownloadError, build_once

    if not needs_overlay():
        return Path(sys.prefix)
    target = overlay_dir(cache)

    def build(tmp: Path) -> None:
        if progress:
            progress(f"preparing the python-backend stub environment ({NUMPY_FOR_STUB} over {sys.prefix})")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True,
                       capture_output=True, text=True)
        sp = _site_packages(tmp)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-input", "--no-deps", "--only-binary=:all:", "--target", str(sp),
                               NUMPY_FOR_STUB], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PackageDownloadError(f"could not install {NUMPY_FOR_STUB} for tritonserver's python-backend "
                                       f"stub: {(proc.stdout + proc.stderr).strip()[-400:]}")
        # Everything else from this environment, after the overlay's own numpy; addsitedir also
        # runs this environment's .pth files (an editable seqserve install is one).
        mains = [p for p in site.getsitepackages() if Path(p).is_dir()]
        (sp / "zz-seqserve-main-env.pth").write_text(
            "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in mains) + "\n")
        (tmp / _MARKER).write_text(f"{NUMPY_FOR_STUB} over {sys.prefix}\n")

    # The venv's pyvenv.cfg and bin/ links name the final path only through `home`, so building in
    # a temporary sibling and renaming is safe.
    try:
        return build_once(target, build, marker=_MARKER)
    except subprocess.CalledProcessError as e:
        raise SeqserveError(f"could not create the stub environment in {target}: {e.stderr or e}") from None


def remove_overlay(cache: Path | None = None) -> None:
    shutil.rmtree(overlay_dir(cache), ignore_errors=True)
