"""seqserve.triton.launcher and `seqserve serve --engine triton`, against a real tritonserver 2.51."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers import assert_one_line_error, run
from serving import start_server
from tritonserver_fixture import tritonserver_or_skip

from seqserve.triton.launcher import (
    SHM_DIR,
    SHM_PREFIX,
    TritonConfig,
    TritonNotFoundError,
    TritonStartError,
    find_tritonserver,
    main,
    running,
    start,
)

# A python-backend model written by hand: adds 1, and proves the stub runs in this test's environment.
ADD_CONFIG = """\
name: "add"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_INT64 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ADD_MODEL = """\
import triton_python_backend_utils as pb_utils

import seqserve.errors  # noqa: F401 - the stub runs in the test's virtual environment


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() + 1)]) for r in requests]
"""

# Loads a corrupt ONNX file in initialize(): what a damaged model.onnx does to a real served model.
CORRUPT_MODEL = """\
import os

import onnxruntime


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        raise RuntimeError("never loaded")
"""


def _write_repo(root: Path) -> Path:
    (root / "add" / "1").mkdir(parents=True)
    (root / "add" / "config.pbtxt").write_text(ADD_CONFIG)
    (root / "add" / "1" / "model.py").write_text(ADD_MODEL)
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "config.pbtxt").write_text(ADD_CONFIG.replace('"add"', '"corrupt"'))
    (root / "corrupt" / "1" / "model.py").write_text(CORRUPT_MODEL)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08\x07 this is not an ONNX protobuf \xff\xfe" * 4)
    (root / "badconfig" / "1").mkdir(parents=True)
    (root / "badconfig" / "config.pbtxt").write_text('name: "badconfig"\nbackend: "python"\nmax_batch_size: [ oops\n')
    (root / "badconfig" / "1" / "model.py").write_text(ADD_MODEL)
    return root


def _add_one_http(address: str, x: np.ndarray) -> np.ndarray:
    c = th.InferenceServerClient(address)
    try:
        i = th.InferInput("x", list(x.shape), "INT64")
        i.set_data_from_numpy(x)
        return c.infer("add", [i]).as_numpy("y")
    finally:
        c.close()   # tritonserver 2.51's SIGTERM waits for open keep-alive connections


def _add_one_grpc(address: str, x: np.ndarray) -> np.ndarray:
    c = tg.InferenceServerClient(address)
    try:
        i = tg.InferInput("x", list(x.shape), "INT64")
        i.set_data_from_numpy(x)
        return c.infer("add", [i]).as_numpy("y")
    finally:
        c.close()


def _processes_using(path: Path) -> list[int]:
    """Pids whose command line mentions `path` (tritonserver, its stubs: they name model.py)."""
    needle = str(path).encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _our_regions(cli_pid: int) -> list[Path]:
    return sorted(SHM_DIR.glob(f"{SHM_PREFIX}seqserve{cli_pid}x*"))


# --------------------------------------------------------------------------------------------------
# no tritonserver: a clear error, nothing downloaded

def test_missing_tritonserver_names_the_extra_and_the_fetch_command(tmp_path):
    empty = tmp_path / "cache"
    with pytest.raises(TritonNotFoundError) as info:
        find_tritonserver(empty, search_installed=False)
    msg = str(info.value)
    assert "\n" not in msg
    for words in ("pip install 'seqserve[triton]'", "nvidia-pytriton==0.7.0",
                  f"python -m seqserve.triton.launcher fetch --cache-dir {empty}", str(empty / "2.51.0")):
        assert words in msg, msg
    assert not empty.exists(), "looking must not create or download anything"


