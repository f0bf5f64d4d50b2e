"""`seqserve serve` as a real process, through real clients (tritonclient HTTP/gRPC, raw HTTP, the
CLI): results equal in-process ONNX Runtime, sequences keep their own state under concurrency,
errors are 4xx with a JSON message and never take the server down, metrics/statistics count, a
SIGTERM drains, the API key guards, the repository API loads and unloads, and the default
address is loopback.

Servers (tests/serving.py), each started at most once per xdist worker:
- `server`: rnn, lstm, gru and gpt, default limits (most tests);
- `limits_server`: lstm with max_sequences=2 and --max-request-bytes 4096;
- `idle_server`: lstm with sequence_idle_seconds=1;
- `key_server`: lstm with --api-key;
- `repo_server`: a copy of the lstm repository plus a model whose model.onnx is garbage;
- the drain test starts (and stops) its own.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import queue
import random
import re
import shutil
import string
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
import tritonclient.http.aio as tha
from helpers import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import port_open, start_server
from tritonclient.utils import InferenceServerException

FAMILIES = ("rnn", "lstm", "gru", "gpt")
VOCAB = 98                          # the tiny models' char tokenizer: 3 specials + 95 characters
PROMPT = "The "
API_KEY = "s3cret-test-key"
FINISH_REASONS = {"length", "eos", "stop"}


# ---- servers -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def server(served_repo, logs):
    s = start_server(served_repo(*FAMILIES), logs)
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def limits_server(served_repo, logs):
    s = start_server(served_repo("lstm", max_sequences=2), logs, "--max-request-bytes", "4096")
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def idle_server(served_repo, logs):
    s = start_server(served_repo("lstm", sequence_idle_seconds=1), logs)
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def key_server(served_repo, logs):
    s = start_server(served_repo("lstm"), logs, "--api-key", API_KEY)
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def repo_server(served_repo, logs, tmp_path_factory):
    """lstm, lstm_step, lstm_generate, and `broken`: lstm's folder with garbage in model.onnx."""
    repo = tmp_path_factory.mktemp("repo-api") / "repo"
    shutil.copytree(served_repo("lstm"), repo)          # copies: never write into a hard link
    shutil.copytree(repo / "lstm", repo / "broken")
    cfg = repo / "broken" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "lstm"', 'name: "broken"', 1))
    onnx = repo / "broken" / "1" / "model.onnx"
    onnx.unlink()
    onnx.write_bytes(b"this is not an ONNX model \x00\x01\x02" * 64)
    s = start_server(repo, logs)
    yield s
    assert s.stop() == 0, s.log_tail()


# ---- in-process references -------------------------------------------------------------------------

@functools.cache
def _backend(export: Path, graph: str):
    from seqserve.export import load_export
    from seqserve.runtime import RuntimeOptions
    from seqserve.runtime.ort import OrtBackend

    info = load_export(export)
    return info, OrtBackend(info, graph, RuntimeOptions(intra_op_threads=1))


def local_logits(export: Path, ids: np.ndarray) -> np.ndarray:
    return _backend(export, "full")[1].run({"input_ids": np.asarray(ids, np.int64)})["logits"]


def local_greedy(export: Path, prompt: str, max_tokens: int) -> tuple[str, str]:
    from seqserve.generation import SamplingParams, generate_text

    info, be = _backend(export, "step")
    c = generate_text(be, info.tokenizer, [prompt], SamplingParams(max_tokens=max_tokens, greedy=True),
                      info.max_context)[0]
    return c.text, c.finish_reason


# ---- protocol helpers --------------------------------------------------------------------------------

def infer_doc(ids, name="input_ids", datatype="INT64", shape=None, **parameters) -> dict:
    ids = np.asarray(ids).tolist() if not isinstance(ids, list) else ids
    doc = {"inputs": [{"name": name, "datatype": datatype,
                       "shape": shape if shape is not None else list(np.shape(ids)), "data": ids}]}
    if parameters:
        doc["parameters"] = parameters
    return doc


def step_doc(sid, ids, start=False, end=False) -> dict:
    params = {"sequence_id": sid}
    if start:
        params["sequence_start"] = True
    if end:
        params["sequence_end"] = True
    return infer_doc([ids], **params)


def error_of(status_body, *statuses) -> str:
    """The non-empty JSON "error" of a failed response whose status is one of `statuses`."""
    status, headers, body = status_body
    assert status in statuses, (status, body[:500])
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"].strip(), doc
    return doc["error"]


def sse(server, model: str, fields: dict, headers: dict | None = None) -> list[dict]:
    """POST .../generate_stream and read the `data:` lines of the event stream to its end."""
    c = http.client.HTTPConnection(server.host, server.http_port, timeout=60)
    try:
        c.request("POST", f"/v2/models/{model}/generate_stream", body=json.dumps(fields),
                  headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        assert r.status == 200, r.read()[:500]
        assert r.getheader("content-type", "").startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r if line.startswith(b"data:")]
    finally:
        c.close()
    return events


