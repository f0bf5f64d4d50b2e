"""Triton's own load generator, perf_analyzer 2.51.0, unmodified, against `seqserve serve`.

It reads /v2/models/<m>/config to decide how to drive a model (a `sequence_batching` config makes
it send sequence ids with START/END flags), polls /v2/models/<m>/stats, and sends binary-tensor
infer requests: each run below passing means our config JSON, statistics JSON and binary tensor
extension are what Triton's tool expects, over HTTP and gRPC.
"""

from __future__ import annotations

import pytest
from serving import start_server

from seqserve.tools import ensure_perf_analyzer
from seqserve.tools.perf_analyzer import PackageDownloadError

pytestmark = pytest.mark.slow

# Loose stability: on a 2-core CI machine the server, perf_analyzer and xdist share the cores.
COMMON = ["--measurement-mode", "count_windows", "--measurement-request-count", "40",
          "--stability-percentage", "80", "--max-trials", "8", "--input-data", "zero"]


@pytest.fixture(scope="module")
def perf_analyzer():
    try:
        return ensure_perf_analyzer()
    except PackageDownloadError as e:
        pytest.skip(f"the wheels perf_analyzer comes from cannot be downloaded here: {e}")


@pytest.fixture(scope="module")
def server(served_repo, tmp_path_factory):
    s = start_server(served_repo("lstm"), tmp_path_factory.mktemp("pa-logs"))
    yield s
    s.stop()


def _stats(server, model: str) -> dict:
    (entry,) = server.json("GET", f"/v2/models/{model}/stats")["model_stats"]
    return entry["inference_stats"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_the_stateless_model(perf_analyzer, server, protocol):
    url = server.http_address if protocol == "http" else server.grpc_address
    before = _stats(server, "lstm")["success"]["count"]
    res = perf_analyzer.run(["-m", "lstm", "-u", url, "-i", protocol, "--shape", "input_ids:8",
                             "--concurrency-range", "1:2", *COMMON], timeout=240)
    assert [r["Concurrency"] for r in sorted(res.rows, key=lambda r: r["Concurrency"])] == [1, 2]
    for row in res.rows:
        assert row["Inferences/Second"] > 0
        assert 0 < row["p50 latency"] <= row["p99 latency"]
    # what perf_analyzer counted, the server counted too (it sends more than it measures: warm-up)
    assert _stats(server, "lstm")["success"]["count"] - before >= 80
    assert "fail" not in _stats(server, "lstm") or _stats(server, "lstm")["fail"]["count"] == 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_stateful_sequences(perf_analyzer, server, protocol):
    url = server.http_address if protocol == "http" else server.grpc_address
    # concurrency 8, 32 steps a sequence: this load once found a race between inline and queued
    # steps of one sequence (a step run before its wake-up arrived crashed the next iteration)
    res = perf_analyzer.run(["-m", "lstm_step", "-u", url, "-i", protocol, "--shape", "input_ids:1",
                             "--sequence-length", "32", "--concurrency-range", "8", *COMMON], timeout=240)
    (row,) = res.rows
    assert row["Concurrency"] == 8 and row["Inferences/Second"] > 0
    assert "iteration failed" not in server.log_tail(400)
    stats = _stats(server, "lstm_step")
    assert stats["fail"]["count"] == 0
    assert stats["success"]["count"] >= 40
    # every sequence perf_analyzer started it also ended: the server holds none afterwards
    active = [line for line in server.metrics().splitlines()
              if line.startswith("seqserve_active_sequences") and 'model="lstm_step"' in line]
    assert active and float(active[0].rsplit(" ", 1)[1]) == 0
