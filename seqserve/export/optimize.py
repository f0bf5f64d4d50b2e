"""Post-export graph rewrites that measurably speed up ONNX Runtime, each verified before use."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from seqserve.tasks.spec import MASK, GraphSpec, example_inputs

# The dynamo exporter lowers `scaled_dot_product_attention` with a KV cache to a 4-D ONNX
# `Attention` surrounded by plumbing, per layer:
#     q/k/v [B, S, D] -> Reshape [B, S, nh, hd] -> Transpose -> [B, nh, S, hd]
#     present = Concat(past, k) ; Attention(q, present_k, present_v, mask) -> Transpose -> Reshape
# Opset-23 `Attention` takes 3-D q/k/v (`q_num_heads`/`kv_num_heads`) and the cache itself
# (`past_key`/`past_value` in, `present_key`/`present_value` out), so all of that is ONE node.
# ONNX Runtime then appends to the cache per head inside its attention loop (split over the
# intra-op threads, the head's cache still in L2 when it is read) instead of Concat nodes writing
# it and Attention reading it back. Same graph inputs and outputs; ORT computes identical numbers
# (checked below before the file is replaced). Measured, gpt small, 2 cores, one decode step:
# -6% at context 64, -13% at 256, -7% at 1024; 128 -> 85 nodes.

GRAPH_OPT_KEY = "seqserve.graph_optimizations"   # ONNX metadata: what was rewritten after export


def optimize_graph(path, graph: GraphSpec) -> list[str]:
    """Rewrite an exported graph in place when that measurably speeds up ONNX Runtime.

    Each rewrite is verified by running the old and the new graph in ONNX Runtime on example
    inputs (padding rows included); outputs must agree within 1e-4 or the file is left as exported.
    Returns the rewrites applied (also recorded in the model's metadata under GRAPH_OPT_KEY).
    """
    path = Path(path)
    original = path.read_bytes()
    model = onnx.load_from_string(original)
    if not any(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return []
    try:
        fused = _fuse_attention_kv(model)
        if not fused:
            return []
        diff = _max_output_diff(original, model.SerializeToString(), graph)
    except Exception as e:  # an unexpected graph, or the runtime cannot run the rewrite: keep the export
        logging.getLogger(__name__).info("attention fusion skipped for %s: %s", path.name, e)
        return []
    if not diff <= 1e-4:
        logging.getLogger(__name__).info("attention fusion skipped for %s: outputs differ by %g", path.name, diff)
        return []
    applied = [f"attention_kv_fusion:{fused}"]
    model.metadata_props.append(onnx.StringStringEntryProto(key=GRAPH_OPT_KEY, value=",".join(applied)))
    onnx.save(model, str(path))
    return applied


def _fuse_attention_kv(model) -> int:
    """Fold the reshape/transpose/concat plumbing around 4-D `Attention` nodes; returns how many."""
    g = model.graph
    nodes = list(g.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return 0                                        # subgraphs: keep the analysis simple
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in g.input}
    graph_outputs = {o.name for o in g.output}
    constants = {t.name: t for t in g.initializer}

    def attr(n, name, default=None):
        for a in n.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def const_value(name):
        if name in constants:
            return onnx.numpy_helper.to_array(constants[name])
        n = producer.get(name)
        if n is not None and n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            return onnx.numpy_helper.to_array(n.attribute[0].t)
        return None

    def sole_consumer(name):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in graph_outputs else None

    def only_consumer(name, node) -> bool:
        return sole_consumer(name) is node

    def split_heads(name, consumer):
        """name = Transpose(0,2,1,3)(Reshape(x, shape)) used only by consumer -> (x, shape, nodes)."""
        tr = producer.get(name)
        if tr is None or tr.op_type != "Transpose" or list(attr(tr, "perm", [])) != [0, 2, 1, 3]:
            return None
        rs = producer.get(tr.input[0])
        if rs is None or rs.op_type != "Reshape" or not only_consumer(tr.input[0], tr) \
                or not only_consumer(name, consumer):
            return None
        return rs.input[0], rs.input[1], (rs, tr)

    def heads_of(shape_name):
        v = const_value(shape_name)
        if v is not None:
            return int(v[2]) if v.size == 4 and v[2] > 0 else None
        n = producer.get(shape_name)
        if n is None or n.op_type != "Concat" or len(n.input) != 4:
            return None
        v = const_value(n.input[2])
        return int(v.reshape(-1)[0]) if v is not None and v.size == 1 and v.reshape(-1)[0] > 0 else None

    removed, replaced = set(), {}
    for att in nodes:
        if att.op_type != "Attention" or att.domain not in ("", "ai.onnx") or len(att.input) not in (3, 4) \
                or len(att.output) != 1 or attr(att, "q_num_heads") is not None:
            continue
        q4, k4, v4 = att.input[:3]
        mask = att.input[3] if len(att.input) == 4 else ""
        q = split_heads(q4, att)
        pasts, kv = [], []
        for t in (k4, v4):
            cat = producer.get(t)
            if cat is not None and cat.op_type == "Concat" and len(cat.input) == 2 and attr(cat, "axis") in (2, -2) \
                    and cat.input[0] in graph_inputs and all(c is att for c in consumers.get(t, [])):
                pasts.append((cat.input[0], t, cat))      # present = Concat(past, new) -> fused
                kv.append(split_heads(cat.input[1], cat))
            else:
                kv.append(split_heads(t, att))
        if q is None or None in kv or len(pasts) not in (0, 2):
            continue
        if not (q[1] == kv[0][1] == kv[1][1]):
            continue                                    # q, k and v must be split the same way
        heads = heads_of(q[1])
        tr = sole_consumer(att.output[0])               # [B, nh, S, hd] -> [B, S, nh, hd] -> [B, S, D]
        if heads is None or tr is None or tr.op_type != "Transpose" or list(attr(tr, "perm", [])) != [0, 2, 1, 3]:
            continue
        rs = sole_consumer(tr.output[0])
        if rs is None or rs.op_type != "Reshape":
            continue
        inputs = [q[0], kv[0][0], kv[1][0], mask]
        outputs = [rs.output[0]]
        if pasts:
            inputs += [pasts[0][0], pasts[1][0]]
            outputs += [pasts[0][1], pasts[1][1]]
        while inputs and not inputs[-1]:
            inputs.pop()
        kwargs = {a.name: onnx.helper.get_attribute_value(a) for a in att.attribute}
        replaced[id(att)] = onnx.helper.make_node(
            "Attention", inputs, outputs, name=(att.name or "attention") + "_kv_fused",
            q_num_heads=heads, kv_num_heads=heads, **kwargs)
        for n in (tr, rs, *q[2], *kv[0][2], *kv[1][2], *(p[2] for p in pasts)):
            removed.add(id(n))
    if not replaced:
        return 0
    out = prune_unread([replaced.get(id(n), n) for n in nodes if id(n) not in removed], graph_outputs)
    used = {i for n in out for i in n.input}
    produced = {o for n in out for o in n.output}
    kept_inits = [t for t in g.initializer if t.name in used or t.name in graph_inputs]
    kept_info = [v for v in g.value_info if v.name in produced]
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(out)
    g.initializer.extend(kept_inits)
    g.value_info.extend(kept_info)
    return len(replaced)


def prune_unread(nodes: list, graph_outputs: set[str]) -> list:
    """`nodes` without those whose outputs nothing reads (the plumbing a rewrite left behind),
    repeated until none is left: a node read only by a dropped node goes too."""
    while True:
        used = {i for n in nodes for i in n.input} | graph_outputs
        keep = [n for n in nodes if any(o in used for o in n.output)]
        if len(keep) == len(nodes):
            return nodes
        nodes = keep


def _max_output_diff(original: bytes, candidate: bytes, graph: GraphSpec) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    a = ort.InferenceSession(original, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(candidate, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for sizes in ({"batch": 2, "sequence": 3, "past_sequence": 5}, {"batch": 1, "sequence": 1, "past_sequence": 0},
                  {"batch": 1, "sequence": 1, "past_sequence": 7}):
        feeds = example_inputs(graph, sizes, rng)
        mask = graph.roles[MASK]
        if mask in feeds and sizes["batch"] > 1:
            feeds[mask][0, :2] = 0                       # a left-padded row
        for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
            if x.shape != y.shape:
                return float("inf")
            worst = max(worst, float(np.max(np.abs(x - y))) if x.size else 0.0)
    return worst
