"""The seq2seq task through the whole chain, once per family (RNN with attention, Transformer):
the decoding loop running the encoder once (beams copy its constants, never recompute them),
sources of different lengths in one batch, train -> export -> validate -> generate (torch == ORT,
greedy and beams), bad sources, package for every target, `seqserve serve` and the real
tritonserver streaming what `seqserve generate` gives, loadtest. Family-specific model tests stay
in test_seq2seq.py (RNN) and test_seq2seq_transformer.py.

Both families train on numbers in digits -> words from num2words (no download): 30 steps of tiny.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, run
from serving import assert_full_graph_served, assert_rejected, assert_streams, serve_export
from test_triton import triton_ready  # noqa: F401 - fixture: tritonserver and its stub environment

from seqserve.tasks.spec import CONSTANT

# The task's families and what a test needs of each (test_registry: every family of the task).
FAMILY_FACTS = {"seq2seq": {"name": "s2s", "overrides": {"cell": "gru", "attention": "additive"}},
                "transformer": {"name": "tx", "overrides": {}}}
SOURCES = ["342", "1999", "7"]


@pytest.fixture(scope="module", params=sorted(FAMILY_FACTS))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def export(family, tmp_path_factory):
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    root = tmp_path_factory.mktemp(family)
    ckpt = train(TrainConfig(family=family, preset="tiny", steps=30, eval_every=30, batch_size=32,
                             model_overrides=FAMILY_FACTS[family]["overrides"]), root / "ckpt").path
    return export_checkpoint(ckpt, root / "export").path


@pytest.fixture(scope="module")
def name(family):
    return FAMILY_FACTS[family]["name"]


def _chain(export):
    from seqserve.export import load_export
    from seqserve.runtime import make_chain

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    return info, chain.once[0], step


def _reference(export, sources, max_tokens=10):
    """What `seqserve generate --greedy` gives (in-process ORT, the one loop)."""
    from seqserve.generation import SamplingParams
    from seqserve.tasks import seq2seq

    info, encoder, step = _chain(export)
    texts = [""] * len(sources)
    for ev in seq2seq.generate_targets(encoder, step, info.spec, info.tokenizer, sources,
                                       SamplingParams(max_tokens=max_tokens, greedy=True)):
        texts[ev.index] += ev.text
    return texts


def _reference_beam(export, source, max_tokens=10, beams=4):
    """What `seqserve generate --beams 4` prints: the best hypothesis."""
    from seqserve.generation.beam import BeamParams
    from seqserve.tasks import seq2seq

    info, encoder, step = _chain(export)
    return seq2seq.generate_targets(encoder, step, info.spec, info.tokenizer, [source],
                                    BeamParams(beams=beams, max_tokens=max_tokens))[0][0].text


def _greedy(source: str) -> dict:
    """A generate request: the source, 10 tokens, greedy."""
    return {"text_input": source, "max_tokens": 10, "temperature": 0.0}


# ---- the chain ----------------------------------------------------------------------------------

def test_beam_search_runs_the_encoder_once_per_source_and_copies_its_constants_per_beam(export):
    from seqserve.generation.beam import BeamParams
    from seqserve.tasks import seq2seq

    info, encoder, step = _chain(export)
    constant = next(t.name for t in step.spec.inputs if t.role == CONSTANT)   # encoder outputs / cross K/V
    calls, widths = [], []
    run_step = step.run

    class Counting:
        spec = encoder.spec
        to_host, from_host = encoder.to_host, encoder.from_host

        def run(self, feeds):
            calls.append(feeds["source_ids"].shape)
            return encoder.run(feeds)

    def counted_step(feeds):
        widths.append(feeds[constant].shape[0])    # one copy per beam row
        return run_step(feeds)

    step.run = counted_step
    hyps = seq2seq.generate_targets(Counting(), step, info.spec, info.tokenizer, ["12", "3456"],
                                    BeamParams(beams=4, max_tokens=6, stop_at_eos=False))
    assert calls == [(1, 2), (1, 4)]                 # the encoder ran once per source, never again
    assert [len(h) for h in hyps] == [4, 4] and max(widths) == 4


def test_sources_of_different_lengths_share_a_batch(export):
    """Greedy over a batch of sources (constants right-padded by DecodeState.merge) == each alone."""
    from seqserve.generation import SamplingParams
    from seqserve.tasks import seq2seq

    info, encoder, step = _chain(export)
    params = SamplingParams(max_tokens=8, greedy=True, stop_at_eos=False)

    def tokens(sources):
        out = [[] for _ in sources]
        for ev in seq2seq.generate_targets(encoder, step, info.spec, info.tokenizer, sources, params):
            out[ev.index].append(ev.token)
        return out

    assert tokens(["7", "1234", "56"]) == [tokens([s])[0] for s in ("7", "1234", "56")]


def test_validate_passes_every_check(export):
    from seqserve.validate import validate_export

    report = validate_export(export)
    assert report.passed, [r for r in report.checks if not r.passed]
    assert {"torch_vs_ort", "incremental_vs_full", "greedy_generation", "sidecar"} <= {r.check for r in report.checks}
    cases = " ".join(r.case for r in report.checks)
    for what in ("batch=1", "batch=3", "padded", "beams=4", "token by token", "chunks of 3, 4, 5", "== alone"):
        assert what in cases
    assert {r.graph for r in report.rows("torch_vs_ort")} == {"encoder", "step", "full"}


@pytest.mark.parametrize("extra", [["--greedy"], ["--beams", "4"]])
def test_generate_is_identical_through_ort_and_torch(export, extra):
    outs = [run("generate", export, "--prompt", "1234", "--prompt", "7", "--max-tokens", "12",
                "--backend", b, *extra) for b in ("ort", "torch")]
    assert all(r.exit_code == 0 for r in outs), [r.output for r in outs]
    assert outs[0].stdout == outs[1].stdout


def test_generate_examples_shows_each_reference(export):
    res = run("generate", export, "--examples", "--greedy", "--max-tokens", "8")
    assert res.exit_code == 0, res.output
    assert "reference" in res.output and "exact match" in res.output and "seven thousand" in res.output


def test_bad_sources_and_beams_are_one_line_errors(export):
    from seqserve.export import load_export

    too_long = load_export(export).spec.io["max_source_len"] + 1
    for args, words in [
        (["--prompt", "12a"], ["outside the source vocabulary", "'a'"]),
        (["--prompt", "1" * too_long], [f"{too_long} characters", "at most"]),
        (["--prompt", ""], ["empty"]),
        (["--prompt", "12", "--beams", "0"], ["beams", "1..64"]),
        (["--prompt", "12", "--beams", "65"], ["beams", "1..64"]),
        (["--examples", "--prompt", "1"], ["--prompt SOURCE"]),
    ]:
        assert_one_line_error(run("generate", export, *args), *words)


# ---- packaged and served ------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["seqserve", "triton-python", "triton-gpu"])
def test_package_writes_full_and_generate_with_the_encoder_graph(export, name, tmp_path, target):
    from seqserve.package import PackageOptions, load_version, package_export, read_config

    models = package_export(export, tmp_path / "repo", name, options=PackageOptions(target=target))
    assert {m.name: m.kind for m in models} == {name: "full", f"{name}_generate": "generate"}   # no NAME_step
    gen = load_version(tmp_path / "repo" / f"{name}_generate" / "1")
    assert gen.once == ("encoder",) and gen.info.graph_path("encoder").name == "encoder.onnx"
    cfg = read_config(tmp_path / "repo" / f"{name}_generate")
    inputs = {i.name: i for i in cfg.input}
    assert not inputs["text_input"].optional and "source_ids" not in inputs   # the source is text
    assert cfg.backend == ("seqserve" if target == "seqserve" else "python")
    full = read_config(tmp_path / "repo" / name)
    assert [i.name for i in full.input] == ["source_ids", "source_mask", "input_ids"]
    if target == "triton-gpu":      # the full graph on Triton's onnxruntime backend, generate on python
        assert full.platform == "onnxruntime_onnx"


@pytest.fixture(scope="module")
def served(export, name, tmp_path_factory):
    with serve_export(export, tmp_path_factory.mktemp(f"{name}-serve"), name) as s:
        yield s


def test_served_generate_streams_what_seqserve_generate_gives(export, name, served):
    from test_serve import grpc_stream

    want = _reference(export, SOURCES)
    assert_streams(served, f"{name}_generate", [_greedy(src) for src in SOURCES], want)
    assert "".join(t for t, _, _ in grpc_stream(served, f"{name}_generate", SOURCES[1], 10)) == want[1]
    # the full graph (NAME): source + target ids -> logits, equal to in-process ORT
    assert_full_graph_served(served, name, export, {
        "source_ids": np.array([[4, 5, 6]], np.int64), "source_mask": np.ones((1, 3), np.int64),
        "input_ids": np.array([[1, 7, 8, 9]], np.int64)})


def test_bad_sources_are_4xx_saying_what_was_expected(export, name, served):
    from seqserve.export import load_export

    too_long = load_export(export).spec.io["max_source_len"] + 1
    for body, words in [({"text_input": "12a"}, ["'a'", "source"]),
                        ({"text_input": "1" * too_long}, [str(too_long), "at most"]),
                        ({"text_input": ""}, ["empty"]),
                        ({"text_input": "12", "max_tokens": 0}, ["max_tokens"])]:
        assert_rejected(served, f"{name}_generate", body, words)


def test_served_generate_takes_beams_and_answers_what_seqserve_generate_beams_gives(export, name, served):
    from test_serve import sse

    want = _reference_beam(export, "1999")
    events = sse(served, f"{name}_generate", {"text_input": "1999", "max_tokens": 10, "beams": 4})
    assert "".join(e["text_output"] for e in events) == want and events[-1]["finish_reason"]
    for bad in (0, 65, 2.5):
        status, _, text = served.request("POST", f"/v2/models/{name}_generate/generate",
                                         json.dumps({"text_input": "12", "beams": bad}))
        assert 400 <= status < 500 and b"beams" in text, (status, text)


def test_cli_generate_url_with_beams_prints_what_the_export_gives(export, name, served):
    want = _reference_beam(export, "1999")
    local = run("generate", export, "--prompt", "1999", "--beams", "4", "--max-tokens", "10")
    assert local.exit_code == 0, local.output
    assert local.stdout.splitlines()[0] == want
    for url in (served.http_url, served.grpc_url):
        res = run("generate", "--url", url, "--model", f"{name}_generate", "--prompt", "1999", "--beams", "4",
                  "--max-tokens", "10")
        assert res.exit_code == 0, res.output
        assert want in res.stdout


@pytest.mark.parametrize("proto", ["http", pytest.param("grpc", marks=pytest.mark.slow)])
def test_loadtest_drives_generate_with_sources_from_the_source_vocabulary(name, served, proto):
    from seqserve.loadtest import make_config, run_loadtest

    url = served.http_url if proto == "http" else served.grpc_url
    res = run_loadtest(make_config(url, f"{name}_generate", metrics_url=served.metrics_url, workload="generate",
                                   concurrency="2", max_tokens=6, duration="1s", warmup="0.2s"))
    lv = res["levels"][0]
    assert lv["ok"] > 0 and lv["errors"] == 0, lv["error_kinds"]      # every synthesized source was valid
    assert lv["streaming"]["tokens_per_request"]["mean"] >= 1


@pytest.mark.slow
def test_tritonserver_python_backend_streams_what_seqserve_generate_gives(export, name, tmp_path_factory, request):
    """The real tritonserver (python backend) on a triton-python repository: the same SSE and
    gRPC client code, the same text (greedy and 4 beams) as in-process generation."""
    from test_serve import grpc_stream

    request.getfixturevalue("triton_ready")
    want = _reference(export, SOURCES[:2])
    s = serve_export(export, tmp_path_factory.mktemp(f"{name}-triton"), name, "triton-python")
    try:
        assert_streams(s, f"{name}_generate", [_greedy(src) for src in SOURCES[:2]], want, finished=False)
        assert "".join(t for t, _, _ in grpc_stream(s, f"{name}_generate", SOURCES[0], 10)) == want[0]
        assert_streams(s, f"{name}_generate", [{"text_input": SOURCES[1], "max_tokens": 10, "beams": 4}],
                       [_reference_beam(export, SOURCES[1])], finished=False)
        assert_rejected(s, f"{name}_generate", {"text_input": "12a", "max_tokens": 4}, ["source"], still_ready=False)
    finally:
        assert s.stop(60) == 0
