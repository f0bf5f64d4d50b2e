"""The GPT step graph with an in-place KV cache: ONNX Runtime's GroupQueryAttention on a static buffer.

Why (measured, ../shared/ENVIRONMENT.md "ONNX Runtime attention and caches", and
benchmarks/kv_cache.py): the exported step graph returns `present = concat(past, new)`, so every
call copies the whole past, and a batch costs as its longest row. `com.microsoft.GroupQueryAttention`
with the SAME buffer bound as past and present (runtime/static_ort.py) writes only the new tokens
and attends over each row's real length. Opset-24 `Attention` + `TensorScatter` is in place too but
attends over the whole buffer (flat and 2-3x slower below ~1000 tokens), so GQA is what we keep.

The rewrite, after optimize.py has folded each layer's plumbing into one opset-23 node:

    Attention(q, k, v [B, S, D], mask [B, 1, S, P+S], past_k, past_v [B, H, P, hd])
        -> y [B, S, D], present_k, present_v [B, H, P+S, hd]
becomes
    GroupQueryAttention(qkv [B, S, 3D] packed, "", "", past_k, past_v [B, H, MAX, hd], seqlens_k [B], total [])
        -> y, present_k, present_v [B, H, MAX, hd]     (present IS past when bound to one buffer)

seqlens_k (int32, GQA's convention: each row's total length - 1) and total_sequence_length (int32
scalar: the batch's longest total) are computed inside the graph from position_ids: a row's cache
holds positions 0 .. p - 1, so its last new token's position is its total - 1. The step graph keeps
ONE input list for prefill (S > 1, past 0), chunks (S > 1, past > 0) and decode (S = 1), and needs
no attention mask (the mask subgraph becomes dead and goes). GQA's rotary and ALiBi are off: GPT adds
learned positions at the embedding. Kept only if ONNX Runtime gives the concat graph's outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from seqserve.export.optimize import GRAPH_OPT_KEY, prune_unread
from seqserve.tasks.spec import LOGITS, MASK, POSITIONS, GraphSpec, example_inputs

MS_DOMAIN = "com.microsoft"
REWRITE = "static_kv_gqa"
SEQLENS, TOTAL_LEN = "gqa_seqlens_k", "gqa_total_sequence_length"


def rewrite_static_cache(path, concat: GraphSpec, static: GraphSpec, length: int) -> int:
    """Turn the exported (fused) concat step graph at `path` into the in-place graph `static`
    describes (tasks/causal_lm.in_place_spec), buffers of `length` positions. Verified in ONNX
    Runtime against the concat graph; raises ValueError when the graph has an unexpected form or
    the outputs differ (the export then fails: the user asked for a static cache)."""
    path = Path(path)
    original = path.read_bytes()
    model = onnx.load_from_string(original)
    n = _to_gqa(model, concat, static, length)
    candidate = model.SerializeToString()
    diff = max_diff_vs_concat(original, candidate, concat, static)
    if not diff <= 1e-4:
        raise ValueError(f"the GroupQueryAttention graph differs from the exported one by {diff:g}")
    meta = {p.key: p.value for p in model.metadata_props}
    applied = ",".join(filter(None, [meta.get(GRAPH_OPT_KEY, ""), f"{REWRITE}:{n}"]))
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v)
                                for k, v in {**meta, GRAPH_OPT_KEY: applied}.items())
    onnx.save(model, str(path))
    logging.getLogger(__name__).info("%s: %d attention layers now update a static KV cache in place", path.name, n)
    return n


def _to_gqa(model, concat: GraphSpec, static: GraphSpec, length: int) -> int:
    g = model.graph
    pairs = {p.input: p.output for p in concat.state if p.seq_axis is not None}
    mask, positions = concat.name_of(MASK), concat.name_of(POSITIONS)
    producer = {o: x for x in g.node for o in x.output}
    readers: dict[str, int] = {}
    for x in g.node:
        for i in x.input:
            readers[i] = readers.get(i, 0) + 1

    def packed(q, k, v):
        """q, k, v = Split(qkv [B, S, 3D], axis -1) read only here -> qkv: GQA takes it packed
        (key and value empty), one Split node less per layer."""
        sp = producer.get(q)
        if sp is None or sp.op_type != "Split" or list(sp.output) != [q, k, v] or len(sp.input) != 1:
            return None
        axis = next((helper.get_attribute_value(a) for a in sp.attribute if a.name == "axis"), 0)
        return sp.input[0] if axis in (2, -1) and all(readers.get(t) == 1 for t in (q, k, v)) else None

    out, n = [], 0
    for node in g.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx") and len(node.input) == 6 \
                and node.input[4] in pairs and len(node.output) == 3:
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            if a.get("q_num_heads") is None or a.get("is_causal", 0) or a.get("qk_matmul_output_mode", 0):
                raise ValueError(f"{node.name}: not the folded opset-23 attention export/optimize.py writes")
            extra = {"scale": a["scale"]} if "scale" in a else {}
            if a.get("softcap"):
                extra["softcap"] = a["softcap"]
            q, k, v, _mask, pk, pv = node.input
            qkv = packed(q, k, v)
            if qkv:
                q, k, v = qkv, "", ""
            out.append(helper.make_node(
                "GroupQueryAttention", [q, k, v, pk, pv, SEQLENS, TOTAL_LEN], list(node.output),
                name=(node.name or "attention") + "_gqa", domain=MS_DOMAIN,
                num_heads=a["q_num_heads"], kv_num_heads=a["kv_num_heads"], do_rotary=0, **extra))
            n += 1
        else:
            out.append(node)
    if n != len(pairs) // 2:
        raise ValueError(f"found {n} folded attention layers for {len(pairs) // 2} KV-cache layers")
    # seqlens_k = position_ids[:, -1] (a row's total - 1); total = max(seqlens_k) + 1, both int32.
    consts = [helper.make_tensor("gqa_last", TensorProto.INT64, [], [-1]),
              helper.make_tensor("gqa_one", TensorProto.INT32, [], [1])]
    prelude = [helper.make_node("Gather", [positions, "gqa_last"], ["gqa_last_position"], axis=1),
               helper.make_node("Cast", ["gqa_last_position"], [SEQLENS], to=TensorProto.INT32),
               helper.make_node("ReduceMax", [SEQLENS], ["gqa_max_seqlen"], keepdims=0),
               helper.make_node("Add", ["gqa_max_seqlen", "gqa_one"], [TOTAL_LEN])]
    out = prelude + out
    outputs = {o.name for o in g.output}
    out = prune_unread(out, outputs)                     # the mask subgraph nobody reads now
    used = {i for x in out for i in x.input}
    if mask in used:
        raise ValueError(f"{mask} is still read outside attention; cannot drop it")
    produced = {o for x in out for o in x.output}
    inits = [t for t in g.initializer if t.name in used]
    info = [vi for vi in g.value_info if vi.name in produced and vi.name not in outputs]
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(out)
    g.initializer.extend(inits + consts)
    g.value_info.extend(info)
    # Graph inputs and outputs as the static spec says: no mask, buffers of `length` positions.
    ins = {i.name: i for i in g.input}
    del g.input[:]
    g.input.extend(ins[t.name] for t in static.inputs)
    for vi in (*g.input, *g.output):
        name = vi.name
        if name in pairs or name in pairs.values():
            dims = static.input(name).dims if name in pairs else static.output(name).dims
            for d, want in zip(vi.type.tensor_type.shape.dim, dims):
                d.Clear()
                if isinstance(want, int):
                    d.dim_value = want
                else:
                    d.dim_param = want
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return n


def max_diff_vs_concat(concat_bytes: bytes, static_bytes: bytes, concat: GraphSpec, static: GraphSpec) -> float:
    """Worst |difference| of the static graph's logits and written cache vs the concat graph's,
    row by row (the static batch is ragged: each row its own past), over prefill, chunk, decode."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    a = ort.InferenceSession(concat_bytes, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(static_bytes, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    logits = concat.name_of(LOGITS)
    pairs = [p for p in static.state if p.in_place]
    worst = 0.0
    # (new tokens S, each row's past): prompts, a chunk after a past, one-token decode, ragged.
    # GQA refuses S > 1 after a past at batch > 1: static_ort.py runs such calls row by row.
    for S, pasts in ((4, [0]), (2, [0, 0]), (3, [5]), (1, [0]), (1, [7, 2, 0])):
        feeds = example_inputs(static, {"batch": len(pasts), "sequence": S, "past_sequence": 0}, rng)
        pos = static.name_of(POSITIONS)
        feeds[pos] = np.asarray([np.arange(p, p + S) for p in pasts], np.int64)
        for pr in pairs:                                  # row r holds pasts[r] random positions
            buf = feeds[pr.input]
            buf[:] = 0.5 * rng.standard_normal(buf.shape)
            for r, p in enumerate(pasts):
                buf[r, :, p:] = 0
        got = dict(zip([o.name for o in b.get_outputs()], b.run(None, feeds)))
        for r, p in enumerate(pasts):
            ref_feeds = {k: v[r:r + 1] for k, v in feeds.items() if k in concat.input_names}
            ref_feeds[concat.name_of(MASK)] = np.ones((1, p + S), np.int64)
            for pr in pairs:
                ref_feeds[pr.input] = np.ascontiguousarray(feeds[pr.input][r:r + 1, :, :p])
            ref = dict(zip([o.name for o in a.get_outputs()], a.run(None, ref_feeds)))
            worst = max(worst, float(np.abs(ref[logits][0] - got[logits][r]).max()))
            for pr in pairs:
                worst = max(worst, float(np.abs(ref[pr.output][0] - got[pr.output][r, :, :p + S]).max()))
    return worst


def parse_kv_cache(text: str | None, spec) -> int | None:
    """--kv-cache: "concat" (None: today's growing cache) or "static[:N]" -> the buffer length N
    (default the model's max_seq_len). Only a causal-lm step graph with a KV cache has one."""
    from seqserve.errors import SeqserveError

    kind, _, n = (text or "concat").partition(":")
    if kind == "concat" and not n:
        return None
    if kind != "static":
        raise SeqserveError(f"unknown --kv-cache {text!r}; expected concat, static or static:N")
    if spec.task != "causal-lm" or not any(p.seq_axis is not None for p in spec.step.state):
        raise SeqserveError(f"--kv-cache static needs a KV-cache language model (gpt); {spec.family} "
                            f"({spec.task}) has none")
    most = spec.extra.get("max_seq_len") or 0
    try:
        length = int(n) if n else most
    except ValueError:
        raise SeqserveError(f"--kv-cache static:N needs a whole number of positions, got {n!r}") from None
    if not 2 <= length <= (most or length):
        raise SeqserveError(f"--kv-cache static:{length}: the buffer must hold 2 .. {most} positions "
                            "(the model's max_seq_len)")
    return length
