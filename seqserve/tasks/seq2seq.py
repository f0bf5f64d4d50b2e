"""seq2seq: an RNN encoder-decoder with attention; the encoder runs once, the decoder per token.

    encoder  source_ids [B, SRC] + source_mask [B, SRC] -> encoder_outputs [B, SRC, H] (CONSTANT),
             with attention general/additive also encoder_keys [B, SRC, A] (CONSTANT: the
             source side of the score, W·e_s, computed once per source, not once per step), and
             the decoder's initial state under the step graph's state-input names: past_hidden
             [B, L, H] (and past_cell for an LSTM) -- spec.links() shows encoder -> step for each
    step     input_ids [B, T>=1] + source_mask + past_hidden (past_cell) + the constants ->
             logits [B, T, V] + present_hidden (present_cell) + attention_weights [B, T, SRC]
             (attention none: no constants, no weights; the step takes the state only)
    full     source_ids + source_mask + input_ids [B, T] -> logits [B, T, V], teacher-forced:
             what the encoder once and the step over the same tokens compute

The chain: `encoder` once per source; its outputs that the step takes by name become the step's
starting state (past_*) and constants (encoder_outputs, encoder_keys, and the source mask, an
encoder input the step takes too: loop.start_values), fed unchanged at every step and copied per
beam by DecodeState.select. The target starts from <bos> (io["bos"]); `seqserve generate
--prompt` is the SOURCE text. Sources are right-padded: source_mask is a prefix of ones, and
rows of different lengths share a batch (DecodeState.merge right-pads the constants with zeros,
which the mask then hides). One char tokenizer covers both sides (io["shared_vocab"]); the
characters seen in training sources are io["source_chars"], so a source with others is refused.
"""

from __future__ import annotations

# the names and helpers both encoder-decoder tasks share; re-exported: task_module("seq2seq").source_inputs
from seqserve.tasks.encdec import (ENCODER_GRAPH, FULL_GRAPH, LOGITS_NAME, SOURCE_IDS, SOURCE_MASK_NAME,  # noqa: F401
                                   STEP_GRAPH, TARGET_IDS, examples, generate_targets, pad_sources, run_graph,
                                   source_inputs)
from seqserve.tasks.spec import (ATTENTION, BATCH, CONSTANT, FULL, LOGITS, ONCE, SEQ, SOURCE, SOURCE_MASK,
                                 SOURCE_TOKENS, STATE, STEP, TOKENS, GraphSpec, StatePair, TaskSpec, TensorSpec)

NAME = "seq2seq"
OUTPUTS_NAME, KEYS_NAME, WEIGHTS_NAME = "encoder_outputs", "encoder_keys", "attention_weights"
ATTENTIONS = ("none", "dot", "general", "additive")


def state_names(cell: str) -> list[tuple[str, str]]:
    """(past, present) names of the decoder's state tensors."""
    return [(f"past_{n}", f"present_{n}") for n in (("hidden", "cell") if cell == "lstm" else ("hidden",))]


def seq2seq_spec(family: str, vocab_size: int, cell: str, layers: int, hidden: int, attention: str,
                 key_width: int | None, extra: dict, io: dict) -> TaskSpec:
    """key_width: the width A of encoder_keys (general: H, additive: the score's width); None:
    the scores read encoder_outputs directly (dot) or there is no attention (none)."""
    src = TensorSpec(SOURCE_IDS, "int64", (BATCH, SOURCE), SOURCE_TOKENS)
    src_mask = TensorSpec(SOURCE_MASK_NAME, "int64", (BATCH, SOURCE), SOURCE_MASK)
    ids = TensorSpec(TARGET_IDS, "int64", (BATCH, SEQ), TOKENS)
    logits = TensorSpec(LOGITS_NAME, "float32", (BATCH, SEQ, vocab_size), LOGITS)
    names = state_names(cell)
    past = tuple(TensorSpec(i, "float32", (BATCH, layers, hidden), STATE) for i, _ in names)
    present = tuple(TensorSpec(o, "float32", (BATCH, layers, hidden), STATE) for _, o in names)
    consts, weights = (), ()
    if attention != "none":
        consts = (TensorSpec(OUTPUTS_NAME, "float32", (BATCH, SOURCE, hidden), CONSTANT),)
        if key_width is not None:
            consts += (TensorSpec(KEYS_NAME, "float32", (BATCH, SOURCE, key_width), CONSTANT),)
        weights = (TensorSpec(WEIGHTS_NAME, "float32", (BATCH, SEQ, SOURCE), ATTENTION),)
    step_mask = (src_mask,) if attention != "none" else ()
    return TaskSpec(NAME, family, {
        ENCODER_GRAPH: GraphSpec(ENCODER_GRAPH, (src, src_mask), (*consts, *past), (), ONCE),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *step_mask, *past, *consts), (logits, *present, *weights),
                              tuple(StatePair(i, o) for i, o in names), STEP),
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (src, src_mask, ids), (logits,), (), FULL),
    }, extra, io={"bos": True, "shared_vocab": True, "vocab_size": vocab_size, **io})

