"""The gate for encoder-decoder tasks (an `encoder` once graph over source_ids / source_mask).

    torch_vs_ort         every graph, torch vs ORT, over batch 1 and 3, source lengths, target
                         lengths, padded sources (row 0's source ends in padding, mask 0), and for a
                         KV cache past 0 and > 0 (recurrent state: zero and random)
    incremental_vs_full  the chain (encoder once on padded sources, then the step token by token,
                         prefill then 1 at a time, in chunks) == the teacher-forced full graph (ORT)
    greedy_generation    greedy, seeded sampling and every hypothesis of a 4-beam search: identical
                         tokens torch vs ORT, on the sidecar's held-out sources (different lengths in
                         one batch: constants right-padded by DecodeState.merge)

Tensors are found by role (SOURCE_TOKENS, SOURCE_MASK, TOKENS, STATE, CONSTANT), not by name.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from seqserve.tasks.spec import (BATCH, LOGITS, PAST, SEQ, SOURCE, SOURCE_MASK, SOURCE_TOKENS, TOKENS,
                                 example_inputs)
from seqserve.validate.parity import (_chunks, _torch_vs_ort_case, chain_vs_full, flat_beams, recompute_greedy,
                                      token_rows, vocabulary_texts)
from seqserve.validate.results import CheckResult
from seqserve.validate.target import Target, guarded

SOURCES = (2, 6)        # source lengths of the torch_vs_ort grid
PAD = 2                 # padding at the end of row 0's source in padded cases


def _pad_row0(graph, feeds: dict) -> dict:
    mask = graph.roles.get(SOURCE_MASK)
    if mask in feeds and feeds[mask].shape[1] > PAD:
        feeds[mask][0, -PAD:] = 0
        src = graph.roles.get(SOURCE_TOKENS)
        if src in feeds:
            feeds[src][0, -PAD:] = 0                  # <pad>
    return feeds


def torch_vs_ort(t: Target) -> list[CheckResult]:
    c, rows = t.config, []
    rng = np.random.default_rng(c.seed)
    vocab = t.info.spec.io.get("vocab_size")
    for g, spec in t.info.spec.graphs.items():
        growing = any(p.seq_axis is not None for p in spec.state)
        thirds = [("past", p) for p in c.pasts] if growing else \
            [("state", "zero"), ("state", "random")] if spec.state else [None]
        has_target = spec.roles.get(TOKENS) is not None
        for b in c.batches:
            for src in SOURCES:
                for s in (c.sequences if has_target else (1,)):
                    for third in thirds:
                        for padded in ((False, True) if src > PAD else (False,)):
                            sizes = {BATCH: b, SEQ: s, SOURCE: src, PAST: third[1] if third and third[0] == "past" else 0}
                            case = (f"batch={b} source={src}{' padded' if padded else ''}"
                                    + (f" sequence={s}" if has_target else "")
                                    + (f" {third[0]}={third[1]}" if third else ""))
                            feeds = example_inputs(spec, sizes, rng, vocab)
                            if third == ("state", "zero"):
                                feeds = {k: np.zeros_like(v) if k in spec.state_inputs else v for k, v in feeds.items()}
                            if padded:
                                feeds = _pad_row0(spec, feeds)
                            rows += guarded("torch_vs_ort", g, case,
                                            lambda: _torch_vs_ort_case(t, g, case, feeds))
    return rows


def _sources(t: Target, batch: int, length: int, rng) -> dict:
    """Random padded sources for the encoder: row 0 full length, the others shorter."""
    enc = t.info.spec.once[0]
    vocab = t.info.spec.io.get("vocab_size")
    feeds = example_inputs(enc, {BATCH: batch, SEQ: 1, SOURCE: length}, rng, vocab)
    mask, src = enc.name_of(SOURCE_MASK), enc.name_of(SOURCE_TOKENS)
    for r in range(1, batch):
        n = max(1, length - 2 * r)
        feeds[mask][r, n:] = 0
        feeds[src][r, n:] = 0
    return feeds


def incremental_vs_full(t: Target, length: int = 10, batch: int = 3, source: int = 6) -> list[CheckResult]:
    from seqserve.generation import start_values

    c = t.config
    full_spec, step_spec = t.info.spec.full, t.info.spec.step
    vocab = full_spec.role(LOGITS).dims[-1]
    rng = np.random.default_rng(c.seed)
    ids = rng.integers(0, vocab, (batch, length), dtype=np.int64)
    src = _sources(t, batch, source, rng)
    head = min(4, length)
    schedules = {"token by token": [1] * length, f"prefill {head} then 1 at a time": [head] + [1] * (length - head),
                 "chunks of 3, 4, 5": _chunks(length, (3, 4, 5))}
    case0 = f"batch={batch} source={source} padded length={length}"

    def run(name: str, chunks: list[int]) -> list[CheckResult]:
        rows = []
        for ref, full in t.full_refs({**src, full_spec.name_of(TOKENS): ids}, full_spec.name_of(LOGITS)).items():
            step = t.ort(step_spec.name)
            start = start_values([t.ort(g.name) for g in t.info.spec.once], src, step_spec)
            r, detail = chain_vs_full(step, step_spec, start, ids, chunks, full, c, "encoder+" + step_spec.name, ref)
            case = f"{case0} {name}" + ("" if ref == full_spec.name else f" vs {ref}")
            rows.append(CheckResult("incremental_vs_full", "encoder+step", case, r.passed, r.max_abs,
                                    r.max_rel, c.atol, c.rtol, detail))
        return rows

    # ONNX Runtime's full graph, and a brought module's own forward in torch (Target.full_refs);
    # torch's full graph against ORT is otherwise torch_vs_ort's business (over the whole shape grid)
    rows = []
    for name, chunks in schedules.items():
        rows += guarded("incremental_vs_full", "encoder+step", f"{case0} {name}", lambda: run(name, chunks))
    return rows


def greedy_generation(t: Target) -> list[CheckResult]:
    from seqserve.generation import SamplingParams
    from seqserve.generation.beam import BeamParams
    from seqserve.tasks.seq2seq import examples

    c = t.config
    try:
        sources = examples(t.info.raw)[0][:3]
    except Exception:
        sources = vocabulary_texts(t.info.tokenizer)
    n = c.generate_tokens if t.info.max_context is None else min(c.generate_tokens, t.info.max_context)
    modes = {"greedy": SamplingParams(max_tokens=n, greedy=True, stop_at_eos=False),
             f"sampled seed={c.seed}": SamplingParams(max_tokens=n, temperature=1.0, seed=c.seed, stop_at_eos=False),
             "beams=4": BeamParams(beams=4, max_tokens=n, stop_at_eos=False)}
    rows = []
    for mode, params in modes.items():
        cases = [f"{mode} source={s!r} tokens={n}" for s in sources]
        got = guarded("greedy_generation", "encoder+step", " | ".join(cases),
                      lambda: _generation_rows(t, sources, params, cases))
        if len(got) == 1 and len(cases) > 1:
            got = [CheckResult("greedy_generation", "encoder+step", case, False, detail=got[0].detail) for case in cases]
        rows += got
    return rows


def _generation_rows(t: Target, sources: list[str], params, cases: list[str]) -> list[CheckResult]:
    from seqserve.generation.beam import BeamParams
    from seqserve.tasks.seq2seq import generate_targets

    tok, spec = t.info.tokenizer, t.info.spec
    names = (spec.once[0].name, spec.step.name)

    def run(kind: str):
        encoder, step = (getattr(t, kind)(g) for g in names)
        out = generate_targets(encoder, step, spec, tok, sources, params)
        if isinstance(params, BeamParams):
            return flat_beams(out)
        events = out
        out = [SimpleNamespace(tokens=[], text="") for _ in sources]
        for ev in events:
            out[ev.index].tokens.append(ev.token)
            out[ev.index].text += ev.text
        return out

    rows = token_rows("encoder+step", cases, run("torch"), run("ort"))
    if t.brought and not isinstance(params, BeamParams) and params.greedy:
        # what users do today: their own forward over source + the whole target prefix per token
        from seqserve.tasks.seq2seq import source_inputs

        ref = [recompute_greedy(t, [tok.bos_id], params.max_tokens, source_inputs(spec, tok, s)) for s in sources]
        rows += token_rows("full", [f"{c} vs the user's forward recomputing the prefix" for c in cases], ref,
                           run("ort"), "the user's forward")
    return rows
