"""The seq2seq task, family transformer (an encoder-decoder Transformer), through the chain: the
spec (cross K/V from the encoder, self and cross caches with distinct names), the model (padded ==
alone, steps == full), the decoding loop running the encoder once (beams copy the cross K/V, never
recompute them), train -> export -> validate -> generate (torch == ORT, greedy and beams 4), bad
sources. The model trains on numbers in digits -> words (num2words, no download): 30 steps of tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run
from serving import assert_full_graph_served, assert_rejected, assert_streams, serve_export
from test_triton import triton_ready  # noqa: F401 - fixture: tritonserver and its stub environment

from seqserve.models import build_model, make_config
from seqserve.tasks.spec import CONSTANT, MASK, ONCE, PAST, POSITIONS, SOURCE, SOURCE_MASK, SOURCE_TOKENS, STATE

# Per Transformer family of the seq2seq task (test_registry checks every such family has an entry).
FAMILY_FACTS = {"transformer": {"tiny_layers": 1, "small_layers": 2}}


def tiny(**kw):
    return build_model("transformer", make_config("transformer", "tiny", 20, **kw)).eval()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from seqserve.export import export_checkpoint
    from seqserve.training import TrainConfig, train

    root = tmp_path_factory.mktemp("translate")
    ckpt = train(TrainConfig(family="transformer", preset="tiny", steps=30, eval_every=30, batch_size=32),
                 root / "ckpt").path
    return export_checkpoint(ckpt, root / "export").path


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_spec_feeds_cross_kv_from_the_encoder_and_keeps_the_self_cache_apart(preset):
    model = build_model("transformer", make_config("transformer", preset, 20))
    spec = model.spec()
    layers = FAMILY_FACTS["transformer"][f"{preset}_layers"]
    assert spec.task == "seq2seq" and [g.name for g in spec.graphs.values()] == ["encoder", "step", "full"]
    enc, step = spec.graph("encoder"), spec.step
    assert enc.runs == ONCE and enc.role(SOURCE_TOKENS).dims == ("batch", SOURCE) and enc.role(SOURCE_MASK)
    cross = [t.name for t in step.inputs if t.role == CONSTANT]
    assert cross == [f"cross_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert {name for _, name, _ in spec.links()} == set(cross)       # computed once, by the encoder
    assert [p.input for p in step.state] == [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert all(p.seq_axis == 2 for p in step.state) and not set(cross) & step.state_inputs
    # the step returns logits and the present SELF K/V only (no cross K/V comes back)
    assert step.output_names == ["logits", *(p.output for p in step.state)]
    assert step.role(MASK) and step.role(POSITIONS) and step.role(SOURCE_MASK)
    assert all(t.dims[2] == PAST for t in step.inputs if t.role == STATE)


def test_steps_from_an_empty_past_equal_full_and_a_padded_source_equals_it_alone():
    torch.manual_seed(0)
    m = tiny()
    src = torch.randint(3, 20, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0                                   # row 1: a 4-token source, padded to 6
    ids = torch.randint(3, 20, (2, 7))
    with torch.no_grad():
        full = m(src, mask, ids)
        _, cross = m.encode(src, mask)
        past, parts = m.empty_past(2), []
        for n in (3, 1, 1, 2):                        # chunks, from past length 0
            pos = sum(p.shape[1] for p in parts)
            logits, past = m.decode(ids[:, pos:pos + n], past, cross, mask)
            parts.append(logits)
        alone = m(src[1:, :4], mask[1:, :4], ids[1:])
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, full[1:2], atol=1e-5, rtol=1e-4)


def test_beam_search_runs_the_encoder_once_per_source_and_copies_cross_kv_per_beam(export):
    from seqserve.export import load_export
    from seqserve.generation.beam import BeamParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq as task

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
        widths.append(feeds["cross_key_values.0.key"].shape[0])    # one copy per beam row
        return run_step(feeds)

    step.run = counted_step
    hyps = task.generate_targets(Counting(), step, info.spec, info.tokenizer, ["12", "3456"],
                                      BeamParams(beams=4, max_tokens=6, stop_at_eos=False))
    assert calls == [(1, 2), (1, 4)]                 # the encoder ran once per source, never again
    assert [len(h) for h in hyps] == [4, 4] and max(widths) == 4


def test_sources_of_different_lengths_share_a_batch(export):
    """Greedy over a batch of sources (cross K/V right-padded by DecodeState.merge) == each alone."""
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq as task

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    params = SamplingParams(max_tokens=8, greedy=True, stop_at_eos=False)

    def tokens(sources):
        out = [[] for _ in sources]
        for ev in task.generate_targets(chain.once[0], step, info.spec, info.tokenizer, sources, params):
            out[ev.index].append(ev.token)
        return out

    together = tokens(["7", "1234", "56"])
    assert together == [tokens([s])[0] for s in ("7", "1234", "56")]


def test_validate_passes_every_check(export):
    from seqserve.validate import validate_export

    report = validate_export(export)
    assert report.passed, [r for r in report.checks if not r.passed]
    cases = " ".join(r.case for r in report.checks)
    for what in ("batch=1", "batch=3", "padded", "past=0", "past=4", "beams=4", "token by token"):
        assert what in cases
    graphs = {r.graph for r in report.rows("torch_vs_ort")}
    assert graphs == {"encoder", "step", "full"}


@pytest.mark.parametrize("extra", [["--greedy"], ["--beams", "4"]])
def test_generate_is_identical_through_ort_and_torch(export, extra):
    outs = [run("generate", export, "--prompt", "342", "--prompt", "1999", "--max-tokens", "12",
                "--backend", b, *extra) for b in ("ort", "torch")]
    assert all(r.exit_code == 0 for r in outs), [r.output for r in outs]
    assert outs[0].output == outs[1].output


def test_generate_examples_shows_each_reference(export):
    res = run("generate", export, "--examples", "--greedy", "--max-tokens", "8")
    assert res.exit_code == 0, res.output
    assert "reference" in res.output and "exact match" in res.output


@pytest.mark.parametrize("args, words", [
    (["--prompt", "12a"], ["'a'", "source vocabulary"]),
    (["--prompt", "1" * 80], ["80", "at most"]),
    (["--prompt", "12", "--beams", "0"], ["beams"]),
    (["--prompt", "12", "--max-tokens", "500"], ["500", "target positions"]),
])
def test_bad_sources_and_beams_are_one_line_errors(export, args, words):
    assert_one_line_error(run("generate", export, *args), *words)


# ---- packaged and served ------------------------------------------------------------------------

def _reference(export, sources, max_tokens=10):
    """What `seqserve generate --greedy` gives (in-process ORT, the one loop)."""
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams
    from seqserve.runtime import make_chain
    from seqserve.tasks import seq2seq as task

    info = load_export(export)
    step, chain = make_chain(info, "ort")
    texts = [""] * len(sources)
    for ev in task.generate_targets(chain.once[0], step, info.spec, info.tokenizer, sources,
                                         SamplingParams(max_tokens=max_tokens, greedy=True)):
        texts[ev.index] += ev.text
    return texts


@pytest.mark.parametrize("target", ["seqserve", "triton-python", "triton-gpu"])
def test_package_writes_full_and_generate_with_the_encoder_graph(export, tmp_path, target):
    from seqserve.package import PackageOptions, load_version, package_export, read_config

    models = package_export(export, tmp_path / "repo", "tx", options=PackageOptions(target=target))
    assert {m.name: m.kind for m in models} == {"tx": "full", "tx_generate": "generate"}   # no tx_step
    gen = load_version(tmp_path / "repo" / "tx_generate" / "1")
    assert gen.once == ("encoder",) and gen.info.graph_path("encoder").name == "encoder.onnx"
    cfg = read_config(tmp_path / "repo" / "tx_generate")
    inputs = {i.name: i for i in cfg.input}
    assert not inputs["text_input"].optional and "source_ids" not in inputs   # the source is text
    assert cfg.backend == ("seqserve" if target == "seqserve" else "python")
    full = read_config(tmp_path / "repo" / "tx")
    assert [i.name for i in full.input] == ["source_ids", "source_mask", "input_ids"]


@pytest.fixture(scope="module")
def served(export, tmp_path_factory):
    with serve_export(export, tmp_path_factory.mktemp("translate-serve"), "tx") as s:
        yield s


SOURCES = ["342", "1999", "7"]


def _greedy(source: str) -> dict:
    """A generate request: the source, 10 tokens, greedy."""
    return {"text_input": source, "max_tokens": 10, "temperature": 0.0}


def test_served_generate_streams_what_seqserve_generate_gives(export, served):
    from test_serve import grpc_stream

    want = _reference(export, SOURCES)
    assert_streams(served, "tx_generate", [_greedy(src) for src in SOURCES], want)
    assert "".join(t for t, _, _ in grpc_stream(served, "tx_generate", SOURCES[0], 10)) == want[0]
    # the full graph (NAME): source + target ids -> logits, equal to in-process ORT
    assert_full_graph_served(served, "tx", export, {
        "source_ids": np.array([[4, 5, 6]], np.int64), "source_mask": np.ones((1, 3), np.int64),
        "input_ids": np.array([[1, 7, 8, 9]], np.int64)})


@pytest.mark.parametrize("body, words", [
    ({"text_input": "12a"}, ["'a'", "source"]),
    ({"text_input": "1" * 80}, ["80", "at most"]),
    ({"text_input": ""}, ["empty"]),
    ({"text_input": "12", "max_tokens": 0}, ["max_tokens"]),
])
def test_bad_sources_are_4xx_saying_what_was_expected(served, body, words):
    assert_rejected(served, "tx_generate", body, words)


@pytest.mark.slow
def test_tritonserver_python_backend_streams_what_seqserve_generate_gives(export, tmp_path_factory, request):
    """The real tritonserver (python backend) on a triton-python repository: the same SSE and
    gRPC client code, the same text as in-process generation."""
    from test_serve import grpc_stream

    request.getfixturevalue("triton_ready")
    want = _reference(export, SOURCES[:2])
    s = serve_export(export, tmp_path_factory.mktemp("translate-triton"), "tx", "triton-python")
    try:
        assert_streams(s, "tx_generate", [_greedy(src) for src in SOURCES[:2]], want, finished=False)
        assert "".join(t for t, _, _ in grpc_stream(s, "tx_generate", SOURCES[0], 10)) == want[0]
        assert_rejected(s, "tx_generate", {"text_input": "12a", "max_tokens": 4}, ["source"], still_ready=False)
    finally:
        assert s.stop(60) == 0


def test_gate_fails_a_step_graph_that_differs_and_names_where(export, tmp_path):
    import shutil

    import onnx
    from onnx import numpy_helper

    from seqserve.validate import validate_export

    path = shutil.copytree(export, tmp_path / "broken")
    model = onnx.load(str(path / "step.onnx"))
    init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 1)
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(w + 0.5 * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype),
                                          init.name))
    onnx.save(model, str(path / "step.onnx"))
    report = validate_export(path)
    assert not report.passed
    # the chain vs the full graph fails and says where; "padded == alone" compares the step with itself
    rows = [r for r in report.rows("incremental_vs_full") if "== alone" not in r.case]
    assert rows and all(not r.passed and "first mismatch at position" in r.detail for r in rows)
    assert len(report.rows("incremental_vs_full")) == len(rows) + 1
    vs = report.rows("torch_vs_ort")
    assert all(r.passed for r in vs if r.graph in ("encoder", "full"))
    assert any(not r.passed for r in vs if r.graph == "step")


def test_loadtest_drives_the_transformer_generate_with_valid_sources(served):
    """seqserve loadtest synthesizes sources from the config's source characters and length."""
    from seqserve.loadtest import make_config, run_loadtest

    res = run_loadtest(make_config(served.http_url, "tx_generate", metrics_url=served.metrics_url, workload="generate",
                                   concurrency="2", max_tokens=6, duration="1s", warmup="0.2s"))
    lv = res["levels"][0]
    assert lv["ok"] > 0 and lv["errors"] == 0, lv["error_kinds"]
    assert lv["streaming"]["tokens_per_request"]["mean"] >= 1
