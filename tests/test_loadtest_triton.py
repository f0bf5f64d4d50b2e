"""seqserve loadtest against a real tritonserver (2.51, python backend): every workload and both
loops over HTTP and gRPC, errors when the model fails on demand, and open-loop timing against a
model with a known injected delay.

The models are small python-backend models written here:
  tok     input_ids INT64 [-1] -> logits FP32 [-1, 16]; dynamic batching; rejects ids outside 0-15
  slow    the same, sleeping DELAY_MS (20) per execution, one request per execution
  flaky   the same, failing every FAIL_EVERY-th (4th) request of a burst (the count restarts after
          a 0.2 s pause, so the load tester's first request - its probe - always succeeds)
  acc     a sequence model (START/END/CORRID); fails a step of a sequence that was never started
          or a start of one already running, so out-of-order steps show up as errors
  stream  decoupled: text_input -> max_tokens responses of one character, ITL_MS (4) apart
"""

from __future__ import annotations

import json
import time

import pytest
from tritonserver_fixture import tritonserver, tritonserver_or_skip

from seqserve.loadtest import make_config, run_loadtest
from seqserve.loadtest.report import csv_rows

TOK_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ -1, 16 ] }} ]
{batching}
parameters [ {{ key: "DELAY_MS" value: {{ string_value: "{delay}" }} }},
             {{ key: "FAIL_EVERY" value: {{ string_value: "{fail}" }} }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

TOK_MODEL = """\
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay = float(params["DELAY_MS"]["string_value"]) / 1000
        self.fail_every = int(params["FAIL_EVERY"]["string_value"])
        self.n, self.last = 0, 0.0

    def execute(self, requests):
        if self.delay:
            time.sleep(self.delay)
        if time.monotonic() - self.last > 0.2:
            self.n = 0
        self.last = time.monotonic()
        out = []
        for r in requests:
            self.n += 1
            ids = pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy()
            if self.fail_every and self.n % self.fail_every == 0:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"injected failure {self.n}")))
            elif ids.min() < 0 or ids.max() >= 16:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("token id outside 0-15")))
            else:
                logits = np.zeros(ids.shape + (16,), np.float32)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return out
"""

ACC_CONFIG = """\
name: "acc"
backend: "python"
max_batch_size: 1
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]
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

ACC_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


def _scalar(r, name):
    return int(pb_utils.get_input_tensor_by_name(r, name).as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        self.open = {}

    def execute(self, requests):
        out = []
        for r in requests:
            ids = pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy()
            cid, start, end = _scalar(r, "CORRID"), _scalar(r, "START"), _scalar(r, "END")
            if start == (cid in self.open):
                self.open.pop(cid, None)
                why = "already started" if start else "never started"
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"sequence {cid} {why}")))
                continue
            self.open[cid] = self.open.get(cid, 0) + 1
            if end:
                self.open.pop(cid)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", np.zeros(ids.shape + (16,), np.float32))]))
        return out
"""

STREAM_CONFIG = """\
name: "stream"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "finish_reason" data_type: TYPE_STRING dims: [ 1 ] } ]
parameters [ { key: "ITL_MS" value: { string_value: "4" } } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

STREAM_MODEL = """\
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.itl = float(params["ITL_MS"]["string_value"]) / 1000

    def execute(self, requests):
        for r in requests:
            threading.Thread(target=self.run, args=(r,), daemon=True).start()
        return None

    def run(self, r):
        sender = r.get_response_sender()
        text = pb_utils.get_input_tensor_by_name(r, "text_input").as_numpy().reshape(-1)[0]
        n_in = pb_utils.get_input_tensor_by_name(r, "max_tokens")
        n = int(n_in.as_numpy().reshape(-1)[0]) if n_in is not None else 8
        for i in range(n):
            time.sleep(self.itl)
            piece = np.array([text[i % len(text):i % len(text) + 1] or b"x"], dtype=object)
            reason = np.array([b"length" if i == n - 1 else b""], dtype=object)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", piece),
                                                    pb_utils.Tensor("finish_reason", reason)]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

DELAY_MS = 20


def write_repo(root):
    models = {
        "tok": (TOK_CONFIG.format(name="tok", delay=0, fail=0, batching="dynamic_batching { }"), TOK_MODEL),
        "slow": (TOK_CONFIG.format(name="slow", delay=DELAY_MS, fail=0, batching=""), TOK_MODEL),
        "flaky": (TOK_CONFIG.format(name="flaky", delay=0, fail=4, batching=""), TOK_MODEL),
        "acc": (ACC_CONFIG, ACC_MODEL),
        "stream": (STREAM_CONFIG, STREAM_MODEL),
    }
    for name, (config, model) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(model)
    return root


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """(http_url, grpc_url, metrics_url) of a tritonserver serving the models above."""
    install = tritonserver_or_skip()
    tmp = tmp_path_factory.mktemp("loadtest-triton")
    repo = write_repo(tmp / "repo")
    with tritonserver(repo, tmp, install=install) as (_proc, http, grpc, metrics):
        yield f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics"


def _run(url, metrics, model, **kw):
    kw.setdefault("duration", "1s")
    kw.setdefault("warmup", "0.3s")
    return run_loadtest(make_config(url, model, metrics_url=metrics, **kw))


def check_consistent(res):
    """Counts add up, percentiles are ordered, throughput matches the counts."""
    for lv in res["levels"]:
        assert lv["ok"] + lv["errors"] == lv["requests"]
        assert sum(e["count"] for e in lv["error_kinds"].values()) == lv["errors"]
        lat = lv["latency_ms"]
        if lv["ok"]:
            assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
            assert sum(lv["latency_histogram_ms"]["counts"]) == lv["ok"]
        assert lv["throughput_rps"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_each_workload_and_loop_against_triton(triton, proto):
    http, grpc, metrics = triton
    url = http if proto == "http" else grpc
    res = _run(url, metrics, "tok", concurrency="1,4")
    check_consistent(res)
    for lv in res["levels"]:
        assert lv["errors"] == 0 and lv["ok"] > 20
        srv = lv["server"]                      # Triton's /metrics over the window
        assert srv is not None and srv["success"] > 0 and srv["queue_us"] is not None
        assert abs(srv["success"] - lv["ok"]) <= 0.2 * lv["ok"] + 10
    assert res["model"]["vocab"] == 16

    res = _run(url, metrics, "tok", request_rate="100")
    check_consistent(res)
    lv = res["levels"][0]
    assert lv["errors"] == 0 and 60 <= lv["requests"] <= 150        # Poisson: 100 expected in 1 s

    res = _run(url, metrics, "acc", workload="sequence", concurrency="3", sequence_length=5)
    check_consistent(res)
    lv = res["levels"][0]
    assert lv["errors"] == 0, lv["error_kinds"]         # steps in order, start/end and ids right
    assert lv["sequences"]["completed"] >= 3

    res = _run(url, metrics, "stream", workload="generate", concurrency="2", max_tokens=6)
    check_consistent(res)
    lv = res["levels"][0]
    st = lv["streaming"]
    assert lv["errors"] == 0 and lv["ok"] >= 5
    assert st["tokens_per_request"]["min"] == st["tokens_per_request"]["max"] == 6
    assert st["output_tokens"] == 6 * lv["ok"]
    # the model sleeps 4 ms before each token: TTFT and the inter-token gaps show it
    assert 3.5 <= st["ttft_ms"]["p50"] <= 30 and 3.5 <= st["itl_ms"]["p50"] <= 15
    assert lv["latency_ms"]["p50"] >= 6 * 3.5


@pytest.mark.slow
def test_errors_are_counted_by_kind_never_dropped(triton, tmp_path):
    http, grpc, metrics = triton
    for url, kind in ((http, "HTTP 500"), (grpc, "gRPC INTERNAL")):     # Triton's codes for a model error
        time.sleep(0.5)                 # a pause: flaky's count restarts, the probe is its first request
        res = _run(url, metrics, "flaky", concurrency="2")
        check_consistent(res)
        lv = res["levels"][0]
        assert lv["errors"] > 0 and list(lv["error_kinds"]) == [kind], lv["error_kinds"]
        assert "injected failure" in lv["error_kinds"][kind]["example"]
        assert 0.15 <= lv["errors"] / lv["requests"] <= 0.35          # every 4th request fails
        # Triton counts a python-backend error response as a successful request on /metrics:
        # the server's view holds every request, the client's says which ones failed
        srv = lv["server"]
        assert abs(srv["success"] + srv["failure"] - lv["requests"]) <= 0.2 * lv["requests"] + 10
        assert csv_rows(res)[0]["Errors"] == lv["errors"]
    # data with an id outside the vocabulary in one of four entries (the first is the probe's)
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"input_ids": [1, 2]}, {"input_ids": [3]}, {"input_ids": [99]},
                                         {"input_ids": [4, 5, 6]}]}))
    res = _run(http, metrics, "tok", concurrency="1", prompts=str(data))
    lv = res["levels"][0]
    assert list(lv["error_kinds"]) == ["HTTP 500"] and "outside 0-15" in lv["error_kinds"]["HTTP 500"]["example"]
    assert 0.2 <= lv["errors"] / lv["requests"] <= 0.3


