"""classify: many-to-one. Token ids -> one score per class, over named labels (spec.io["labels"]).

    full   input_ids [B, S] -> class_logits [B, C]: the whole sequence at once
    step   input_ids [B, S] + state -> class_logits [B, C] + next state; recurrent encoders only:
           the class scores of everything consumed so far, so a token stream is classified
           incrementally while the server holds the state (NAME_step)

No padding enters a graph: a batch holds rows of one length (the servers stack same-shape
requests only), so there is no mask input. The chain: `step` chunk by chunk equals `full` on the
concatenation (validate: incremental_vs_full).
"""

from __future__ import annotations

from seqserve.tasks.spec import (BATCH, CLASS_LOGITS, CLASSIFY, FULL, SEQ, STATE, STEP, TAG, TOKENS, GraphSpec,
                                 StatePair, TaskSpec, TensorSpec)

NAME = "classify"
FULL_GRAPH, STEP_GRAPH = "full", "step"
TOKENS_NAME, OUTPUT_NAME = "input_ids", "class_logits"


def classify_spec(family: str, vocab_size: int, labels: list[str], state: list[tuple[str, str, tuple]],
                  extra: dict) -> TaskSpec:
    """state: (input name, output name, dims) per fixed-size state pair; [] = no step graph
    (a transformer or bidirectional encoder sees the whole sequence at once)."""
    return _spec(NAME, family, vocab_size, labels, state, extra, OUTPUT_NAME, CLASS_LOGITS, (BATCH, len(labels)))


def _spec(task, family, vocab_size, labels, state, extra, out_name, out_role, out_dims) -> TaskSpec:
    ids = TensorSpec(TOKENS_NAME, "int64", (BATCH, SEQ), TOKENS)
    out = TensorSpec(out_name, "float32", out_dims, out_role)
    graphs = {FULL_GRAPH: GraphSpec(FULL_GRAPH, (ids,), (out,), (), FULL)}
    if state:
        past = tuple(TensorSpec(i, "float32", tuple(d), STATE) for i, _, d in state)
        present = tuple(TensorSpec(o, "float32", tuple(d), STATE) for _, o, d in state)
        graphs[STEP_GRAPH] = GraphSpec(STEP_GRAPH, (ids, *past), (out, *present),
                                       tuple(StatePair(i, o, None) for i, o, _ in state), STEP)
    head = CLASSIFY if out_role == CLASS_LOGITS else TAG
    return TaskSpec(task, family, graphs, {**extra, "vocab_size": vocab_size}, head,
                    {"labels": list(labels), "vocab_size": vocab_size})


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a classifier/tagger torch model by tensor names: `forward(ids)` is the full
    graph, `run_step(dict)` the step graph."""
    if graph.runs == FULL:
        return {graph.outputs[0].name: model(inputs[graph.name_of(TOKENS)])}
    return model.run_step(inputs)
