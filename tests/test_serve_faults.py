"""Defects found under fault injection (issue 10), each against a real `seqserve serve` process:

- F1 a generation parameter out of its range (seed = -1) over HTTP infer, gRPC ModelInfer and
  ModelStreamInfer is a 400 / INVALID_ARGUMENT naming the parameter and its range;
- F2 a shape whose non-zero dims overflow numpy's limit (with a 0 elsewhere, so no data) is a 400 /
  INVALID_ARGUMENT on every wire form (JSON, binary, gRPC typed and raw, the gRPC stream);
- F3 bytes that are not a ModelInferRequest are INVALID_ARGUMENT, unary and streamed;
- F4/F5 SIGTERM with streams in flight: every SSE and gRPC stream gets a final event
  (finish_reason "shutdown") and a proper end, and the process exits within --drain-seconds plus
  the documented bound, its ports freed;
- /metrics needs the API key when the server has one.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from serving import port_open, start_server
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from seqserve.serve.server import FINAL_SECONDS, LISTENER_GRACE

API_KEY = "faults-key"
HUGE_SHAPES = ([2**62, 0], [0, 2**62], [2**61, 0], [0, 2**61, 3])


@pytest.fixture(scope="module")
def server(served_repo, tmp_path_factory):
    s = start_server(served_repo("lstm"), tmp_path_factory.mktemp("faults-logs"))
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield pb_grpc.GRPCInferenceServiceStub(channel), channel
    channel.close()


def error_of(status_body, status=400) -> str:
    got, headers, body = status_body
    assert got == status, (got, body[:300])
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)["error"]


def grpc_error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request)
    return e.value.code(), e.value.details()


def generate_request(**parameters) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="lstm_generate")
    t = r.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"def ")
    for key, value in parameters.items():
        if isinstance(value, float):
            r.parameters[key].double_param = value
        elif isinstance(value, str):
            r.parameters[key].string_param = value
        else:
            r.parameters[key].int64_param = value
    return r


def stream_errors(stub, requests) -> list[str]:
    """The in-band error_message of each request sent on one ModelStreamInfer call."""
    responses = stub.ModelStreamInfer(iter(requests), timeout=30)
    return [r.error_message for r in responses]


def assert_still_serving(server):
    status, _, body = server.request("POST", "/v2/models/lstm/infer", {"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [5, 6, 7]}]})
    assert status == 200, body
    assert server.request("GET", "/v2/health/ready")[0] == 200


# ---- F1: generation parameters ----------------------------------------------------------------

@pytest.mark.parametrize("key,value,fragment", [
    ("seed", -1, "0..18446744073709551615"), ("max_tokens", 2**40, "-2147483648..2147483647"),
    ("top_k", -2**63, "-2147483648..2147483647"), ("max_tokens", 2.5, "integer"),
    ("seed", "7", "integer"), ("temperature", "hot", "number"), ("max_tokens", -3, "max_tokens")])
def test_bad_generation_parameter_is_400_and_invalid_argument(server, stub, key, value, fragment):
    doc = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["def "]}],
           "parameters": {key: value}}
    err = error_of(server.request("POST", "/v2/models/lstm_generate/infer", doc))
    assert key in err and fragment in err, err
    code, details = grpc_error(stub[0].ModelInfer, generate_request(**{key: value}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert key in details and fragment in details, details
    [message] = stream_errors(stub[0], [generate_request(**{key: value})])
    assert key in message and "internal" not in message, message
    assert_still_serving(server)


def test_generate_endpoint_and_infer_share_the_parameter_rule(server):
    doc = {"text_input": "def ", "parameters": {"seed": -1}}
    err = error_of(server.request("POST", "/v2/models/lstm_generate/generate", doc))
    assert "seed" in err and "0..18446744073709551615" in err
    err = error_of(server.request("POST", "/v2/models/lstm_generate/generate",
                                  {"text_input": "def ", "seed": -1}))
    assert "seed" in err


# ---- F2: shapes checked before any allocation -------------------------------------------------

@pytest.mark.parametrize("shape", HUGE_SHAPES)
def test_huge_shape_with_a_zero_is_400_on_every_wire_form(server, stub, shape):
    doc = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": shape, "data": []}]}
    assert "too large" in error_of(server.request("POST", "/v2/models/lstm/infer", doc))
    header = json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": shape,
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    err = error_of(server.request("POST", "/v2/models/lstm/infer", header,
                                  {"Inference-Header-Content-Length": str(len(header))}))
    assert "too large" in err
    typed = pb.ModelInferRequest(model_name="lstm")
    typed.inputs.add(name="input_ids", datatype="INT64", shape=shape)
    raw = pb.ModelInferRequest()
    raw.CopyFrom(typed)
    raw.raw_input_contents.append(b"")
    for request in (typed, raw):
        code, details = grpc_error(stub[0].ModelInfer, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details, (code, details)
    for message in stream_errors(stub[0], [typed, raw]):
        assert "too large" in message and "internal" not in message, message
    assert_still_serving(server)


# ---- F3: bytes that are not a protobuf message ------------------------------------------------

@pytest.mark.parametrize("garbage", [b"\xff\xff\xff garbage", b"\x0a\xff\xff\xff\xff\x0f", b"\x08"])
def test_undecodable_grpc_request_is_invalid_argument(server, stub, garbage):
    _, channel = stub
    unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    code, details = grpc_error(unary, garbage)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "not a valid ModelInferRequest" in details, details
    metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
    code, details = grpc_error(metadata, garbage)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ModelMetadataRequest" in details
    streamed = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     request_serializer=lambda b: b,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
    good = pb.ModelInferRequest(model_name="lstm", id="after")
    t = good.inputs.add(name="input_ids", datatype="INT64", shape=[1, 2])
    t.contents.int64_contents.extend([5, 6])
    responses = list(streamed(iter([garbage, good.SerializeToString()]), timeout=30))
    assert len(responses) == 2
    bad, ok = sorted(responses, key=lambda r: r.error_message == "")
    assert "not a valid ModelInferRequest" in bad.error_message
    assert ok.error_message == "" and ok.infer_response.id == "after"   # the stream lived on
    assert_still_serving(server)


# ---- metrics behind the API key ---------------------------------------------------------------

def test_metrics_need_the_api_key(served_repo, tmp_path):
    s = start_server(served_repo("lstm"), tmp_path, "--api-key", API_KEY)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            err = error_of(s.request("GET", "/metrics", headers=headers, port=s.metrics_port), 401)
            assert "Authorization: Bearer" in err
        status, _, body = s.request("GET", "/metrics", port=s.metrics_port,
                                    headers={"Authorization": f"Bearer {API_KEY}"})
        assert status == 200 and b"nv_inference_request_success" in body
    finally:
        assert s.stop() == 0


def test_metrics_open_without_a_key(server):
    assert "nv_inference_request_success" in server.metrics()


# ---- F4/F5: shutdown ends every stream --------------------------------------------------------

def _sse_stream(server, results: dict, started: threading.Event) -> None:
    c = http.client.HTTPConnection(server.host, server.http_port, timeout=60)
    body = {"text_input": "def ", "parameters": {"max_tokens": 10**9, "greedy": True}}
    c.request("POST", "/v2/models/lstm_generate/generate_stream", body=json.dumps(body))
    r = c.getresponse()
    events = []
    try:
        for line in r:                  # http.client raises IncompleteRead on a cut chunked body
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
                started.set()
        results["complete"] = True
    except Exception as e:
        results["complete"] = f"{type(e).__name__}: {e}"
    results["events"] = events


def _grpc_stream(server, results: dict, started: threading.Event) -> None:
    responses: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(server.grpc_address)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    t = tg.InferInput("text_input", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"def "], dtype=object))
    client.async_stream_infer("lstm_generate", [t], parameters={"max_tokens": 10**9, "greedy": True})
    count, final, errors = 0, None, []
    while True:
        try:
            result, error = responses.get(timeout=30)
        except queue.Empty:
            break
        if error is not None:
            errors.append(str(error))
            break
        count += 1
        started.set()
        if result.get_response().parameters["triton_final_response"].bool_param:
            final = result.as_numpy("finish_reason")[0].decode()
            break
    client.stop_stream()
    results.update(count=count, final=final, errors=errors)


@pytest.mark.slow
def test_sigterm_ends_every_stream_with_a_final_event_within_the_bound(served_repo, tmp_path):
    drain = 2.0
    s = start_server(served_repo("lstm"), tmp_path, "--drain-seconds", str(drain))
    try:
        streams = [(_sse_stream, {}), (_sse_stream, {}), (_grpc_stream, {}), (_grpc_stream, {})]
        threads = []
        for target, results in streams:
            started = threading.Event()
            th = threading.Thread(target=target, args=(s, results, started), daemon=True)
            th.start()
            assert started.wait(30), "a stream produced nothing"
            threads.append(th)
        # Let them run: a gRPC client (Python callback) reads slower than the model generates, and
        # its final event must still come right after the drain, not after a backlog of pieces.
        time.sleep(2.0)
        s.terminate()
        t_term = time.monotonic()
        assert s.proc.wait(drain + 30) == 0, s.log_tail()
        exited = time.monotonic() - t_term
        for th in threads:
            th.join(30)
        for target, results in streams:
            if target is _sse_stream:
                assert results["complete"] is True, results["complete"]   # chunked body ended
                assert results["events"][-1]["finish_reason"] == "shutdown", results["events"][-1]
                assert all(not e["finish_reason"] for e in results["events"][:-1])
                assert all("error" not in e for e in results["events"])
            else:
                assert results["errors"] == [] and results["final"] == "shutdown", results
        bound = drain + FINAL_SECONDS + LISTENER_GRACE + 1.5   # + interpreter exit, loaded CI
        assert exited < bound, f"exited {exited:.2f} s after SIGTERM; bound {bound:.2f} s"
        log = s.log_path.read_text()
        assert "Traceback" not in log and "CancelledError" not in log, s.log_tail()
        for port in (s.http_port, s.grpc_port, s.metrics_port):
            assert not port_open(port), f"port {port} still open after exit"
    finally:
        s.stop()
