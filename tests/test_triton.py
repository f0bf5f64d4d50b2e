"""A real tritonserver (2.51, python backend) serving a `--target triton-python` repository, started
by `seqserve serve --engine triton`, against in-process ONNX Runtime and against the embedded
server on the SAME repository with the SAME client code.

CI fetches tritonserver (the nvidia-pytriton wheel, extracted into seqserve's cache) and the stub's
numpy-1 overlay once; the tests skip only when those cannot be downloaded.
"""

from __future__ import annotations

import queue
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers import run
from serving import start_server
from test_serve import grpc_stream, local_greedy, local_logits, sse
from tritonclient.utils import InferenceServerException

from conftest import ALL_FAMILIES

pytestmark = pytest.mark.slow

PROMPT = "The "
STEP_FAMILIES = ("lstm", "gru", "gpt")          # RNN state and a KV cache kept by the model


@pytest.fixture(scope="module")
def triton_ready():
    """tritonserver in the cache and a stub environment for this interpreter (downloads once)."""
    from tritonserver_fixture import tritonserver_or_skip

    from seqserve.tools.perf_analyzer import PackageDownloadError
    from seqserve.triton.stub_env import prepare_overlay

    tritonserver_or_skip()
    try:
        prepare_overlay()
    except PackageDownloadError as e:
        pytest.skip(f"numpy 1.26 for tritonserver's python-backend stub cannot be downloaded here: {e}")


@pytest.fixture(scope="module")
def repo(exported, tmp_path_factory) -> Path:
    """triton-python repository: the full model of every family; step and generate for a few."""
    from seqserve.package import PackageOptions, package_export

    root = tmp_path_factory.mktemp("triton-repo") / "repo"
    for family in ALL_FAMILIES:
        package_export(exported(family), root, options=PackageOptions(target="triton-python", max_sequences=32))
        if family not in STEP_FAMILIES:
            shutil.rmtree(root / f"{family}_step")
        if family not in ("lstm", "gpt"):
            shutil.rmtree(root / f"{family}_generate")
    return root


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton-logs")


@pytest.fixture(scope="module")
def triton(triton_ready, repo, logs):
    s = start_server(repo, logs, "--engine", "triton", threads=None, timeout=240)
    yield s
    assert s.stop(60) == 0


@pytest.fixture(scope="module")
def embedded(repo, logs):
    s = start_server(repo, logs)
    yield s
    s.stop()


def _both(request) -> list:
    return [request.getfixturevalue("triton"), request.getfixturevalue("embedded")]


# ---- the same client code against both servers ------------------------------------------------------

def full_logits_http(server, model: str, ids: np.ndarray) -> np.ndarray:
    c = th.InferenceServerClient(server.http_address)
    i = th.InferInput("input_ids", list(ids.shape), "INT64")
    i.set_data_from_numpy(ids)
    return c.infer(model, [i]).as_numpy("logits")


def full_logits_grpc(server, model: str, ids: np.ndarray) -> np.ndarray:
    c = tg.InferenceServerClient(server.grpc_address)
    i = tg.InferInput("input_ids", list(ids.shape), "INT64")
    i.set_data_from_numpy(ids)
    return c.infer(model, [i]).as_numpy("logits")