def grpc_stream(server, model: str, prompt: str, max_tokens: int) -> list[tuple[str, str, bool]]:
    """(text_output, finish_reason, final flag) per response of one ModelStreamInfer request."""
    results: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(server.grpc_address)
    inputs = []
    for name, dt, arr in (("text_input", "BYTES", np.array([prompt.encode()], dtype=object)),
                          ("max_tokens", "INT32", np.array([max_tokens], np.int32)),
                          ("temperature", "FP32", np.array([0.0], np.float32))):
        t = tg.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    out = []
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, request_id="g1", enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=60)
            assert error is None, error
            resp = result.get_response()
            final = resp.parameters["triton_final_response"].bool_param
            assert resp.id == "g1"
            text, finish = result.as_numpy("text_output"), result.as_numpy("finish_reason")
            out.append((text[0].decode() if text is not None else "",
                        finish[0].decode() if finish is not None else "", final))
            if final:
                return out
    finally:
        client.stop_stream()
        client.close()


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'(\w+)\{(.*)\} (\S+)', line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(metrics: dict, name: str, model: str, **labels) -> float:
    key = (name, frozenset({("model", model), ("version", "1"), *labels.items()}))
    assert key in metrics, f"no {name} for model {model} {labels} in /metrics"
    return metrics[key]


def grpc_code(exc: InferenceServerException) -> str:
    return str(exc.status())


# ---- 1. full models: logits equal in-process ONNX Runtime -----------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_full_model_logits_equal_onnxruntime_over_http_and_grpc(server, exported, family):
    ids = np.random.default_rng(7).integers(3, VOCAB, size=(3, 13)).astype(np.int64)
    want = local_logits(exported(family), ids)

    hc = th.InferenceServerClient(server.http_address)
    try:
        for binary_in, binary_out in ((True, True), (False, False), (False, True)):
            inp = th.InferInput("input_ids", list(ids.shape), "INT64")
            inp.set_data_from_numpy(ids, binary_data=binary_in)
            res = hc.infer(family, [inp], outputs=[th.InferRequestedOutput("logits", binary_data=binary_out)])
            got = res.as_numpy("logits")
            assert got.dtype == np.float32 and got.shape == want.shape == (3, 13, VOCAB)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            out = res.get_output("logits")
            if binary_out:
                assert out["parameters"]["binary_data_size"] == want.nbytes and "data" not in out
            else:
                assert "data" in out and "binary_data_size" not in out.get("parameters", {})
    finally:
        hc.close()

    gc = tg.InferenceServerClient(server.grpc_address)
    try:
        inp = tg.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        res = gc.infer(family, [inp])
        np.testing.assert_allclose(res.as_numpy("logits"), want, atol=1e-5, rtol=0)
        assert res.get_response().model_name == family
    finally:
        gc.close()


# ---- 2. streamed generation equals the local greedy loop ----------------------------------------------

@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_streamed_generation_equals_local_greedy(server, exported, family):
    n = 24
    want_text, want_finish = local_greedy(exported(family), PROMPT, n)
    assert want_finish in FINISH_REASONS

    events = sse(server, f"{family}_generate", {"text_input": PROMPT, "max_tokens": n, "temperature": 0})
    assert all("error" not in e for e in events), events
    assert len([e for e in events if e["text_output"]]) > 1, "the text came in one piece, not streamed"
    assert "".join(e["text_output"] for e in events) == want_text
    assert [e["finish_reason"] for e in events[:-1]] == [""] * (len(events) - 1)
    assert events[-1]["finish_reason"] == want_finish

    got = grpc_stream(server, f"{family}_generate", PROMPT, n)
    assert [final for *_, final in got].count(True) == 1 and got[-1][2]
    assert "".join(text for text, _, _ in got) == want_text
    assert [f for _, f, _ in got if f] == [want_finish]

    # the non-streaming generate endpoint returns the same text at once
    status, _, body = server.request("POST", f"/v2/models/{family}_generate/generate",
                                     {"text_input": PROMPT, "max_tokens": n, "temperature": 0})
    assert status == 200, body
    doc = json.loads(body)
    assert (doc["text_output"], doc["finish_reason"]) == (want_text, want_finish)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_cli_generate_url_prints_what_local_generate_prints(server, exported, scheme):
    url = server.http_url if scheme == "http" else server.grpc_url
    local = run("generate", exported("lstm"), "--greedy", "--prompt", PROMPT, "--max-tokens", 20, "--threads", 1)
    remote = run("generate", "--url", url, "--model", "lstm", "--greedy", "--prompt", PROMPT, "--max-tokens", 20)
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    want_text, _ = local_greedy(exported("lstm"), PROMPT, 20)
    assert local.stdout == PROMPT + want_text + "\n"
    assert remote.stdout == local.stdout


