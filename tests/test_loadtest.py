"""seqserve loadtest: statistics against known distributions, the pieces that need no server, then
every workload and loop against a real `seqserve serve` process, the report, compare, Ctrl-C and
bad arguments. (Against a real tritonserver: test_loadtest_triton.py.)"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import assert_one_line_error, run
from serving import ROOT, start_server

from seqserve.errors import SeqserveError
from seqserve.loadtest import load_results, make_config, run_loadtest, write_reports
from seqserve.loadtest.compare import compare
from seqserve.loadtest.config import parse_duration, parse_levels, parse_target
from seqserve.loadtest.metrics import breakdown, parse
from seqserve.loadtest.report import PA_COLUMNS, csv_text
from seqserve.loadtest.runner import poisson_gaps
from seqserve.loadtest.stats import histogram, histogram_quantile, log_edges, percentile, summarize
from seqserve.loadtest.ticker import Ticker
from seqserve.tools.perf_analyzer import parse_csv_report

# ---- statistics ----------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank():
    a = np.arange(1, 1001, dtype=float)              # 1..1000
    assert [percentile(a, q) for q in (50, 90, 95, 99, 100)] == [500, 900, 950, 990, 1000]
    assert percentile(np.array([7.0]), 50) == 7.0 and percentile(np.array([1.0, 2.0]), 50) == 1.0
    assert math.isnan(percentile(np.array([]), 50))
    s = summarize([3, 1, 2])
    assert (s["n"], s["min"], s["p50"], s["max"], s["mean"]) == (3, 1, 2, 3, 2)
    assert summarize([])["p99"] is None


def test_percentiles_and_histogram_match_a_known_distribution():
    """Exponential latencies, mean 2 ms: quantile q is -2 ln(1 - q)."""
    rng = np.random.default_rng(7)
    a = rng.exponential(2.0, 200_000)
    s = summarize(a)
    for q in (50, 90, 95, 99):
        exact = -2.0 * math.log(1 - q / 100)
        assert s[f"p{q}"] == pytest.approx(exact, rel=0.03), q
    assert s["mean"] == pytest.approx(2.0, rel=0.02) and s["max"] == a.max() and s["min"] == a.min()
    h = histogram(a)
    assert sum(h["counts"]) == a.size and len(h["edges"]) == len(h["counts"]) + 1
    assert h["edges"][0] <= a.min() and h["edges"][-1] >= a.max()
    ratios = np.diff(np.log10(h["edges"]))
    assert np.allclose(ratios, 1 / 20)                # 20 bins per decade
    for q in (50, 90, 99):                            # read back from the bins: within one bin (12%)
        assert histogram_quantile(h, q) == pytest.approx(-2.0 * math.log(1 - q / 100), rel=0.12)
    # the share in each bin matches the exponential's CDF over it
    edges, counts = np.array(h["edges"]), np.array(h["counts"])
    expected = (np.exp(-edges[:-1] / 2) - np.exp(-edges[1:] / 2)) * a.size
    big = expected > 2000
    assert np.allclose(counts[big], expected[big], rtol=0.08)


def test_histogram_edges_are_shared_between_samples():
    e1, e2 = log_edges(0.3, 5.0), log_edges(0.5, 40.0)
    common = set(np.round(e1, 9)) & set(np.round(e2, 9))
    assert len(common) >= len(e1) - 5                 # same grid, different ranges
    assert histogram([])["counts"] == []
    h = histogram([0.0, 0.0, 1.0])                    # zeros (tokens in one read) land in the first bin
    assert sum(h["counts"]) == 3


def test_poisson_arrivals():
    gaps = poisson_gaps(np.random.default_rng(3), 200.0, 50_000) / 1e9
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)     # exponential: CV 1
    # arrivals per 1-second window are Poisson: variance == mean
    counts = np.bincount(np.floor(np.cumsum(gaps)).astype(int))[:-1]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.25)


def test_ticker_fires_at_the_time_asked_not_before():
    async def main():
        loop = asyncio.get_running_loop()
        lags, done = [], asyncio.Event()
        target = [0]

        def fire():
            lags.append(time.perf_counter_ns() - target[0])
            if len(lags) == 50:
                done.set()
            else:
                target[0] = time.perf_counter_ns() + 2_000_000
                t.at(target[0])

        t = Ticker(loop, fire)
        target[0] = time.perf_counter_ns() + 2_000_000
        t.at(target[0])
        await asyncio.wait_for(done.wait(), 10)
        t.close()
        return t.precise, np.array(lags) / 1e6

    precise, lags = asyncio.run(main())
    assert lags.min() >= 0
    if precise:                                       # timerfd: well under asyncio's 1 ms rounding
        assert np.median(lags) < 0.5, lags


def test_grpc_header_block_and_frames_decode_as_http2_says():
    import hpack

    from seqserve.loadtest.h2_client import HEADERS, INFER, frame, header_block

    fields = hpack.Decoder().decode(header_block("h:1", INFER, "k"), raw=True)
    assert fields == [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER.encode()),
                      (b":authority", b"h:1"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                      (b"authorization", b"Bearer k")]
    f = frame(HEADERS, 0x4, 3, b"abc")
    assert f[:3] == b"\x00\x00\x03" and f[3] == HEADERS and f[4] == 0x4 and f[5:9] == b"\x00\x00\x00\x03"


# ---- config, metrics, report, compare -------------------------------------------------------------


def test_arguments_are_parsed_and_checked():
    assert parse_target("grpc://h:9", None).address == "h:9"
    t = parse_target("127.0.0.1:8001", "grpc")
    assert (t.protocol, t.port, t.url) == ("grpc", 8001, "grpc://127.0.0.1:8001")
    assert parse_target("http://x", None).port == 8000 and parse_target("grpc://x", None).port == 8001
    assert parse_duration("10s") == 10 and parse_duration("500ms") == 0.5 and parse_duration("2m") == 120
    assert parse_levels("1,2, 4", "--concurrency", True) == (1, 2, 4)
    assert parse_levels("50,100.5", "--request-rate", False) == (50, 100.5)
    for bad, words in [
        (lambda: parse_target("http://h:1", "grpc"), "--protocol"),
        (lambda: parse_target("ftp://h", None), "--url"),
        (lambda: parse_target("http://h/v2", None), "not a server address"),
        (lambda: parse_duration("10x"), "--duration"),
        (lambda: parse_levels("1,a", "--concurrency", True), "'a' is not a number"),
        (lambda: parse_levels("0.5", "--concurrency", True), "whole number"),
        (lambda: make_config("h:1", "m", concurrency="1", request_rate="5"), "not both"),
        (lambda: make_config("h:1", "m", duration="1s", requests=5), "not both"),
        (lambda: make_config("h:1", "m", workload="train"), "--workload"),
        (lambda: make_config("h:1", "m", prompts="/no/such/file"), "no such file"),
        (lambda: make_config("h:1", "m", sequence_length=0), "--sequence-length"),
    ]:
        with pytest.raises(SeqserveError, match=words):
            bad()
    cfg = make_config("h:1", "m", request_rate="5,10", requests=20, metrics_url="none")
    assert (cfg.mode, cfg.levels, cfg.duration_s, cfg.requests, cfg.metrics_url) == ("request_rate", (5, 10), None, 20, None)


PROM = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 10
nv_inference_request_success{model="other",version="1"} 99
nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 1
nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 2
nv_inference_queue_duration_us{model="m",version="1"} 500
nv_inference_compute_infer_duration_us{model="m",version="1"} 1000
nv_inference_request_duration_us{model="m",version="1"} 2000
"""


