"""The seq2seq task (RNN encoder-decoder with attention) through the chain: the spec and its links,
the model's graphs (padded == alone, steps == full, every attention), the decoding loop running
the encoder once (beams copy its outputs, never recompute them), train -> export -> validate ->
generate (torch == ORT, greedy and beams), bad sources, package and serve.

The model trains on numbers in digits -> words from num2words (no download): 30 steps of tiny.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, run
from serving import assert_full_graph_served, assert_rejected, assert_streams, serve_export
from test_triton import triton_ready  # noqa: F401 - fixture: tritonserver and its stub environment

from seqserve.models import build_model, make_config
from seqserve.tasks.spec import ATTENTION, CONSTANT, ONCE, SOURCE_MASK, SOURCE_TOKENS, STATE

# Per family of the seq2seq task (test_registry checks every such family has an entry).
FAMILY_FACTS = {"seq2seq": {"attentions": ("none", "dot", "general", "additive"), "states": {"gru": 1, "lstm": 2}}}
# (cell, attention, bidirectional): the additive GRU runs in the quick suite, the rest are slow
VARIANTS = [pytest.param("gru", "additive", False, id="gru-additive"),
            pytest.param("lstm", "dot", True, id="lstm-dot-bi", marks=pytest.mark.slow),
            pytest.param("gru", "general", True, id="gru-general-bi", marks=pytest.mark.slow),
            pytest.param("lstm", "none", False, id="lstm-none", marks=pytest.mark.slow)]


def tiny(cell="gru", attention="additive", bidirectional=False, **kw):
    return build_model("seq2seq", make_config("seq2seq", "tiny", 20, cell=cell, attention=attention,
                                              bidirectional=bidirectional, **kw)).eval()


def _trained(root, cell, attention, bidirectional):
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    overrides = {"cell": cell, "attention": attention, "bidirectional": bidirectional}
    ckpt = train(TrainConfig(family="seq2seq", preset="tiny", steps=30, eval_every=30, batch_size=32,
                             model_overrides=overrides), root / "ckpt").path
    return export_checkpoint(ckpt, root / "export").path


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("seq2seq"), "gru", "additive", False)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", FAMILY_FACTS["seq2seq"]["attentions"])
def test_spec_links_the_encoder_to_the_step_state_and_constants(cell, attention):
    spec = tiny(cell, attention).spec()
    assert spec.task == "seq2seq" and [g.name for g in spec.graphs.values()] == ["encoder", "step", "full"]
    enc = spec.graph("encoder")
    assert enc.runs == ONCE and enc.role(SOURCE_TOKENS).name == "source_ids" and enc.role(SOURCE_MASK)
    links = {name for _, name, _ in spec.links()}
    assert {p.input for p in spec.step.state} <= links
    assert len(spec.step.state) == FAMILY_FACTS["seq2seq"]["states"][cell]
    consts = {t.name for t in spec.step.inputs if t.role == CONSTANT}
    assert consts <= links and all(t.role == CONSTANT for t in enc.outputs if t.name in consts)
    if attention == "none":
        assert not consts and spec.step.role(ATTENTION) is None
    else:
        assert spec.step.role(ATTENTION).dims == ("batch", "sequence", "source_sequence")
        assert ("encoder_keys" in consts) == (attention in ("general", "additive"))
        assert "source_mask" in spec.step.input_names
    assert all(t.role == STATE for t in enc.outputs if t.name.startswith("past_"))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", FAMILY_FACTS["seq2seq"]["attentions"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_steps_equal_full_and_a_padded_source_equals_it_alone(cell, attention, bidirectional):
    from seqserve.tasks import run_graph

    model, g = tiny(cell, attention, bidirectional, num_layers=2), torch.Generator().manual_seed(0)
    spec = model.spec()
    src, ids = torch.randint(3, 20, (3, 6), generator=g), torch.randint(3, 20, (3, 7), generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:], mask[2, 1:] = 0, 0
    full = run_graph(model, spec, spec.full, {"source_ids": src, "source_mask": mask, "input_ids": ids})["logits"]
    start = run_graph(model, spec, spec.graph("encoder"), {"source_ids": src, "source_mask": mask})
    consts = {k: v for k, v in start.items() if not k.startswith("past_")}
    state = {k: v for k, v in start.items() if k.startswith("past_")}
    parts = []
    for a, b in ((0, 1), (1, 4), (4, 7)):
        out = run_graph(model, spec, spec.step, {"input_ids": ids[:, a:b], "source_mask": mask, **state, **consts})
        parts.append(out["logits"])
        if attention != "none":
            w = out["attention_weights"]
            assert w.shape == (3, b - a, 6) and torch.allclose(w.sum(-1), torch.ones(3, b - a))
            assert (w[1, :, 4:] == 0).all() and (w[2, :, 1:] == 0).all()      # no weight on padding
        state = {p.input: out[p.output] for p in spec.step.state}
    torch.testing.assert_close(torch.cat(parts, 1), full)
    alone = run_graph(model, spec, spec.full, {"source_ids": src[1:2, :4], "source_mask": mask[1:2, :4],
                                               "input_ids": ids[1:2]})["logits"]
    torch.testing.assert_close(alone, full[1:2])


def test_beam_search_runs_the_encoder_once_per_source_and_copies_its_outputs_per_beam(export):
    from seqserve.export import load_export
    from seqserve.generation.beam import BeamParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    calls, widths = [], []
    encoder, run_step = chain.once[0], step.run

    class Counting:
        spec = encoder.spec
        to_host, from_host = encoder.to_host, encoder.from_host

        def run(self, feeds):
            calls.append(feeds["source_ids"].shape)
            return encoder.run(feeds)

    def counted_step(feeds):
        widths.append(feeds["encoder_outputs"].shape[0])    # one copy per beam row
        return run_step(feeds)

    step.run = counted_step
    hyps = seq2seq.generate_targets(Counting(), step, info.spec, info.tokenizer, ["12", "3456"],
                                    BeamParams(beams=4, max_tokens=6, stop_at_eos=False))
    assert calls == [(1, 2), (1, 4)]                 # the encoder ran once per source, never again
    assert [len(h) for h in hyps] == [4, 4] and max(widths) == 4


def test_validate_passes_every_check(export):
    from seqserve.validate import validate_export

    report = validate_export(export)
    assert report.passed, [r for r in report.checks if not r.passed]
    checks = {r.check for r in report.checks}
    assert {"torch_vs_ort", "incremental_vs_full", "greedy_generation", "sidecar"} <= checks
    cases = " ".join(r.case for r in report.checks)
    assert "padded" in cases and "beams=4" in cases and "chunks of 3, 4, 5" in cases


@pytest.mark.parametrize("cell, attention, bidirectional", VARIANTS[1:])
def test_every_attention_variant_trains_exports_and_validates(tmp_path, cell, attention, bidirectional):
    from seqserve.validate import validate_export

    report = validate_export(_trained(tmp_path, cell, attention, bidirectional))
    assert report.passed, [r for r in report.checks if not r.passed]


@pytest.mark.parametrize("extra", [["--greedy"], ["--beams", "4"]])
def test_generate_is_identical_through_ort_and_torch(export, extra):
    outs = []
    for backend in ("ort", "torch"):
        res = run("generate", export, "--prompt", "1234", "--prompt", "7", "--max-tokens", "12",
                  "--backend", backend, *extra)
        assert res.exit_code == 0, res.output
        outs.append(res.stdout)
    assert outs[0] == outs[1]


def test_generate_examples_shows_each_reference(export):
    res = run("generate", export, "--examples", "--greedy", "--max-tokens", "8")
    assert res.exit_code == 0, res.output
    assert "reference" in res.output and "exact match" in res.output and "seven thousand" in res.output


@pytest.mark.parametrize("args, words", [
    (["--prompt", "12a"], ["outside the source vocabulary", "'a'"]),
    (["--prompt", "1" * 40], ["40 characters", "at most"]),
    (["--prompt", ""], ["empty"]),
    (["--prompt", "12", "--beams", "0"], ["beams", "1..64"]),
    (["--prompt", "12", "--beams", "65"], ["beams", "1..64"]),
    (["--examples", "--prompt", "1"], ["--prompt SOURCE"]),
])
def test_bad_sources_and_beams_are_one_line_errors(export, args, words):
    assert_one_line_error(run("generate", export, *args), *words)


def test_train_cli_takes_cell_attention_and_bidirectional(tmp_path):
    res = run("train", "--family", "seq2seq", "--cell", "lstm", "--attention", "dot", "--bidirectional",
              "--steps", "2", "--eval-every", "2", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "held-out exact match" in res.output
    assert_one_line_error(run("train", "--family", "gru", "--attention", "dot", "--out", tmp_path / "d"),
                          "--attention", "seq2seq")
    assert_one_line_error(run("train", "--family", "seq2seq", "--attention", "luong", "--steps", "1",
                              "--out", tmp_path / "e"), "attention must be one of")


def test_sources_of_different_lengths_share_a_batch(export):
    """Greedy over a batch of sources (constants right-padded by DecodeState.merge) == each alone."""
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    params = SamplingParams(max_tokens=8, greedy=True, stop_at_eos=False)

    def tokens(sources):
        out = [[] for _ in sources]
        for ev in seq2seq.generate_targets(chain.once[0], step, info.spec, info.tokenizer, sources, params):
            out[ev.index].append(ev.token)
        return out

    assert tokens(["7", "1234", "56"]) == [tokens([s])[0] for s in ("7", "1234", "56")]


# ---- packaged and served ------------------------------------------------------------------------

def _reference(export, sources, max_tokens=10):
    """What `seqserve generate --greedy` gives (in-process ORT, the one loop)."""
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    texts = [""] * len(sources)
    for ev in seq2seq.generate_targets(chain.once[0], step, info.spec, info.tokenizer, sources,
                                       SamplingParams(max_tokens=max_tokens, greedy=True)):
        texts[ev.index] += ev.text
    return texts


def _reference_beam(export, source, max_tokens=10, beams=4):
    """What `seqserve generate --beams 4` prints: the best hypothesis."""
    from seqserve.export import load_export
    from seqserve.generation.beam import BeamParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    return seq2seq.generate_targets(chain.once[0], step, info.spec, info.tokenizer, [source],
                                    BeamParams(beams=beams, max_tokens=max_tokens))[0][0].text


@pytest.mark.parametrize("target", ["seqserve", "triton-python", "triton-gpu"])
def test_package_writes_full_and_generate_with_the_encoder_graph(export, tmp_path, target):
    from seqserve.package import PackageOptions, load_version, package_export, read_config

    models = package_export(export, tmp_path / "repo", "s2s", options=PackageOptions(target=target))
    assert {m.name: m.kind for m in models} == {"s2s": "full", "s2s_generate": "generate"}   # no s2s_step
    gen = load_version(tmp_path / "repo" / "s2s_generate" / "1")
    assert gen.once == ("encoder",) and gen.info.graph_path("encoder").name == "encoder.onnx"
    cfg = read_config(tmp_path / "repo" / "s2s_generate")
    inputs = {i.name: i for i in cfg.input}
    assert not inputs["text_input"].optional and "source_ids" not in inputs   # the source is text
    assert cfg.backend == ("seqserve" if target == "seqserve" else "python")
    full = read_config(tmp_path / "repo" / "s2s")
    assert [i.name for i in full.input] == ["source_ids", "source_mask", "input_ids"]
    if target == "triton-gpu":      # the full graph on Triton's onnxruntime backend, generate on python
        assert full.platform == "onnxruntime_onnx"


@pytest.fixture(scope="module")
def served(export, tmp_path_factory):
    with serve_export(export, tmp_path_factory.mktemp("seq2seq-serve"), "s2s") as s:
        yield s


SOURCES = ["342", "1999", "7"]


def _greedy(source: str) -> dict:
    """A generate request: the source, 10 tokens, greedy."""
    return {"text_input": source, "max_tokens": 10, "temperature": 0.0}


def test_served_generate_streams_what_seqserve_generate_gives(export, served):
    import numpy as np
    from test_serve import grpc_stream

    want = _reference(export, SOURCES)
    assert_streams(served, "s2s_generate", [_greedy(src) for src in SOURCES], want)
    assert "".join(t for t, _, _ in grpc_stream(served, "s2s_generate", SOURCES[1], 10)) == want[1]
    # the full graph (NAME): source + target ids -> logits, equal to in-process ORT
    assert_full_graph_served(served, "s2s", export, {
        "source_ids": np.array([[4, 5, 6]], np.int64), "source_mask": np.ones((1, 3), np.int64),
        "input_ids": np.array([[1, 7, 8, 9]], np.int64)})


@pytest.mark.parametrize("body, words", [
    ({"text_input": "12a"}, ["'a'", "source"]),
    ({"text_input": "1" * 40}, ["40", "at most"]),
    ({"text_input": ""}, ["empty"]),
    ({"text_input": "12", "max_tokens": 0}, ["max_tokens"]),
])
def test_bad_sources_are_4xx_saying_what_was_expected(served, body, words):
    assert_rejected(served, "s2s_generate", body, words)


@pytest.mark.slow
def test_tritonserver_python_backend_streams_what_seqserve_generate_gives(export, tmp_path_factory, request):
    """The real tritonserver (python backend) on a triton-python repository: the same SSE and
    gRPC client code, the same text as in-process generation."""
    from test_serve import grpc_stream

    request.getfixturevalue("triton_ready")
    want = _reference(export, SOURCES[:2])
    s = serve_export(export, tmp_path_factory.mktemp("seq2seq-triton"), "s2s", "triton-python")
    try:
        assert_streams(s, "s2s_generate", [_greedy(src) for src in SOURCES[:2]], want, finished=False)
        assert "".join(t for t, _, _ in grpc_stream(s, "s2s_generate", SOURCES[0], 10)) == want[0]
        assert_streams(s, "s2s_generate", [{"text_input": SOURCES[1], "max_tokens": 10, "beams": 4}],
                       [_reference_beam(export, SOURCES[1])], finished=False)
        assert_rejected(s, "s2s_generate", {"text_input": "12a", "max_tokens": 4}, ["source"], still_ready=False)
    finally:
        assert s.stop(60) == 0


@pytest.mark.parametrize("proto", ["http", pytest.param("grpc", marks=pytest.mark.slow)])
def test_loadtest_drives_generate_with_sources_from_the_source_vocabulary(served, proto):
    from seqserve.loadtest import make_config, run_loadtest

    url = served.http_url if proto == "http" else served.grpc_url
    res = run_loadtest(make_config(url, "s2s_generate", metrics_url=served.metrics_url, workload="generate",
                                   concurrency="2", max_tokens=6, duration="1s", warmup="0.2s"))
    lv = res["levels"][0]
    assert lv["ok"] > 0 and lv["errors"] == 0, lv["error_kinds"]      # every synthesized source was valid
    assert lv["streaming"]["tokens_per_request"]["mean"] >= 1


def test_loadtest_synthesizes_sources_within_the_source_vocabulary_and_length():
    from seqserve.loadtest.workloads import synthesized_sources

    got = synthesized_sources(50, "0123456789", 4, seed=0)
    assert all(1 <= len(s) <= 4 and set(s) <= set("0123456789") for s in got) and len(set(got)) > 10


def test_served_generate_takes_beams_and_answers_what_seqserve_generate_beams_gives(export, served):
    import json

    from seqserve.export import load_export
    from seqserve.generation.beam import BeamParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq
    from test_serve import sse

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    best = seq2seq.generate_targets(chain.once[0], step, info.spec, info.tokenizer, ["1999"],
                                    BeamParams(beams=4, max_tokens=10))[0][0]
    events = sse(served, "s2s_generate", {"text_input": "1999", "max_tokens": 10, "beams": 4})
    assert "".join(e["text_output"] for e in events) == best.text
    assert events[-1]["finish_reason"] == best.finish_reason
    for bad in (0, 65, 2.5):
        status, _, text = served.request("POST", "/v2/models/s2s_generate/generate",
                                         json.dumps({"text_input": "12", "beams": bad}))
        assert 400 <= status < 500 and b"beams" in text, (status, text)


def test_cli_generate_url_with_beams_prints_what_the_export_gives(export, served):
    want = _reference_beam(export, "1999")
    local = run("generate", export, "--prompt", "1999", "--beams", "4", "--max-tokens", "10")
    assert local.exit_code == 0, local.output
    assert local.stdout.splitlines()[0] == want
    for url in (served.http_url, served.grpc_url):
        res = run("generate", "--url", url, "--model", "s2s_generate", "--prompt", "1999", "--beams", "4",
                  "--max-tokens", "10")
        assert res.exit_code == 0, res.output
        assert want in res.stdout