# ---- 3. many concurrent sequences keep their own state ----------------------------------------------

def _plans(seed: int, max_len: int) -> dict[int, list[list[int]]]:
    """sequence id (1..64) -> its token chunks (random lengths)."""
    rng = random.Random(seed)
    plans = {}
    for sid in range(1, 65):
        tokens = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, max_len))]
        chunks, i = [], 0
        while i < len(tokens):
            k = rng.choice((1, 1, 1, 2, 3, 5))
            chunks.append(tokens[i:i + k])
            i += k
        plans[sid] = chunks
    return plans


async def _run_sequences(module, address: str, model: str, plans: dict, seed: int) -> dict[int, np.ndarray]:
    client = module.InferenceServerClient(address)
    rng = random.Random(seed)
    delays = {sid: [rng.random() * 0.004 for _ in chunks] for sid, chunks in plans.items()}

    async def one(sid: int) -> np.ndarray:
        chunks, got = plans[sid], []
        for k, chunk in enumerate(chunks):
            await asyncio.sleep(delays[sid][k])          # random interleaving of the sequences
            inp = module.InferInput("input_ids", [1, len(chunk)], "INT64")
            inp.set_data_from_numpy(np.array([chunk], np.int64))
            res = await client.infer(model, [inp], sequence_id=sid, sequence_start=k == 0,
                                     sequence_end=k == len(chunks) - 1)
            logits = res.as_numpy("logits")
            assert logits.shape == (1, len(chunk), VOCAB), logits.shape
            got.append(logits[0])
        return np.concatenate(got)

    try:
        order = list(plans)
        rng.shuffle(order)
        results = await asyncio.gather(*(one(sid) for sid in order))
    finally:
        await client.close()
    return dict(zip(order, results))


@pytest.mark.parametrize("family, module", [("lstm", tha), ("gpt", tga)], ids=["lstm-http", "gpt-grpc"])
def test_64_concurrent_sequences_match_their_serial_reference(server, exported, family, module):
    model = f"{family}_step"
    seed = {"lstm": 1, "gpt": 2}[family]
    plans = _plans(seed, max_len=40)
    total_steps = sum(len(c) for c in plans.values())
    before = server.json("GET", f"/v2/models/{model}/stats")["model_stats"][0]

    address = server.http_address if module is tha else server.grpc_address
    results = asyncio.run(_run_sequences(module, address, model, plans, seed))

    export = exported(family)
    for sid, chunks in plans.items():
        tokens = [t for c in chunks for t in c]
        want = local_logits(export, np.array([tokens]))[0]
        np.testing.assert_allclose(results[sid], want, atol=1e-4, rtol=0,
                                   err_msg=f"sequence {sid} ({len(tokens)} tokens in {len(chunks)} steps)")

    after = server.json("GET", f"/v2/models/{model}/stats")["model_stats"][0]
    steps = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert steps == total_steps
    assert executions < total_steps, f"{total_steps} steps ran in {executions} executions: no batching"
    assert any(b["batch_size"] > 1 for b in after["batch_stats"])
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == total_steps
    # every sequence ended: no state left behind
    assert metric(parse_metrics(server.metrics()), "seqserve_active_sequences", model) == 0


# ---- 4. sequence errors -----------------------------------------------------------------------------------

def test_step_without_start_on_unknown_sequence_is_400_naming_sequence_start(limits_server):
    err = error_of(limits_server.request("POST", "/v2/models/lstm_step/infer", step_doc(424242, [5, 6])), 400)
    assert "sequence_start" in err and "424242" in err
    # and over gRPC: INVALID_ARGUMENT with the same advice
    gc = tg.InferenceServerClient(limits_server.grpc_address)
    try:
        inp = tg.InferInput("input_ids", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[5]], np.int64))
        with pytest.raises(InferenceServerException) as e:
            gc.infer("lstm_step", [inp], sequence_id=424243)
        assert grpc_code(e.value) == "StatusCode.INVALID_ARGUMENT" and "sequence_start" in e.value.message()
    finally:
        gc.close()


def test_too_many_sequences_is_429_over_http_and_resource_exhausted_over_grpc(limits_server):
    s, path = limits_server, "/v2/models/lstm_step/infer"
    for sid in (1, 2):
        status, _, body = s.request("POST", path, step_doc(sid, [5], start=True))
        assert status == 200, body
    err = error_of(s.request("POST", path, step_doc(3, [5], start=True)), 429)
    assert "2 active sequences" in err

    gc = tg.InferenceServerClient(s.grpc_address)
    try:
        inp = tg.InferInput("input_ids", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[5]], np.int64))
        with pytest.raises(InferenceServerException) as e:
            gc.infer("lstm_step", [inp], sequence_id=4, sequence_start=True)
        assert grpc_code(e.value) == "StatusCode.RESOURCE_EXHAUSTED", e.value
        # the refused ones were never admitted; ending sequence 1 makes room for a new one
        gc.infer("lstm_step", [inp], sequence_id=1, sequence_end=True)
        gc.infer("lstm_step", [inp], sequence_id=4, sequence_start=True)
        for sid in (2, 4):
            gc.infer("lstm_step", [inp], sequence_id=sid, sequence_end=True)
    finally:
        gc.close()
    assert metric(parse_metrics(s.metrics()), "seqserve_active_sequences", "lstm_step") == 0


