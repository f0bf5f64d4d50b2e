"""Generated requests against a real `seqserve serve` over HTTP and gRPC (issue 10): random
KServe v2 requests (every field, parameters of every type, shapes with zeros and huge dims, data
and raw contents whose sizes lie, garbage bodies, streams) must never get a 5xx, INTERNAL or
UNKNOWN, and the server must answer a known request exactly as before afterwards.

The default run sends FUZZ_EXAMPLES per protocol; the slow-marked run sends 10,000 per protocol
(SEQSERVE_FUZZ_REPORT=FILE writes the counts by status there, for the record).
"""

from __future__ import annotations

import http.client
import json
import os
import struct
from collections import Counter

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import start_server
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

FUZZ_EXAMPLES = 400
SLOW_EXAMPLES = 10_000
REAL_MODELS = ["lstm", "lstm_step", "lstm_generate", "gpt", "gpt_step", "gpt_generate"]
MODELS = REAL_MODELS * 3 + ["nope", ""]        # mostly real models: their checks are what is fuzzed
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16", "int64", ""]
INPUT_NAMES = ["input_ids", "text_input", "max_tokens", "seed", "temperature", "top_k", "top_p",
               "stop", "attention_mask", "x"]
PARAM_KEYS = ["sequence_id", "sequence_start", "sequence_end", "binary_data_output", "priority",
              "timeout", "seed", "max_tokens", "temperature", "top_k", "top_p", "stop", "greedy",
              "triton_enable_empty_final_response", "classification", "binary_data_size",
              "shared_memory_region", "custom"]
# generated lengths stay short: a valid generate request with a huge max_tokens would stream on
SAFE_MAX_TOKENS = st.integers(-3, 6)

dims = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**40, 2**61, 2**62, 2**63 - 1]))
shapes = st.lists(dims, max_size=4)
ints = st.one_of(st.integers(-5, 200), st.sampled_from([-2**63, 2**63 - 1, 2**64 - 1, 2**64, -1]))
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(ints, floats, st.booleans(), st.text(max_size=8))


def json_params():
    def value(key):
        if key == "max_tokens":
            return st.one_of(SAFE_MAX_TOKENS, st.floats(), st.text(max_size=3), st.none())
        return st.one_of(scalars, st.none(), st.lists(scalars, max_size=2), st.dictionaries(
            st.text(max_size=3), scalars, max_size=2))
    return st.sampled_from(PARAM_KEYS).flatmap(lambda k: st.tuples(st.just(k), value(k))).map(
        lambda kv: {kv[0]: kv[1]})


@st.composite
def json_tensor(draw):
    t = {"name": draw(st.sampled_from(INPUT_NAMES)), "datatype": draw(st.sampled_from(DATATYPES)),
         "shape": draw(st.one_of(shapes, st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=2)),
                                                  max_size=3), st.text(max_size=3)))}
    if t["name"] == "max_tokens":
        t["data"] = [draw(SAFE_MAX_TOKENS)]
    elif draw(st.booleans()):
        t["data"] = draw(st.one_of(st.lists(scalars, max_size=6),
                                   st.lists(st.lists(st.integers(-3, 120), max_size=4), max_size=3),
                                   scalars, st.none()))
    if draw(st.integers(0, 4)) == 0:
        t["parameters"] = draw(st.one_of(st.dictionaries(st.sampled_from(
            ["binary_data_size", "shared_memory_region", "x"]), scalars, max_size=2), scalars))
    if draw(st.integers(0, 8)) == 0:
        t[draw(st.text(max_size=4))] = 1
    return t


