"""seq2seq: an encoder-decoder over a source text; the encoder runs once, the decoder per token.

Two families share the task, its graph and tensor names and its chain; only the step state and
the constants differ:

    encoder  source_ids [B, SRC] + source_mask [B, SRC] -> what every decoder step reads of the
             source, computed once per source (role CONSTANT), and, for an RNN, the decoder's
             initial state under the step's state-input names
               RNN + attention (`rnn_spec`): encoder_outputs [B, SRC, H], with attention
               general/additive also encoder_keys [B, SRC, A] (the source side of the score, W·e_s);
               past_hidden [B, L, H] (and past_cell for an LSTM)
               Transformer (`transformer_spec`): encoder_hidden_states [B, SRC, D] and the cross-
               attention K/V of every decoder layer, cross_key_values.{i}.key/value [B, nh, SRC, hd]
               (the layout onnxruntime-genai uses for whisper)
    step     input_ids [B, T>=1] + source_mask + the state + the constants -> logits [B, T, V] + next
             state (+ attention_weights [B, T, SRC] for RNN attention). RNN: h (and c), fixed size.
             Transformer: a self-attention KV cache past_key_values.{i}.* -> present.{i}.* with
             attention_mask [B, P+T] / position_ids [B, T], past length 0 allowed, so ONE graph serves
             the first step too (no merged If); self and cross caches have distinct names and the step
             returns the present SELF K/V only
    full     source_ids + source_mask + input_ids [B, T] -> logits [B, T, V], teacher-forced: what the
             encoder once and the step over the same tokens compute

The chain: `encoder` once per source; its outputs that the step takes by name (TaskSpec.links),
with the source mask, are fed unchanged at every step (DecodeState.fixed; beams copy their rows by
DecodeState.select, nothing is recomputed). The target starts from <bos> (io["bos"]); the prompt of
`seqserve generate` is the SOURCE text. Sources are right-padded: source_mask is a prefix of ones,
and rows of different lengths share a batch (DecodeState.merge right-pads the constants with zeros,
which the mask then hides). One tokenizer covers both sides (io["shared_vocab"]); a char
tokenizer's training sources' characters are io["source_chars"], so a source with others is refused.
Exports written before the task was one (task "translate") read as this task (spec.TASK_ALIASES).
"""

from __future__ import annotations

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import (ATTENTION, BATCH, CONSTANT, FULL, LOGITS, ONCE, SEQ, SOURCE, SOURCE_MASK,
                                 SOURCE_TOKENS, STEP, TOKENS, GraphSpec, TaskSpec, TensorSpec, state_tensors)

NAME = "seq2seq"
ENCODER_GRAPH, STEP_GRAPH, FULL_GRAPH = "encoder", "step", "full"
SOURCE_IDS, SOURCE_MASK_NAME, TARGET_IDS, LOGITS_NAME = "source_ids", "source_mask", "input_ids", "logits"

OUTPUTS_NAME, KEYS_NAME, WEIGHTS_NAME = "encoder_outputs", "encoder_keys", "attention_weights"
ATTENTIONS = ("none", "dot", "general", "additive")


def state_names(cell: str) -> list[tuple[str, str]]:
    """(past, present) names of the decoder's state tensors."""
    return [(f"past_{n}", f"present_{n}") for n in (("hidden", "cell") if cell == "lstm" else ("hidden",))]


def rnn_spec(family: str, vocab_size: int, cell: str, layers: int, hidden: int, attention: str,
             key_width: int | None, extra: dict, io: dict) -> TaskSpec:
    """An RNN encoder-decoder (attention one of ATTENTIONS). key_width: the width A of
    encoder_keys (general: H, additive: the score's width); None: the scores read encoder_outputs
    directly (dot) or there is no attention (none)."""
    dims = (BATCH, layers, hidden)
    past, present, pairs, _ = state_tensors([(i, o, dims, None) for i, o in state_names(cell)])
    consts = ()
    if attention != "none":
        consts = (TensorSpec(OUTPUTS_NAME, "float32", (BATCH, SOURCE, hidden), CONSTANT),)
        if key_width is not None:
            consts += (TensorSpec(KEYS_NAME, "float32", (BATCH, SOURCE, key_width), CONSTANT),)
    # the encoder hands the decoder its initial state under the step's state-input names
    return _spec(family, vocab_size, (*consts, *past), past, present, pairs, (), consts,
                 attention != "none", attention != "none", extra, io)


MEMORY, SELF_MASK, SELF_POSITIONS = "encoder_hidden_states", "attention_mask", "position_ids"


def self_cache_names(layer: int) -> list[tuple[str, str]]:
    """(past, present) names of one decoder layer's self-attention K and V."""
    return [(f"past_key_values.{layer}.{kv}", f"present.{layer}.{kv}") for kv in ("key", "value")]


def cross_cache_names(layer: int) -> list[str]:
    """Names of one decoder layer's cross-attention K and V (encoder output, step input)."""
    return [f"cross_key_values.{layer}.{kv}" for kv in ("key", "value")]