def test_idle_sequence_is_evicted_and_then_404_expired(idle_server):
    s, path = idle_server, "/v2/models/lstm_step/infer"
    status, _, body = s.request("POST", path, step_doc(77, [5, 6], start=True))
    assert status == 200, body
    assert metric(parse_metrics(s.metrics()), "seqserve_active_sequences", "lstm_step") == 1
    time.sleep(2.2)                       # idle limit 1 s; eviction runs every 0.25 s
    err = error_of(s.request("POST", path, step_doc(77, [7])), 404)
    assert "expired" in err and "sequence_start" in err
    assert metric(parse_metrics(s.metrics()), "seqserve_active_sequences", "lstm_step") == 0
    # restarting the id works
    status, _, body = s.request("POST", path, step_doc(77, [7], start=True, end=True))
    assert status == 200, body


def test_sequence_end_frees_the_sequence(server):
    path = "/v2/models/lstm_step/infer"
    active = metric(parse_metrics(server.metrics()), "seqserve_active_sequences", "lstm_step")
    status, _, _ = server.request("POST", path, step_doc(9001, [5, 6], start=True))
    assert status == 200
    assert metric(parse_metrics(server.metrics()), "seqserve_active_sequences", "lstm_step") == active + 1
    status, _, _ = server.request("POST", path, step_doc(9001, [7], end=True))
    assert status == 200
    assert metric(parse_metrics(server.metrics()), "seqserve_active_sequences", "lstm_step") == active
    err = error_of(server.request("POST", path, step_doc(9001, [8])), 400)
    assert "not active" in err and "sequence_start" in err


# ---- 5. bad requests: always 4xx with a JSON error; the server keeps serving ---------------------------

IDS = [5, 6, 7]
GOOD = infer_doc([IDS])
NAME_CHARS = string.ascii_letters + string.digits + "_-."
KNOWN = {f"{f}{s}" for f in FAMILIES for s in ("", "_step", "_generate")}
OTHER_DTYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "FP16", "FP32",
                "FP64", "BYTES", "BF16", "int64", "", "INT128"]


def _sample_data(datatype: str) -> list:
    if datatype == "BOOL":
        return [[True, False, True]]
    if datatype.startswith("FP") or datatype == "BF16":
        return [[5.0, 6.5, 7.0]]
    if datatype == "BYTES":
        return [["a", "b", "c"]]
    return [IDS]


def _valid_shape(shape, n: int) -> bool:
    return len(shape) == 2 and all(isinstance(d, int) and d >= 1 for d in shape) \
        and shape[0] * shape[1] == n and shape[0] <= 16


def _binary_body(ids) -> tuple[bytes, int]:
    arr = np.asarray(ids, np.int64)
    inp = th.InferInput("input_ids", list(arr.shape), "INT64")
    inp.set_data_from_numpy(arr, binary_data=True)
    body, json_size = th.InferenceServerClient.generate_request_body([inp])
    return body, json_size


