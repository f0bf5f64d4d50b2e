"""KServe v2 codec: round trips through tritonclient's own request builders and response parsers,
every malformed-request case answered ServeError(400) with a message saying what was wrong, and
random input never raising anything but ServeError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request

from seqserve.serve.codec import (decode_generate, decode_grpc_infer, decode_http_infer,
                                  encode_generate, encode_grpc_infer, encode_http_infer)
from seqserve.serve.types import InferRequest, InferResponse, RequestedOutput, ServeError

# One sample per datatype, including the edges of each integer range.
SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([0, 255], np.uint8),
    "UINT16": np.array([0, 65535], np.uint16),
    "UINT32": np.array([0, 2**32 - 1], np.uint32),
    "UINT64": np.array([0, 2**64 - 1], np.uint64),
    "INT8": np.array([-128, 127], np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], np.int16),
    "INT32": np.array([[-(2**31)], [2**31 - 1]], np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], np.int64),
    "FP16": np.array([0.5, -65504.0, 1e-3], np.float16),
    "FP32": np.array([[1.5, -2.25], [3e38, 0.0]], np.float32),
    "FP64": np.array([1e300, -0.1], np.float64),
    "BYTES": np.array([[b"hello", "é".encode()], [b"", b"\xc3\xa9\x00z"]], dtype=object),
}
TEXT_BYTES = np.array([b"hello", "é".encode(), b""], dtype=object)   # JSON needs UTF-8 text


def assert_same(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object and got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def http_body(arrays: dict, binary: bool, **kwargs):
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else tg.np_to_triton_dtype(array.dtype)
        item = th.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    return th.InferenceServerClient.generate_request_body(inputs, **kwargs)


def expect_400(fragment: str, call, *args):
    with pytest.raises(ServeError) as info:
        call(*args)
    assert info.value.status == 400
    assert fragment.lower() in info.value.message.lower(), info.value.message
    return info.value.message


# ---- HTTP round trips -------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_request_every_datatype(binary):
    arrays = dict(SAMPLES)
    if not binary:
        arrays["BYTES"] = TEXT_BYTES
    body, header_length = http_body(arrays, binary, request_id="req-7", sequence_id=42,
                                    sequence_start=True, priority=3, parameters={"seed": 9})
    assert (header_length is not None) == binary
    req = decode_http_infer("m", "2", body, header_length)
    assert (req.model, req.version, req.id) == ("m", "2", "req-7")
    assert req.parameters == {"sequence_id": 42, "sequence_start": True, "sequence_end": False,
                              "priority": 3, "binary_data_output": True, "seed": 9}
    assert req.outputs is None
    for name, array in arrays.items():
        assert_same(req.inputs[name], array)


def test_http_string_sequence_id_and_requested_outputs():
    body, hl = http_body({"x": SAMPLES["FP32"]}, True, sequence_id="user-1", sequence_end=True,
                         outputs=[th.InferRequestedOutput("a", binary_data=False),
                                  th.InferRequestedOutput("b")])
    req = decode_http_infer("m", "", body, hl)
    assert req.parameters["sequence_id"] == "user-1" and req.parameters["sequence_end"] is True
    assert req.outputs == [RequestedOutput("a", False), RequestedOutput("b", True)]


def test_http_nested_json_data():
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32",
                                   "data": [[1, 2], [3, 4]]}]}).encode()
    assert_same(decode_http_infer("m", "", body, None).inputs["x"],
                np.array([[1, 2], [3, 4]], np.int32))


@pytest.mark.parametrize("mode", ["binary", "json", "default-binary", "default-json", "mixed"])
def test_http_response_read_by_tritonclient(mode):
    outputs = dict(SAMPLES)
    if mode in ("json", "default-json"):
        outputs["BYTES"] = TEXT_BYTES
    resp = InferResponse("m", "3", outputs=outputs, parameters={"sequence_id": np.int64(5)})
    if mode.startswith("default"):
        req = InferRequest("m", id="r", parameters={"binary_data_output": mode.endswith("binary")})
    else:
        names = list(outputs)[::-1]   # the response follows the request's order
        req = InferRequest("m", id="r", outputs=[
            RequestedOutput(n, {"binary": True, "json": False}.get(mode, i % 2 == 0))
            for i, n in enumerate(names)])
        if mode == "mixed":
            req.outputs[1] = RequestedOutput(names[1], None)   # None: the request default
    body, header_length = encode_http_infer(resp, req)
    result = th.InferenceServerClient.parse_response_body(body, header_length=header_length)
    doc = result.get_response()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("m", "3", "r")
    assert doc["parameters"] == {"sequence_id": 5}
    if req.outputs:
        assert [o["name"] for o in doc["outputs"]] == [o.name for o in req.outputs]
    for name, array in outputs.items():
        got = result.as_numpy(name)
        if array.dtype == object and "data" in result.get_output(name):
            got = np.array([s.encode() for s in got.reshape(-1)], dtype=object).reshape(got.shape)
        assert_same(got.astype(array.dtype) if array.dtype == bool else got, array)


def test_http_response_only_requested_outputs_and_unknown_one():
    resp = InferResponse("m", "1", outputs={"a": np.ones(2, np.float32), "b": np.zeros(1)})
    body, hl = encode_http_infer(resp, InferRequest("m", outputs=[RequestedOutput("b", False)]))
    assert hl is None and [o["name"] for o in json.loads(body)["outputs"]] == ["b"]
    message = expect_400("no output 'c'", encode_http_infer, resp,
                         InferRequest("m", outputs=[RequestedOutput("c")]))
    assert "['a', 'b']" in message


def test_http_response_non_utf8_bytes_as_json_asks_for_binary():
    resp = InferResponse("m", "1", outputs={"s": np.array([b"\xff"], dtype=object)})
    expect_400("binary_data", encode_http_infer, resp, InferRequest("m"))


# ---- HTTP malformed requests -----------------------------------------------------------------

def tensor(**fields):
    return {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2], **fields}


def body_of(doc) -> bytes:
    return json.dumps(doc).encode()


MALFORMED_JSON = [
    (b'{"inputs": [', "not valid JSON"),
    (b'{"inputs": [}', "column 13"),
    (b"\xff\xfe\x00", "JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    (body_of({}), "\"inputs\""),
    (body_of({"inputs": {}}), "must be an array"),
    (body_of({"inputs": [], "input": 1}), "unknown keys ['input']"),
    (body_of({"id": 5, "inputs": []}), "\"id\" must be a string"),
    (body_of({"inputs": [5]}), "inputs[0] must be an object"),
    (body_of({"inputs": [tensor(), tensor()]}), "given twice"),
    (body_of({"inputs": [tensor(datatype="FP8")]}), "expected one of BOOL"),
    (body_of({"inputs": [tensor(datatype="BF16")]}), "datatype 'BF16'"),
    (body_of({"inputs": [tensor(shape=[2.0])]}), "non-negative integers"),
    (body_of({"inputs": [tensor(shape=[-2])]}), "non-negative integers"),
    (body_of({"inputs": [tensor(shape="2")]}), "non-negative integers"),
    (body_of({"inputs": [tensor(shape=[3])]}), "has 2 values but shape [3] needs 3"),
    (body_of({"inputs": [tensor(data=[[1], [2, 3]])]}), "not a regular array"),
    (body_of({"inputs": [tensor(data=[1, "2"])]}), "must be integers"),
    (body_of({"inputs": [tensor(data=[1.5, 2])]}), "non-integer numbers such as 1.5"),
    (body_of({"inputs": [tensor(data=[1, None])]}), "must be integers"),
    (body_of({"inputs": [tensor(data=[1, 2**31])]}), "2147483648 does not fit INT32"),
    (body_of({"inputs": [tensor(datatype="UINT8", data=[-1, 2])]}), "-1 does not fit UINT8"),
    (body_of({"inputs": [tensor(datatype="UINT64", data=[2**64, 1])]}), "does not fit UINT64"),
    (body_of({"inputs": [tensor(datatype="UINT64", data=[2**64 - 1, 0.5])]}), "integers"),
    (body_of({"inputs": [tensor(datatype="FP16", data=[1e6, 1])]}), "too large for FP16"),
    (body_of({"inputs": [tensor(datatype="FP32", data=["1", 2])]}), "must be numbers"),
    (body_of({"inputs": [tensor(datatype="BOOL", data=[1, 0])]}), "true/false"),
    (body_of({"inputs": [tensor(datatype="BYTES", data=["a", 1])]}), "must be strings"),
    (body_of({"inputs": [tensor(data=5)]}), "must be an array"),
    (body_of({"inputs": [tensor(data=None)]}), "must be an array"),
    (body_of({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}), "no \"data\""),
    (body_of({"inputs": [tensor(parameters=[])]}), "\"parameters\" must be an object"),
    (body_of({"inputs": [tensor(parameters={"shared_memory_region": "r"})]}), "shared memory"),
    (body_of({"inputs": [tensor(parameters={"binary_data_size": 8})]}), "both"),
    (body_of({"inputs": [tensor(value=1)]}), "unknown keys ['value']"),
    (body_of({"inputs": [], "parameters": []}), "must be an object"),
    (body_of({"inputs": [], "parameters": {"sequence_id": -1}}), "sequence_id"),
    (body_of({"inputs": [], "parameters": {"sequence_id": 1.5}}), "sequence_id"),
    (body_of({"inputs": [], "parameters": {"sequence_start": 1}}), "true or false"),
    (body_of({"inputs": [], "parameters": {"priority": -3}}), "non-negative"),
    (body_of({"inputs": [], "parameters": {"mine": [1]}}), "string, number or boolean"),
    (body_of({"inputs": [], "outputs": {}}), "\"outputs\" must be an array"),
    (body_of({"inputs": [], "outputs": [{"nam": "y"}]}), "string \"name\""),
    (body_of({"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}), "requested twice"),
    (body_of({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}),
     "binary_data must be true or false"),
    (body_of({"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 0}}]}),
     "classification must be a whole number >= 1"),
    (body_of({"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": "2"}}]}),
     "classification must be a whole number >= 1"),
]


@pytest.mark.parametrize("body,fragment", MALFORMED_JSON,
                         ids=[f"json{i}" for i in range(len(MALFORMED_JSON))])
def test_http_malformed_json(body, fragment):
    expect_400(fragment, decode_http_infer, "m", "", body, None)


def binary_request(*tensors, extra: bytes = b"", header_length=None):
    doc = {"inputs": [t for t, _ in tensors]}
    header = body_of(doc)
    body = header + b"".join(data for _, data in tensors) + extra
    return body, len(header) if header_length is None else header_length


def bin_tensor(datatype, shape, data: bytes, size=None, name="x"):
    return ({"name": name, "datatype": datatype, "shape": shape,
             "parameters": {"binary_data_size": len(data) if size is None else size}}, data)


def bytes_element(data: bytes, claimed=None) -> bytes:
    return struct.pack("<I", len(data) if claimed is None else claimed) + data


MALFORMED_BINARY = [
    (binary_request(bin_tensor("FP32", [2], b"\0" * 8), header_length=10**6),
     "Inference-Header-Content-Length is 1000000 but the body has only"),
    (binary_request(bin_tensor("FP32", [2], b"\0" * 8), header_length=-1), "non-negative"),
    (binary_request(bin_tensor("FP32", [2], b"\0" * 8), extra=b"\0"),
     "9 bytes follow the JSON header but the inputs' binary_data_size values add up to 8"),
    (binary_request(bin_tensor("FP32", [2], b"\0" * 8, size=12)), "runs past the 8 bytes"),
    (binary_request(bin_tensor("FP32", [3], b"\0" * 8)), "shape [3] of FP32 needs 12"),
    (binary_request(bin_tensor("FP32", [2], b"\0" * 8, size=-8)), "non-negative integer"),
    (binary_request(bin_tensor("BOOL", [2], b"\x00\x02")), "0 or 1"),
    (binary_request(bin_tensor("BYTES", [2], bytes_element(b"ab"))), "2 BYTES elements need"),
    (binary_request(bin_tensor("BYTES", [1], bytes_element(b"ab", claimed=9))),
     "says it has 9 bytes but only 2 remain"),
    (binary_request(bin_tensor("BYTES", [1], bytes_element(b"ab") + b"\1\0")),
     "end at byte 6 but the data has 8"),
    (binary_request(bin_tensor("BYTES", [2], bytes_element(b"a") + b"\0\0\0")),
     "length prefix of BYTES element"),
    (binary_request(bin_tensor("BYTES", [10**12], b"\0" * 8)), "need at least"),
    (binary_request(bin_tensor("INT8", [2], b"\0\0"), bin_tensor("INT8", [2], b"\0", name="y")),
     "shape [2] of INT8 needs 2"),
]


@pytest.mark.parametrize("request_,fragment", MALFORMED_BINARY,
                         ids=[f"bin{i}" for i in range(len(MALFORMED_BINARY))])
def test_http_malformed_binary(request_, fragment):
    body, header_length = request_
    expect_400(fragment, decode_http_infer, "m", "", body, header_length)


def test_http_binary_size_without_header_length():
    body = body_of({"inputs": [bin_tensor("FP32", [2], b"\0" * 8)[0]]})
    expect_400("no Inference-Header-Content-Length", decode_http_infer, "m", "", body, None)


def test_http_binary_views_are_zero_copy_and_aligned():
    body, hl = http_body({"a": np.arange(3, dtype=np.int8), "b": np.arange(4.0)}, True)
    req = decode_http_infer("m", "", body, hl)
    assert req.inputs["b"].flags.aligned and req.inputs["b"].tolist() == [0, 1, 2, 3]


# ---- gRPC -------------------------------------------------------------------------------

def grpc_request(arrays: dict, **kwargs) -> pb.ModelInferRequest:
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else tg.np_to_triton_dtype(array.dtype)
        item = tg.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    args = dict(model_version="", request_id="", outputs=None, sequence_id=0,
                sequence_start=False, sequence_end=False, priority=0, timeout=None,
                parameters=None)
    args.update(kwargs)
    return _get_inference_request(model_name="m", inputs=inputs, **args)


def test_grpc_round_trip_every_datatype():
    message = grpc_request(SAMPLES, request_id="g1", sequence_id="s", sequence_start=True,
                           timeout=100, parameters={"temperature": 0.5, "n": 2, "flag": True},
                           outputs=[tg.InferRequestedOutput(n) for n in reversed(SAMPLES)])
    req = decode_grpc_infer(pb.ModelInferRequest.FromString(message.SerializeToString()))
    assert (req.model, req.id) == ("m", "g1")
    assert req.parameters == {"sequence_id": "s", "sequence_start": True, "sequence_end": False,
                              "timeout": 100, "temperature": 0.5, "n": 2, "flag": True}
    assert [o.name for o in req.outputs] == list(reversed(SAMPLES))
    for name, array in SAMPLES.items():
        assert_same(req.inputs[name], array)
    resp = InferResponse("m", "1", outputs=req.inputs, parameters={"big": 2**64 - 1, "s": "x"})
    encoded = encode_grpc_infer(resp, req)
    result = tg.InferResult(pb.ModelInferResponse.FromString(encoded.SerializeToString()))
    assert [o.name for o in encoded.outputs] == list(reversed(SAMPLES))
    assert encoded.parameters["big"].uint64_param == 2**64 - 1
    for name, array in SAMPLES.items():
        assert_same(result.as_numpy(name), array)


def test_grpc_typed_contents():
    message = pb.ModelInferRequest(model_name="m")
    for name, datatype, field, values in [("a", "INT8", "int_contents", [-3, 4]),
                                          ("b", "UINT64", "uint64_contents", [2**64 - 1, 0]),
                                          ("c", "FP32", "fp32_contents", [0.5, 2.0]),
                                          ("d", "BYTES", "bytes_contents", [b"x", b""]),
                                          ("e", "BOOL", "bool_contents", [True, False])]:
        item = message.inputs.add(name=name, datatype=datatype, shape=[2])
        getattr(item.contents, field).extend(values)
    req = decode_grpc_infer(message)
    assert_same(req.inputs["a"], np.array([-3, 4], np.int8))
    assert_same(req.inputs["b"], np.array([2**64 - 1, 0], np.uint64))
    assert_same(req.inputs["c"], np.array([0.5, 2.0], np.float32))
    assert_same(req.inputs["d"], np.array([b"x", b""], dtype=object))
    assert_same(req.inputs["e"], np.array([True, False]))


GRPC_MALFORMED = [
    (lambda m: m.raw_input_contents.append(b"1234"), "2 entries for 1 inputs"),
    (lambda m: m.raw_input_contents.__setitem__(0, b"123"), "got 3 bytes"),
    (lambda m: setattr(m.inputs[0], "datatype", "INT4"), "expected one of"),
    (lambda m: m.inputs[0].shape.__setitem__(0, -4), "negative dimension"),
    (lambda m: m.inputs[0].contents.int_contents.append(1), "both raw_input_contents"),
    (lambda m: m.inputs.add(name="x", datatype="INT32", shape=[1]), "entries for 2 inputs"),
    (lambda m: m.parameters["sequence_start"].MergeFrom(pb.InferParameter(int64_param=1)),
     "sequence_start must be true or false"),
    (lambda m: m.parameters["empty"].Clear(), "no value set"),
    (lambda m: m.inputs[0].parameters["shared_memory_region"].MergeFrom(
        pb.InferParameter(string_param="r")), "shared memory"),
    (lambda m: m.outputs.add(name="y").parameters["classification"].MergeFrom(
        pb.InferParameter(int64_param=-3)), "classification must be a whole number >= 1"),
    (lambda m: m.outputs.add(name="y").parameters["classification"].MergeFrom(
        pb.InferParameter(string_param="3")), "classification must be a whole number >= 1"),
    (lambda m: (m.outputs.add(name="y"), m.outputs.add(name="y")), "repeated"),
]


@pytest.mark.parametrize("edit,fragment", GRPC_MALFORMED,
                         ids=[f"grpc{i}" for i in range(len(GRPC_MALFORMED))])
def test_grpc_malformed(edit, fragment):
    message = grpc_request({"x": np.arange(4, dtype=np.int32)})
    edit(message)
    expect_400(fragment, decode_grpc_infer, message)


@pytest.mark.parametrize("datatype,field,values,fragment", [
    ("INT8", "int_contents", [300, 1], "300 does not fit INT8"),
    ("FP16", "fp32_contents", [1.0], "raw_input_contents (it has no typed field)"),
    ("INT32", "fp32_contents", [1.0], "expected its values in contents.int_contents"),
    ("INT32", "int_contents", [1, 2, 3], "has 3 values but shape [2] needs 2"),
    ("INT32", None, [], "has no data"),
])
def test_grpc_malformed_contents(datatype, field, values, fragment):
    message = pb.ModelInferRequest(model_name="m")
    item = message.inputs.add(name="x", datatype=datatype, shape=[2])
    if field:
        getattr(item.contents, field).extend(values)
    expect_400(fragment, decode_grpc_infer, message)


# ---- generate extension -----------------------------------------------------------------

GENERATE_CONFIG = text_format.Parse("""
name: "gen" max_batch_size: 0
input { name: "text_input" data_type: TYPE_STRING dims: [1] }
input { name: "max_tokens" data_type: TYPE_INT32 dims: [1] optional: true }
input { name: "temperature" data_type: TYPE_FP32 dims: [1] optional: true }
input { name: "stop" data_type: TYPE_STRING dims: [-1] optional: true }
input { name: "greedy" data_type: TYPE_BOOL dims: [1] optional: true }
""", mc.ModelConfig())


def test_generate_decode():
    req = decode_generate(GENERATE_CONFIG, body_of({
        "text_input": "héllo", "max_tokens": 5, "temperature": 1, "stop": ["\n", "."],
        "greedy": True, "id": "g", "parameters": {"seed": 3}}))
    assert (req.model, req.id, req.parameters) == ("gen", "g", {"seed": 3})
    assert_same(req.inputs["text_input"], np.array(["héllo".encode()], dtype=object))
    assert_same(req.inputs["max_tokens"], np.array([5], np.int32))
    assert_same(req.inputs["temperature"], np.array([1.0], np.float32))
    assert_same(req.inputs["stop"], np.array([b"\n", b"."], dtype=object))
    assert_same(req.inputs["greedy"], np.array([True]))


def test_generate_batched_model_gets_a_batch_axis():
    config = text_format.Parse('name: "b" max_batch_size: 4 '
                               'input { name: "text_input" data_type: TYPE_STRING dims: [1] }',
                               mc.ModelConfig())
    assert decode_generate(config, b'{"text_input": "x"}').inputs["text_input"].shape == (1, 1)


@pytest.mark.parametrize("doc,fragment", [
    ({"text_input": "a", "max_token": 3}, "unknown key 'max_token'"),
    ({"text_input": 5}, "must be a string"),
    ({"text_input": ["a", "b"]}, "dims [1]"),
    ({"text_input": "a", "max_tokens": 2.5}, "must be an integer"),
    ({"text_input": "a", "max_tokens": 2**40}, "must be an integer in"),
    ({"text_input": "a", "max_tokens": True}, "must be an integer"),
    ({"text_input": "a", "temperature": "hot"}, "must be a number"),
    ({"text_input": "a", "temperature": 1e100}, "fits FP32"),
    ({"text_input": "a", "stop": [1]}, "must be a string (or an array of them)"),
    ({"text_input": "a", "stop": [["x"]]}, "must be a string"),
    ({"text_input": "a", "greedy": 1}, "true or false"),
    ({"text_input": "a", "id": 3}, "\"id\" must be a string"),
    ({"text_input": "a", "parameters": 3}, "must be an object"),
    ({"max_tokens": 3}, "missing ['text_input']"),
    ([1], "must be a JSON object"),
])
def test_generate_malformed(doc, fragment):
    message = expect_400(fragment, decode_generate, GENERATE_CONFIG, body_of(doc))
    if "unknown key" in fragment:
        assert "'text_input'" in message and "'parameters'" in message


def test_generate_encode_flattens():
    resp = InferResponse("gen", "1", id="g", outputs={
        "text_output": np.array([b"hi"], dtype=object), "n": np.array([3], np.int32),
        "probs": np.array([[0.5, 0.25]], np.float32), "words": np.array([b"a", b"b"], object)})
    assert encode_generate(resp) == {"model_name": "gen", "model_version": "1", "id": "g",
                                     "text_output": "hi", "n": 3, "probs": [0.5, 0.25],
                                     "words": ["a", "b"]}


# ---- nothing but ServeError, whatever arrives -------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["name", "shape", "datatype", "data", "parameters",
                                       "binary_data_size", "binary_data", "inputs", "outputs",
                                       "id", "sequence_id", "x"]), children, max_size=5),
    max_leaves=25)

datatypes = st.sampled_from(list(SAMPLES) + ["BF16", "", "fp32"])
tensors = st.fixed_dictionaries({"name": st.sampled_from(["a", "b", ""]), "datatype": datatypes,
                                 "shape": st.lists(st.integers(-1, 4), max_size=3)},
                                optional={"data": json_values,
                                          "parameters": st.fixed_dictionaries(
                                              {"binary_data_size": st.integers(-2, 40)})})
requests = st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3)},
                                 optional={"outputs": json_values, "parameters": json_values,
                                           "id": json_values})


def decodes_or_400(call, *args):
    try:
        call(*args)
    except ServeError as e:
        assert e.status == 400 and e.message


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(doc=st.one_of(requests, json_values), tail=st.binary(max_size=40),
       cut=st.integers(-3, 400) | st.none())
def test_fuzz_http(doc, tail, cut):
    header = json.dumps(doc).encode()
    header_length = None if cut is None else (len(header) if cut == 0 else cut)
    decodes_or_400(decode_http_infer, "m", "", header + tail, header_length)


@FUZZ
@given(data=st.binary(max_size=200), cut=st.integers(0, 200) | st.none())
def test_fuzz_http_random_bytes(data, cut):
    decodes_or_400(decode_http_infer, "m", "", data, cut)


@FUZZ
@given(doc=st.one_of(json_values, st.dictionaries(
    st.sampled_from(["text_input", "max_tokens", "temperature", "stop", "greedy", "id",
                     "parameters"]), json_values)))
def test_fuzz_generate(doc):
    decodes_or_400(decode_generate, GENERATE_CONFIG, json.dumps(doc).encode())


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_grpc(data):
    try:
        message = pb.ModelInferRequest.FromString(data)
    except Exception:   # not a protobuf at all: grpc itself rejects those
        return
    decodes_or_400(decode_grpc_infer, message)


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(list(SAMPLES.values())),
                              max_size=2),
       raw=st.lists(st.binary(max_size=24), max_size=3), shape=st.lists(st.integers(0, 5), max_size=3),
       datatype=datatypes)
def test_fuzz_grpc_structured(arrays, raw, shape, datatype):
    message = grpc_request(arrays)
    if message.inputs:
        message.inputs[0].datatype = datatype
        del message.inputs[0].shape[:]
        message.inputs[0].shape.extend(shape)
    if raw:
        del message.raw_input_contents[:]
        message.raw_input_contents.extend(raw)
    decodes_or_400(decode_grpc_infer, message)
