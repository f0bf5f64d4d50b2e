"""Tasks: what a model's graphs are and how they chain (seqserve/tasks/spec.py), one module per task.

    causal-lm   full + step graphs over token ids -> logits; generation samples tokens
    conditioned init (features -> initial state, once) + step + full; generation from a vector
    classify    full (+ step, recurrent) over token ids -> class_logits [B, C]
    tag         full (+ step, unidirectional recurrent) over token ids -> tag_logits [B, S, T]
    seq2seq     encoder (source -> constants [+ the decoder's initial state], once) + step + full;
                an RNN with attention or a Transformer (self KV cache, cross K/V computed once)

Each task module writes its graph and tensor names once and runs a torch model's graphs by
tensor names (`run_graph`), for the exporter and the torch backend.
"""

from __future__ import annotations

from seqserve.errors import SeqserveError
from seqserve.tasks import causal_lm, classify, conditioned, seq2seq, tag
from seqserve.tasks.causal_lm import causal_lm_spec
from seqserve.tasks.spec import GraphSpec, TaskSpec

MODULES = {causal_lm.NAME: causal_lm, classify.NAME: classify, tag.NAME: tag, conditioned.NAME: conditioned,
           seq2seq.NAME: seq2seq}
TASKS = tuple(MODULES)
CAUSAL_LM = causal_lm.NAME


def task_module(task: str):
    if task not in MODULES:
        raise SeqserveError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return MODULES[task]


def run_graph(model, spec: TaskSpec, graph: GraphSpec, inputs: dict) -> dict:
    """Run `graph` of a torch `model` whose task is spec.task: inputs and outputs by name."""
    return task_module(spec.task).run_graph(model, graph, inputs)


__all__ = ["CAUSAL_LM", "MODULES", "TASKS", "TaskSpec", "causal_lm_spec", "run_graph", "task_module"]