@st.composite
def bad_infer(draw):
    """(model, version, headers, body) for /v2/models/{model}[/versions/{v}]/infer, never valid."""
    model = draw(st.sampled_from(["lstm", "gpt", "lstm_step"]))
    kind = draw(st.sampled_from(["garbage", "truncated", "not-object", "name", "dtype", "shape", "vocab",
                                 "data", "deep", "binary-lie", "binary-header", "model", "version", "params",
                                 "outputs"]))
    version, headers = "", {"Content-Type": "application/json"}
    if kind == "garbage":
        body = draw(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
    elif kind == "truncated":
        good = json.dumps(infer_doc([IDS])).encode()
        body = good[:draw(st.integers(0, len(good) - 1))]
    elif kind == "not-object":
        body = json.dumps(draw(st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
                                         st.none(), st.booleans()))).encode()
    elif kind == "name":
        name = draw(st.text(max_size=20).filter(lambda s: s != "input_ids"))
        body = json.dumps(infer_doc([IDS], name=name)).encode()
    elif kind == "dtype":
        dt = draw(st.sampled_from(OTHER_DTYPES))
        body = json.dumps(infer_doc(_sample_data(dt), datatype=dt, shape=[1, 3])).encode()
    elif kind == "shape":
        n = draw(st.integers(0, 6))
        data = [draw(st.integers(3, VOCAB - 1)) for _ in range(n)]
        shape = draw(st.lists(st.one_of(st.integers(-3, 7), st.sampled_from([2**40, 2**61, 2**62])), max_size=4))
        if _valid_shape(shape, n):
            shape = shape + [1]             # rank 3: never valid
        body = json.dumps(infer_doc(data, shape=shape)).encode()
    elif kind == "vocab":
        ids = draw(st.lists(st.integers(3, VOCAB - 1), min_size=0, max_size=5))
        bad_id = draw(st.one_of(st.integers(-2**63, -1), st.integers(VOCAB, 2**63 - 1)))
        ids.insert(draw(st.integers(0, len(ids))), bad_id)
        body = json.dumps(infer_doc([ids])).encode()
    elif kind == "data":
        data = draw(st.sampled_from([[[5, 2**64]], [[5, -2**63 - 1]], [[5.5, 6]], [["5", 6]], [[5, [6]]],
                                     [[None, 5]], [[5, 6], [7]], {"a": 5}, "56", [[5, float("nan")]],
                                     [[5, float("inf")]], [[{}, 5]]]))
        body = json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2],
                                       "data": data}]}).encode()
    elif kind == "deep":
        depth = draw(st.integers(1000, 200_000))
        body = b'{"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "data": ' \
            + b"[" * depth + b"5" + b"]" * depth + b"}]}"
    elif kind == "binary-lie":
        body, json_size = _binary_body([IDS])
        lie = draw(st.integers(0, len(body) + 64).filter(lambda n: n != json_size))
        headers = {"Inference-Header-Content-Length": str(lie), "Content-Type": "application/octet-stream"}
    elif kind == "binary-header":
        body, _ = _binary_body([IDS])
        value = draw(st.sampled_from(["", "-1", "abc", "1e3", " 12x", "99999999999999999999"]))
        headers = {"Inference-Header-Content-Length": value, "Content-Type": "application/octet-stream"}
    elif kind == "model":
        model = draw(st.text(NAME_CHARS, min_size=1, max_size=24).filter(lambda s: s not in KNOWN))
        body = json.dumps(GOOD).encode()
    elif kind == "version":
        version = draw(st.one_of(st.integers(2, 10**6).map(str), st.text(NAME_CHARS, min_size=1, max_size=8)
                                 .filter(lambda s: s != "1")))
        body = json.dumps(GOOD).encode()
    elif kind == "params":
        # parameters of the wrong type (a step model would also need a sequence_id: none is valid)
        bad = draw(st.sampled_from([{"sequence_id": [1]}, {"sequence_id": {}}, {"sequence_id": -1.5},
                                    {"sequence_id": -3}, {"sequence_id": True}, {"sequence_id": 2**64},
                                    {"binary_data_output": "yes"}, {"sequence_start": "true"},
                                    {"sequence_end": 1}, {"custom": [1, 2]}, {"custom": None}]))
        body = json.dumps(dict(GOOD, parameters=bad)).encode()
    else:   # outputs
        name = draw(st.text(max_size=12).filter(lambda s: s != "logits"))
        body = json.dumps(dict(GOOD, outputs=[{"name": name}])).encode()
    return model, version, headers, body


@st.composite
def bad_generate(draw):
    """(model, endpoint, body) for /generate or /generate_stream, never valid."""
    model = draw(st.sampled_from(["lstm_generate", "gpt_generate", "lstm"]))
    endpoint = draw(st.sampled_from(["generate", "generate_stream"]))
    kind = draw(st.sampled_from(["garbage", "not-object", "missing", "unknown-key", "text-type", "oov",
                                 "empty", "numbers", "too-long"]))
    doc: object = {"text_input": PROMPT, "max_tokens": 2}
    if kind == "garbage":
        return model, endpoint, draw(st.binary(max_size=200))
    if kind == "not-object":
        doc = draw(st.one_of(st.lists(st.text(max_size=5), max_size=3), st.text(max_size=10), st.integers()))
    elif kind == "missing":
        doc = {"max_tokens": 2}
    elif kind == "unknown-key":
        key = draw(st.text(max_size=12).filter(lambda k: k not in ("text_input", "max_tokens", "temperature",
                                                                    "top_k", "top_p", "seed", "stop", "id",
                                                                    "parameters", "beams")))
        doc = dict(doc, **{key: draw(st.integers())})
    elif kind == "text-type":
        doc = dict(doc, text_input=draw(st.one_of(st.integers(), st.none(), st.booleans(),
                                                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))))
    elif kind == "oov":
        bad_char = draw(st.sampled_from(["\u20ac", "\u00e9", "\x00", "\U0001F600", "\u4e2d"]))
        doc = dict(doc, text_input=PROMPT + bad_char)
    elif kind == "empty":
        doc = dict(doc, text_input="")
    elif kind == "numbers":
        field, value = draw(st.sampled_from([
            ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 2**31), ("max_tokens", 2.5), ("max_tokens", "3"),
            ("temperature", -1.0), ("temperature", "hot"), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5),
            ("top_p", -0.1), ("seed", -1), ("seed", 2**64), ("stop", [""]), ("stop", 5), ("max_tokens", True)]))
        doc = dict(doc, **{field: value})
    else:   # too-long: beyond gpt's 256-position context (and the rnn-family models refuse
        # max_tokens above INT32)
        doc = dict(doc, text_input=PROMPT * 70, max_tokens=2**31 if model != "gpt_generate" else 300)
    return model, endpoint, json.dumps(doc).encode()


