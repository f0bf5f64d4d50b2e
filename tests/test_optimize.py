"""The post-export attention/KV-cache fusion: applied to GPT step graphs, verified, and a no-op
where it does not apply."""

from __future__ import annotations

import shutil

import onnx

from seqserve.export import load_export
from seqserve.export.optimize import GRAPH_OPT_KEY, optimize_graph


def _meta(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_gpt_step_graph_is_fused(exported):
    info = load_export(exported("gpt"))
    layers = info.spec.extra["n_layers"]
    for graph in ("full", "step"):
        model = onnx.load(str(info.graph_path(graph)))
        attention = [n for n in model.graph.node if n.op_type == "Attention"]
        assert len(attention) == layers
        # Fused: 3-D q/k/v with head counts as attributes, and (step) the cache in and out of the op.
        assert all(any(a.name == "q_num_heads" for a in n.attribute) for n in attention)
        assert _meta(info.graph_path(graph))[GRAPH_OPT_KEY] == f"attention_kv_fusion:{layers}"
        if graph == "step":
            outputs = {o for n in attention for o in n.output}
            assert {f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")} <= outputs
            assert not [n for n in model.graph.node if n.op_type == "Concat" and set(n.output) & outputs]


def test_fusion_leaves_other_graphs_alone(exported, tmp_path):
    info = load_export(exported("lstm"))
    path = shutil.copy(info.graph_path("step"), tmp_path / "step.onnx")
    before = path.read_bytes()
    assert optimize_graph(path, info.spec.step) == []
    assert path.read_bytes() == before


def test_fusion_is_idempotent(exported, tmp_path):
    info = load_export(exported("gpt"))
    path = shutil.copy(info.graph_path("step"), tmp_path / "step.onnx")
    before = path.read_bytes()
    assert optimize_graph(path, info.spec.step) == []       # already fused: nothing left to fold
    assert path.read_bytes() == before
