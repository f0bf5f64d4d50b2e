"""Continuous batching on a slot pool (serve/slot_pool.py): a `--kv-cache static` gpt export packaged
and served; NAME_generate streams (HTTP SSE and gRPC) each equal in-process greedy generation on the
same export, together, staggered, with more streams than slots, and while a long prompt prefills."""

from __future__ import annotations

import threading
import time

import pytest

from seqserve.errors import SeqserveError

from serving import start_server
from test_serve import grpc_stream, sse

SLOTS = 3
PROMPTS = ["def ", "import os\nclass ", "x = 1\n", "for i in range(10):\n    ", "return self.", "#"]


@pytest.fixture(scope="module")
def static_export(tmp_path_factory, checkpoint):
    from seqserve.export import ExportOptions, export_checkpoint

    return export_checkpoint(checkpoint("gpt"), tmp_path_factory.mktemp("slots") / "gpt",
                             ExportOptions(kv_cache="static"))


@pytest.fixture(scope="module")
def pool_server(static_export, tmp_path_factory):
    from seqserve.package import PackageOptions, package_export

    root = tmp_path_factory.mktemp("slot_pool_repo")
    models = [m.name for m in package_export(static_export.path, root / "repo", "gpt",
                                             options=PackageOptions(max_streams=SLOTS))]
    assert "gpt_step" not in models and {"gpt", "gpt_generate"} <= set(models)
    server = start_server(root / "repo", root)
    yield server
    server.stop()


_want: dict = {}


def local_greedy(export, prompt: str, n: int) -> str:
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.runtime import RuntimeOptions, ort_backend

    key = (prompt, n)
    if key not in _want:
        be = ort_backend(export, "step", RuntimeOptions(intra_op_threads=1))
        c = generate_text(be, export.tokenizer, [prompt], SamplingParams(max_tokens=n, greedy=True),
                          export.max_context)[0]
        _want[key] = c.text
    return _want[key]


def sse_text(server, prompt: str, n: int) -> str:
    events = sse(server, "gpt_generate", {"text_input": prompt, "max_tokens": n, "temperature": 0})
    assert all("error" not in e for e in events), events
    assert events[-1]["finish_reason"]
    return "".join(e["text_output"] for e in events)


def grpc_text(server, prompt: str, n: int) -> str:
    got = grpc_stream(server, "gpt_generate", prompt, n)
    assert got[-1][2]
    return "".join(t for t, _, _ in got)


def _concurrently(jobs, delays=None) -> list:
    out: list = [None] * len(jobs)

    def run(i, job):
        if delays:
            time.sleep(delays[i])
        try:
            out[i] = job()
        except BaseException as e:   # noqa: BLE001 - reported by the test
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for x in out:
        if isinstance(x, BaseException):
            raise x
    return out


def test_concurrent_streams_equal_local_greedy(pool_server, static_export):
    """SLOTS streams at once over SSE and gRPC (one batched call per step), each its own text."""
    n = 30
    jobs = [(lambda p=p: sse_text(pool_server, p, n)) for p in PROMPTS[:SLOTS]]
    jobs += [(lambda p=p: grpc_text(pool_server, p, n)) for p in PROMPTS[:SLOTS]]
    got = _concurrently(jobs)
    want = [local_greedy(static_export, p, n) for p in PROMPTS[:SLOTS]] * 2
    assert got == want
    # and the same through the non-streaming endpoint
    import json

    status, _, body = pool_server.request("POST", "/v2/models/gpt_generate/generate",
                                          {"text_input": PROMPTS[0], "max_tokens": n, "temperature": 0})
    assert status == 200 and json.loads(body)["text_output"] == want[0]


def test_staggered_joins_equal_local_greedy(pool_server, static_export):
    """Streams join while others decode (different lengths in the pool, no padding) and leave
    at different times; more streams than slots wait for a free one."""
    ns = [40, 12, 25, 33, 8, 20]
    jobs = [(lambda p=p, k=k, i=i: (sse_text if i % 2 else grpc_text)(pool_server, p, k))
            for i, (p, k) in enumerate(zip(PROMPTS, ns))]
    got = _concurrently(jobs, delays=[0.0, 0.01, 0.03, 0.05, 0.08, 0.12])
    assert got == [local_greedy(static_export, p, k) for p, k in zip(PROMPTS, ns)]


def test_slots_are_reused(pool_server, static_export):
    """More streams than slots, one after another: each freed slot serves the next stream (whose
    cache is shorter than what the slot held before: nothing left over is read)."""
    prompts = ["for i in range(10):\n    x = i * 2\n", "#", "def f(a, b):\n", "x", "import sys\n", "a"] * 2
    for i, p in enumerate(prompts[: 3 * SLOTS + 1]):
        n = 24 if i % 2 else 6
        assert sse_text(pool_server, p, n) == local_greedy(static_export, p, n), (i, p)


def _stream_with_arrivals(server, prompt: str, n: int, started: threading.Event | None = None):
    """SSE stream -> (text, the time each event arrived); `started` is set at the first event."""
    import http.client
    import json

    c = http.client.HTTPConnection(server.host, server.http_port, timeout=60)
    try:
        c.request("POST", "/v2/models/gpt_generate/generate_stream",
                  body=json.dumps({"text_input": prompt, "max_tokens": n, "temperature": 0}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        pieces, arrivals = [], []
        for line in r:
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic())
                if started is not None:
                    started.set()
                pieces.append(json.loads(line[5:])["text_output"])
    finally:
        c.close()
    return "".join(pieces), arrivals


def test_a_long_prompt_prefills_in_chunks_while_others_decode(pool_server, static_export):
    """A running stream keeps getting tokens while a long prompt joins (chunked prefill): events
    of the running stream arrive between the long prompt's request and its first token."""
    long_prompt = ("def function_name(argument, other_argument):\n    return argument + other_argument\n" * 3)[:200]
    assert len(static_export.tokenizer.encode(long_prompt)) > 8 * 16     # many chunks
    runner_n = static_export.max_context - 8
    for _ in range(3):             # again if the runner had finished before the long prompt joined
        first = threading.Event()
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(runner=_stream_with_arrivals(pool_server, "#", runner_n, first)))
        t.start()
        assert first.wait(60)
        sent = time.monotonic()
        text, long_arrivals = _stream_with_arrivals(pool_server, long_prompt, 5)
        t.join(120)
        runner_text, arrivals = out["runner"]
        assert text == local_greedy(static_export, long_prompt, 5)
        assert runner_text == local_greedy(static_export, "#", runner_n)
        if arrivals[-1] > long_arrivals[0]:          # still running when the long prompt's first token came
            break
    else:
        pytest.skip("the running stream always finished before the long prompt joined (a loaded machine)")
    during = [a for a in arrivals if sent <= a < long_arrivals[0]]
    assert len(during) > 0, "the running stream got no token while the long prompt was prefilled"


def test_beams_refused_with_a_clear_message(pool_server):
    status, _, body = pool_server.request("POST", "/v2/models/gpt_generate/generate",
                                          {"text_input": "def ", "max_tokens": 4, "beams": 2})
    assert status == 400 and b"--kv-cache" in body, body


def test_package_refuses_other_targets(static_export, tmp_path):
    from seqserve.package import PackageOptions, package_export

    for target in ("triton-gpu", "triton-python"):
        with pytest.raises(SeqserveError, match="--kv-cache concat"):
            package_export(static_export.path, tmp_path / "repo", options=PackageOptions(target=target))
    assert not (tmp_path / "repo").exists()
