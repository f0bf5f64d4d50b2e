"""`seqserve export --quantize int8`: quantized graphs beside the fp32 ones, a gate that measures
the cost (held-out bits per char vs the fp32 graphs), generation, package and serve on int8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from seqserve.validate import ValidateConfig, validate_export

FAMILIES = ("gpt", "lstm")
INT8_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QuantizeLinear"}


@pytest.fixture(scope="module")
def quantized(checkpoint, tmp_path_factory):
    from seqserve.export import ExportOptions, export_checkpoint

    root, cache = tmp_path_factory.mktemp("int8"), {}

    def make(family: str):
        if family not in cache:
            cache[family] = export_checkpoint(checkpoint(family), root / family, ExportOptions(quantize="int8"))
        return cache[family]
    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_sidecar_names_int8_graphs_beside_fp32(quantized, family):
    info = quantized(family)
    raw = json.loads((info.path / "seqserve.json").read_text())
    assert raw["quantize"] == "int8" and raw["export_options"]["quantize"] == "int8"
    assert raw["graphs"] == {"full": "full.int8.onnx", "step": "step.int8.onnx"}
    assert raw["fp32_graphs"] == {"full": "full.onnx", "step": "step.onnx"}
    assert raw["quantization"]["heldout"]["file"] == "heldout.txt" and (info.path / "heldout.txt").is_file()
    for g in ("full", "step"):
        assert info.graph_path(g).name == f"{g}.int8.onnx" and info.graph_path(g, fp32=True).name == f"{g}.onnx"
        ops = {n.op_type for n in onnx.load(str(info.graph_path(g)), load_external_data=False).graph.node}
        assert ops & INT8_OPS, ops
        fp32 = onnx.load(str(info.graph_path(g, fp32=True)), load_external_data=False)
        fp32_ops = {n.op_type for n in fp32.graph.node}
        assert not fp32_ops & INT8_OPS
    assert info.fp32().graph_path("step").name == "step.onnx" and not info.fp32().quantized
    if family == "lstm":   # the native LSTM op has a dynamic-quantization path (GRU/RNN do not)
        assert raw["quantization"]["graphs"]["step"]["quantized_ops"].get("DynamicQuantizeLSTM") == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_passes_at_default_tolerance_and_fails_an_impossible_one(quantized, family):
    info = quantized(family)
    report = validate_export(info.path)
    assert report.passed, [(r.check, r.graph, r.case, r.detail) for r in report.checks if not r.passed]
    summary = report.summary()
    assert {"quantization_cost", "torch_vs_ort", "incremental_vs_full", "greedy_generation"} <= set(summary)
    assert {r.graph for r in report.rows("torch_vs_ort")} == {"full fp32", "step fp32"}   # the reference is gated
    cost = report.rows("quantization_cost")
    assert len(cost) == 1 and "bits/char" in cost[0].case and "validation split" in cost[0].detail
    agree = [r for r in report.rows("greedy_generation") if "int8 vs fp32" in r.case]
    assert agree and all(r.passed and "agreement" in r.detail for r in agree)
    failed = validate_export(info.path, ValidateConfig(tolerance=-1))
    assert not failed.passed
    assert [r.check for r in failed.checks if not r.passed] == ["quantization_cost"]


def test_gate_without_heldout_text_says_so(quantized, tmp_path):
    import shutil

    src = quantized("lstm").path
    dst = tmp_path / "noheld"
    shutil.copytree(src, dst)
    (dst / "heldout.txt").unlink()
    report = validate_export(dst)
    cost = report.rows("quantization_cost")[0]
    assert cost.passed and "NO held-out text" in cost.detail and "sampled from the fp32 graphs" in cost.detail


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_runs_the_int8_graphs(quantized, family):
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.runtime import OrtBackend

    info = quantized(family)
    backend = OrtBackend(info, "step")
    assert "int8" in str(backend.info.graph_path("step"))
    out = generate_text(backend, info.tokenizer, ["def "], SamplingParams(max_tokens=8, greedy=True, stop_at_eos=False),
                        info.max_context)[0]
    assert len(out.tokens) == 8


def test_quantize_rejects_other_tasks_and_methods():
    from seqserve.errors import SeqserveError
    from seqserve.export.quantize import check_method

    with pytest.raises(SeqserveError, match="int8"):
        check_method("int4", "causal-lm")
    with pytest.raises(SeqserveError, match="causal-lm"):
        check_method("int8", "classify")


def test_package_and_serve_the_int8_export(quantized, tmp_path):
    from serving import serve_export

    from seqserve.generation import SamplingParams, generate_text
    from seqserve.runtime import OrtBackend

    info = quantized("lstm")
    server = serve_export(info.path, tmp_path, "lm8")
    try:
        repo_graph = tmp_path / "repo" / "lm8_step" / "1" / "model.onnx"
        ops = {n.op_type for n in onnx.load(str(repo_graph), load_external_data=False).graph.node}
        assert "DynamicQuantizeLSTM" in ops
        status, _, body = server.request("POST", "/v2/models/lm8_generate/generate",
                                         json.dumps({"text_input": "def ", "max_tokens": 6, "temperature": 0}))
        assert status == 200, body
        local = generate_text(OrtBackend(info, "step"), info.tokenizer, ["def "],
                              SamplingParams(max_tokens=6, greedy=True), info.max_context)[0]
        assert json.loads(body)["text_output"] == local.text
    finally:
        server.stop()


def test_int8_is_close_to_fp32(quantized):
    from seqserve.runtime import OrtBackend

    info = quantized("gpt")
    ids = np.random.default_rng(0).integers(3, info.tokenizer.vocab_size, (2, 16))
    q = OrtBackend(info, "full").run({"input_ids": ids})["logits"]
    f = OrtBackend(info.fp32(), "full").run({"input_ids": ids})["logits"]
    assert 0 < np.abs(q - f).max() < 0.1
