"""What the encoder-decoder tasks (translate, seq2seq) share: the source side and the chain.

Both name their graphs `encoder` / `step` / `full` and their tensors `source_ids` / `source_mask`
/ `input_ids` / `logits`; only the state and the constants differ (a KV cache and cross K/V, or
RNN h/c and encoder outputs). So one copy of turning source texts into encoder inputs, reading
the sidecar's examples, running a torch model's graphs and generating targets (the encoder once
per source, then the step from <bos>) serves both; each task module re-exports these, so the CLI
and the servers reach them as `task_module(task).source_inputs` and so on.
"""

from __future__ import annotations

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import FULL, ONCE, GraphSpec, TaskSpec

ENCODER_GRAPH, STEP_GRAPH, FULL_GRAPH = "encoder", "step", "full"
SOURCE_IDS, SOURCE_MASK_NAME, TARGET_IDS, LOGITS_NAME = "source_ids", "source_mask", "input_ids", "logits"


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