def step_sequence(server, model: str, sid: int, chunks: list[list[int]]) -> np.ndarray:
    """Send `chunks` as one sequence over gRPC; the logits of every position, concatenated."""
    c = tg.InferenceServerClient(server.grpc_address)
    out = []
    for k, chunk in enumerate(chunks):
        ids = np.array([chunk], np.int64)
        i = tg.InferInput("input_ids", list(ids.shape), "INT64")
        i.set_data_from_numpy(ids)
        r = c.infer(model, [i], sequence_id=sid, sequence_start=k == 0, sequence_end=k == len(chunks) - 1)
        out.append(r.as_numpy("logits")[0])
    return np.concatenate(out)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_full_model_through_triton_equals_onnxruntime(triton, exported, family):
    ids = np.random.default_rng(1).integers(3, 98, size=(3, 7)).astype(np.int64)
    ref = local_logits(exported(family), ids)
    np.testing.assert_allclose(full_logits_http(triton, family, ids), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(full_logits_grpc(triton, family, ids), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", STEP_FAMILIES)
def test_interleaved_sequences_through_triton_equal_their_serial_reference(triton, exported, family):
    """12 sequences from 12 threads at once (Triton's oldest strategy batches them into one
    execute; the model keeps each state by correlation id): each equals the full graph over it."""
    rng = np.random.default_rng(2)
    seqs = {100 + n: [rng.integers(3, 98, size=int(rng.integers(1, 4))).tolist() for _ in range(5)]
            for n in range(12)}
    got, errors = {}, []
    barrier = threading.Barrier(len(seqs))

    def one(sid, chunks):
        try:
            barrier.wait(30)
            got[sid] = step_sequence(triton, f"{family}_step", sid, chunks)
        except Exception as e:      # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=item) for item in seqs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for sid, chunks in seqs.items():
        flat = np.array([[t for chunk in chunks for t in chunk]], np.int64)
        ref = local_logits(exported(family), flat)[0]
        np.testing.assert_allclose(got[sid], ref, rtol=1e-3, atol=1e-3, err_msg=f"sequence {sid}")


def test_sequence_errors_through_triton_are_clear(triton):
    c = tg.InferenceServerClient(triton.grpc_address)
    ids = np.array([[5]], np.int64)
    i = tg.InferInput("input_ids", [1, 1], "INT64")
    i.set_data_from_numpy(ids)
    with pytest.raises(InferenceServerException) as e:      # no START: Triton's own message
        c.infer("lstm_step", [i], sequence_id=987654)
    assert "987654" in str(e.value) or "START" in str(e.value)
    bad = np.array([[500]], np.int64)                        # outside the vocabulary: ours
    i.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException) as e:
        c.infer("lstm_step", [i], sequence_id=987655, sequence_start=True, sequence_end=True)
    assert "vocabulary" in str(e.value)
    # ...and the server goes on serving
    assert step_sequence(triton, "lstm_step", 987656, [[5, 6]]).shape == (2, 98)


def test_bad_generation_parameter_through_triton_is_invalid_argument(request):
    """Issue 10's F1 on both servers: the same parameter rule, INVALID_ARGUMENT, never INTERNAL."""
    for server in _both(request):
        results: queue.Queue = queue.Queue()
        c = tg.InferenceServerClient(server.grpc_address)
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        t = tg.InferInput("text_input", [1], "BYTES")
        t.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
        c.async_stream_infer("lstm_generate", [t], parameters={"seed": -1})
        _, error = results.get(timeout=60)
        c.stop_stream()
        assert error is not None and "seed" in str(error) and "internal" not in str(error).lower(), (server, error)


@pytest.mark.parametrize("family", ["lstm", "gpt"])
def test_streamed_generation_through_triton_equals_local_greedy(triton, exported, family):
    text, finish = local_greedy(exported(family), PROMPT, 16)
    pieces = grpc_stream(triton, f"{family}_generate", PROMPT, 16)
    assert "".join(p[0] for p in pieces) == text
    assert pieces[-1][2] and [p[2] for p in pieces[:-1]] == [False] * (len(pieces) - 1)
    assert pieces[-1][1] == finish
    events = sse(triton, f"{family}_generate", {"text_input": PROMPT, "max_tokens": 16, "temperature": 0.0})
    assert "".join(e["text_output"] for e in events) == text
    assert events[-1]["finish_reason"] == finish


def test_same_client_code_against_both_servers(request, exported):
    """tritonclient (HTTP, gRPC, stream), SSE and `seqserve generate --url`: same code, same answers."""
    ids = np.array([[5, 17, 33, 8]], np.int64)
    answers = []
    for server in _both(request):
        answers.append((full_logits_http(server, "gru", ids), full_logits_grpc(server, "gru", ids),
                        step_sequence(server, "lstm_step", 7, [[5, 6], [7], [8, 9]]),
                        "".join(p[0] for p in grpc_stream(server, "gpt_generate", PROMPT, 10)),
                        "".join(e["text_output"] for e in sse(server, "lstm_generate",
                                                               {"text_input": PROMPT, "max_tokens": 10, "temperature": 0.0}))))
        for url in (server.http_url, server.grpc_url):
            res = run("generate", "--url", url, "--model", "lstm", "--prompt", PROMPT, "--max-tokens", "10",
                      "--greedy")
            assert res.exit_code == 0, res.output
            assert local_greedy(exported("lstm"), PROMPT, 10)[0] in res.output
    (t_http, t_grpc, t_seq, t_gen, t_sse), (e_http, e_grpc, e_seq, e_gen, e_sse) = answers
    for a, b in ((t_http, e_http), (t_grpc, e_grpc), (t_seq, e_seq)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert (t_gen, t_sse) == (e_gen, e_sse)


def test_stream_of_many_generations_at_once(triton, exported):
    """8 streams at once through Triton's decoupled model (continuous batching inside it)."""
    text, _ = local_greedy(exported("gpt"), PROMPT, 12)
    results: queue.Queue = queue.Queue()

    def one():
        try:
            results.put("".join(p[0] for p in grpc_stream(triton, "gpt_generate", PROMPT, 12)))
        except Exception as e:      # noqa: BLE001
            results.put(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results.get_nowait() for _ in range(8)] == [text] * 8


def test_a_corrupt_graph_is_reported_and_the_other_models_serve(triton_ready, repo, logs, tmp_path, exported):
    broken = tmp_path / "repo"
    shutil.copytree(repo, broken, ignore=shutil.ignore_patterns("*_generate", "gpt*", "rnn*"))
    onnx = broken / "lstm" / "1" / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()                                   # a copy may be a hard link: never write through it
    onnx.write_bytes(data[: len(data) // 2])
    s = start_server(broken, logs, "--engine", "triton", threads=None, timeout=240)
    try:
        log = s.log_path.read_text(errors="replace")
        line = next(ln for ln in log.splitlines() if "│ lstm " in ln)
        assert "UNAVAILABLE" in line, log
        assert "ONNX Runtime cannot load" in log, log
        ids = np.array([[5, 6, 7]], np.int64)
        np.testing.assert_allclose(full_logits_http(s, "gru", ids), local_logits(exported("gru"), ids),
                                   rtol=1e-4, atol=1e-4)
        with pytest.raises(InferenceServerException):
            full_logits_http(s, "lstm", ids)
    finally:
        assert s.stop(60) == 0
