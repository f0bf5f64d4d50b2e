"""causal-lm: a language model over token ids, generated one token at a time.

    full   token ids [B, S] -> logits [B, S, V], from the initial state (teacher-forced)
    step   token ids [B, S] + state -> logits [B, S, V] + next state; S >= 1, and for a KV cache
           a past of any length including 0, so ONE graph serves the prompt and every new token

The chain: `step` on the prompt (prefill), then `step` on each sampled token. Families supply
the state tensors (RNN h/c, fixed size; or a KV cache that grows along its sequence axis, which
then also takes an attention mask and positions so rows of different lengths share a batch).
"""

from __future__ import annotations

from seqserve.tasks.spec import (BATCH, FULL, LOGITS, MASK, POSITIONS, SEQ, STATE, STEP, TOKENS, TOTAL,
                                 GraphSpec, StatePair, TaskSpec, TensorSpec)

NAME = "causal-lm"
FULL_GRAPH, STEP_GRAPH = "full", "step"


def causal_lm_spec(family: str, vocab_size: int, state: list[tuple[str, str, tuple, int | None]],
                   extra: dict) -> TaskSpec:
    """state: (input name, output name, dims of the input, seq_axis) per state pair; a KV cache
    (seq_axis set) grows along that axis: its output's dim there is total_sequence, and the step
    graph then takes attention_mask and position_ids."""
    ids = TensorSpec("input_ids", "int64", (BATCH, SEQ), TOKENS)
    logits = TensorSpec("logits", "float32", (BATCH, SEQ, vocab_size), LOGITS)
    past, present, pairs = [], [], []
    for name_in, name_out, dims, seq_axis in state:
        out_dims = dims if seq_axis is None else (*dims[:seq_axis], TOTAL, *dims[seq_axis + 1:])
        past.append(TensorSpec(name_in, "float32", tuple(dims), STATE))
        present.append(TensorSpec(name_out, "float32", tuple(out_dims), STATE))
        pairs.append(StatePair(name_in, name_out, seq_axis))
    growing = any(p.seq_axis is not None for p in pairs)
    positional = (TensorSpec("attention_mask", "int64", (BATCH, TOTAL), MASK),
                  TensorSpec("position_ids", "int64", (BATCH, SEQ), POSITIONS)) if growing else ()
    return TaskSpec(NAME, family, {
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (ids,), (logits,), (), FULL),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *positional, *past), (logits, *present), tuple(pairs), STEP),
    }, extra)


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a causal-lm torch model, by tensor names (the exporter traces this; the
    torch backend runs it). The model's `forward(ids)` is the full graph, `run_step` the step."""
    if graph.runs == FULL:
        return {graph.name_of(LOGITS): model(inputs[graph.name_of(TOKENS)])}
    return model.run_step(inputs)
