"""ONNX export: files, named dynamic axes, one step graph for prefill and decode, atomicity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import ALL_FAMILIES
from seqserve.checkpoint import load_checkpoint
from seqserve.errors import SeqserveError
from seqserve.export import ExportOptions, export_checkpoint, load_export
from seqserve.export.onnx_graphs import conform_dims
from seqserve.runtime import create_session
from seqserve.tasks.spec import PAST, SEQ, TOTAL, example_inputs, resolve_dims

# Per-family expectations. test_registry fails when a registered family has no entry here.
FAMILY_FACTS = {
    "rnn": dict(op="RNN", exporter="torchscript", opset=17),
    "lstm": dict(op="LSTM", exporter="torchscript", opset=17),
    "gru": dict(op="GRU", exporter="torchscript", opset=17),
    "gpt": dict(op="Attention", exporter="dynamo", opset=23),
}
NAMED_AXES = {"batch", SEQ, PAST, TOTAL}


def all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield from all_nodes(g)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_export_folder_contents(exported, checkpoint, family):
    path = exported(family)
    assert {p.name for p in path.iterdir()} == {"full.onnx", "step.onnx", "seqserve.json", "checkpoint"}
    assert {p.name for p in (path / "checkpoint").iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}
    info = load_export(path)
    ckpt = load_checkpoint(checkpoint(family))
    assert info.family == family
    assert info.spec == ckpt.model.spec()
    assert info.tokenizer == ckpt.tokenizer
    assert info.raw["export_options"] == {"exporter": FAMILY_FACTS[family]["exporter"],
                                          "opset": FAMILY_FACTS[family]["opset"]}
    assert info.raw["special_tokens"] == {"pad": 0, "bos": 1, "eos": 2}
    assert info.max_context == (ckpt.model.config.max_seq_len if family == "gpt" else None)
    for g in ("full", "step"):
        onnx.checker.check_model(str(info.graph_path(g)), full_check=True)
        model = onnx.load(str(info.graph_path(g)))
        assert any(op.domain in ("", "ai.onnx") and op.version == FAMILY_FACTS[family]["opset"]
                   for op in model.opset_import)
    step = onnx.load(str(info.graph_path("step")))
    assert FAMILY_FACTS[family]["op"] in {n.op_type for n in all_nodes(step.graph)}   # a native op


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("graph", ["full", "step"])
def test_onnx_axes_are_named_as_in_the_spec(exported, family, graph):
    info = load_export(exported(family))
    spec = info.graph(graph)
    model = onnx.load(str(info.graph_path(graph)))
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        assert [v.name for v in values] == [t.name for t in tensors]
        for v, t in zip(values, tensors):
            dims = v.type.tensor_type.shape.dim
            assert len(dims) == len(t.dims), t.name
            for d, want in zip(dims, t.dims):
                if isinstance(want, str):
                    assert want in NAMED_AXES
                    assert not d.HasField("dim_value") and d.dim_param == want, (t.name, d)
                else:
                    assert d.dim_value == want, (t.name, d)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_step_graph_has_no_if_node(exported, family):
    info = load_export(exported(family))
    for g in ("full", "step"):
        ops = {n.op_type for n in all_nodes(onnx.load(str(info.graph_path(g))).graph)}
        assert "If" not in ops and "Loop" not in ops


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_one_step_graph_runs_prefill_and_decode_at_any_size(exported, family):
    info = load_export(exported(family))
    spec = info.spec.step
    sess = create_session(info.graph_path("step"))
    model = load_checkpoint(info.checkpoint_path).model
    rng = np.random.default_rng(0)
    sizes = [(1, 1, 0), (3, 7, 0), (2, 1, 5), (1, 4, 9), (4, 2, 1), (5, 1, 31)]   # (batch, sequence, past)
    for B, S, P in sizes:
        dims = {"batch": B, SEQ: S, PAST: P}
        feeds = example_inputs(spec, dims, rng)
        outs = dict(zip(spec.output_names, sess.run(spec.output_names, feeds)))
        for t in spec.outputs:
            assert outs[t.name].shape == resolve_dims(t, dims), (t.name, B, S, P)
            assert np.isfinite(outs[t.name]).all()
        with torch.no_grad():
            ref = model.run_step({k: torch.from_numpy(v) for k, v in feeds.items()})
        for name in spec.output_names:
            np.testing.assert_allclose(outs[name], ref[name].numpy(), atol=2e-4, rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_full_graph_matches_torch(exported, family):
    info = load_export(exported(family))
    sess = create_session(info.graph_path("full"))
    model = load_checkpoint(info.checkpoint_path).model
    for B, S in ((1, 1), (3, 12)):
        x = np.random.default_rng(B).integers(3, info.tokenizer.vocab_size, (B, S))
        (logits,) = sess.run(["logits"], {"input_ids": x})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=2e-4, rtol=1e-3)


# --- conform_dims ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_conform_dims_fails_when_a_dynamic_axis_was_fixed(exported, family, tmp_path):
    info = load_export(exported(family))
    spec = info.spec.step
    src = info.graph_path("step")

    ok = tmp_path / "ok.onnx"
    shutil.copy(src, ok)
    conform_dims(ok, spec)                       # an export as written passes, unchanged in meaning
    conform_dims(str(ok), spec)                  # a str path too

    fixed = onnx.load(str(src))
    fixed.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7      # input_ids' sequence axis
    bad = tmp_path / "fixed.onnx"
    onnx.save(fixed, str(bad))
    with pytest.raises(SeqserveError) as e:
        conform_dims(bad, spec)
    msg = str(e.value)
    assert "input_ids axis 1 (sequence) is fixed to 7; it must be dynamic" in msg


def test_the_dynamo_trap_is_caught_and_leaves_nothing_behind(checkpoint, tmp_path):
    # The dynamo exporter unrolls nn.LSTM and fixes the sequence length: conform_dims must say so.
    out = tmp_path / "lstm-dynamo"
    with pytest.raises(SeqserveError, match="axis 1 \\(sequence\\) is fixed to \\d+; it must be dynamic"):
        export_checkpoint(checkpoint("lstm"), out, ExportOptions(exporter="dynamo"))
    assert list(tmp_path.iterdir()) == []


def test_exporter_failures_are_one_plain_line(checkpoint, tmp_path):
    with pytest.raises(SeqserveError) as e:
        export_checkpoint(checkpoint("rnn"), tmp_path / "rnn-dynamo", ExportOptions(exporter="dynamo"))
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("exporting the full graph with the dynamo exporter failed") or "it must be dynamic" in msg
    assert list(tmp_path.iterdir()) == []


def test_conform_dims_renames_axes_and_checks_static_sizes(exported, tmp_path):
    info = load_export(exported("gpt"))
    spec = info.spec.step
    m = onnx.load(str(info.graph_path("step")))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "s0"             # exporter's own name
    m.graph.output[1].type.tensor_type.shape.dim[2].dim_param = "s1 + s2"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(m, str(renamed))
    conform_dims(renamed, spec)
    back = onnx.load(str(renamed))
    assert back.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert back.graph.output[1].type.tensor_type.shape.dim[2].dim_param == TOTAL

    m.graph.input[3].type.tensor_type.shape.dim[1].dim_value = 99                # heads: static in the spec
    wrong = tmp_path / "wrong.onnx"
    onnx.save(m, str(wrong))
    with pytest.raises(SeqserveError, match="past_key_values.0.key axis 1 is 99; the spec fixes it to 4"):
        conform_dims(wrong, spec)


# --- atomicity and load errors -----------------------------------------------------------------

@pytest.fixture
def export_copy(exported, tmp_path):
    def make(family: str) -> Path:
        dst = tmp_path / f"export-{family}"
        shutil.copytree(exported(family), dst)
        return dst
    return make


def test_failed_export_leaves_the_previous_export_byte_identical(export_copy, checkpoint, tmp_path):
    out = export_copy("lstm")
    before = snapshot(out)
    with pytest.raises(SeqserveError, match="unknown exporter 'nope'"):
        export_checkpoint(checkpoint("lstm"), out, ExportOptions(exporter="nope"))
    assert snapshot(out) == before

    bad_ckpt = tmp_path / "bad-ckpt"
    shutil.copytree(checkpoint("lstm"), bad_ckpt)
    w = bad_ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(SeqserveError, match="corrupt"):
        export_checkpoint(bad_ckpt, out)
    assert snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    load_export(out)


def test_export_into_an_existing_path_replaces_it(export_copy, checkpoint):
    out = export_copy("gru")
    (out / "stale.txt").write_text("from an older export")
    info = export_checkpoint(checkpoint("gru"), out)
    assert info.path == out and not (out / "stale.txt").exists()
    assert {p.name for p in out.iterdir()} == {"full.onnx", "step.onnx", "seqserve.json", "checkpoint"}
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_load_export_missing_folder(tmp_path):
    with pytest.raises(SeqserveError, match="is not a folder"):
        load_export(tmp_path / "missing")


def test_load_export_missing_sidecar(export_copy):
    out = export_copy("rnn")
    (out / "seqserve.json").unlink()
    with pytest.raises(SeqserveError, match="has no seqserve.json"):
        load_export(out)


@pytest.mark.parametrize("text, match", [("{oops", "is not valid JSON"),
                                         ('"a string"', "expected an object"),
                                         ('{"format": "seqserve-export/0"}', "has format 'seqserve-export/0'")])
def test_load_export_corrupt_sidecar(export_copy, text, match):
    out = export_copy("rnn")
    (out / "seqserve.json").write_text(text)
    with pytest.raises(SeqserveError, match=match):
        load_export(out)


@pytest.mark.parametrize("field", ["spec", "family", "tokenizer", "graphs"])
def test_load_export_sidecar_missing_a_field(export_copy, field):
    out = export_copy("rnn")
    raw = json.loads((out / "seqserve.json").read_text())
    del raw[field]
    (out / "seqserve.json").write_text(json.dumps(raw))
    with pytest.raises(SeqserveError, match=f"missing or has a bad field.*{field}"):
        load_export(out)


@pytest.mark.parametrize("graph", ["full", "step"])
def test_load_export_missing_graph_file(export_copy, graph):
    out = export_copy("rnn")
    (out / f"{graph}.onnx").unlink()
    with pytest.raises(SeqserveError, match=f"missing its {graph} graph {graph}.onnx"):
        load_export(out)