@st.composite
def http_request(draw):
    """(method, path, headers, body)"""
    model = draw(st.sampled_from(MODELS))
    version = draw(st.sampled_from(["", "", "", "", "", "1", "1", "2", "x"]))
    base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    kind = draw(st.sampled_from(["infer", "infer", "infer", "binary", "garbage", "generate",
                                 "generate_stream", "other"]))
    headers: dict = {}
    if kind in ("infer", "binary"):
        doc: dict = {"inputs": draw(st.lists(json_tensor(), max_size=3))}
        if draw(st.booleans()):
            doc["parameters"] = draw(st.one_of(json_params(), scalars))
        if draw(st.integers(0, 3)) == 0:
            doc["outputs"] = draw(st.lists(st.fixed_dictionaries(
                {"name": st.sampled_from(["logits", "text_output", "x", ""])},
                optional={"parameters": st.dictionaries(st.sampled_from(
                    ["binary_data", "classification", "x"]), scalars, max_size=2)}), max_size=2))
        if draw(st.integers(0, 6)) == 0:
            doc["id"] = draw(scalars)
        body = json.dumps(doc).encode()
        if kind == "binary":
            blob = draw(st.binary(max_size=64))
            header_len = len(body) + draw(st.sampled_from([0, 0, -1, 1, 10**6]))
            headers["Inference-Header-Content-Length"] = draw(st.sampled_from(
                [str(header_len), str(max(header_len, 0)), "x", "-5", str(2**70)]))
            body += blob
        return "POST", base + "/infer", headers, body
    if kind == "garbage":
        body = draw(st.one_of(st.binary(max_size=200), st.just(b"[" * 5000), st.just(b"{" * 100)))
        path = draw(st.sampled_from([base + "/infer", base + "/generate", "/v2/repository/index",
                                     base + "/load", "/v2/models/x/infer"]))
        return "POST", path, headers, body
    if kind in ("generate", "generate_stream"):
        doc = {}
        if draw(st.booleans()):
            doc["text_input"] = draw(st.one_of(st.text(max_size=12), scalars,
                                               st.lists(st.text(max_size=3), max_size=2)))
        doc["max_tokens"] = draw(SAFE_MAX_TOKENS)
        for key in draw(st.lists(st.sampled_from(["temperature", "top_k", "top_p", "seed", "stop",
                                                  "x"]), max_size=3)):
            doc[key] = draw(scalars)
        if draw(st.booleans()):
            doc["parameters"] = draw(json_params())
        return "POST", f"{base}/{kind}", headers, json.dumps(doc).encode()
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    path = draw(st.sampled_from([base, base + "/ready", base + "/config", base + "/stats",
                                 "/v2/repository/index", f"/v2/repository/models/{model}/load",
                                 "/v2/systemsharedmemory/status", "/v2/x"]))
    return method, path, headers, draw(st.binary(max_size=40))


# ---- gRPC ---------------------------------------------------------------------------------------

def _grpc_param(draw, param, key):
    which = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param",
                                  "uint64_param", "none"]))
    if key == "max_tokens" and which in ("int64_param", "uint64_param"):
        param.int64_param = draw(SAFE_MAX_TOKENS)
    elif which == "bool_param":
        param.bool_param = draw(st.booleans())
    elif which == "int64_param":
        param.int64_param = draw(st.integers(-2**63, 2**63 - 1))
    elif which == "uint64_param":
        param.uint64_param = draw(st.integers(0, 2**64 - 1))
    elif which == "double_param":
        param.double_param = draw(floats)
    elif which == "string_param":
        param.string_param = draw(st.text(max_size=6))


@st.composite
def grpc_request(draw) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=draw(st.sampled_from(MODELS)),
                             model_version=draw(st.sampled_from(["", "", "", "", "1", "7", "x"])),
                             id=draw(st.text(max_size=4)))
    for key in draw(st.lists(st.sampled_from(PARAM_KEYS), max_size=3, unique=True)):
        _grpc_param(draw, r.parameters[key], key)
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        t = r.inputs.add(name=draw(st.sampled_from(INPUT_NAMES + [""])),
                         datatype=draw(st.sampled_from(DATATYPES)))
        t.shape.extend(draw(st.lists(st.one_of(dims, st.integers(-2**63, -1)), max_size=4)))
        if t.name == "max_tokens":
            t.datatype, t.shape[:] = "INT32", [1]
            (r.raw_input_contents.append(struct.pack("<i", draw(SAFE_MAX_TOKENS))) if raw
             else t.contents.int_contents.append(draw(SAFE_MAX_TOKENS)))
            continue
        if draw(st.integers(0, 4)) == 0:
            _grpc_param(draw, t.parameters[draw(st.sampled_from(["binary_data_size", "x"]))], "")
        if raw:
            r.raw_input_contents.append(draw(st.binary(max_size=48)))
        else:
            field = draw(st.sampled_from(["int64_contents", "int_contents", "fp32_contents",
                                          "bytes_contents", "bool_contents", "uint64_contents",
                                          "none"]))
            n = draw(st.integers(0, 6))
            values = {"int64_contents": st.integers(-2**63, 2**63 - 1), "int_contents":
                      st.integers(-2**31, 2**31 - 1), "fp32_contents": st.floats(width=32),
                      "bytes_contents": st.binary(max_size=6), "bool_contents": st.booleans(),
                      "uint64_contents": st.integers(0, 2**64 - 1)}.get(field)
            if values is not None:
                getattr(t.contents, field).extend(draw(st.lists(values, min_size=n, max_size=n)))
    if raw and draw(st.integers(0, 5)) == 0:       # an entry count that lies
        r.raw_input_contents.append(b"\x00" * 8)
    for _ in range(draw(st.integers(0, 2))):
        r.outputs.add(name=draw(st.sampled_from(["logits", "text_output", "finish_reason", "", "x"])))
    return r