def test_prometheus_counters_and_the_breakdown():
    before = parse(PROM, "m")
    assert before["nv_inference_request_success"] == 10 and before["nv_inference_request_failure"] == 3
    assert parse(PROM, "nope") == {}
    after = dict(before, nv_inference_request_success=20, nv_inference_queue_duration_us=1500,
                 nv_inference_compute_infer_duration_us=3000, nv_inference_request_duration_us=4000)
    b = breakdown(before, after)
    assert (b["success"], b["queue_us"], b["compute_infer_us"], b["request_us"]) == (10, 100, 200, 200)
    assert breakdown({}, after) is None


def _level(level, rps, p50, p99, errors=0):
    lat = {"n": 100, "min": p50 / 2, "mean": p50, "std": 0, "p50": p50, "p90": p99, "p95": p99, "p99": p99,
           "max": p99 * 2}
    return {"level": level, "window_s": 1.0, "interrupted": False, "requests": 100 + errors, "ok": 100,
            "errors": errors, "error_kinds": {"HTTP 500": {"count": errors, "example": "x"}} if errors else {},
            "errors_outside_window": 0, "error_kinds_outside_window": {}, "throughput_rps": rps,
            "latency_ms": lat, "latency_histogram_ms": {"edges": [], "counts": []},
            "send_lag_ms": {"mean": 0.01}, "late_sends": 0, "late_share": 0.0, "client_behind": False,
            "waited_for_connection": 0, "offered_rps": None, "server": None, "server_note": "", "streaming": None,
            "sequences": None}