@pytest.mark.slow
def test_open_loop_timing_against_a_known_delay(triton):
    """`slow` takes 20 ms per request, one at a time. At 10 req/s (utilization 0.2) latency is the
    delay plus a little queueing; at 75 req/s (1.5x its capacity of 50/s) the queue grows all
    through the window and the open loop shows it, where a closed loop would not."""
    http, _grpc, metrics = triton
    res = _run(http, metrics, "slow", request_rate="10", duration="3s", warmup="0.2s")
    lv = res["levels"][0]
    lat = lv["latency_ms"]
    assert lv["errors"] == 0 and lat["min"] >= DELAY_MS
    assert lat["p50"] <= DELAY_MS + 10
    # the sends kept to the schedule: the median send is on time. "Late" is > 1 ms behind; with the
    # other xdist worker busy on the same 2 cores a quarter of 30 sends can be (measured 0.26 in a
    # quiet CI run), so the share only has to show most sends were on time.
    assert lv["send_lag_ms"]["p50"] < 1.0 and lv["late_share"] < 0.5

    res = _run(http, metrics, "slow", request_rate="75", duration="2s", warmup="0s")
    lv = res["levels"][0]
    assert lv["throughput_rps"] <= 55                       # the server's capacity, not the offered rate
    assert lv["latency_ms"]["p99"] > 10 * DELAY_MS          # queueing is not hidden
    samples = res["_samples"][0]
    first = samples["latency_ms"][samples["t_s"] < 0.5].mean()
    last = samples["latency_ms"][samples["t_s"] > 1.5].mean()
    assert last > first + 200                               # and it grows through the window
    assert lv["send_lag_ms"]["p50"] < 1.0 and lv["late_share"] < 0.5    # the server fell behind, not the client

    res = _run(http, metrics, "slow", concurrency="1", duration="1s", warmup="0.2s")
    assert DELAY_MS <= res["levels"][0]["latency_ms"]["p50"] <= DELAY_MS + 10