def _pytriton_installed() -> bool:
    try:
        importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_where_command_without_tritonserver(tmp_path, capsys):
    if _pytriton_installed():
        pytest.skip("nvidia-pytriton is installed here: its tritonserver is always found")
    assert main(["where", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "seqserve[triton]" in capsys.readouterr().err


def test_cli_without_tritonserver_fails_with_one_line_naming_the_extra(tmp_path, monkeypatch):
    if _pytriton_installed():
        pytest.skip("nvidia-pytriton is installed here: its tritonserver is always found")
    monkeypatch.setenv("SEQSERVE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SEQSERVE_API_KEY", raising=False)
    repo = _write_repo(tmp_path / "repo")
    res = run("serve", "--engine", "triton", "--repository", repo, "--http-port", "0")
    assert_one_line_error(res, "seqserve[triton]", "nvidia-pytriton==0.7.0", "python -m seqserve.triton.launcher fetch")
    assert not (tmp_path / "empty-cache").exists()


def test_cli_refuses_an_api_key_with_triton(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQSERVE_API_KEY", raising=False)
    res = run("serve", "--engine", "triton", "--repository", tmp_path, "--api-key", "k")
    assert_one_line_error(res, "API-key")


# --------------------------------------------------------------------------------------------------
# the library against a real tritonserver

@pytest.mark.slow
def test_library_reports_each_model_and_the_good_one_serves(tmp_path):
    install = tritonserver_or_skip()
    repo = _write_repo(tmp_path / "repo")
    config = TritonConfig(repository=repo, work_dir=tmp_path / "work", exit_timeout_s=5)
    with running(config, install) as server:
        assert server.live() and set(server.ports) == {"http", "grpc", "metrics"}
        states = {m.name: m for m in server.models()}
        assert states["add"].state == "READY" and states["add"].backend == "python"
        assert states["corrupt"].state == "UNAVAILABLE"
        assert "INVALID_PROTOBUF" in states["corrupt"].summary and "\n" not in states["corrupt"].summary
        # a config Triton cannot parse is not in the index with a reason: it comes from the log
        assert states["badconfig"].state == "UNAVAILABLE"
        assert "failed to read text proto" in states["badconfig"].reason and "badconfig" in states["badconfig"].reason
        x = np.arange(6, dtype=np.int64).reshape(2, 3)
        np.testing.assert_array_equal(_add_one_http(f"127.0.0.1:{server.ports['http']}", x), x + 1)
        np.testing.assert_array_equal(_add_one_grpc(f"127.0.0.1:{server.ports['grpc']}", x), x + 1)
        regions = server.shm_regions()
        assert regions and all(r.name.startswith(server.shm_prefix) for r in regions)
    assert server.proc.returncode == 0
    assert server.shm_regions() == [] and _processes_using(repo) == []
    assert (tmp_path / "work").is_dir(), "a work folder given by the caller is kept (it holds the log)"


@pytest.mark.slow
def test_library_start_errors_carry_the_log_tail(tmp_path):
    install = tritonserver_or_skip()
    repo = _write_repo(tmp_path / "repo")
    # Triton's own default: one failed model stops the server
    with pytest.raises(TritonStartError) as info:
        start(TritonConfig(repository=repo, exit_on_error=True, exit_timeout_s=2), install)
    msg = str(info.value)
    assert "exited with" in msg and "tritonserver log (tail)" in msg and "failed to load all models" in msg, msg
    assert "INVALID_PROTOBUF" in msg, msg
    # a port the caller chose that is taken: no retry on another port, the reason in the error
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(TritonStartError, match="already in use"):
            start(TritonConfig(repository=repo, models=("add",), http_port=taken.getsockname()[1]), install)
    assert _processes_using(repo) == []


# --------------------------------------------------------------------------------------------------
# seqserve serve --engine triton, as a real process

@pytest.mark.slow
def test_serve_engine_triton_reports_broken_models_serves_the_rest_and_stops_cleanly(tmp_path):
    tritonserver_or_skip()
    repo = _write_repo(tmp_path / "repo")
    server = start_server(repo, tmp_path / "logs", "--engine", "triton", threads=None, timeout=180,
                          env={"COLUMNS": "400"})
    try:
        out = server.log_path.read_text()
        rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") >= 4}
        assert "READY" in rows["add"] and "python" in rows["add"], out
        assert "UNAVAILABLE" in rows["corrupt"] and "INVALID_PROTOBUF" in rows["corrupt"], out
        assert "UNAVAILABLE" in rows["badconfig"] and "failed to read text proto" in rows["badconfig"], out
        x = np.array([[5, 6, 7]], dtype=np.int64)
        np.testing.assert_array_equal(_add_one_http(server.http_address, x), x + 1)
        np.testing.assert_array_equal(_add_one_grpc(server.grpc_address, x), x + 1)
        assert server.request("GET", "/v2/health/ready")[0] == 400     # strict readiness, as the embedded server
        assert server.request("GET", "/metrics", port=server.metrics_port)[0] == 200
        assert _our_regions(server.pid), "the python backend's regions should carry this server's prefix"
        assert len(_processes_using(repo)) >= 2                       # tritonserver and the stub of `add`
    finally:
        rc = server.stop(60)
    assert rc == 0, server.log_tail()
    out = server.log_path.read_text()
    assert out.rstrip().endswith("server stopped"), out[-2000:]
    assert "Traceback" not in out
    assert _our_regions(server.pid) == []
    assert _processes_using(repo) == []


@pytest.mark.slow
def test_serve_engine_triton_loads_only_the_named_models_and_forwards_ctrl_c(tmp_path):
    tritonserver_or_skip()
    repo = _write_repo(tmp_path / "repo")
    server = start_server(repo, tmp_path / "logs", "--engine", "triton", "--model", "add", "--grpc-port", "-1",
                          "--metrics-port", "-1", threads=None, timeout=180)
    try:
        assert (server.grpc_port, server.metrics_port) == (-1, -1)
        out = server.log_path.read_text()
        assert [ln.split("│")[1].strip() for ln in out.splitlines() if ln.count("│") >= 4] == ["add"], out
        np.testing.assert_array_equal(_add_one_http(server.http_address, np.array([[1]])), [[2]])
        assert server.request("GET", "/v2/health/ready")[0] == 200
        os.kill(server.pid, signal.SIGINT)                   # Ctrl-C: tritonserver is in its own session
        rc = server.proc.wait(60)
    finally:
        if server.alive():
            server.stop(60)
    assert rc == 0, server.log_tail()
    assert _our_regions(server.pid) == [] and _processes_using(repo) == []


@pytest.mark.slow
def test_a_killed_serve_leaves_no_tritonserver_behind(tmp_path):
    tritonserver_or_skip()
    repo = _write_repo(tmp_path / "repo")
    log = tmp_path / "triton.log"   # so the work folder is not a temporary one, which a SIGKILL would leak
    server = start_server(repo, tmp_path / "logs", "--engine", "triton", "--model", "add", "--triton-log", log,
                          threads=None, timeout=180)
    try:
        assert _processes_using(repo) and "successfully loaded 'add'" in log.read_text()
        os.kill(server.pid, signal.SIGKILL)      # no chance to clean up: tritonserver gets SIGTERM from the kernel
        server.proc.wait(10)
        deadline = time.monotonic() + 60
        while _processes_using(repo) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_using(repo) == []
        assert _our_regions(server.pid) == []    # a clean tritonserver exit removes its regions itself
    finally:
        for pid in _processes_using(repo):       # only if the assertion above failed
            os.kill(pid, signal.SIGKILL)
