"""The in-place (static) KV cache: `export --kv-cache static[:N]` (export/static_cache.py), its
backend (runtime/static_ort.py: one buffer bound as past and present), the gate and generation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from seqserve.errors import SeqserveError

LENGTH = 64


@pytest.fixture(scope="module")
def static_export(tmp_path_factory, checkpoint):
    from seqserve.export import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("static") / "gpt"
    return export_checkpoint(checkpoint("gpt"), out, ExportOptions(kv_cache=f"static:{LENGTH}"))


def test_rewrite_is_gqa_on_a_static_buffer(static_export):
    step = static_export.spec.step
    model = onnx.load(str(static_export.graph_path("step")))
    ops = [n.op_type for n in model.graph.node]
    n_layers = static_export.spec.extra["n_layers"]
    assert ops.count("GroupQueryAttention") == n_layers and "Attention" not in ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert f"static_kv_gqa:{n_layers}" in meta["seqserve.graph_optimizations"]
    # the spec: no mask; buffers of LENGTH positions, updated in place; positions kept
    assert [t.role for t in step.inputs].count("attention_mask") == 0 and step.roles["position_ids"]
    assert all(p.in_place and p.seq_axis == 2 for p in step.state)
    assert all(step.input(p.input).dims[2] == LENGTH == step.output(p.output).dims[2] for p in step.state)
    side = json.loads((static_export.path / "seqserve.json").read_text())
    assert side["export_options"]["kv_cache"] == f"static:{LENGTH}" and static_export.max_context == LENGTH
    # the full graph is untouched
    assert "GroupQueryAttention" not in [n.op_type for n in onnx.load(str(static_export.graph_path("full"))).graph.node]


def test_buffer_is_bound_in_place(static_export):
    from seqserve.generation import decode_step, prefill
    from seqserve.runtime import ort_backend
    from seqserve.runtime.static_ort import StaticOrtBackend

    backend = ort_backend(static_export)
    assert isinstance(backend, StaticOrtBackend)
    _, state = prefill(backend, [3, 4, 5, 6])
    name = static_export.spec.step.state[0].input
    buf = state.state[name]
    address, shape = buf.__array_interface__["data"][0], buf.shape
    for i in range(5):
        before = buf[0, :, 4 + i].copy()
        _, state = decode_step(backend, state, np.asarray([7 + i]))
        assert state.state[name] is buf                      # the same array: no copy, no growth
        assert buf.__array_interface__["data"][0] == address and buf.shape == shape
        assert not np.array_equal(buf[0, :, 4 + i], before)  # the new token's K was written into it
    assert int(state.positions[0]) == 9 and not buf[0, :, 9:].any()   # nothing past the row's length


def test_chunks_at_batch_two_run_row_by_row(static_export, exported):
    """GQA refuses a chunk after a past at batch > 1; the backend then runs each row's slot alone."""
    from seqserve.export import load_export
    from seqserve.runtime import ort_backend
    from seqserve.validate.parity import chain_vs_full
    from seqserve.validate.results import ValidateConfig

    full = ort_backend(load_export(exported("gpt")), "full")
    ids = np.random.default_rng(0).integers(0, static_export.tokenizer.vocab_size, (2, 11))
    ref = full.run({"input_ids": ids})["logits"]
    step = ort_backend(static_export)
    r, detail = chain_vs_full(step, static_export.spec.step, None, ids, [3, 4, 4], ref, ValidateConfig(), "step", "full")
    assert r.passed, detail


def test_greedy_tokens_identical_to_the_concat_graph(static_export, exported):
    from seqserve.export import load_export
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.runtime import ort_backend

    concat = load_export(exported("gpt"))
    params = SamplingParams(max_tokens=20, greedy=True, stop_at_eos=False)
    prompts = ["def ", "import os\nclass "]                   # different lengths in one batch
    a = generate_text(ort_backend(concat), concat.tokenizer, prompts, params, concat.max_context)
    b = generate_text(ort_backend(static_export), static_export.tokenizer, prompts, params, static_export.max_context)
    assert [c.tokens for c in a] == [c.tokens for c in b]


def test_validate_passes(static_export):
    from seqserve.validate import validate_export

    report = validate_export(static_export.path)
    failed = [r for r in report.checks if not r.passed]
    assert not failed, failed[:3]
    checks = {r.check for r in report.checks}
    assert {"torch_vs_ort", "incremental_vs_full", "greedy_generation"} <= checks


def test_kv_cache_option_errors(checkpoint):
    from seqserve.export.static_cache import parse_kv_cache
    from seqserve.models import build_model, make_config

    gpt = build_model("gpt", make_config("gpt", "tiny", 20)).spec()
    assert parse_kv_cache("concat", gpt) is None and parse_kv_cache("static", gpt) == gpt.extra["max_seq_len"]
    assert parse_kv_cache("static:32", gpt) == 32
    for bad in ("static:x", "static:100000", "ring"):
        with pytest.raises(SeqserveError):
            parse_kv_cache(bad, gpt)
    with pytest.raises(SeqserveError, match="KV-cache"):
        parse_kv_cache("static", build_model("lstm", make_config("lstm", "tiny", 20)).spec())


def test_package_serves_a_static_export_on_the_slot_pool_only(static_export, tmp_path):
    """`seqserve package` (target seqserve) writes NAME and NAME_generate (the slot pool: see
    tests/test_slot_pool.py), no NAME_step; other targets are refused before anything is written."""
    from seqserve.package import PackageOptions
    from seqserve.package.repository import package_export

    with pytest.raises(SeqserveError, match="--kv-cache concat"):
        package_export(static_export.path, tmp_path / "repo", options=PackageOptions(target="triton-gpu"))
    assert not (tmp_path / "repo").exists()
    models = {m.name for m in package_export(static_export.path, tmp_path / "repo")}
    assert models == {"gpt", "gpt_generate"}
