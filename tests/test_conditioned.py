"""The conditioned task (one-to-many, from a feature vector) through the chain: the task spec and
its links, the model's graphs, the decoding loop starting its step state from the init graph,
train -> export -> validate -> generate (torch == ORT), package and serve.

The model trains on scikit-learn's bundled 8x8 digits (no download): 30 steps of the tiny preset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run
from serving import assert_full_graph_served, assert_rejected, assert_streams, serve_export
from test_triton import triton_ready  # noqa: F401 - fixture: tritonserver and its stub environment

from seqserve.models import FAMILIES, build_model, make_config
from seqserve.tasks.spec import FEATURES, ONCE, STATE

# Per family of the conditioned task (test_registry checks every such family has an entry).
FAMILY_FACTS = {"conditioned": {"cells": ("gru", "lstm"), "states": {"gru": 1, "lstm": 2}}}


def tiny(cell="gru", **kw):
    return build_model("conditioned", make_config("conditioned", "tiny", 20, cell=cell, **kw)).eval()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    root = tmp_path_factory.mktemp("conditioned")
    ckpt = train(TrainConfig(family="conditioned", preset="tiny", steps=30, eval_every=30, batch_size=32),
                 root / "ckpt").path
    return export_checkpoint(ckpt, root / "export").path


@pytest.mark.parametrize("cell", FAMILY_FACTS["conditioned"]["cells"])
def test_spec_links_init_outputs_to_the_step_state(cell):
    spec = tiny(cell).spec()
    assert spec.task == "conditioned" and spec.family in FAMILIES
    assert [g.name for g in spec.once] == ["init"] and spec.graph("init").runs == ONCE
    n = FAMILY_FACTS["conditioned"]["states"][cell]
    assert spec.links() == [("init", p.input, "step") for p in spec.step.state] and len(spec.links()) == n
    assert all(t.role == STATE for t in spec.graph("init").outputs)
    assert spec.full.role(FEATURES).dims == ("batch", 64) and spec.io["features"] == 64
    assert spec.io.get("bos") is True


@pytest.mark.parametrize("cell", FAMILY_FACTS["conditioned"]["cells"])
def test_init_once_then_steps_equals_the_full_graph_in_torch(cell):
    from seqserve.tasks import run_graph

    model, g = tiny(cell), torch.Generator().manual_seed(0)
    spec = model.spec()
    feats, ids = torch.rand(3, 64, generator=g), torch.randint(0, 20, (3, 7), generator=g)
    full = run_graph(model, spec, spec.full, {"features": feats, "input_ids": ids})["logits"]
    state = run_graph(model, spec, spec.graph("init"), {"features": feats})
    parts = []
    for a, b in ((0, 1), (1, 4), (4, 7)):
        out = run_graph(model, spec, spec.step, {"input_ids": ids[:, a:b], **state})
        parts.append(out["logits"])
        state = {p.input: out[p.output] for p in spec.step.state}
    torch.testing.assert_close(torch.cat(parts, 1), full)


def test_decode_state_carries_start_values_and_fixed_rows_through_merge_select_row():
    from seqserve.generation import DecodeState
    from seqserve.tasks.spec import CONSTANT, GraphSpec, StatePair, TensorSpec

    class Host:                                   # a backend whose tensors are numpy already
        def to_host(self, v):
            return v

        def from_host(self, v):
            return v

    # A seq2seq-like step graph: fixed state h plus a constant (encoder outputs) fed every step.
    spec = GraphSpec("step", (TensorSpec("ids", "int64", ("batch", "sequence"), "token_ids"),
                              TensorSpec("h", "float32", ("batch", 2), STATE),
                              TensorSpec("memory", "float32", ("batch", 3), CONSTANT)),
                     (TensorSpec("logits", "float32", ("batch", "sequence", 5), "logits"),
                      TensorSpec("h_out", "float32", ("batch", 2), STATE)), (StatePair("h", "h_out"),))
    b = Host()
    parts = [DecodeState.empty(spec, 1, b, {"h": np.full((1, 2), i, np.float32),
                                            "memory": np.full((1, 3), 10 + i, np.float32)}) for i in range(3)]
    st = DecodeState.merge(parts, b)
    feeds = st.feeds(np.zeros((3, 1), np.int64))
    assert feeds["h"][:, 0].tolist() == [0, 1, 2] and feeds["memory"][:, 0].tolist() == [10, 11, 12]
    st = st.advance(feeds, {"logits": None, "h_out": feeds["h"] + 1})
    beams = st.select([2, 2, 0], b)                # beams reorder rows by index: constants follow
    assert beams.feeds(np.zeros((3, 1), np.int64))["memory"][:, 0].tolist() == [12, 12, 10]
    assert beams.state["h"][:, 0].tolist() == [3, 3, 1]
    assert st.row(1, b).fixed["memory"].tolist() == [[11, 11, 11]]
    assert DecodeState.empty(spec, 2, b).state["h"].tolist() == [[0, 0], [0, 0]]   # no start: zeros
    with pytest.raises(ValueError, match="not inputs"):
        DecodeState.empty(spec, 1, b, {"bogus": np.zeros(1)})


def test_export_carries_three_graphs_examples_and_the_feature_width(export):
    from seqserve.export import load_export

    info = load_export(export)
    assert sorted(info.raw["graphs"]) == ["full", "init", "step"]
    assert info.spec.io["features"] == 64
    ex = info.raw["examples"]
    assert len(ex) >= 4 and all(len(e["features"]) == 64 and e["text"] for e in ex)
    assert len({e["text"] for e in ex}) == len(ex)           # one per digit: distinct references


def test_validate_passes_every_check(export):
    from seqserve.validate import validate_export

    report = validate_export(export)
    assert report.passed, [r for r in report.checks if not r.passed]
    summary = report.summary()
    for check in ("onnx_checker", "dynamic_axes", "sidecar", "torch_vs_ort", "incremental_vs_full",
                  "greedy_generation"):
        assert summary[check]["passed"] and summary[check]["rows"] > 0, check
    cases = [r.case for r in report.rows("sidecar")]
    assert "io features == graph feature width" in cases
    assert {r.graph for r in report.rows("torch_vs_ort")} == {"init", "step", "full"}


def _generate(export, backend, params):
    from seqserve.export import load_export
    from seqserve.generation import generate_text
    from seqserve.runtime import make_chain
    from seqserve.tasks.conditioned import examples

    info = load_export(export)
    feats, refs = examples(info.raw, 64)
    step, chain = make_chain(info, backend)
    return generate_text(step, info.tokenizer, [""] * len(feats), params, None, chain,
                         [{"features": feats[i:i + 1]} for i in range(len(feats))])


def test_generation_is_identical_through_ort_and_torch(export):
    from seqserve.generation import SamplingParams

    for params in (SamplingParams(max_tokens=8, greedy=True), SamplingParams(max_tokens=8, temperature=1.0, seed=3)):
        a, b = _generate(export, "ort", params), _generate(export, "torch", params)
        assert [c.tokens for c in a] == [c.tokens for c in b]
        assert all(c.tokens for c in a)


def test_cli_generate_examples_and_features(export, tmp_path):
    for backend in ("ort", "torch"):
        res = run("generate", export, "--examples", "--greedy", "--max-tokens", 8, "--backend", backend)
        assert res.exit_code == 0, res.output
        assert "reference" in res.output and "exact match" in res.output
    good, bad, nan = tmp_path / "good.npy", tmp_path / "bad.npy", tmp_path / "nan.npy"
    np.save(good, np.random.default_rng(0).random((2, 64), dtype=np.float32))
    np.save(bad, np.zeros((2, 3), np.float32))
    np.save(nan, np.full((1, 64), np.nan, np.float32))
    res = run("generate", export, "--features", good, "--greedy", "--max-tokens", 6)
    assert res.exit_code == 0 and res.output.count("│ 0 │") == 1, res.output
    assert_one_line_error(run("generate", export, "--features", bad), "[N, 64]", "[2, 3]")
    assert_one_line_error(run("generate", export, "--features", nan), "NaN")
    assert_one_line_error(run("generate", export), "--features", "--examples")
    beams = {b: run("generate", export, "--examples", "--beams", 3, "--max-tokens", 8, "--backend", b)
             for b in ("ort", "torch")}
    assert beams["ort"].exit_code == 0 and "exact match" in beams["ort"].output, beams["ort"].output
    assert beams["ort"].output == beams["torch"].output


# ---- packaged and served ------------------------------------------------------------------------

def _reference(export, feats, max_tokens=8):
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.runtime import make_chain

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    return [c.text for c in generate_text(step, info.tokenizer, [""] * len(feats),
                                          SamplingParams(max_tokens=max_tokens, greedy=True), None, chain,
                                          [{"features": f[None]} for f in feats])]


def _greedy(features: np.ndarray) -> dict:
    """A generate request: the feature vector, 8 tokens, greedy."""
    return {"features": features.tolist(), "max_tokens": 8, "temperature": 0.0}


def _grpc_text(address: str, features: np.ndarray, max_tokens: int = 8, dtype: str = "FP32") -> str:
    """One ModelStreamInfer request to cap_generate through tritonclient: the streamed text."""
    import queue

    import tritonclient.grpc as tg

    results: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(address)
    inputs = []
    for name, dt, arr in (("features", dtype, features), ("max_tokens", "INT32", np.array([max_tokens], np.int32)),
                          ("temperature", "FP32", np.array([0.0], np.float32))):
        t = tg.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text = ""
    try:
        client.async_stream_infer("cap_generate", inputs, enable_empty_final_response=True)
        while True:
            r, e = results.get(timeout=60)
            if e is not None:
                raise e
            out = r.as_numpy("text_output")
            text += out[0].decode() if out is not None and out.size else ""
            if r.get_response().parameters["triton_final_response"].bool_param:
                return text
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("target", ["seqserve", "triton-python", "triton-gpu"])
def test_package_writes_full_and_generate_with_the_init_graph(export, tmp_path, target):
    from seqserve.package import PackageOptions, load_version, package_export, read_config
    from seqserve.validate.repository import validate_repository

    models = package_export(export, tmp_path / "repo", "cap", options=PackageOptions(target=target))
    assert {m.name: m.kind for m in models} == {"cap": "full", "cap_generate": "generate"}   # no cap_step
    gen = load_version(tmp_path / "repo" / "cap_generate" / "1")
    assert gen.once == ("init",) and gen.info.graph_path("init").name == "init.onnx"
    assert load_version(tmp_path / "repo" / "cap" / "1").once == ()
    cfg = read_config(tmp_path / "repo" / "cap_generate")
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs["features"].dims) == [64] and not inputs["features"].optional
    assert inputs["text_input"].optional
    assert cfg.backend == ("seqserve" if target == "seqserve" else "python")
    full = read_config(tmp_path / "repo" / "cap")
    assert [i.name for i in full.input] == ["features", "input_ids"]
    report = validate_repository(tmp_path / "repo")
    assert report.passed, [r for r in report.checks if not r.passed]


@pytest.fixture(scope="module")
def served(export, tmp_path_factory):
    with serve_export(export, tmp_path_factory.mktemp("conditioned-serve"), "cap") as s:
        yield s


@pytest.mark.slow
def test_served_generate_streams_what_seqserve_generate_gives(export, served):
    from test_serve import sse

    from seqserve.tasks.conditioned import examples

    from seqserve.export import load_export

    feats, _ = examples(load_export(export).raw, 64)
    want = _reference(export, feats[:3])
    assert_streams(served, "cap_generate", [_greedy(f) for f in feats[:3]], want)
    # beams through the chain (init once, step rows reordered per beam) == the local beam search
    from seqserve.generation import Chain  # noqa: F401 - make_chain builds it
    from seqserve.generation.beam import BeamParams, beam_texts
    from seqserve.runtime import make_chain

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    best = beam_texts(step, info.tokenizer, [""], BeamParams(beams=3, max_tokens=8), None, chain,
                      [{"features": feats[:1]}])[0][0].text
    events = sse(served, "cap_generate", {"features": feats[0].tolist(), "max_tokens": 8, "beams": 3})
    assert "".join(e["text_output"] for e in events) == best

    # gRPC stream, through tritonclient; the wrong dtype is an error naming what was expected
    from tritonclient.utils import InferenceServerException

    assert _grpc_text(served.grpc_address, feats[0]) == want[0]
    with pytest.raises(InferenceServerException) as e:
        _grpc_text(served.grpc_address, feats[0].astype(np.float64), dtype="FP64")
    assert "features" in e.value.message() and "expects FP32" in e.value.message(), e.value   # a stream error: no status
    # the full graph (NAME): features + input_ids -> logits, equal to in-process ORT
    assert_full_graph_served(served, "cap", export,
                             {"features": feats[:1], "input_ids": np.array([[1, 4, 5]], np.int64)})


@pytest.mark.slow
@pytest.mark.parametrize("features, words", [
    ([0.5] * 3, ["features", "[64]", "[3]"]),
    ([float("nan")] * 64, ["NaN", "features"]),
    (None, ["missing", "features"]),
])
def test_bad_features_are_4xx_saying_what_was_expected(served, features, words):
    body = {"max_tokens": 4} if features is None else {"features": features, "max_tokens": 4}
    assert_rejected(served, "cap_generate", body, words)


@pytest.mark.slow
def test_tritonserver_python_backend_streams_what_seqserve_generate_gives(export, tmp_path_factory, request):
    """The real tritonserver (python backend) on a triton-python repository: the same SSE and
    gRPC client code, the same text as in-process generation."""
    from seqserve.export import load_export
    from seqserve.tasks.conditioned import examples

    request.getfixturevalue("triton_ready")
    feats, _ = examples(load_export(export).raw, 64)
    want = _reference(export, feats[:2])
    s = serve_export(export, tmp_path_factory.mktemp("conditioned-triton"), "cap", "triton-python")
    try:
        assert_streams(s, "cap_generate", [_greedy(f) for f in feats[:2]], want, finished=False)
        assert _grpc_text(s.grpc_address, feats[0]) == want[0]
        assert_rejected(s, "cap_generate", {"features": [0.5] * 3, "max_tokens": 4}, ["features"], still_ready=False)
    finally:
        assert s.stop(60) == 0


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_loadtest_drives_generate_with_synthesized_features(served, proto):
    from seqserve.loadtest import make_config, run_loadtest

    url = served.http_url if proto == "http" else served.grpc_url
    res = run_loadtest(make_config(url, "cap_generate", metrics_url=served.metrics_url, workload="generate",
                                   concurrency="2", max_tokens=6, duration="1s", warmup="0.2s"))
    lv = res["levels"][0]
    assert lv["ok"] > 0 and lv["errors"] == 0, lv["error_kinds"]
    assert lv["streaming"]["tokens_per_request"]["mean"] >= 1


@pytest.mark.slow
def test_cli_generate_url_with_features_prints_what_the_export_gives(export, served, tmp_path):
    from seqserve.export import load_export
    from seqserve.tasks.conditioned import examples

    feats, _ = examples(load_export(export).raw, 64)
    np.save(tmp_path / "f.npy", feats[:2])
    want = _reference(export, feats[:2])
    local = run("generate", export, "--features", tmp_path / "f.npy", "--greedy", "--max-tokens", 8)
    assert local.exit_code == 0, local.output
    for url in (served.http_url, served.grpc_url):
        res = run("generate", "--url", url, "--model", "cap", "--features", tmp_path / "f.npy", "--greedy",
                  "--max-tokens", 8)
        assert res.exit_code == 0, res.output
        assert res.output == local.output and all(w in res.output for w in want)
    np.save(tmp_path / "bad.npy", feats[:1, :3])
    assert_one_line_error(run("generate", "--url", served.http_url, "--model", "cap", "--features",
                              tmp_path / "bad.npy"), "features", "64")


def test_cli_train_prints_the_held_out_score(tmp_path):
    res = run("train", "--family", "conditioned", "--preset", "tiny", "--steps", "5", "--eval-every", "5",
              "--out", tmp_path / "ckpt")
    assert res.exit_code == 0, res.output
    assert "held-out exact match" in res.output and "token accuracy" in res.output
