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

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import (ATTENTION, BATCH, CONSTANT, FULL, LOGITS, ONCE, SEQ, SOURCE, SOURCE_MASK,
                                 SOURCE_TOKENS, STATE, STEP, TOKENS, GraphSpec, StatePair, TaskSpec, TensorSpec)

NAME = "seq2seq"
ENCODER_GRAPH, STEP_GRAPH, FULL_GRAPH = "encoder", "step", "full"
SOURCE_IDS, SOURCE_MASK_NAME, TARGET_IDS, LOGITS_NAME = "source_ids", "source_mask", "input_ids", "logits"
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


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a seq2seq torch model, by tensor names (exporter and torch backend)."""
    if graph.runs == ONCE:
        return model.run_encoder(inputs)
    if graph.runs == FULL:
        return {LOGITS_NAME: model(inputs[SOURCE_IDS], inputs[SOURCE_MASK_NAME], inputs[TARGET_IDS])}
    return model.run_step(inputs)


def source_inputs(spec: TaskSpec, tokenizer, text: str) -> dict:
    """One source text -> the encoder's inputs (batch 1): source_ids and an all-ones source_mask.
    SeqserveError (saying what was expected) for an empty text, characters that never appeared in
    a training source, or more characters than the model's source positions."""
    if not isinstance(text, str) or not text:
        raise SeqserveError("the source text is empty; give at least one character")
    allowed = spec.io.get("source_chars")
    if allowed is not None:
        bad = sorted({c for c in text if c not in allowed})
        if bad:
            raise SeqserveError(f"the source has {len(bad)} character(s) outside the source vocabulary: "
                                f"{', '.join(map(repr, bad[:10]))} (expected only {''.join(allowed)!r})")
    ids = tokenizer.encode(text)
    limit = spec.io.get("max_source_len")
    if limit is not None and len(ids) > limit:
        raise SeqserveError(f"the source has {len(ids)} characters; the model takes at most {limit}")
    return {SOURCE_IDS: np.asarray([ids], np.int64), SOURCE_MASK_NAME: np.ones((1, len(ids)), np.int64)}


def pad_sources(spec: TaskSpec, tokenizer, texts: list[str]) -> dict:
    """Several source texts -> source_ids / source_mask [N, longest], right-padded (<pad>, mask 0)."""
    rows = [source_inputs(spec, tokenizer, t)[SOURCE_IDS][0] for t in texts]
    n = max(len(r) for r in rows)
    ids = np.full((len(rows), n), tokenizer.pad_id, np.int64)
    mask = np.zeros((len(rows), n), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return {SOURCE_IDS: ids, SOURCE_MASK_NAME: mask}


def examples(raw: dict) -> tuple[list[str], list[str]]:
    """The held-out examples an export's sidecar carries -> (sources, expected targets)."""
    ex = [e for e in raw.get("examples", []) if isinstance(e, dict) and "source" in e and "target" in e]
    if not ex:
        raise SeqserveError("this export's seqserve.json carries no examples (source and expected target)")
    return [str(e["source"]) for e in ex], [str(e["target"]) for e in ex]


def generate_targets(encoder, step, spec: TaskSpec, tokenizer, sources: list[str], params):
    """A target for every source through the one decoding loop (encoder once, then step):
    params SamplingParams -> TokenEvents as they come (index = the source's); BeamParams -> a
    list of BeamText hypotheses per source, best first. Sources are checked before any work."""
    from seqserve.generation import Chain, generate
    from seqserve.generation.beam import BeamParams, BeamText, beam_search
    from seqserve.generation.loop import start_values

    inputs = [source_inputs(spec, tokenizer, s) for s in sources]
    if not isinstance(params, BeamParams):
        return generate(step, tokenizer, [""] * len(sources), params, None, Chain((encoder,), bos=True), inputs)
    out = []
    for x in inputs:    # the encoder once per source; each beam row gets a copy of its outputs
        hyps = beam_search(step, [tokenizer.bos_id], params, tokenizer.eos_id, start_values((encoder,), x, step.spec))
        out.append([BeamText(tokenizer.decode([t for t in h.tokens if t != tokenizer.eos_id]), h.score,
                             h.finish_reason, h.tokens) for h in hyps])
    return out