def _results(levels, mode="concurrency"):
    return {"config": {"mode": mode, "workload": "infer", "levels": [lv["level"] for lv in levels]},
            "model": {"name": "m"}, "levels": levels}


def test_compare_flags_regressions_beyond_the_threshold():
    a = _results([_level(1, 1000, 1.0, 2.0), _level(4, 3000, 1.3, 3.0)])
    same = compare(a, a, 0.1)
    assert not same.regressions and len(same.rows) == 6
    b = _results([_level(1, 950, 1.05, 2.1), _level(4, 2000, 2.0, 3.1, errors=3), _level(8, 1, 1, 1)])
    c = compare(a, b, 0.1)
    bad = {(r.level, r.metric) for r in c.regressions}
    assert bad == {(4, "throughput (req/s)"), (4, "p50 (ms)"), (4, "errors")}
    assert c.only_b == [8] and c.only_a == []
    with pytest.raises(SeqserveError, match="different"):
        compare(a, _results([], mode="request_rate"))


def test_csv_has_perf_analyzers_columns_and_parses_like_its_csv():
    res = _results([_level(4, 3000.5, 1.3, 3.0), _level(1, 1000, 1.0, 2.0, errors=2)])
    text = csv_text(res)
    header = text.splitlines()[0].split(",")
    assert header[:len(PA_COLUMNS) + 1] == ["Concurrency", *PA_COLUMNS]
    rows = parse_csv_report(text)                     # seqserve.tools.perf_analyzer's own reader
    assert [r["Concurrency"] for r in rows] == [1, 4]
    assert rows[1]["Inferences/Second"] == 3000.5 and rows[1]["p50 latency"] == 1300 and rows[1]["p99 latency"] == 3000
    assert rows[0]["Errors"] == 2


# ---- against a real seqserve serve ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(served_repo, tmp_path_factory):
    s = start_server(served_repo("lstm"), tmp_path_factory.mktemp("loadtest-logs"))
    yield s
    s.stop()


def _run(server, model, proto="http", **kw):
    if "requests" not in kw:
        kw.setdefault("duration", "1s")
    kw.setdefault("warmup", "0.3s")
    url = server.http_url if proto == "http" else server.grpc_url
    return run_loadtest(make_config(url, model, metrics_url=server.metrics_url, **kw))


