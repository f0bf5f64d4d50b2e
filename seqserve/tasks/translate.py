"""translate: an encoder-decoder over a source text, generating the target one token at a time.

    encoder  source_ids [B, SRC] + source_mask [B, SRC] -> encoder_hidden_states [B, SRC, D] and the
             family's constants (role CONSTANT): what every decoder step reads of the source, computed
             once per source. transformer: the cross-attention K/V of every decoder layer,
             cross_key_values.{i}.key/value [B, nh, SRC, hd] (the layout onnxruntime-genai uses for
             whisper); an RNN family: the encoder outputs it attends over.
    step     input_ids [B, T>=1] + the step state + the constants + source_mask -> logits [B, T, V]
             + next state. transformer: attention_mask [B, P+T] / position_ids [B, T] and a self-
             attention KV cache past_key_values.{i}.* -> present.{i}.*, past length 0 allowed, so ONE
             graph serves the first step too (no merged If). Self and cross caches have distinct names;
             the step returns the present SELF K/V only.
    full     source_ids + source_mask + input_ids [B, T] -> logits [B, T, V], teacher-forced: what the
             encoder once and the step over the same tokens compute

The chain: `encoder` once per source; its outputs that the step takes by name (TaskSpec.links),
with the source mask, are fed unchanged at every step (DecodeState.fixed: beams copy their rows by
DecodeState.select, nothing is recomputed). The target starts from <bos> (io["bos"]); the prompt of
`seqserve generate` is the SOURCE text. One tokenizer covers both sides (io["shared_vocab"]).
"""

from __future__ import annotations

# the names and helpers both encoder-decoder tasks share; re-exported: task_module("translate").source_inputs
from seqserve.tasks.encdec import (ENCODER_GRAPH, FULL_GRAPH, LOGITS_NAME, SOURCE_IDS, SOURCE_MASK_NAME,  # noqa: F401
                                   STEP_GRAPH, TARGET_IDS, examples, generate_targets, pad_sources, run_graph,
                                   source_inputs)
from seqserve.tasks.spec import (ATTENTION, BATCH, CONSTANT, FULL, LOGITS, ONCE, SEQ, SOURCE, SOURCE_MASK,
                                 SOURCE_TOKENS, STEP, TOKENS, GraphSpec, TaskSpec, TensorSpec, state_tensors)

NAME = "translate"
MEMORY, SELF_MASK, SELF_POSITIONS = "encoder_hidden_states", "attention_mask", "position_ids"


def self_cache_names(layer: int) -> list[tuple[str, str]]:
    """(past, present) names of one decoder layer's self-attention K and V."""
    return [(f"past_key_values.{layer}.{kv}", f"present.{layer}.{kv}") for kv in ("key", "value")]


def cross_cache_names(layer: int) -> list[str]:
    """Names of one decoder layer's cross-attention K and V (encoder output, step input)."""
    return [f"cross_key_values.{layer}.{kv}" for kv in ("key", "value")]


def translate_spec(family: str, vocab_size: int, d_model: int, state: list[tuple[str, str, tuple, int | None]],
                   constants: list[tuple[str, tuple]], extra: dict, io: dict, attention: bool = False) -> TaskSpec:
    """state: (input, output, input dims, seq_axis) per step state pair (a KV cache grows along
    seq_axis and then brings attention_mask/position_ids); constants: (name, dims) per encoder
    output the step takes unchanged; io: max_source_len, source_chars (what a source may hold);
    attention: the step also returns attention_weights [B, T, SRC]."""
    src = TensorSpec(SOURCE_IDS, "int64", (BATCH, SOURCE), SOURCE_TOKENS)
    src_mask = TensorSpec(SOURCE_MASK_NAME, "int64", (BATCH, SOURCE), SOURCE_MASK)
    memory = TensorSpec(MEMORY, "float32", (BATCH, SOURCE, d_model))
    consts = tuple(TensorSpec(n, "float32", tuple(d), CONSTANT) for n, d in constants)
    ids = TensorSpec(TARGET_IDS, "int64", (BATCH, SEQ), TOKENS)
    logits = TensorSpec(LOGITS_NAME, "float32", (BATCH, SEQ, vocab_size), LOGITS)
    past, present, pairs, positional = state_tensors(state)     # positional: SELF_MASK, SELF_POSITIONS
    weights = (TensorSpec("attention_weights", "float32", (BATCH, SEQ, SOURCE), ATTENTION),) if attention else ()
    return TaskSpec(NAME, family, {
        ENCODER_GRAPH: GraphSpec(ENCODER_GRAPH, (src, src_mask), (memory, *consts), (), ONCE),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *positional, src_mask, *past, *consts),
                              (logits, *present, *weights), pairs, STEP),
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (src, src_mask, ids), (logits,), (), FULL),
    }, extra, io={"bos": True, "shared_vocab": True, "vocab_size": vocab_size, **io})
