"""The graphs Triton's onnxruntime backend loads for `--target triton-gpu` (NGC r25.12, ORT 1.23.2).

The export's graphs are written for seqserve's own loop; two things about them do not fit Triton's
onnxruntime backend, so the triton-gpu target writes a rewritten copy next to model.onnx
(`BACKEND_GRAPH`, named by the config's `default_model_filename`; model.onnx stays the export's
graph, which `seqserve serve` runs on the same repository):

1. KV-cache step graphs (gpt) cannot start a sequence under Triton's implicit state. Triton core
   starts every state from the *state* dims with each -1 replaced by 1 (core
   src/sequence_state.cc, `SequenceStates::Initialize`: "Convert the variable dimensions to 1 for
   the first request"), so the first request of a sequence carries a past of length 1, never 0.
   The rewritten step graph takes Triton's START control as a real graph input (`START`, int32
   [batch, 1], what core's `CreateBooleanControlTensors` sends with `int32_false_true: [0, 1]`)
   and, when START is 1, slices every past to length 0: the 1-long zero initial state is
   dropped. It also derives `attention_mask` (all ones over past + new) and `position_ids`
   (past .. past + S - 1) from the past length itself, so a Triton client sends `input_ids` and
   the sequence controls only, exactly as for the other targets. That is exact because the config
   says `max_batch_size: 1` (one sequence per execution: pasts of different lengths cannot be
   stacked) and a lone sequence has no padding.
2. ONNX Runtime 1.23 (Triton 25.12's backend) has the opset-23 `Attention` kernel on the CPU
   execution provider only (microsoft/onnxruntime PR #25156, "Attention Operator (CPU)", labelled
   release:1.23.0). The CUDA kernel for Attention-23/24 landed later (PR #27542, merged 2026-03,
   after a first attempt, #26466, was reverted in #27020); issue #28025 shows onnxruntime-gpu
   1.24.4 still placing `Attention` on the CPU whatever the providers. On the 25.12 image every
   Attention node would run on the CPU with the KV cache copied device -> host -> device each
   step. So each opset-23 `Attention` node is decomposed into MatMul/Softmax/Where/Concat/
   Transpose/Reshape, which the CUDA execution provider of every ORT release runs (`Shape`
   stays on the CPU, as ORT places it anyway).

Both rewrites are verified before anything is written: the rewritten graph is run in ONNX
Runtime against the export's graph (start of a sequence with Triton's 1-long zero past vs an
empty past, then a continued step; batched rows for the full graph); outputs must agree to 1e-4.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import LOGITS, MASK, POSITIONS, TOKENS, GraphSpec, example_inputs

BACKEND_GRAPH = "model.onnxruntime_backend.onnx"   # what Triton's onnxruntime backend loads
START = "START"                                      # the START control tensor, a graph input
IR_VERSION = 10                                      # onnx helpers default to 14; ORT 1.23 reads <= 11
TOLERANCE = 1e-4


def _has_attention(model) -> bool:
    return any(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in model.graph.node)


def needs_backend_graph(graph_path: str | Path, spec: GraphSpec, kind: str) -> bool:
    """Whether the triton-gpu target serves a rewritten copy of this graph (see the module doc)."""
    if kind in ("generate", "classify"):   # python backend: runs the export's graph itself
        return False
    model = onnx.load(str(graph_path), load_external_data=False)
    growing = kind == "step" and any(p.seq_axis is not None for p in spec.state)
    return growing or _has_attention(model)


@functools.lru_cache(maxsize=16)
def _cached(path: str, mtime_ns: int, size: int, kind: str, spec: GraphSpec) -> bytes:
    return _build(Path(path), spec, kind)


def backend_graph(graph_path: str | Path, spec: GraphSpec, kind: str) -> bytes:
    """The serialized graph Triton's onnxruntime backend should load for `kind` ("full" | "step"),
    built from the export's graph at `graph_path` and verified against it (cached per file: the
    package step checks it, then writes it)."""
    p = Path(graph_path)
    st = p.stat()
    return _cached(str(p), st.st_mtime_ns, st.st_size, kind, spec)


def _build(path: Path, spec: GraphSpec, kind: str) -> bytes:
    original = path.read_bytes()
    model = onnx.load_from_string(original)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in model.graph.node for a in n.attribute):
        raise SeqserveError(f"{path.name} has control-flow subgraphs; the triton-gpu graph rewrite "
                            "handles flat graphs only")
    decomposed = decompose_attention(model)
    growing = kind == "step" and any(p.seq_axis is not None for p in spec.state)
    if growing:
        add_sequence_start(model, spec)
    model.ir_version = min(model.ir_version or IR_VERSION, IR_VERSION)
    meta = [f"attention_decomposed:{decomposed}"] + (["sequence_start"] if growing else [])
    model.metadata_props.append(onnx.StringStringEntryProto(key="seqserve.triton_gpu_rewrite",
                                                            value=",".join(meta)))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    diff = verify(original, data, spec, growing)
    if not diff <= TOLERANCE:
        raise SeqserveError(f"the triton-gpu rewrite of {path.name} does not reproduce the export's "
                            f"outputs (max abs difference {diff:g} > {TOLERANCE:g}); refusing to package it")
    return data


# ---- 1. START + derived inputs -------------------------------------------------------------------

def add_sequence_start(model, spec: GraphSpec) -> None:
    """Make the step graph take START [B, 1] int32 instead of attention_mask/position_ids, and
    ignore the past when START is 1 (in place). Graph inputs become: input_ids, START, pasts."""
    g = model.graph
    inputs = {i.name: i for i in g.input}
    pasts = [p.input for p in spec.state if p.seq_axis is not None]
    tokens, mask, positions = spec.roles[TOKENS], spec.roles[MASK], spec.roles[POSITIONS]
    if not pasts or tokens not in inputs or any(n not in inputs for n in pasts):
        raise SeqserveError("add_sequence_start needs a step graph with token ids and KV-cache pasts")
    axis = {p.input: p.seq_axis for p in spec.state}
    nodes, inits = [], []

    def const(name, value):
        if all(t.name != name for t in inits):
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, name="triton_start/" + outs[0], **kw))
        return outs[0]

    p = "triton_start/"
    c0, c1, ci1 = const(p + "zero", np.array([0], np.int64)), const(p + "one", np.array([1], np.int64)), \
        const(p + "int_one", np.array(1, np.int64))
    # keep = 1 - START[0, 0]: 0 on a sequence's first request (drop Triton's 1-long zero past).
    node("Cast", [START], [p + "start64"], to=TensorProto.INT64)
    node("ReduceMax", [p + "start64"], [p + "start_any"], keepdims=0)
    node("Sub", [ci1, p + "start_any"], [p + "keep"])
    first = pasts[0]
    node("Shape", [first], [p + "past_len_raw"], start=axis[first], end=axis[first] + 1)
    node("Mul", [p + "past_len_raw", p + "keep"], [p + "past_len"])            # [1]
    renamed = {}
    for name in pasts:
        a = axis[name]
        eff = p + name
        node("Slice", [name, c0, p + "past_len", const(p + f"axis{a}", np.array([a], np.int64))], [eff])
        renamed[name] = eff
    for n in g.node:            # the body reads the effective pasts
        for i, x in enumerate(n.input):
            if x in renamed:
                n.input[i] = renamed[x]
    # attention_mask [B, P + S] of ones; position_ids [B, S] = P .. P + S - 1.
    node("Shape", [tokens], [p + "batch"], start=0, end=1)
    node("Shape", [tokens], [p + "seq"], start=1, end=2)
    node("Add", [p + "past_len", p + "seq"], [p + "total"])
    node("Concat", [p + "batch", p + "total"], [p + "mask_shape"], axis=0)
    have = set(inputs)
    if mask in have:
        node("ConstantOfShape", [p + "mask_shape"], [mask],
             value=numpy_helper.from_array(np.array([1], np.int64)))
    if positions in have:
        node("Squeeze", [p + "past_len"], [p + "p0"])
        node("Squeeze", [p + "total"], [p + "p1"])
        node("Range", [p + "p0", p + "p1", ci1], [p + "positions"])
        node("Unsqueeze", [p + "positions", c0], [p + "positions2"])
        node("Concat", [p + "batch", p + "seq"], [p + "pos_shape"], axis=0)
        node("Expand", [p + "positions2", p + "pos_shape"], [positions])
    ids = inputs[tokens]
    batch_dim = ids.type.tensor_type.shape.dim[0]
    start_in = helper.make_tensor_value_info(START, TensorProto.INT32, [batch_dim.dim_param or "batch", 1])
    new_inputs = [ids, start_in] + [i for i in g.input if i.name not in (tokens, mask, positions)]
    del g.input[:]
    g.input.extend(new_inputs)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    g.initializer.extend(inits)
    kept = [v for v in g.value_info if v.name not in (mask, positions)]
    del g.value_info[:]
    g.value_info.extend(kept)


# ---- 2. decomposed attention ---------------------------------------------------------------------

def decompose_attention(model) -> int:
    """Replace every opset-23 `Attention` node by primitive ops (in place); returns how many.

    Handles what seqserve's exports produce: 3-D (q_num_heads/kv_num_heads, equal) or 4-D q/k/v,
    an optional boolean or float mask, optional past_key/past_value (present = concat on axis 2),
    is_causal 0, no softcap, no qk output. Anything else is refused with the reason.
    """
    g = model.graph
    out, inits, count = [], [], 0
    lowest = "attn_decomp/lowest"
    inits.append(numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), lowest))
    for n in g.node:
        if n.op_type != "Attention" or n.domain not in ("", "ai.onnx"):
            out.append(n)
            continue
        count += 1
        mask = n.input[3] if len(n.input) > 3 else ""
        out.extend(_decompose(n, count, inits, lowest, _elem_type(model, mask) if mask else None))
    if count:
        del g.node[:]
        g.node.extend(out)
        g.initializer.extend(inits)
    return count


def _attrs(n) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _decompose(n, idx: int, inits: list, lowest: str, mask_type: int | None) -> list:
    a = _attrs(n)
    where = f"Attention node {n.name or idx}"
    if a.get("is_causal", 0):
        raise SeqserveError(f"{where} has is_causal=1; the decomposition handles explicit masks only")
    if a.get("softcap", 0.0) or a.get("qk_matmul_output_mode", 0) or len(n.output) == 4 and n.output[3]:
        raise SeqserveError(f"{where} uses softcap or a qk output; not decomposed")
    if a.get("softmax_precision"):
        raise SeqserveError(f"{where} sets softmax_precision; not decomposed")
    qh, kvh = a.get("q_num_heads"), a.get("kv_num_heads")
    if qh != kvh:
        raise SeqserveError(f"{where} has q_num_heads {qh} != kv_num_heads {kvh} (GQA); not decomposed")
    ins = list(n.input) + [""] * (6 - len(n.input))
    q, k, v, mask, past_k, past_v = ins[:6]
    if bool(past_k) != bool(past_v):
        raise SeqserveError(f"{where} has only one of past_key/past_value")
    p = f"attn_decomp{idx}/"
    nodes = []

    def node(op, i, o, **kw):
        nodes.append(helper.make_node(op, i, o, name=p + o[0].split("/")[-1], **kw))
        return o[0]

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), p + name))
        return p + name

    three_d = qh is not None
    if three_d:                          # [B, S, H*hd] -> [B, H, S, hd]
        shape4 = const("shape4", np.array([0, 0, qh, -1], np.int64))
        q4, k4, v4 = (node("Transpose", [node("Reshape", [x, shape4], [p + f"{t}_bshd"])], [p + f"{t}_bhsd"],
                           perm=[0, 2, 1, 3]) for t, x in (("q", q), ("k", k), ("v", v)))
    else:
        q4, k4, v4 = q, k, v
    present_k = n.output[1] if len(n.output) > 1 and n.output[1] else p + "present_k"
    present_v = n.output[2] if len(n.output) > 2 and n.output[2] else p + "present_v"
    if past_k:
        k_all = node("Concat", [past_k, k4], [present_k], axis=2)
        v_all = node("Concat", [past_v, v4], [present_v], axis=2)
    else:
        k_all, v_all = k4, v4
        if present_k != p + "present_k" or present_v != p + "present_v":
            raise SeqserveError(f"{where} returns present key/value without a past")
    kt = node("Transpose", [k_all], [p + "k_t"], perm=[0, 1, 3, 2])
    scores = node("MatMul", [q4, kt], [p + "scores_raw"])
    if "scale" in a:
        scale = const("scale", np.array(a["scale"], np.float32))
    else:                                 # 1 / sqrt(head_size), the spec's default
        hd = node("Shape", [q4], [p + "head_size"], start=3, end=4)
        hdf = node("Cast", [hd], [p + "head_size_f"], to=TensorProto.FLOAT)
        scale = node("Reciprocal", [node("Sqrt", [hdf], [p + "sqrt_head_size"])], [p + "scale"])
    scores = node("Mul", [scores, scale], [p + "scores"])
    if mask:
        # A boolean mask says which keys to attend; false gets the lowest float (not -inf, so a
        # fully masked row stays finite), as ORT's CPU kernel. A float mask is added.
        if mask_type == TensorProto.BOOL:
            scores = node("Where", [mask, scores, lowest], [p + "scores_masked"])
        elif mask_type == TensorProto.FLOAT:
            scores = node("Add", [scores, mask], [p + "scores_masked"])
        else:
            raise SeqserveError(f"{where}: cannot tell its mask's dtype ({mask_type}); not decomposed")
    probs = node("Softmax", [scores], [p + "probs"], axis=-1)
    o = n.output[0]
    if three_d:
        o4 = node("MatMul", [probs, v_all], [p + "out_bhsd"])
        o3 = node("Transpose", [o4], [p + "out_bshd"], perm=[0, 2, 1, 3])
        node("Reshape", [o3, const("shape3", np.array([0, 0, -1], np.int64))], [o])
    else:
        node("MatMul", [probs, v_all], [o])
    return nodes


_BOOL_OPS = {"And", "Or", "Not", "Xor", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN", "IsInf"}
_PASS_OPS = {"Unsqueeze", "Squeeze", "Reshape", "Expand", "Identity", "Transpose", "Slice", "Gather"}


def _elem_type(model, name: str) -> int | None:
    """The element type of a tensor, traced through its producers (no shape inference)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    for _ in range(64):
        for v in list(g.input) + list(g.value_info):
            if v.name == name and v.type.tensor_type.elem_type:
                return v.type.tensor_type.elem_type
        for t in g.initializer:
            if t.name == name:
                return t.data_type
        n = producer.get(name)
        if n is None:
            return None
        if n.op_type == "Cast":
            return _attrs(n)["to"]
        if n.op_type in _BOOL_OPS:
            return TensorProto.BOOL
        if n.op_type not in _PASS_OPS and n.op_type != "Where":
            return None
        name = n.input[1] if n.op_type == "Where" else n.input[0]
    return None