def test_bad_requests_are_4xx_with_a_json_error_and_the_server_keeps_serving(server):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=st.one_of(bad_infer().map(lambda c: ("infer", c)), bad_generate().map(lambda c: ("generate", c))))
    def check(case):
        what, c = case
        if what == "infer":
            model, version, headers, body = c
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        else:
            model, endpoint, body = c
            headers = {"Content-Type": "application/json"}
            path = f"/v2/models/{model}/{endpoint}"
        status, resp_headers, resp = server.request("POST", path, body, headers)
        assert 400 <= status < 500, (path, headers, body[:300], status, resp[:500])
        error_of((status, resp_headers, resp), status)

    check()
    assert server.alive()
    assert server.request("GET", "/v2/health/ready")[0] == 200
    status, _, body = server.request("POST", "/v2/models/lstm/infer", GOOD)
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["shape"] == [1, 3, VOCAB]
    events = sse(server, "lstm_generate", {"text_input": PROMPT, "max_tokens": 3, "temperature": 0})
    assert events[-1]["finish_reason"] == "length"


def test_zero_sized_shape_with_huge_dims_is_400(server):
    shape = [2**40, 0, 2**40]
    doc = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": shape, "data": []}]}
    header = json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": shape,
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    statuses = [server.request("POST", "/v2/models/lstm/infer", doc)[0],
                server.request("POST", "/v2/models/lstm/infer", header,
                               {"Inference-Header-Content-Length": str(len(header))})[0]]
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="lstm", raw_input_contents=[b""])
    request.inputs.add(name="input_ids", datatype="INT64", shape=shape)
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        statuses.append(e.value.code())
    assert statuses == [400, 400, grpc.StatusCode.INVALID_ARGUMENT]


