"""causal-lm: a language model over token ids, generated one token at a time.

    full   token ids [B, S] -> logits [B, S, V], from the initial state (teacher-forced)
    step   token ids [B, S] + state -> logits [B, S, V] + next state; S >= 1, and for a KV cache
           a past of any length including 0, so ONE graph serves the prompt and every new token

The chain: `step` on the prompt (prefill), then `step` on each sampled token. Families supply
the state tensors (RNN h/c, fixed size; or a KV cache that grows along its sequence axis, which
then also takes an attention mask and positions so rows of different lengths share a batch).
"""

from __future__ import annotations

from dataclasses import replace

from seqserve.tasks.spec import (BATCH, FULL, LOGITS, MASK, MASK_NAME, POSITIONS, SEQ, STEP, TOKENS, GraphSpec,
                                 TaskSpec, TensorSpec, state_tensors)

NAME = "causal-lm"
FULL_GRAPH, STEP_GRAPH = "full", "step"
TOKENS_NAME, LOGITS_NAME = "input_ids", "logits"      # the models' run_step reads and writes these


def causal_lm_spec(family: str, vocab_size: int, state: list[tuple[str, str, tuple, int | None]],
                   extra: dict) -> TaskSpec:
    """state: (input name, output name, dims of the input, seq_axis) per state pair; a KV cache
    (seq_axis set) grows along that axis: its output's dim there is total_sequence, and the step
    graph then takes attention_mask and position_ids."""
    ids = TensorSpec(TOKENS_NAME, "int64", (BATCH, SEQ), TOKENS)
    logits = TensorSpec(LOGITS_NAME, "float32", (BATCH, SEQ, vocab_size), LOGITS)
    past, present, pairs, positional = state_tensors(state)
    return TaskSpec(NAME, family, {
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (ids,), (logits,), (), FULL),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *positional, *past), (logits, *present), pairs, STEP),
    }, extra)


def in_place_spec(spec: TaskSpec, length: int) -> TaskSpec:
    """The task with its step graph's KV cache as preallocated buffers of `length` positions,
    updated in place (StatePair.in_place; export/static_cache.py writes that graph). The step
    then takes no attention mask: row b's cache is positions 0 .. position_ids[b, 0] - 1."""
    step = spec.step
    pairs = {p.input: p for p in step.state if p.seq_axis is not None}
    outs = {p.output: p for p in pairs.values()}

    def sized(t: TensorSpec, axis: int) -> TensorSpec:
        return replace(t, dims=(*t.dims[:axis], length, *t.dims[axis + 1:]))

    inputs = tuple(sized(t, pairs[t.name].seq_axis) if t.name in pairs else t
                   for t in step.inputs if t.role != MASK)
    outputs = tuple(sized(t, outs[t.name].seq_axis) if t.name in outs else t for t in step.outputs)
    state = tuple(replace(p, in_place=True) if p.input in pairs else p for p in step.state)
    graphs = {n: (replace(g, inputs=inputs, outputs=outputs, state=state) if g is step else g)
              for n, g in spec.graphs.items()}
    return replace(spec, graphs=graphs, extra={**spec.extra, "kv_cache": "static", "kv_cache_length": length})


def as_exported(spec: TaskSpec, exported: TaskSpec) -> TaskSpec:
    """A model's spec laid out as an export's is: in_place_spec when it was exported with a
    static KV cache (what the gate compares the sidecar with)."""
    if exported.extra.get("kv_cache") == "static" and spec.extra.get("kv_cache") != "static":
        return in_place_spec(spec, exported.extra["kv_cache_length"])
    return spec


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a causal-lm torch model, by tensor names (the exporter traces this; the
    torch backend runs it). The model's `forward(ids)` is the full graph, `run_step` the step."""
    if graph.runs == FULL:
        return {graph.name_of(LOGITS): model(inputs[graph.name_of(TOKENS)])}
    if any(p.in_place for p in graph.state):
        return _run_in_place(model, graph, inputs)
    return model.run_step(inputs)


def _run_in_place(model, graph: GraphSpec, inputs: dict) -> dict:
    """The in-place step graph in torch (the gate's reference): each row alone through the model's
    concat step on its real past (buffer[:, :, :length]), the new K/V written into a copy of the
    buffer at length .. length + S - 1."""
    import torch

    ids, pos = inputs[graph.name_of(TOKENS)], inputs[graph.name_of(POSITIONS)]
    pairs = [p for p in graph.state if p.in_place]
    present = {p.output: inputs[p.input].clone() for p in pairs}
    logits = []
    for b in range(ids.shape[0]):
        n, S = int(pos[b, 0]), ids.shape[1]
        feeds = {**{k: v[b:b + 1] for k, v in inputs.items() if k not in {p.input for p in pairs}},
                 MASK_NAME: torch.ones(1, n + S, dtype=torch.int64)}
        for p in pairs:
            feeds[p.input] = inputs[p.input][b:b + 1].narrow(p.seq_axis, 0, n)
        out = model.run_step(feeds)
        logits.append(out[graph.name_of(LOGITS)])
        for p in pairs:
            present[p.output][b:b + 1].narrow(p.seq_axis, n, S).copy_(out[p.output].narrow(p.seq_axis, n, S))
    return {graph.name_of(LOGITS): torch.cat(logits), **present}