# ---- verification --------------------------------------------------------------------------------

def _session(data: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def verify(original: bytes, rewritten: bytes, spec: GraphSpec, growing: bool) -> float:
    """Max abs difference between the export's graph and its triton-gpu rewrite, over the cases
    Triton will feed (for a step graph: a sequence start with the 1-long zero past Triton
    supplies, then a continued step on the returned state)."""
    a, b = _session(original), _session(rewritten)
    names = [o.name for o in a.get_outputs()]
    rng = np.random.default_rng(0)
    worst = 0.0

    def cmp(x, y):
        nonlocal worst
        for u, w in zip(x, y):
            if u.shape != w.shape:
                worst = float("inf")
                return
            worst = max(worst, float(np.max(np.abs(u - w))) if u.size else 0.0)

    if not growing:
        for sizes in ({"batch": 2, "sequence": 5, "source_sequence": 4},
                      {"batch": 1, "sequence": 1, "past_sequence": 3, "source_sequence": 2}):
            feeds = example_inputs(spec, sizes, rng)
            cmp(a.run(names, feeds), b.run(names, feeds))
        return worst
    state = [p for p in spec.state]
    for prompt in (1, 4):
        # start: the export's graph with an empty past; the rewrite with Triton's [1, h, 1, d] zeros
        feeds = example_inputs(spec, {"batch": 1, "sequence": prompt, "past_sequence": 0}, rng)
        ref = a.run(names, feeds)
        tokens, mask, positions = spec.roles[TOKENS], spec.roles[MASK], spec.roles[POSITIONS]
        tfeeds = {tokens: feeds[tokens], START: np.ones((1, 1), np.int32)}
        for pair in state:
            t = spec.input(pair.input)
            shape = [1 if isinstance(d, str) else d for d in t.dims]
            tfeeds[pair.input] = np.zeros(shape, t.dtype)
        got = b.run(names, tfeeds)
        cmp(ref, got)
        # continue: two more steps on each graph's own returned state
        ref_out, got_out = dict(zip(names, ref)), dict(zip(names, got))
        past = prompt
        for step in (1, 2):
            ids = rng.integers(0, spec.role(LOGITS).dims[-1], (1, step), dtype=np.int64)
            f_ref = {tokens: ids, **{p.input: ref_out[p.output] for p in state}}
            if mask in spec.input_names:
                f_ref[mask] = np.ones((1, past + step), np.int64)
            if positions in spec.input_names:
                f_ref[positions] = np.arange(past, past + step, dtype=np.int64)[None]
            f_got = {tokens: ids, START: np.zeros((1, 1), np.int32),
                     **{p.input: got_out[p.output] for p in state}}
            ref, got = a.run(names, f_ref), b.run(names, f_got)
            cmp(ref, got)
            ref_out, got_out = dict(zip(names, ref)), dict(zip(names, got))
            past += step
    return worst


# ---- what `seqserve package` calls ---------------------------------------------------------------

def _backend_source(cfg, info) -> bytes | Path:
    from seqserve.package.triton_config import KIND_GRAPH, kind_of

    kind = kind_of(cfg)
    graph = KIND_GRAPH[kind]
    if cfg.default_model_filename == BACKEND_GRAPH:
        return backend_graph(info.graph_path(graph), info.graph(graph), kind)
    return info.graph_path(graph)


def backend_problems(cfg, info) -> list[str]:
    """For a config Triton's onnxruntime backend will load (target triton-gpu): every load rule it
    breaks against the graph that will be written for it (seqserve.triton.onnxruntime_backend);
    a rewrite that cannot be made or verified is a problem too. [] for every other config."""
    from seqserve.triton.onnxruntime_backend import check_config, served_by_onnxruntime_backend

    if not served_by_onnxruntime_backend(cfg):
        return []
    try:
        source = _backend_source(cfg, info)
    except SeqserveError as e:
        return [str(e)]
    return [f"Triton's onnxruntime backend would refuse it: {p}" for p in check_config(cfg, source)]


def write_backend_graph(cfg, info, folder: str | Path) -> None:
    """Write the graph the config's default_model_filename names into a (staged) version folder."""
    if cfg.default_model_filename != BACKEND_GRAPH:
        return
    (Path(folder) / BACKEND_GRAPH).write_bytes(_backend_source(cfg, info))