@st.composite
def grpc_case(draw):
    """(how, payload): 'unary' a ModelInferRequest, 'stream' a list of them, 'bytes' raw bytes
    (garbage or a truncated message) to ModelInfer or ModelStreamInfer, 'meta' other RPCs."""
    how = draw(st.sampled_from(["unary", "unary", "unary", "stream", "bytes", "stream-bytes", "meta"]))
    if how == "unary":
        return how, draw(grpc_request())
    if how == "stream":
        return how, draw(st.lists(grpc_request(), min_size=1, max_size=3))
    if how in ("bytes", "stream-bytes"):
        good = draw(grpc_request()).SerializeToString()
        return how, draw(st.one_of(st.binary(max_size=64),
                                   st.just(good[:draw(st.integers(0, max(len(good) - 1, 0)))])))
    return how, (draw(st.sampled_from(["ModelMetadata", "ModelConfig", "ModelReady",
                                       "ModelStatistics"])), draw(st.sampled_from(MODELS)),
                 draw(st.sampled_from(["", "1", "x"])))


# ---- the tests ------------------------------------------------------------------------------------

BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
KNOWN = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [2, 3],
                     "data": [[5, 6, 7], [8, 9, 10]]}]}


@pytest.fixture(scope="module")
def server(served_repo, tmp_path_factory):
    s = start_server(served_repo("lstm", "gpt"), tmp_path_factory.mktemp("fuzz-logs"))
    yield s
    assert s.stop() == 0, s.log_tail()


def _known_answer(server) -> list:
    status, _, body = server.request("POST", "/v2/models/lstm/infer", KNOWN)
    assert status == 200, body
    return json.loads(body)["outputs"]


def _report(protocol: str, counts: Counter) -> None:
    print(f"\n{protocol} fuzz: {sum(counts.values())} requests, by status: {dict(sorted(counts.items()))}")
    path = os.environ.get("SEQSERVE_FUZZ_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"protocol": protocol, "counts": dict(counts)}) + "\n")


def fuzz_http(server, examples: int) -> Counter:
    counts: Counter = Counter()
    conn = [http.client.HTTPConnection(server.host, server.http_port, timeout=30)]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(http_request())
    def one(req):
        method, path, headers, body = req
        try:
            conn[0].request(method, path, body=body, headers=headers)
            r = conn[0].getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):     # the server closed a bad connection
            conn[0].close()
            conn[0] = http.client.HTTPConnection(server.host, server.http_port, timeout=30)
            counts["closed"] += 1
            return
        counts[r.status] += 1
        assert r.status < 500, (method, path, body[:300], r.status, data[:300])
        if r.status >= 400 and data:
            assert isinstance(json.loads(data).get("error"), str), data[:300]
        if path.endswith("/generate_stream") and r.status == 200:
            for line in data.splitlines():
                if line.startswith(b"data:"):
                    assert "internal" not in json.loads(line[5:]).get("error", ""), line

    one()
    conn[0].close()
    return counts


def fuzz_grpc(server, examples: int) -> Counter:
    counts: Counter = Counter()
    channel = grpc.insecure_channel(server.grpc_address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    raw_unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
    raw_stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=pb.ModelStreamInferResponse.FromString)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(grpc_case())
    def one(case):
        how, payload = case
        try:
            if how == "unary":
                stub.ModelInfer(payload, timeout=30)
            elif how == "bytes":
                raw_unary(payload, timeout=30)
            elif how in ("stream", "stream-bytes"):
                items = payload if how == "stream" else [payload]
                call = stub.ModelStreamInfer if how == "stream" else raw_stream
                for response in call(iter(items), timeout=30):
                    assert "internal" not in response.error_message, response.error_message
                    counts["stream-error" if response.error_message else "stream-ok"] += 1
            else:
                rpc, name, version = payload
                request_type = getattr(pb, f"{rpc}Request")
                getattr(stub, rpc)(request_type(name=name, version=version), timeout=30)
            counts["OK"] += 1
        except grpc.RpcError as e:
            counts[e.code().name] += 1
            assert e.code() not in BAD_CODES, (how, str(payload)[:300], e.code(), e.details())

    one()
    channel.close()
    return counts


def _check_fuzz(server, protocol: str, examples: int) -> None:
    before = _known_answer(server)
    counts = (fuzz_http if protocol == "http" else fuzz_grpc)(server, examples)
    _report(protocol, counts)
    assert server.alive(), server.log_tail()
    assert server.request("GET", "/v2/health/ready")[0] == 200
    assert _known_answer(server) == before          # same logits, exactly, after the barrage
    assert "Traceback" not in server.log_path.read_text(), server.log_tail()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fuzz_never_5xx_internal_or_unknown(server, protocol):
    _check_fuzz(server, protocol, FUZZ_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fuzz_ten_thousand_per_protocol(server, protocol):
    _check_fuzz(server, protocol, SLOW_EXAMPLES)


def test_known_answer_is_real(server):
    """The fuzz's after-check compares logits; make sure they are logits of the right shape."""
    [out] = _known_answer(server)
    assert out["name"] == "logits" and out["shape"][:2] == [2, 3]
    assert np.isfinite(np.asarray(out["data"], np.float64)).all()