def test_oversized_body_is_413_and_the_server_keeps_serving(limits_server):
    s, path = limits_server, "/v2/models/lstm/infer"
    big = json.dumps(infer_doc([[5] * 2000])).encode()
    assert len(big) > 4096
    err = error_of(s.request("POST", path, big, {"Content-Type": "application/json"}), 413)
    assert "4096" in err
    # without Content-Length (chunked), the limit holds while reading
    c = http.client.HTTPConnection(s.host, s.http_port, timeout=30)
    try:
        c.request("POST", path, body=iter([big[i:i + 1000] for i in range(0, len(big), 1000)]),
                  headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = c.getresponse()
        error_of((r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()), 413)
    finally:
        c.close()
    status, _, body = s.request("POST", path, GOOD)
    assert status == 200, body
    assert s.request("GET", "/v2/health/ready")[0] == 200


# ---- 6. metrics and statistics ----------------------------------------------------------------------

REQUIRED_METRICS = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                    "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                    "nv_inference_compute_infer_duration_us")


def test_metrics_and_statistics_count_requests(server):
    before = parse_metrics(server.metrics())
    status, _, body = server.request("POST", "/v2/models/lstm/infer", infer_doc([IDS, IDS]))
    assert status == 200, body
    error_of(server.request("POST", "/v2/models/lstm/infer", infer_doc([[VOCAB + 5]])), 400)
    after = parse_metrics(server.metrics())

    def delta(name, **labels):
        return metric(after, name, "lstm", **labels) - metric(before, name, "lstm", **labels)

    for name in REQUIRED_METRICS:
        metric(after, name, "lstm")
    assert delta("nv_inference_request_success") == 1
    assert delta("nv_inference_request_failure", reason="REJECTED") == 1
    assert delta("nv_inference_count") == 2          # rows
    assert delta("nv_inference_exec_count") == 1
    assert delta("nv_inference_request_duration_us") > 0
    assert delta("nv_inference_compute_infer_duration_us") > 0
    assert delta("nv_inference_queue_duration_us") >= 0
    for model in ("lstm_step", "lstm_generate", "gpt"):       # every model is labelled
        metric(after, "nv_inference_request_success", model)

    hc = th.InferenceServerClient(server.http_address)
    gc = tg.InferenceServerClient(server.grpc_address)
    try:
        hs = hc.get_inference_statistics("lstm")["model_stats"]
        gs = gc.get_inference_statistics("lstm", as_json=True)["model_stats"]
        assert [m["name"] for m in hs] == [m["name"] for m in gs] == ["lstm"]
        success = metric(after, "nv_inference_request_success", "lstm")
        assert hs[0]["inference_stats"]["success"]["count"] == success
        assert int(gs[0]["inference_stats"]["success"]["count"]) == success
        assert int(gs[0]["inference_count"]) == hs[0]["inference_count"] == metric(after, "nv_inference_count", "lstm")
        assert int(gs[0]["execution_count"]) == hs[0]["execution_count"]
        assert hs[0]["inference_stats"]["fail"]["count"] >= 1
        every = {m["name"] for m in hc.get_inference_statistics()["model_stats"]}
        assert every == KNOWN
    finally:
        hc.close()
        gc.close()


# ---- 7. graceful shutdown -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_drains_a_running_stream_then_exits_0(served_repo, logs):
    s = start_server(served_repo("lstm"), logs, "--drain-seconds", "20")
    try:
        c = http.client.HTTPConnection(s.host, s.http_port, timeout=30)
        # ~2 MB of events: the client reads slowly, so the stream is still going at SIGTERM
        c.request("POST", "/v2/models/lstm_generate/generate_stream",
                  body=json.dumps({"text_input": PROMPT, "max_tokens": 20000, "temperature": 0}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        first = r.readline()
        assert first.startswith(b"data:"), first
        s.terminate()
        t_term = time.monotonic()

        deadline = time.monotonic() + 10        # draining: readiness false, new work refused
        while s.request("GET", "/v2/health/ready")[0] != 503:
            assert time.monotonic() < deadline, "readiness did not turn false after SIGTERM"
            time.sleep(0.05)
        err = error_of(s.request("POST", "/v2/models/lstm/infer", GOOD), 503)
        assert "shutting down" in err
        assert s.alive()

        events = [json.loads(first[5:])] + [json.loads(line[5:]) for line in r if line.startswith(b"data:")]
        c.close()
        assert all("error" not in e for e in events), [e for e in events if "error" in e][:3]
        assert events[-1]["finish_reason"] in FINISH_REASONS
        assert all(not e["finish_reason"] for e in events[:-1])
        if events[-1]["finish_reason"] == "length":
            assert len("".join(e["text_output"] for e in events)) >= 20000 - 5

        assert s.proc.wait(25) == 0, s.log_tail()
        assert time.monotonic() - t_term < 20 + 5
        for port in (s.http_port, s.grpc_port, s.metrics_port):
            assert not port_open(port), f"port {port} still accepts connections after exit"
        with pytest.raises(ConnectionRefusedError):
            s.request("GET", "/v2/health/live")
        assert "server stopped" in s.log_path.read_text()
    finally:
        s.stop()


# ---- 8. API key -------------------------------------------------------------------------------------------------

def test_api_key_guards_http_and_grpc_but_not_health(key_server, exported):
    s = key_server
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        err = error_of(s.request("POST", "/v2/models/lstm/infer", GOOD, headers), 401)
        assert "Authorization" in err
        error_of(s.request("GET", "/v2/models/lstm", headers=headers), 401)
        error_of(s.request("POST", "/v2/repository/index", headers=headers), 401)
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert s.request("GET", path)[0] == 200
    status, _, body = s.request("POST", "/v2/models/lstm/infer", GOOD, auth)
    assert status == 200, body

    hc = th.InferenceServerClient(s.http_address)
    gc = tg.InferenceServerClient(s.grpc_address)
    try:
        ids = np.array([IDS], np.int64)
        hin = th.InferInput("input_ids", [1, 3], "INT64")
        hin.set_data_from_numpy(ids)
        with pytest.raises(InferenceServerException) as e:
            hc.infer("lstm", [hin])
        assert "401" in str(e.value.status()) or "API key" in e.value.message()
        res = hc.infer("lstm", [hin], headers=auth)
        np.testing.assert_allclose(res.as_numpy("logits"), local_logits(exported("lstm"), ids), atol=1e-5, rtol=0)

        gin = tg.InferInput("input_ids", [1, 3], "INT64")
        gin.set_data_from_numpy(ids)
        with pytest.raises(InferenceServerException) as e:
            gc.infer("lstm", [gin])
        assert grpc_code(e.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as e:
            gc.get_model_repository_index(headers={"authorization": "Bearer wrong"})
        assert grpc_code(e.value) == "StatusCode.UNAUTHENTICATED"
        assert gc.is_server_live() and gc.is_server_ready()          # health stays open
        res = gc.infer("lstm", [gin], headers={"authorization": f"Bearer {API_KEY}"})
        np.testing.assert_allclose(res.as_numpy("logits"), local_logits(exported("lstm"), ids), atol=1e-5, rtol=0)
    finally:
        hc.close()
        gc.close()

    # the CLI client: refused without the key (a one-line error saying so), works with it
    res = run("generate", "--url", s.http_url, "--model", "lstm", "--prompt", PROMPT, "--max-tokens", 3)
    assert res.exit_code == 2 and "api-key" in res.output, res.output
    res = run("generate", "--url", s.http_url, "--model", "lstm", "--prompt", PROMPT, "--max-tokens", 3,
              "--api-key", API_KEY, "--greedy")
    assert res.exit_code == 0, res.output


# ---- 9. repository API --------------------------------------------------------------------------------------

def test_repository_index_lists_every_model_ready(server):
    index = server.json("POST", "/v2/repository/index", {})
    assert {(m["name"], m["state"]) for m in index} == {(name, "READY") for name in KNOWN}
    assert all(m["version"] == "1" for m in index)
    assert server.request("GET", "/v2/health/ready")[0] == 200
    gc = tg.InferenceServerClient(server.grpc_address)
    try:
        models = gc.get_model_repository_index(as_json=True)["models"]
        assert {(m["name"], m["state"]) for m in models} == {(name, "READY") for name in KNOWN}
    finally:
        gc.close()


def test_unload_then_infer_is_a_clear_4xx_and_load_brings_it_back(repo_server):
    s = repo_server
    status, _, body = s.request("POST", "/v2/models/lstm/infer", GOOD)
    assert status == 200, body
    assert s.request("POST", "/v2/repository/models/lstm/unload")[0] == 200
    err = error_of(s.request("POST", "/v2/models/lstm/infer", GOOD), 404)
    assert "lstm" in err and "unloaded" in err
    rows = {m["name"]: m for m in s.json("POST", "/v2/repository/index")}
    assert rows["lstm"]["state"] == "UNAVAILABLE"
    assert rows["lstm_step"]["state"] == rows["lstm_generate"]["state"] == "READY"
    status, _, body = s.request("POST", "/v2/models/lstm_generate/generate", {"text_input": PROMPT, "max_tokens": 3})
    assert status == 200, body                       # the other models kept serving

    hc = th.InferenceServerClient(s.http_address)
    try:
        hc.load_model("lstm")
        assert hc.is_model_ready("lstm")
    finally:
        hc.close()
    status, _, body = s.request("POST", "/v2/models/lstm/infer", GOOD)
    assert status == 200, body
    assert {m["name"]: m["state"] for m in s.json("POST", "/v2/repository/index")}["lstm"] == "READY"
    error_of(s.request("POST", "/v2/repository/models/nosuchmodel/load"), 400, 404)


def test_corrupt_model_is_unavailable_with_a_reason_while_the_others_serve(repo_server):
    s = repo_server
    rows = {m["name"]: m for m in s.json("POST", "/v2/repository/index")}
    assert set(rows) == {"lstm", "lstm_step", "lstm_generate", "broken"}
    assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"]["reason"].strip()
    assert "model.onnx" in rows["broken"]["reason"] or "ONNX" in rows["broken"]["reason"]
    assert all(rows[n]["state"] == "READY" for n in ("lstm", "lstm_step", "lstm_generate"))
    assert s.request("GET", "/v2/health/ready")[0] == 503          # Triton's strict readiness
    assert s.request("GET", "/v2/health/live")[0] == 200
    assert s.request("GET", "/v2/models/broken/ready")[0] in (400, 404, 503)
    err = error_of(s.request("POST", "/v2/models/broken/infer", GOOD), 404, 503)
    assert "broken" in err
    err = error_of(s.request("POST", "/v2/repository/models/broken/load"), 400)
    assert "broken" in err
    status, _, body = s.request("POST", "/v2/models/lstm/infer", GOOD)
    assert status == 200, body


# ---- 10. default address -----------------------------------------------------------------------------------

def _listeners(port: int) -> list[str]:
    """Local addresses listening on `port` (from /proc/net/tcp and tcp6), e.g. "127.0.0.1"."""
    import ipaddress

    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] != "0A" or int(hexport, 16) != port:      # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            # a dual-stack socket (gRPC's) bound to 127.0.0.1 shows as ::ffff:127.0.0.1
            out.append(str(getattr(ip, "ipv4_mapped", None) or ip))
    return out


def test_server_listens_on_loopback_only_by_default(server):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        addrs = _listeners(port)
        assert addrs, f"nothing listens on port {port}"
        assert set(addrs) == {"127.0.0.1"}, f"port {port} listens on {addrs}"


def test_a_port_in_use_is_a_one_line_error(server, served_repo):
    """Another server holds the port: exit 2 and `error: ... HTTP port N ...`, no traceback."""
    import os
    import subprocess

    from serving import server_command

    cmd = server_command(served_repo("lstm"), "--grpc-port", "-1", "--metrics-port", "-1")
    cmd[cmd.index("--http-port") + 1] = str(server.http_port)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
                         env={**os.environ, "COLUMNS": "200"})
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert f"HTTP port {server.http_port}" in out and "Traceback" not in out, out
