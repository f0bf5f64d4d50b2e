"""causal-lm: a language model over token ids, generated one token at a time.

    full   token ids [B, S] -> logits [B, S, V], from the initial state (teacher-forced)
    step   token ids [B, S] + state -> logits [B, S, V] + next state; S >= 1, and for a KV cache
           a past of any length including 0, so ONE graph serves the prompt and every new token

The chain: `step` on the prompt (prefill), then `step` on each sampled token. Families supply
the state tensors (RNN h/c, fixed size; or a KV cache that grows along its sequence axis, which
then also takes an attention mask and positions so rows of different lengths share a batch).
"""

from __future__ import annotations

from seqserve.tasks.spec import (BATCH, FULL, LOGITS, SEQ, STEP, TOKENS, GraphSpec, TaskSpec, TensorSpec,
                                 state_tensors)

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


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a causal-lm torch model, by tensor names (the exporter traces this; the
    torch backend runs it). The model's `forward(ids)` is the full graph, `run_step` the step."""
    if graph.runs == FULL:
        return {graph.name_of(LOGITS): model(inputs[graph.name_of(TOKENS)])}
    return model.run_step(inputs)