def check_consistent(res, errors=0):
    for lv in res["levels"]:
        assert lv["ok"] + lv["errors"] == lv["requests"]
        assert sum(e["count"] for e in lv["error_kinds"].values()) == lv["errors"]
        if errors == 0:
            assert lv["errors"] == 0, lv["error_kinds"]
        lat = lv["latency_ms"]
        assert lv["ok"] > 0
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert sum(lv["latency_histogram_ms"]["counts"]) == lv["ok"]
        # closed loop: throughput is the count over the window
        if res["config"]["mode"] == "concurrency":
            assert lv["throughput_rps"] == pytest.approx(lv["ok"] / lv["window_s"], rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_infer_closed_and_open_loop(server, proto):
    res = _run(server, "lstm", proto, concurrency="1,4")
    check_consistent(res)
    assert [lv["level"] for lv in res["levels"]] == [1, 4] and res["levels"][1]["lanes"] == 4
    for lv in res["levels"]:
        srv = lv["server"]                           # from seqserve's /metrics over the window
        assert srv is not None and srv["queue_us"] is not None and srv["compute_infer_us"] > 0
        assert abs(srv["success"] - lv["ok"]) <= 0.1 * lv["ok"] + 10
        assert lv["client_cpu_us_per_request"] > 0
    assert res["model"]["vocab"] == 98

    res = _run(server, "lstm", proto, request_rate="200", requests=150)
    check_consistent(res)
    lv = res["levels"][0]
    assert lv["requests"] == 150 and lv["offered_rps"] == pytest.approx(200, rel=0.4)


@pytest.mark.slow
def test_grpc_large_requests_and_the_grpc_aio_fallback(server, monkeypatch):
    # 80 kB requests: several HTTP/2 DATA frames each (16 kB is the smallest frame limit a server may set)
    res = _run(server, "lstm", "grpc", concurrency="2", duration="0.5s", input_length=10_000)
    check_consistent(res)
    assert res["client"] == "grpc (h2)"
    # a request the server's flow-control window cannot take goes through grpc.aio instead
    from seqserve.loadtest import h2_client

    monkeypatch.setattr(h2_client.H2Lane, "fits", lambda self, size: False)
    res = _run(server, "lstm", "grpc", concurrency="2", duration="0.5s")
    check_consistent(res)
    assert res["client"] == "grpc (grpc.aio)"


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_sequences_and_streamed_generation(server, proto):
    res = _run(server, "lstm_step", proto, workload="sequence", concurrency="2", sequence_length=4)
    check_consistent(res)
    assert res["levels"][0]["sequences"]["completed"] >= 4

    res = _run(server, "lstm_step", proto, workload="sequence", request_rate="100", sequence_length=3)
    check_consistent(res)
    # the sequences a level left in the middle were ended: none holds state on the server
    active = [ln for ln in server.metrics().splitlines() if ln.startswith('seqserve_active_sequences{model="lstm_step"')]
    assert active and active[0].endswith(" 0"), active

    res = _run(server, "lstm_generate", proto, workload="generate", concurrency="2", max_tokens=8)
    check_consistent(res)
    lv = res["levels"][0]
    st = lv["streaming"]
    # a tiny model sampled at temperature may draw <eos> first: a stream with no text is legitimate
    # (seen 1 run in 3), so the floor is on the mean, the ceiling (max_tokens) on every stream
    assert st["tokens_per_request"]["min"] >= 0 and st["tokens_per_request"]["max"] <= 8
    assert st["tokens_per_request"]["mean"] >= 1
    assert st["output_tokens"] == sum([st["tokens_per_request"]["mean"] * lv["ok"]]) or st["output_tokens"] > 0
    assert 0 < st["ttft_ms"]["p50"] <= lv["latency_ms"]["p50"]
    assert st["itl_ms"]["n"] > 0 and st["output_tokens_per_s"] > 0


@pytest.mark.slow
def test_cli_report_and_compare(server, tmp_path):
    rep = tmp_path / "a"
    res = run("loadtest", "--url", server.http_url, "--model", "lstm", "--concurrency", "1,2", "--duration", "0.7s",
              "--warmup", "0.2s", "--metrics-url", server.metrics_url, "--report", rep)
    assert res.exit_code == 0, res.output
    flat = res.output.replace("\n", "")      # rich wraps long paths at the console's width
    assert "p99" in flat and "report.html" in flat, res.output
    for name in ("results.json", "results.csv", "report.html", "load.png", "latency_distribution.png",
                 "latency_over_time.png"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    data = load_results(rep)
    assert [lv["level"] for lv in data["levels"]] == [1, 2] and "_samples" not in data
    assert [r["Concurrency"] for r in parse_csv_report((rep / "results.csv").read_text())] == [1, 2]
    html = (rep / "report.html").read_text()
    assert "load.png" in html and "lstm" in html

    same = run("loadtest", "compare", rep, rep / "results.json")
    assert same.exit_code == 0 and "no regression" in same.output, same.output
    worse = json.loads((rep / "results.json").read_text())
    worse["levels"][1]["throughput_rps"] /= 2
    (tmp_path / "b.json").write_text(json.dumps(worse))
    regressed = run("loadtest", "compare", rep, tmp_path / "b.json")
    assert regressed.exit_code == 1 and "REGRESSION" in regressed.output, regressed.output


@pytest.mark.slow
def test_generate_report_has_streaming_plots(server, tmp_path):
    res = _run(server, "lstm_generate", workload="generate", concurrency="1", max_tokens=4)
    paths = write_reports(res, tmp_path)
    names = {p.name for p in paths}
    assert {"ttft_distribution.png", "itl_distribution.png"} <= names
    row = parse_csv_report((tmp_path / "results.csv").read_text())[0]
    assert row["Time To First Token p50"] > 0 and row["Output Tokens/Second"] > 0


@pytest.mark.slow
def test_server_errors_are_counted_by_kind(server, tmp_path):
    data = tmp_path / "data.json"          # one entry in four holds an id outside the vocabulary of 98
    data.write_text(json.dumps({"data": [{"input_ids": [5, 6]}, {"input_ids": [7]}, {"input_ids": [500]},
                                         {"input_ids": [8, 9, 10]}]}))
    res = _run(server, "lstm", concurrency="2", prompts=str(data))
    check_consistent(res, errors=1)
    lv = res["levels"][0]
    assert list(lv["error_kinds"]) == ["HTTP 400"]
    assert "vocabulary" in lv["error_kinds"]["HTTP 400"]["example"]
    assert lv["errors"] / lv["requests"] == pytest.approx(0.25, abs=0.05)
    assert lv["server"]["failure"] == pytest.approx(lv["errors"], abs=0.1 * lv["errors"] + 5)


@pytest.mark.slow
def test_a_server_that_dies_mid_run_gives_counted_connection_errors(served_repo, tmp_path):
    s = start_server(served_repo("lstm"), tmp_path)
    killer = threading.Timer(1.2, lambda: os.kill(s.pid, signal.SIGKILL))
    killer.start()
    try:
        res = run_loadtest(make_config(s.http_url, "lstm", concurrency="2", duration="1.5s", warmup="0.2s",
                                       metrics_url="none", drain_s=1.0))
    finally:
        killer.cancel()
        s.stop()
    lv = res["levels"][0]
    assert lv["ok"] > 0 and lv["errors"] + lv["errors_outside_window"] > 0
    kinds = set(lv["error_kinds"]) | set(lv["error_kinds_outside_window"])
    assert kinds <= {"connection closed", "connect failed"}, kinds
    assert lv["ok"] + lv["errors"] == lv["requests"]
    assert "off" in lv["server_note"]


@pytest.mark.slow
def test_ctrl_c_stops_and_still_writes_the_report(server, tmp_path):
    rep = tmp_path / "rep"
    cmd = [sys.executable, "-m", "cli.main", "loadtest", "--url", server.http_url, "--model", "lstm",
           "--concurrency", "1,2,4", "--duration", "30s", "--warmup", "0.2s", "--metrics-url", server.metrics_url,
           "--report", str(rep)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="150")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(4.0)                         # start-up (~1-2 s), probe, warm-up: the first level is measuring
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "interrupted" in out
    data = load_results(rep)
    assert data["interrupted"] is True and len(data["levels"]) == 1
    lv = data["levels"][0]
    assert lv["interrupted"] and lv["ok"] > 0 and lv["window_s"] < 5


# ---- errors before any load ---------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
def test_bad_arguments_give_one_line_errors_before_any_load(server, tmp_path):
    bad_data = tmp_path / "bad.json"
    bad_data.write_text(json.dumps({"data": [{"input_ids": [500]}]}))
    stats = server.json("GET", "/v2/models/lstm/stats")["model_stats"][0]["inference_stats"]
    before, failed_before = stats["success"]["count"], stats["fail"]["count"]
    common = ["--duration", "1s", "--warmup", "0s"]
    cases = [
        (["--url", f"http://127.0.0.1:{_closed_port()}", "--model", "lstm"], ["cannot reach", "refused"]),
        (["--url", f"grpc://127.0.0.1:{_closed_port()}", "--model", "lstm"], ["cannot reach"]),
        (["--url", server.http_url, "--model", "nope"], ["no model 'nope'", "lstm_step"]),
        (["--url", server.grpc_url, "--model", "nope"], ["no model 'nope'", "lstm_generate"]),
        (["--url", server.http_url, "--model", "lstm", "--workload", "sequence"], ["not a sequence model", "lstm_step"]),
        (["--url", server.http_url, "--model", "lstm_step"], ["sequence model", "--workload sequence"]),
        (["--url", server.http_url, "--model", "lstm", "--workload", "generate"], ["not a generation model",
                                                                                   "lstm_generate"]),
        (["--url", server.http_url, "--model", "lstm_generate"], ["decoupled", "--workload generate"]),
        (["--url", server.http_url, "--model", "lstm", "--concurrency", "1", "--request-rate", "5"], ["not both"]),
        (["--url", server.http_url, "--model", "lstm", "--duration", "ten"], ["--duration"]),
        (["--url", server.http_url, "--model", "lstm", "--concurrency", "0"], ["above 0"]),
        (["--url", server.http_url, "--model", "lstm", "--protocol", "grpc"], ["--protocol"]),
        (["--url", server.grpc_url, "--protocol", "http", "--model", "lstm"], ["--protocol"]),
        (["--model", "lstm"], ["--url"]),
        (["--url", server.http_url, "--model", "lstm", "--prompts", bad_data], ["first request", "vocabulary"]),
        (["--url", server.http_url, "--model", "lstm", "--prompts", tmp_path], ["--prompts"]),
        (["compare", "a"], ["compare A B"]),
        (["compare", "/no/a", "/no/b"], ["cannot read"]),
    ]
    for args, words in cases:
        res = run("loadtest", *args, *(common if args[0] != "compare" and "--duration" not in args else []))
        assert_one_line_error(res, *words)
    after = server.json("GET", "/v2/models/lstm/stats")["model_stats"][0]["inference_stats"]
    assert after["success"]["count"] == before                 # nothing was sent...
    assert after["fail"]["count"] == failed_before + 1          # ...but the one probe with a bad token id


@pytest.mark.slow
def test_an_http_url_on_a_grpc_port_is_a_clear_error(server):
    res = run("loadtest", "--url", f"http://{server.grpc_address}", "--model", "lstm", "--duration", "1s")
    assert_one_line_error(res, "gRPC")


def test_help_names_both_forms():
    res = run("loadtest", "--help")
    assert res.exit_code == 0
    for word in ("--concurrency", "--request-rate", "--workload", "compare A B", "--report"):
        assert word in res.output
