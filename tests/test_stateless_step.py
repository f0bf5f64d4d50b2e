"""Client-held state for recurrent step models: `seqserve package --stateless-step` writes
NAME_step_state (the step graph, stateless, dynamic batching; past_* in, present_* out).

Packaged for every target and strictly parsed; served by `seqserve serve`; a sequence driven with
the state held by the client (tritonclient by hand, and seqserve's StepStateClient, over HTTP and
gRPC) equals the server-held NAME_step and in-process ONNX Runtime step by step; two replicas
alternating the steps of one sequence give the same result; a KV-cache export is refused in one
line; a state of the wrong shape is a 400 naming the expected dims.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers import assert_one_line_error, run, snapshot
from serving import start_server
from tritonclient.utils import InferenceServerException

from seqserve.errors import SeqserveError
from seqserve.export import load_export
from seqserve.package import PackageOptions, package_export, parse_config, read_config, to_pbtxt
from seqserve.package.triton_config import TARGETS, state_pairs
from seqserve.runtime import OrtBackend
from seqserve.serve.client import StepStateClient

CHUNKS = [[5, 9, 2], [7], [3, 3], [11], [4, 8, 1, 6]]      # one sequence, steps of 1-4 tokens
PAIRS = [("past_hidden", "present_hidden"), ("past_cell", "present_cell")]


@pytest.fixture(scope="module")
def repo(exported, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stateless") / "repo"
    package_export(exported("lstm"), root, options=PackageOptions(stateless_step=True))
    return root


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stateless-logs")


@pytest.fixture(scope="module")
def server(repo, logs):
    s = start_server(repo, logs)
    yield s
    s.stop()


def ort_reference(export, chunks) -> list[np.ndarray]:
    """In-process ONNX Runtime: the step graph run chunk by chunk, state carried here."""
    backend = OrtBackend(load_export(export), "step")
    spec = backend.spec
    state = {p.input: np.zeros([1, *spec.input(p.input).dims[1:]], np.float32) for p in spec.state}
    out = []
    for c in chunks:
        got = backend.run({"input_ids": np.array([c], np.int64), **state})
        state = {p.input: backend.to_host(got[p.output]) for p in spec.state}
        out.append(got["logits"])
    return out


def server_held(server, model: str, sid: int, chunks) -> list[np.ndarray]:
    c = tg.InferenceServerClient(server.grpc_address)
    out = []
    for k, chunk in enumerate(chunks):
        ids = np.array([chunk], np.int64)
        x = tg.InferInput("input_ids", list(ids.shape), "INT64")
        x.set_data_from_numpy(ids)
        r = c.infer(model, [x], sequence_id=sid, sequence_start=k == 0, sequence_end=k == len(chunks) - 1)
        out.append(r.as_numpy("logits"))
    return out


def tritonclient_held(addresses: list[str], scheme: str, model: str, chunks, dims) -> list[np.ndarray]:
    """The state held by plain tritonclient code: zeros first, then present_* of each response sent
    as the next past_*. Step k goes to addresses[k % len(addresses)]."""
    tc = tg if scheme == "grpc" else th
    clients = [tc.InferenceServerClient(a) for a in addresses]
    state = {p: np.zeros((1, *dims), np.float32) for p, _ in PAIRS}
    out = []
    for k, chunk in enumerate(chunks):
        arrays = {"input_ids": np.array([chunk], np.int64), **state}
        xs = []
        for n, a in arrays.items():
            x = tc.InferInput(n, list(a.shape), "INT64" if a.dtype == np.int64 else "FP32")
            x.set_data_from_numpy(a)
            xs.append(x)
        r = clients[k % len(clients)].infer(model, xs)
        state = {p: r.as_numpy(o) for p, o in PAIRS}
        out.append(r.as_numpy("logits"))
    return out


def _dims(export) -> tuple[int, int]:
    spec = load_export(export).spec.step
    return tuple(spec.input("past_hidden").dims[1:])


# ---- packaging ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_step_state_config_is_written_parsed_strictly_and_validates(exported, tmp_path, target):
    from seqserve.validate.repository import validate_repository

    root = tmp_path / "repo"
    written = package_export(exported("lstm"), root, options=PackageOptions(stateless_step=True, target=target))
    assert [m.name for m in written] == ["lstm", "lstm_step", "lstm_generate", "lstm_step_state"]
    m = written[-1]
    assert m.kind == "step_state"
    cfg = read_config(root / "lstm_step_state")
    assert parse_config(to_pbtxt(cfg), "x") == cfg == m.config
    layers, hidden = _dims(exported("lstm"))
    assert [(i.name, list(i.dims), i.optional) for i in cfg.input] == [
        ("input_ids", [-1], False), ("past_hidden", [layers, hidden], False), ("past_cell", [layers, hidden], False)]
    vocab = load_export(exported("lstm")).spec.step.output("logits").dims[-1]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [
        ("logits", [-1, vocab]), ("present_hidden", [layers, hidden]), ("present_cell", [layers, hidden])]
    assert cfg.HasField("dynamic_batching") and not cfg.HasField("sequence_batching")
    assert state_pairs(cfg) == PAIRS
    assert cfg.parameters["seqserve.kind"].string_value == "step_state"
    if target == "triton-python":
        assert cfg.backend == "python" and (m.path / "model.py").is_file()
    else:
        assert cfg.platform == "onnxruntime_onnx"       # triton-gpu: a plain onnxruntime-backend model
    # one package: the sidecar ties NAME_step_state to the other three
    side = json.loads((m.path / "seqserve.json").read_text())
    assert side["serve"] == {"kind": "step_state", "graph": "step"}
    assert side["package"]["models"] == ["lstm", "lstm_step", "lstm_generate", "lstm_step_state"]
    report = validate_repository(root)
    assert report.passed, [c for c in report.checks if not c.passed]
    assert any(c.graph == "lstm_step_state/1" and c.passed for c in report.checks)
    res = run("validate", "--repository", root, "--summary")
    assert res.exit_code == 0, res.output


def test_cli_package_stateless_step(exported, tmp_path):
    res = run("package", exported("lstm"), "--repository", tmp_path / "r", "--stateless-step")
    assert res.exit_code == 0, res.output
    assert "lstm_step_state" in res.output and (tmp_path / "r" / "lstm_step_state" / "1" / "model.onnx").is_file()
    plain = run("package", exported("lstm"), "--repository", tmp_path / "plain")
    assert plain.exit_code == 0 and not (tmp_path / "plain" / "lstm_step_state").exists()


def test_kv_cache_export_refuses_stateless_step_in_one_line(exported, tmp_path):
    root = tmp_path / "repo"
    package_export(exported("lstm"), root)
    before = snapshot(root)
    res = run("package", exported("gpt"), "--repository", root, "--stateless-step")
    assert_one_line_error(res, "--stateless-step", "KV cache", "gpt_step")
    assert snapshot(root) == before                                  # nothing written
    with pytest.raises(SeqserveError, match="KV cache"):
        package_export(exported("gpt"), root, options=PackageOptions(stateless_step=True))


# ---- serving: the same numbers as server-held state and ONNX Runtime ----------------------------------

def test_metadata_and_config_of_step_state(server):
    meta = server.json("GET", "/v2/models/lstm_step_state")
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "past_hidden", "past_cell"]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "present_hidden", "present_cell"]
    cfg = server.json("GET", "/v2/models/lstm_step_state/config")
    assert "sequence_batching" not in cfg or not cfg["sequence_batching"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_client_held_state_equals_server_held_and_onnxruntime(server, exported, scheme):
    want = ort_reference(exported("lstm"), CHUNKS)
    held = server_held(server, "lstm_step", 41 if scheme == "http" else 42, CHUNKS)
    address = server.http_address if scheme == "http" else server.grpc_address
    by_hand = tritonclient_held([address], scheme, "lstm_step_state", CHUNKS, _dims(exported("lstm")))
    url = server.http_url if scheme == "http" else server.grpc_url
    with StepStateClient(url, "lstm") as client:               # NAME resolves to NAME_step_state
        assert client.model == "lstm_step_state" and client.pairs == PAIRS
        seq = client.sequence()
        ours = [seq.step(c) for c in CHUNKS]
        assert seq.state_bytes == 2 * np.prod(_dims(exported("lstm"))) * 4
        assert set(seq.state) == {"past_hidden", "past_cell"}
        again = client.step_sequence(CHUNKS)
    for k in range(len(CHUNKS)):                               # step by step
        for got in (held[k], by_hand[k], ours[k], again[k]):
            np.testing.assert_allclose(got, want[k], atol=1e-5, rtol=1e-5)


def test_batched_rows_of_several_sequences(server, exported):
    """B sequences in one request (rows of equal length): each row equals its own sequence."""
    a, b = [[5, 9], [7, 1], [3, 2]], [[4, 4], [8, 8], [1, 6]]
    with StepStateClient(server.grpc_url, "lstm_step_state") as client:
        got = client.step_sequence([np.array([x, y]) for x, y in zip(a, b)])
    for rows, chunks in ((0, a), (1, b)):
        want = ort_reference(exported("lstm"), chunks)
        for k in range(3):
            np.testing.assert_allclose(got[k][rows:rows + 1], want[k], atol=1e-5)


def test_two_replicas_alternating_steps_give_the_same_result(repo, logs, server, exported):
    """No routing: step k of one sequence goes to replica k % 2 (two `seqserve serve` processes)."""
    want = ort_reference(exported("lstm"), CHUNKS)
    with start_server(repo, logs) as other:
        for scheme, addresses in (("http", [server.http_address, other.http_address]),
                                  ("grpc", [server.grpc_address, other.grpc_address])):
            got = tritonclient_held(addresses, scheme, "lstm_step_state", CHUNKS, _dims(exported("lstm")))
            for k in range(len(CHUNKS)):
                np.testing.assert_allclose(got[k], want[k], atol=1e-5)
        served = [json.loads(s.request("GET", "/v2/models/lstm_step_state/stats")[2])["model_stats"][0]
                  ["inference_stats"]["success"]["count"] for s in (server, other)]
        assert all(n >= len(CHUNKS) // 2 for n in served), served


def _state_request(hidden_shape, cell_shape=None, ids=((5, 9),)):
    ids = np.array(ids, np.int64)
    arrays = {"input_ids": ids, "past_hidden": np.zeros(hidden_shape, np.float32),
              "past_cell": np.zeros(cell_shape or hidden_shape, np.float32)}
    return arrays


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_bad_state_shape_is_400_naming_the_expected_dims(server, exported, scheme):
    layers, hidden = _dims(exported("lstm"))
    cases = [((1, layers, hidden + 1), None, f"[-1, {layers}, {hidden}]"),      # wrong hidden size
             ((1, hidden), None, f"[-1, {layers}, {hidden}]"),                  # wrong rank
             ((2, layers, hidden), None, "rows"),                                # rows != token-id rows
             ((1, layers, hidden), (3, layers, hidden), "rows")]
    for hshape, cshape, words in cases:
        arrays = _state_request(hshape, cshape)
        tc = th if scheme == "http" else tg
        c = tc.InferenceServerClient(server.http_address if scheme == "http" else server.grpc_address)
        xs = []
        for n, a in arrays.items():
            x = tc.InferInput(n, list(a.shape), "INT64" if a.dtype == np.int64 else "FP32")
            x.set_data_from_numpy(a)
            xs.append(x)
        with pytest.raises(InferenceServerException) as e:
            c.infer("lstm_step_state", xs)
        msg = e.value.message()
        assert words in msg and "past_" in msg, msg
        if scheme == "grpc":
            assert "INVALID_ARGUMENT" in str(e.value.status())
    # and over raw HTTP: the status is 400
    body = {"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1]},
                       {"name": "past_hidden", "shape": [1, 1, 1], "datatype": "FP32", "data": [0.0]},
                       {"name": "past_cell", "shape": [1, 1, 1], "datatype": "FP32", "data": [0.0]}]}
    status, _, text = server.request("POST", "/v2/models/lstm_step_state/infer", body)
    assert status == 400 and f"[-1, {layers}, {hidden}]" in text.decode(), text
    missing = {"inputs": body["inputs"][:1]}
    status, _, text = server.request("POST", "/v2/models/lstm_step_state/infer", missing)
    assert status == 400 and "past_hidden" in text.decode(), text
    assert server.request("GET", "/v2/health/ready")[0] == 200


def test_loadtest_sequence_workload_feeds_the_state_back(server):
    from seqserve.loadtest import make_config, run_loadtest
    from seqserve.loadtest import workloads as W

    seen = []
    real = W.StateFeedbackWorkload.answered

    def spy(self, slot, call, lane):
        real(self, slot, call, lane)
        if slot is not None and slot.step > 0:
            seen.append(float(np.abs(slot.state["past_hidden"]).sum()))

    W.StateFeedbackWorkload.answered = spy
    try:
        for url in (server.http_url, server.grpc_url):
            res = run_loadtest(make_config(url, "lstm_step_state", workload="sequence", concurrency="2",
                                           requests=30, warmup="0s", sequence_length=4, metrics_url=None))
            level = res["levels"][0]
            assert level["errors"] == 0, level
    finally:
        W.StateFeedbackWorkload.answered = real
    assert seen and all(s > 0 for s in seen)          # the state sent back is the server's, not zeros


# ---- tritonserver (python backend), if it is here -----------------------------------------------------

@pytest.mark.slow
def test_step_state_through_tritonserver_python_backend(exported, tmp_path):
    # the availability rule of tests/test_triton.py's triton_ready fixture
    from tritonserver_fixture import tritonserver_or_skip

    from seqserve.tools.perf_analyzer import PackageDownloadError
    from seqserve.triton.stub_env import prepare_overlay

    tritonserver_or_skip()
    try:
        prepare_overlay()
    except PackageDownloadError as e:
        pytest.skip(f"numpy 1.26 for tritonserver's python-backend stub cannot be downloaded here: {e}")
    root = tmp_path / "repo"
    package_export(exported("lstm"), root, options=PackageOptions(target="triton-python", stateless_step=True))
    want = ort_reference(exported("lstm"), CHUNKS)
    with start_server(root, tmp_path, "--engine", "triton", threads=None, timeout=240) as triton:
        for url in (triton.http_url, triton.grpc_url):
            with StepStateClient(url, "lstm") as client:
                got = client.step_sequence(CHUNKS)
            for k in range(len(CHUNKS)):
                np.testing.assert_allclose(got[k], want[k], atol=1e-5)
