"""seqserve.tools.perf_analyzer: the cached perf_analyzer binary, and runs against a real tritonserver."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tritonserver_fixture import (
    process_group_alive,
    shm_regions,
    tritonserver,
    tritonserver_or_skip,
)

import seqserve.tools.perf_analyzer as pa_mod
from seqserve.errors import SeqserveError
from seqserve.tools import PerfAnalyzer, ensure_perf_analyzer
from seqserve.tools.perf_analyzer import PackageDownloadError, parse_csv_report

# What perf_analyzer 2.51.0 wrote with -f and --verbose-csv against tritonserver 2.51.0 (measured).
CSV_2_51 = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,\
Avg latency,request/response,response wait
1,3100.93,1,149,21,9,79,58,0,291,378,521,680,320,1,312
2,4665.93,1,140,96,9,105,71,0,390,568,641,875,426,1,417
"""


def _counting_downloads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = pa_mod.pip_download

    def counting(requirement, *a, **kw):
        calls.append(requirement)
        return real(requirement, *a, **kw)

    monkeypatch.setattr(pa_mod, "pip_download", counting)
    return calls


def _or_skip(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except PackageDownloadError as e:
        pytest.skip(f"the wheels perf_analyzer comes from cannot be downloaded here: {e}")


def test_cache_is_built_once_shared_by_concurrent_callers_and_reused(tmp_path, monkeypatch):
    calls = _counting_downloads(monkeypatch)
    cache = tmp_path / "pa"
    barrier = threading.Barrier(2)
    results: list[PerfAnalyzer] = []
    errors: list[BaseException] = []

    def call():
        barrier.wait()
        try:
            results.append(ensure_perf_analyzer(cache))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    build_s = time.monotonic() - t0
    if errors and isinstance(errors[0], PackageDownloadError):
        pytest.skip(f"the wheels perf_analyzer comes from cannot be downloaded here: {errors[0]}")
    assert not errors, errors
    assert len(results) == 2 and results[0] == results[1]
    assert calls.count(pa_mod.TRITONCLIENT_REQUIREMENT) == 1, calls  # one build for both callers

    pa = results[0]
    assert pa.binary == cache / "2.51.0" / "bin" / "perf_analyzer"
    assert (pa.lib_dir / "libb64.so.0d").exists() and (pa.lib_dir / "libcudart.so.12").exists()
    assert "2.51.0" in pa.version()
    manifest = json.loads((cache / "2.51.0" / "manifest.json").read_text())
    assert manifest["perf_analyzer"] == "2.51.0"
    # nothing half-built or temporary left beside it
    assert sorted(p.name for p in cache.iterdir()) == [".2.51.0.lock", "2.51.0"]

    calls.clear()
    t0 = time.monotonic()
    again = ensure_perf_analyzer(cache)
    reuse_s = time.monotonic() - t0
    assert again == pa and calls == []
    assert reuse_s < 0.5 and reuse_s < build_s


def test_a_failed_download_leaves_no_cache_and_says_how_to_do_it_by_hand(tmp_path, monkeypatch):
    def failing(requirement, dest, **kw):
        raise PackageDownloadError(f"could not download {requirement}: (test); to do it by hand, run `pip download`")

    monkeypatch.setattr(pa_mod, "pip_download", failing)
    with pytest.raises(SeqserveError, match="by hand"):
        ensure_perf_analyzer(tmp_path / "pa")
    assert [p.name for p in (tmp_path / "pa").iterdir()] == [".2.51.0.lock"]


def test_pip_download_failure_is_a_one_line_error(tmp_path):
    with pytest.raises(PackageDownloadError) as info:
        pa_mod.pip_download("seqserve-no-such-package-xyz==0.0.1", tmp_path, wheels_dir=tmp_path / "wheels")
    msg = str(info.value)
    assert "\n" not in msg and "pip download" in msg and str(tmp_path / "wheels") in msg


def test_a_wheel_put_in_the_wheels_folder_is_used_without_pip(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl").write_bytes(b"")
    monkeypatch.setattr(pa_mod.subprocess, "run", lambda *a, **kw: pytest.fail("pip was called"))
    got = pa_mod.pip_download("tritonclient==2.51.0", tmp_path / "dl", wheels_dir=wheels)
    assert got == wheels / "tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl"


def test_other_platforms_get_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pa_mod.platform, "machine", lambda: "arm64")
    with pytest.raises(SeqserveError, match="Linux x86_64"):
        ensure_perf_analyzer(tmp_path / "pa")
    assert not (tmp_path / "pa").exists()


def test_auditwheel_names_are_matched_to_sonames():
    names = ["libb64-98cb6333.so.0d", "libcudart-09529672.so.12.6.77", "libldap-2-858af7e7.5.so.0.1.13",
             "libssl-57118d4e.so.3", "libcrypto-b24afd48.so.3"]
    def find(soname):
        return next((n for n in names if pa_mod._hashed_name_pattern(soname).match(n)), None)
    assert find("libb64.so.0d") == names[0]
    assert find("libcudart.so.12") == names[1]
    assert find("libldap-2.5.so.0") == names[2]
    assert find("libssl.so.3") == names[3]
    assert find("libcrypto.so.1.1") is None


def test_csv_report_is_parsed_into_numeric_rows():
    header, first, second = CSV_2_51.splitlines()
    # perf_analyzer orders the rows by throughput: a saturated level can come before a lower one
    rows = parse_csv_report(f"{header}\n{second}\n{first}\n\nComposing models:\nfoo,1\n")
    assert [r["Concurrency"] for r in rows] == [1, 2]
    assert rows[0]["Inferences/Second"] == pytest.approx(3100.93)
    assert rows[1]["p99 latency"] == 875 and rows[1]["Avg latency"] == 426
    gpu = parse_csv_report("Request Rate,Inferences/Second,p50 latency,Avg GPU Utilization\n200,199.858,349,\n")
    assert gpu == [{"Request Rate": 200, "Inferences/Second": 199.858, "p50 latency": 349,
                    "Avg GPU Utilization": None}]


def test_levels_that_did_not_stabilize_are_reported():
    out = ("Request concurrency: 2\nFailed to obtain stable measurement within 10 measurement windows for "
           "concurrency 2. Please try to increase the --measurement-interval.\n")
    assert pa_mod.unstable_levels(out) == [2]
    assert pa_mod.unstable_levels("Request concurrency: 1\n") == []


# --------------------------------------------------------------------------------------------------
# against a real tritonserver (python backend)

ADD_CONFIG = """\
name: "add"
backend: "python"
max_batch_size: 8
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "out" data_type: TYPE_INT64 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# Sums the ids of each sequence; state kept by the model per correlation id.
ACC_CONFIG = """\
name: "acc"
backend: "python"
max_batch_size: 1
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "out" data_type: TYPE_INT64 dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ADD_MODEL = """\
import triton_python_backend_utils as pb_utils

import seqserve.errors  # noqa: F401 - proves the stub runs in the test's virtual environment


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("out", x + 1)]))
        return out
"""

ACC_MODEL = """\
import triton_python_backend_utils as pb_utils


def _scalar(r, name):
    return int(pb_utils.get_input_tensor_by_name(r, name).as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy()
            cid = _scalar(r, "CORRID")
            total = (0 if _scalar(r, "START") else self.sums.get(cid, 0)) + x
            if _scalar(r, "END"):
                self.sums.pop(cid, None)
            else:
                self.sums[cid] = total
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("out", total)]))
        return out
"""


def _write_repo(root: Path) -> Path:
    for name, config, model in (("add", ADD_CONFIG, ADD_MODEL), ("acc", ACC_CONFIG, ACC_MODEL)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(model)
    return root


def _check_rows(result, levels):
    assert result.load_column == "Concurrency"
    assert [r["Concurrency"] for r in result.rows] == levels, result.csv
    for r in result.rows:
        assert r["Inferences/Second"] > 0, result.csv
        assert 0 < r["p50 latency"] <= r["p90 latency"] <= r["p95 latency"] <= r["p99 latency"], result.csv
        assert r["Avg latency"] > 0, result.csv


@pytest.mark.slow
def test_perf_analyzer_measures_a_real_tritonserver_over_http_and_grpc(tmp_path):
    install = tritonserver_or_skip()
    pa = _or_skip(ensure_perf_analyzer)
    repo = _write_repo(tmp_path / "repo")
    seq_data = tmp_path / "seq.json"
    seq_data.write_text(json.dumps({"data": [[{"input_ids": [1]}, {"input_ids": [2]}, {"input_ids": [3]}]]}))
    # loose stability: CI machines have 2 cores shared by the server, its stub, perf_analyzer and xdist
    common = ["--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "20", "-b", "1"]

    with tritonserver(repo, tmp_path, install=install) as (proc, http, grpc, _metrics):
        assert shm_regions(proc), "the python backend's shared memory should carry this server's prefix"
        res = pa.run(["-m", "add", "-u", f"127.0.0.1:{http}", "-i", "http", "--concurrency-range", "1:2",
                      *common, "--shape", "input_ids:4", "--input-data", "zero"], timeout=180)
        _check_rows(res, [1, 2])
        assert "Request concurrency: 2" in res.stdout

        res = pa.run(["-m", "add", "-u", f"127.0.0.1:{grpc}", "-i", "grpc", "--concurrency-range", "2",
                      *common, "--shape", "input_ids:4", "--input-data", "random"], timeout=180)
        _check_rows(res, [2])

        # sequence model: generated data of a given length, then the sequences of a JSON file
        res = pa.run(["-m", "acc", "-u", f"127.0.0.1:{grpc}", "-i", "grpc", "--concurrency-range", "2",
                      *common, "--shape", "input_ids:1", "--input-data", "zero", "--sequence-length", "8",
                      "--sequence-id-range", "1:1000"], timeout=180)
        _check_rows(res, [2])
        report = tmp_path / "acc.csv"
        res = pa.run(["-m", "acc", "-u", f"127.0.0.1:{http}", "-i", "http", "--concurrency-range", "1",
                      *common, "--input-data", str(seq_data), "--sequence-id-range", "1:1000", "-f", str(report)],
                     timeout=180)
        _check_rows(res, [1])
        assert report.read_text() == res.csv

        with pytest.raises(SeqserveError, match="unknown model: 'nope'"):
            pa.run(["-m", "nope", "-u", f"127.0.0.1:{http}", *common], timeout=60)
        with pytest.raises(SeqserveError, match="request-count not supported") as info:
            pa.run(["-m", "add", "-u", f"127.0.0.1:{http}", "--concurrency-range", "1:2", "--request-count", "10"],
                   timeout=60)
        assert "SYNOPSIS" not in str(info.value)  # the usage text printed after the error is left out

    assert proc.returncode is not None and not process_group_alive(proc.pid)
    assert shm_regions(proc) == []
