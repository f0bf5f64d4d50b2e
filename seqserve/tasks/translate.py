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

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import (ATTENTION, BATCH, CONSTANT, FULL, LOGITS, MASK, ONCE, POSITIONS, SEQ,
                                 SOURCE, SOURCE_MASK, SOURCE_TOKENS, STATE, STEP, TOKENS, TOTAL, GraphSpec,
                                 StatePair, TaskSpec, TensorSpec)

NAME = "translate"
ENCODER_GRAPH, STEP_GRAPH, FULL_GRAPH = "encoder", "step", "full"
SOURCE_IDS, SOURCE_MASK_NAME, MEMORY = "source_ids", "source_mask", "encoder_hidden_states"
TARGET_IDS, SELF_MASK, SELF_POSITIONS, LOGITS_NAME = "input_ids", "attention_mask", "position_ids", "logits"


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
    past, present, pairs = [], [], []
    for name_in, name_out, dims, seq_axis in state:
        out_dims = dims if seq_axis is None else (*dims[:seq_axis], TOTAL, *dims[seq_axis + 1:])
        past.append(TensorSpec(name_in, "float32", tuple(dims), STATE))
        present.append(TensorSpec(name_out, "float32", tuple(out_dims), STATE))
        pairs.append(StatePair(name_in, name_out, seq_axis))
    growing = any(p.seq_axis is not None for p in pairs)
    positional = (TensorSpec(SELF_MASK, "int64", (BATCH, TOTAL), MASK),
                  TensorSpec(SELF_POSITIONS, "int64", (BATCH, SEQ), POSITIONS)) if growing else ()
    weights = (TensorSpec("attention_weights", "float32", (BATCH, SEQ, SOURCE), ATTENTION),) if attention else ()
    return TaskSpec(NAME, family, {
        ENCODER_GRAPH: GraphSpec(ENCODER_GRAPH, (src, src_mask), (memory, *consts), (), ONCE),
        STEP_GRAPH: GraphSpec(STEP_GRAPH, (ids, *positional, src_mask, *past, *consts),
                              (logits, *present, *weights), tuple(pairs), STEP),
        FULL_GRAPH: GraphSpec(FULL_GRAPH, (src, src_mask, ids), (logits,), (), FULL),
    }, extra, io={"bos": True, "shared_vocab": True, "vocab_size": vocab_size, **io})


def run_graph(model, graph: GraphSpec, inputs: dict) -> dict:
    """One graph of a translate torch model, by tensor names (exporter and torch backend)."""
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
                                f"{', '.join(map(repr, bad[:10]))} (expected only {allowed!r})")
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
    of BeamText hypotheses per source, best first. Sources are checked before any work."""
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