def transformer_spec(family: str, vocab_size: int, d_model: int, state: list[tuple[str, str, tuple, int | None]],
                     constants: list[tuple[str, tuple]], extra: dict, io: dict, attention: bool = False) -> TaskSpec:
    """A Transformer encoder-decoder. state: (input, output, input dims, seq_axis) per step state
    pair (a KV cache grows along seq_axis and then brings attention_mask/position_ids); constants:
    (name, dims) per encoder output the step takes unchanged; io: max_source_len, source_chars
    (what a source may hold); attention: the step also returns attention_weights [B, T, SRC]."""
    memory = TensorSpec(MEMORY, "float32", (BATCH, SOURCE, d_model))
    consts = tuple(TensorSpec(n, "float32", tuple(d), CONSTANT) for n, d in constants)
    past, present, pairs, positional = state_tensors(state)     # positional: SELF_MASK, SELF_POSITIONS
    return _spec(family, vocab_size, (memory, *consts), past, present, pairs, positional, consts,
                 True, attention, extra, io)


def _spec(family, vocab_size, encoder_outputs, past, present, pairs, positional, consts, step_mask: bool,
          weights: bool, extra, io) -> TaskSpec:
    """The three graphs of the task; the step's inputs in the order its exports have them: target
    ids, [mask, positions of a KV cache], [source_mask], past state, constants."""
    src = TensorSpec(SOURCE_IDS, "int64", (BATCH, SOURCE), SOURCE_TOKENS)
    src_mask = TensorSpec(SOURCE_MASK_NAME, "int64", (BATCH, SOURCE), SOURCE_MASK)
    ids = TensorSpec(TARGET_IDS, "int64", (BATCH, SEQ), TOKENS)
    logits = TensorSpec(LOGITS_NAME, "float32", (BATCH, SEQ, vocab_size), LOGITS)
    attn = (TensorSpec(WEIGHTS_NAME, "float32", (BATCH, SEQ, SOURCE), ATTENTION),) if weights else ()
    return TaskSpec(NAME, family, {
        ENCODER_GRAPH: GraphSpec(ENCODER_GRAPH, (src, src_mask), tuple(encoder_outputs), (), ONCE),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *positional, *((src_mask,) if step_mask else ()), *past, *consts),
                              (logits, *present, *attn), pairs, STEP),
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (src, src_mask, ids), (logits,), (), FULL),
    }, extra, io={"bos": True, "shared_vocab": True, "vocab_size": vocab_size, **io})


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of an encoder-decoder torch model, by tensor names (exporter and torch backend):
    the model's `run_encoder`, its `forward(source, mask, target)` (full) or its `run_step`."""
    if graph.runs == ONCE:
        return model.run_encoder(inputs)
    if graph.runs == FULL:
        return {LOGITS_NAME: model(inputs[SOURCE_IDS], inputs[SOURCE_MASK_NAME], inputs[TARGET_IDS])}
    return model.run_step(inputs)


def source_inputs(spec: TaskSpec, tokenizer, text: str) -> dict:
    """One source text -> the encoder's inputs (batch 1): source_ids and an all-ones source_mask.
    SeqserveError (saying what was expected) for an empty text, characters that never appeared in
    a training source (io["source_chars"]), or more tokens than io["max_source_len"]."""
    if not isinstance(text, str) or not text:
        raise SeqserveError("the source text is empty; give at least one character")
    allowed = spec.io.get("source_chars")
    if allowed:
        bad = sorted({c for c in text if c not in allowed})
        if bad:
            raise SeqserveError(f"the source has {len(bad)} character(s) outside the source vocabulary: "
                                f"{', '.join(map(repr, bad[:10]))} (expected only {''.join(allowed)!r})")
    ids = tokenizer.encode(text)        # SeqserveError naming characters outside the vocabulary
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
    params SamplingParams -> TokenEvents as they come (index = the source's); BeamParams -> a list
    of BeamText hypotheses per source, best first. Sources (and max_tokens against the model's
    target positions, extra["max_seq_len"], where it has a limit) are checked before any work."""
    from seqserve.generation import Chain, generate
    from seqserve.generation.beam import BeamParams, BeamText, beam_search
    from seqserve.generation.loop import start_values

    inputs = [source_inputs(spec, tokenizer, s) for s in sources]
    limit = spec.extra.get("max_seq_len")
    if limit is not None and params.max_tokens > limit:
        raise SeqserveError(f"max_tokens {params.max_tokens} exceeds the model's {limit} target positions")
    if not isinstance(params, BeamParams):
        return generate(step, tokenizer, [""] * len(sources), params, None, Chain((encoder,), bos=True), inputs)
    out = []
    for x in inputs:    # the encoder once per source; select() copies its outputs to every beam row
        hyps = beam_search(step, [tokenizer.bos_id], params, tokenizer.eos_id, start_values((encoder,), x, step.spec))
        out.append([BeamText(tokenizer.decode([t for t in h.tokens if t != tokenizer.eos_id]), h.score,
                             h.finish_reason, h.tokens) for h in hyps])
    return out
