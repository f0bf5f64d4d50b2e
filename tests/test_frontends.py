"""HTTP and gRPC front ends, driven by Triton's own clients against real servers on 127.0.0.1.

The servers (HTTP, HTTP with an API key, metrics, gRPC, gRPC with an API key) all run in ONE
asyncio loop in a background thread, the way the real server runs them. Behind them is a toy
Repository (echo / add_sub / a decoupled "gen" model) implementing the protocols in base.py: it
stands in for the real models, which are tested elsewhere. After every bad request the test
checks that the server still answers /v2/health/ready.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import queue
import socket
import threading

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
import uvicorn
from google.protobuf import text_format
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from seqserve.serve.grpc_service import make_grpc_server
from seqserve.serve.http import make_app, make_metrics_app
from seqserve.serve.types import InferRequest, InferResponse, ServeError

LIMIT = 64 << 10   # max_request_bytes of the plain servers
KEY = "s3cret"


# ---- the toy repository -----------------------------------------------------------------

def text(value: str) -> np.ndarray:
    out = np.empty(1, dtype=object)
    out[0] = value.encode()
    return out


class Toy:
    version = "1"

    def __init__(self, name, config, run=None, pieces=None):
        self.name, self.config = name, text_format.Parse(config, mc.ModelConfig())
        self.config.name = name
        self.kind = "generate" if pieces else "full"
        self.decoupled = pieces is not None
        self._run, self._pieces, self.count = run, pieces, 0

    def metadata(self) -> dict:
        def tensors(items):
            return [{"name": t.name, "datatype": "BYTES" if t.data_type == mc.TYPE_STRING
                     else mc.DataType.Name(t.data_type)[5:], "shape": list(t.dims)} for t in items]
        return {"name": self.name, "versions": ["1"], "platform": "seqserve_toy",
                "inputs": tensors(self.config.input), "outputs": tensors(self.config.output)}

    def config_json(self) -> dict:
        return MessageToDict(self.config, preserving_proto_field_name=True)

    async def infer(self, request: InferRequest) -> InferResponse:
        self.count += 1
        if self._pieces:
            pieces = [r async for r in self.stream(request)]
            joined = b"".join(p.outputs["text_output"][0] for p in pieces)
            return InferResponse(self.name, "1", request.id,
                                 {"text_output": text(joined.decode()),
                                  "finish_reason": pieces[-1].outputs["finish_reason"]})
        return InferResponse(self.name, "1", request.id, self._run(request),
                             {"seen": request.parameters.get("sequence_id", 0)})

    async def stream(self, request: InferRequest):
        if not self._pieces:
            yield await self.infer(request)
            return
        async for response in self._pieces(request):
            yield response


def add_sub(request: InferRequest) -> dict:
    try:
        a, b = request.inputs["INPUT0"], request.inputs["INPUT1"]
    except KeyError:
        raise ServeError(400, f"add_sub needs INPUT0 and INPUT1, got {sorted(request.inputs)}")
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


async def gen_pieces(request: InferRequest):
    """Upper-cases text_input one character per response; "boom..." fails after two pieces."""
    prompt = request.inputs["text_input"].reshape(-1)[0].decode()
    if not prompt:
        raise ServeError(400, "text_input is empty; expected a prompt")
    limit = int(request.inputs["max_tokens"][0]) if "max_tokens" in request.inputs else 99
    chars = prompt[:limit]
    flag_last = not request.parameters.get("leave_final_unflagged", False)
    try:
        async for response in _gen_responses(request, prompt, chars, limit, flag_last):
            yield response
    finally:   # the front end must end the stream when the client goes away
        CLOSED.append(request.id)


CLOSED: list[str] = []


async def _gen_responses(request, prompt, chars, limit, flag_last):
    for i, char in enumerate(chars):
        await asyncio.sleep(0.002)
        if prompt.startswith("boom") and i == 2:
            raise ServeError(400, "boom: the model failed mid-stream")
        last = i == len(chars) - 1
        outputs = {"text_output": text(char.upper())}
        params = {}
        if last:
            outputs["finish_reason"] = text("length" if limit < len(prompt) else "stop")
            params = {"triton_final_response": True} if flag_last else {}
        yield InferResponse("gen", "1", request.id, outputs, params)


ADD_SUB_CONFIG = """
max_batch_size: 0
input { name: "INPUT0" data_type: TYPE_FP32 dims: [-1] }
input { name: "INPUT1" data_type: TYPE_FP32 dims: [-1] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }
output { name: "OUTPUT1" data_type: TYPE_FP32 dims: [-1] }
"""
GEN_CONFIG = """
max_batch_size: 0
model_transaction_policy { decoupled: true }
input { name: "text_input" data_type: TYPE_STRING dims: [1] }
input { name: "max_tokens" data_type: TYPE_INT32 dims: [1] optional: true }
output { name: "text_output" data_type: TYPE_STRING dims: [1] }
output { name: "finish_reason" data_type: TYPE_STRING dims: [1] }
"""


class ToyRepo:
    def __init__(self):
        self.models = {m.name: m for m in [
            Toy("add_sub", ADD_SUB_CONFIG, add_sub),
            Toy("echo", "max_batch_size: 0", lambda r: dict(r.inputs)),
            Toy("gen", GEN_CONFIG, pieces=gen_pieces)]}
        self.loaded = set(self.models)

    def live(self):
        return True

    def ready(self):
        return True

    def get(self, name, version=""):
        if name not in self.models:
            raise ServeError(404, f"unknown model {name!r}; available: {sorted(self.models)}")
        if version not in ("", "1"):
            raise ServeError(404, f"model {name!r} has no version {version!r}; it has ['1']")
        if name not in self.loaded:
            raise ServeError(503, f"model {name!r} is not loaded")
        return self.models[name]

    def index(self, ready_only=False):
        return [{"name": n, "version": "1", "state": "READY" if n in self.loaded else "UNAVAILABLE",
                 "reason": ""} for n in sorted(self.models) if n in self.loaded or not ready_only]

    async def load(self, name):
        if name not in self.models:
            raise ServeError(404, f"no model {name!r} in the repository")
        self.loaded.add(name)

    async def unload(self, name):
        self.get(name)
        self.loaded.discard(name)

    def server_metadata(self):
        return {"name": "seqserve", "version": "0.1.0",
                "extensions": ["binary_tensor_data", "statistics", "model_repository"]}

    def stats_json(self, name="", version=""):
        models = [self.get(name)] if name else self.models.values()
        duration = {"count": 0, "ns": 0}
        return {"model_stats": [{
            "name": m.name, "version": "1", "last_inference": 0, "inference_count": m.count,
            "execution_count": m.count,
            "inference_stats": {"success": {"count": m.count, "ns": 1000 * m.count},
                                **{k: duration for k in ("fail", "queue", "compute_input",
                                                         "compute_infer", "compute_output",
                                                         "cache_hit", "cache_miss")}},
            "batch_stats": [{"batch_size": 1, "compute_input": duration,
                             "compute_infer": duration, "compute_output": duration}],
            "memory_usage": []} for m in models]}

    def metrics_text(self):
        return "".join(f'nv_inference_count{{model="{m.name}",version="1"}} {m.count}\n'
                       for m in self.models.values())


# ---- servers: all in one asyncio loop ---------------------------------------------------

def bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class Servers:
    pass


@pytest.fixture(scope="module")
def servers():
    repo, s = ToyRepo(), Servers()
    s.repo = repo
    socks = [bound_socket() for _ in range(3)]
    s.http, s.http_keyed, s.metrics = (sock.getsockname()[1] for sock in socks)
    started, loop_box = threading.Event(), {}

    async def main():
        grpc_plain = make_grpc_server(repo, host="127.0.0.1", port=0, max_request_bytes=LIMIT)
        grpc_keyed = make_grpc_server(repo, host="127.0.0.1", port=0, api_key=KEY)
        s.grpc, s.grpc_keyed = grpc_plain.bound_port, grpc_keyed.bound_port
        await grpc_plain.start()
        await grpc_keyed.start()
        apps = [make_app(repo, max_request_bytes=LIMIT), make_app(repo, api_key=KEY),
                make_metrics_app(repo)]
        webs = [uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning",
                                              access_log=False)) for app in apps]
        loop_box["loop"], loop_box["webs"] = asyncio.get_running_loop(), webs
        serving = [asyncio.create_task(web.serve(sockets=[sock])) for web, sock in zip(webs, socks)]
        while not all(web.started for web in webs):
            await asyncio.sleep(0.01)
        started.set()
        await asyncio.gather(*serving)
        await grpc_plain.stop(grace=1)
        await grpc_keyed.stop(grace=1)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(20), "servers did not start"
    yield s
    for web in loop_box["webs"]:
        web.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


def call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def assert_healthy(port):
    assert call(port, "GET", "/v2/health/ready")[0] == 200


def bad_call(servers, status, fragment, method, path, body=None, headers=None, port=None):
    """A bad request: the expected 4xx with a JSON {"error"} naming the problem, and then the
    server still answers."""
    port = port or servers.http
    got, response_headers, data = call(port, method, path, body, headers)
    assert got == status, data
    assert response_headers["content-type"].startswith("application/json")
    message = json.loads(data)["error"]
    assert fragment.lower() in message.lower(), message
    assert_healthy(port)
    return message


# ---- HTTP with tritonclient -------------------------------------------------------------

def http_client(servers, **kwargs):
    return th.InferenceServerClient(f"127.0.0.1:{servers.http}", **kwargs)


def http_inputs(a, b, binary=True):
    inputs = [th.InferInput("INPUT0", list(a.shape), "FP32"),
              th.InferInput("INPUT1", list(b.shape), "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def test_http_health_metadata_config(servers):
    client = http_client(servers)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub") and not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"] == "seqserve"
    meta = client.get_model_metadata("add_sub", model_version="1")
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    config = client.get_model_config("gen")
    assert config["model_transaction_policy"] == {"decoupled": True}


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer(servers, binary):
    client = http_client(servers)
    a, b = np.arange(16, dtype=np.float32), np.full(16, 0.5, np.float32)
    result = client.infer("add_sub", http_inputs(a, b, binary), request_id="r1",
                          outputs=[th.InferRequestedOutput("OUTPUT1", binary_data=binary)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None   # only what was asked for
    assert result.get_response()["id"] == "r1"
    result = client.infer("add_sub", http_inputs(a, b, binary), sequence_id=7,
                          sequence_start=True, request_compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert result.get_response()["parameters"] == {"seen": 7}


def test_http_echo_every_datatype(servers):
    arrays = {"b": np.array([True, False]), "u8": np.arange(3, dtype=np.uint8),
              "i64": np.array([[-(2**63), 2**63 - 1]]), "u64": np.array([2**64 - 1], np.uint64),
              "f16": np.array([1.5, -2.0], np.float16), "f64": np.array([1e300]),
              "s": np.array([b"caf\xc3\xa9", b"\x00\xff"], dtype=object)}
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else th.np_to_triton_dtype(array.dtype)
        inputs.append(th.InferInput(name, list(array.shape), datatype))
        inputs[-1].set_data_from_numpy(array)
    result = http_client(servers).infer("echo", inputs)
    for name, array in arrays.items():
        got = result.as_numpy(name)
        assert got.shape == array.shape and got.tolist() == array.tolist()


def test_http_statistics_repository_and_metrics(servers):
    client = http_client(servers)
    client.infer("add_sub", http_inputs(np.ones(2, np.float32), np.ones(2, np.float32)))
    stats = client.get_inference_statistics("add_sub")["model_stats"][0]
    assert stats["name"] == "add_sub" and stats["inference_stats"]["success"]["count"] >= 1
    assert len(client.get_inference_statistics()["model_stats"]) == 3
    client.unload_model("echo")
    assert not client.is_model_ready("echo")
    index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert index["echo"] == "UNAVAILABLE"
    client.load_model("echo")
    assert client.is_model_ready("echo")
    status, headers, body = call(servers.metrics, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'nv_inference_count{model="add_sub",version="1"}' in body.decode()
    assert call(servers.http, "POST", "/v2/repository/index", b'{"ready": true}')[0] == 200


# ---- HTTP errors, raw -------------------------------------------------------------------

INFER = "/v2/models/add_sub/infer"


def test_http_malformed_requests(servers):
    bad_call(servers, 400, "not valid JSON: Expecting", "POST", INFER, b'{"inputs": [1,')
    bad_call(servers, 400, "needs INPUT0 and INPUT1", "POST", INFER, b'{"inputs": []}')
    bad_call(servers, 400, "Inference-Header-Content-Length is 99", "POST", INFER, b"{}",
             {"Inference-Header-Content-Length": "99"})
    for value in ("x", "-1", "\u00b2"):
        bad_call(servers, 400, "must be a byte count", "POST", INFER, b"{}",
                 {"Inference-Header-Content-Length": value})
    bad_call(servers, 400, "not valid gzip", "POST", INFER, b"not gzip",
             {"Content-Encoding": "gzip"})
    bad_call(servers, 400, "expected gzip, deflate", "POST", INFER, b"{}",
             {"Content-Encoding": "br"})
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32",
                                   "data": [1]}], "outputs": [{"name": "OUTPUT9"}]}).encode()
    bad_call(servers, 400, "needs INPUT0 and INPUT1", "POST", INFER, body)
    body = json.dumps({"inputs": [{"name": n, "shape": [1], "datatype": "FP32", "data": [1]}
                                  for n in ("INPUT0", "INPUT1")],
                       "outputs": [{"name": "OUTPUT9"}]}).encode()
    bad_call(servers, 400, "['OUTPUT0', 'OUTPUT1']", "POST", INFER, body)


def test_http_not_found_and_wrong_method(servers):
    bad_call(servers, 404, "unknown model 'nope'", "POST", "/v2/models/nope/infer", b"{}")
    bad_call(servers, 404, "no version '7'", "GET", "/v2/models/add_sub/versions/7")
    bad_call(servers, 404, "no route GET /v3", "GET", "/v3")
    message = bad_call(servers, 405, "GET is not allowed", "GET", INFER)
    assert "POST" in message
    bad_call(servers, 400, "not supported", "GET", "/v2/systemsharedmemory/status")


def test_http_too_large(servers):
    message = bad_call(servers, 413, f"{LIMIT}-byte limit", "POST", INFER, b" " * (LIMIT + 1))
    assert str(LIMIT + 1) in message
    chunks = iter([b" " * (16 << 10)] * 8)   # no Content-Length: sent chunked
    bad_call(servers, 413, f"{LIMIT}-byte limit", "POST", INFER, chunks)
    bomb = gzip.compress(b" " * (LIMIT * 4))
    bad_call(servers, 413, "decompressed", "POST", INFER, bomb, {"Content-Encoding": "gzip"})


def test_http_chunked_body_within_limit(servers):
    a = np.ones(4, np.float32)
    body, _ = th.InferenceServerClient.generate_request_body(http_inputs(a, a, binary=False))
    status, headers, data = call(servers.http, "POST", INFER, iter([body[:10], body[10:]]))
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    result = th.InferenceServerClient.parse_response_body(
        data, header_length=int(headers["inference-header-content-length"]))
    assert result.as_numpy("OUTPUT0").tolist() == [2.0] * 4


def test_http_api_key(servers):
    port = servers.http_keyed
    assert_healthy(port)   # health needs no key
    assert call(port, "GET", "/v2/health/live")[0] == 200
    bad_call(servers, 401, "Authorization: Bearer", "GET", "/v2", port=port)
    bad_call(servers, 401, "wrong API key", "GET", "/v2", headers={"Authorization": "Bearer no"},
             port=port)
    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client.get_server_metadata(headers=auth)["name"] == "seqserve"
    a = np.ones(2, np.float32)
    assert client.infer("add_sub", http_inputs(a, a), headers=auth).as_numpy("OUTPUT0").sum() == 4


# ---- generate / generate_stream ---------------------------------------------------------

def sse_events(data: bytes) -> list[dict]:
    events = data.decode().split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1]), events
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_generate(servers):
    status, headers, data = call(servers.http, "POST", "/v2/models/gen/generate",
                                 json.dumps({"text_input": "hello", "max_tokens": 4,
                                             "id": "g1"}))
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(data) == {"model_name": "gen", "model_version": "1", "id": "g1",
                                "text_output": "HELL", "finish_reason": "length"}
    bad_call(servers, 400, "unknown key 'max_token'", "POST", "/v2/models/gen/generate",
             json.dumps({"text_input": "hi", "max_token": 3}))
    bad_call(servers, 400, "must be a string", "POST", "/v2/models/gen/generate",
             json.dumps({"text_input": 3}))


def test_generate_stream(servers):
    path = "/v2/models/gen/versions/1/generate_stream"
    status, headers, data = call(servers.http, "POST", path, json.dumps({"text_input": "abc"}))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(data)
    assert [e["text_output"] for e in events] == ["A", "B", "C"]
    assert events[-1]["finish_reason"] == "stop" and "finish_reason" not in events[0]
    status, _, data = call(servers.http, "POST", path, json.dumps({"text_input": "boom!"}))
    events = sse_events(data)
    assert status == 200 and [e.get("text_output") for e in events] == ["B", "O", None]
    assert "mid-stream" in events[-1]["error"]
    assert_healthy(servers.http)
    # An error before the first response is a proper HTTP error, not a 200 stream.
    bad_call(servers, 400, "text_input is empty", "POST", path, json.dumps({"text_input": ""}))


def test_generate_stream_client_disconnect_closes_the_model_stream(servers):
    conn = http.client.HTTPConnection("127.0.0.1", servers.http, timeout=10)
    conn.request("POST", "/v2/models/gen/generate_stream",
                 json.dumps({"text_input": "x" * 500, "id": "gone"}))
    response = conn.getresponse()
    assert response.status == 200 and response.read1().startswith(b"data: ")
    response.close()
    conn.close()
    for _ in range(200):
        if "gone" in CLOSED:
            break
        threading.Event().wait(0.01)
    assert "gone" in CLOSED
    assert_healthy(servers.http)


# ---- gRPC -------------------------------------------------------------------------------

def grpc_client(servers, port=None):
    return tg.InferenceServerClient(f"127.0.0.1:{port or servers.grpc}")


def grpc_inputs(*arrays, names=("INPUT0", "INPUT1")):
    inputs = []
    for name, array in zip(names, arrays):
        datatype = "BYTES" if array.dtype == object else tg.np_to_triton_dtype(array.dtype)
        inputs.append(tg.InferInput(name, list(array.shape), datatype))
        inputs[-1].set_data_from_numpy(array)
    return inputs


def grpc_status(call_, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as info:
        call_(*args, **kwargs)
    return info.value.status() + " " + info.value.message()


def test_grpc_unary(servers):
    client = grpc_client(servers)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub") and not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "seqserve"
    assert [i.name for i in client.get_model_metadata("add_sub").inputs] == ["INPUT0", "INPUT1"]
    assert client.get_model_config("gen").config.model_transaction_policy.decoupled
    a, b = np.arange(5, dtype=np.float32), np.ones(5, np.float32)
    result = client.infer("add_sub", grpc_inputs(a, b), request_id="q", sequence_id=3,
                          outputs=[tg.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "q" and [o.name for o in response.outputs] == ["OUTPUT1"]
    assert response.parameters["seen"].int64_param == 3
    strings = np.array([b"x", b"\xff\x00", b""], dtype=object)
    result = client.infer("echo", grpc_inputs(strings, np.array([2**64 - 1], np.uint64),
                                              names=("s", "u")))
    assert result.as_numpy("s").tolist() == strings.tolist()
    assert result.as_numpy("u").tolist() == [2**64 - 1]
    stats = client.get_inference_statistics("add_sub").model_stats[0]
    assert stats.name == "add_sub" and stats.inference_stats.success.count >= 1
    assert len(client.get_inference_statistics().model_stats) == 3
    client.unload_model("echo")
    assert not client.is_model_ready("echo")
    states = {m.name: m.state for m in client.get_model_repository_index().models}
    assert states["echo"] == "UNAVAILABLE"
    client.load_model("echo")
    assert client.is_model_ready("echo")


def test_grpc_errors(servers):
    client = grpc_client(servers)
    assert "NOT_FOUND unknown model 'nope'" in grpc_status(
        client.infer, "nope", grpc_inputs(np.ones(1, np.float32)))
    assert "INVALID_ARGUMENT add_sub needs INPUT0 and INPUT1" in grpc_status(
        client.infer, "add_sub", grpc_inputs(np.ones(1, np.float32)))
    a = np.ones(1, np.float32)
    assert "INVALID_ARGUMENT" in grpc_status(client.infer, "add_sub", grpc_inputs(a, a),
                                             outputs=[tg.InferRequestedOutput("OUTPUT9")])
    big = np.zeros(LIMIT, np.float32)
    assert "RESOURCE_EXHAUSTED" in grpc_status(client.infer, "add_sub", grpc_inputs(big, big))
    assert "UNIMPLEMENTED" in grpc_status(client.get_system_shared_memory_status)
    assert "INVALID_ARGUMENT" in grpc_status(client.load_model, "echo", config="{}")
    assert client.is_server_ready()


def test_grpc_api_key(servers):
    client = grpc_client(servers, servers.grpc_keyed)
    assert client.is_server_live()   # health needs no key
    assert "UNAUTHENTICATED" in grpc_status(client.get_server_metadata)
    assert "UNAUTHENTICATED" in grpc_status(client.get_server_metadata,
                                            headers={"authorization": "Bearer no"})
    auth = {"authorization": f"Bearer {KEY}"}
    assert client.get_server_metadata(headers=auth).name == "seqserve"
    results = queue.Queue()
    client.start_stream(lambda result, error: results.put((result, error)))
    try:   # the server may refuse the stream before this request is even sent
        client.async_stream_infer("gen", grpc_inputs(text("ab"), names=("text_input",)))
    except InferenceServerException:
        pass
    result, error = results.get(timeout=10)
    assert result is None and "UNAUTHENTICATED" in str(error)
    client.stop_stream()


def collect_stream(results: queue.Queue, finals: int) -> dict:
    """Responses by request id until `finals` requests got their final response; errors under
    "errors"."""
    by_id: dict = {"errors": []}
    while finals:
        result, error = results.get(timeout=10)
        if error is not None:
            by_id["errors"].append(str(error))
            finals -= 1
            continue
        response = result.get_response()
        by_id.setdefault(response.id, []).append(result)
        finals -= response.parameters["triton_final_response"].bool_param
    return by_id


def texts(results) -> list:
    return [r.as_numpy("text_output")[0].decode() if r.as_numpy("text_output") is not None
            else None for r in results]


def test_grpc_stream(servers):
    client = grpc_client(servers)
    results = queue.Queue()
    client.start_stream(lambda result, error: results.put((result, error)))
    prompt = lambda s: grpc_inputs(text(s), names=("text_input",))   # noqa: E731
    # Two requests in flight on one stream, an error in between: the stream stays open.
    client.async_stream_infer("gen", prompt("abcdef"), request_id="long")
    client.async_stream_infer("nope", prompt("x"), request_id="bad")
    client.async_stream_infer("gen", prompt("xy"), request_id="short")
    client.async_stream_infer("gen", prompt("boom!"), request_id="boom")
    got = collect_stream(results, finals=4)
    assert texts(got["long"]) == list("ABCDEF") and texts(got["short"]) == ["X", "Y"]
    assert [r.get_response().parameters["triton_final_response"].bool_param
            for r in got["short"]] == [False, True]
    assert got["short"][-1].as_numpy("finish_reason")[0] == b"stop"
    assert len(got["errors"]) == 2
    assert any("unknown model 'nope'" in e for e in got["errors"])
    assert any("mid-stream" in e for e in got["errors"])
    # The short request finished while the long one was still streaming.
    # A non-decoupled model on the stream: one response, flagged final.
    a = np.ones(2, np.float32)
    client.async_stream_infer("add_sub", grpc_inputs(a, a), request_id="unary")
    got = collect_stream(results, finals=1)
    assert got["unary"][0].as_numpy("OUTPUT0").tolist() == [2, 2]
    # A stream that ends without a flagged response: the empty final response, when asked for.
    client.async_stream_infer("gen", prompt("ok"), request_id="e",
                              parameters={"leave_final_unflagged": True},
                              enable_empty_final_response=True)
    got = collect_stream(results, finals=1)
    assert texts(got["e"]) == ["O", "K", None]
    assert not got["e"][-1].get_response().outputs
    client.stop_stream()
    assert client.is_server_ready()


def test_grpc_aio_stream(servers):
    async def run():
        async with tga.InferenceServerClient(f"127.0.0.1:{servers.grpc}") as client:
            async def requests():
                for i, word in enumerate(["hi", "yo"]):
                    yield {"model_name": "gen", "request_id": str(i),
                           "inputs": grpc_inputs(text(word), names=("text_input",))}
            out = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None
                response = result.get_response()
                out.setdefault(response.id, []).append(result.as_numpy("text_output")[0])
                if sum(len(v) for v in out.values()) == 4:
                    break
            return out

    assert asyncio.run(run()) == {"0": [b"H", b"I"], "1": [b"Y", b"O"]}


def test_one_loop_serves_http_grpc_and_metrics(servers):
    a = np.ones(3, np.float32)
    http_result = http_client(servers).infer("add_sub", http_inputs(a, a))
    grpc_result = grpc_client(servers).infer("add_sub", grpc_inputs(a, a))
    assert http_result.as_numpy("OUTPUT0").tolist() == grpc_result.as_numpy("OUTPUT0").tolist()
    assert call(servers.metrics, "GET", "/metrics")[0] == 200
    assert call(servers.metrics, "GET", "/nope")[0] == 404


def test_grpc_port_in_use_is_an_oserror(servers):
    async def bind_again():
        make_grpc_server(servers.repo, host="127.0.0.1", port=servers.grpc)

    with pytest.raises(OSError, match="gRPC cannot listen on 127.0.0.1"):
        asyncio.run(bind_again())
