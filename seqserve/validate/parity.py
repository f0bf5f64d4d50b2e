"""Checks that run the graphs: torch vs ORT, incremental vs full, greedy tokens torch vs ORT."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import BATCH, LOGITS, PAST, SEQ, TOKENS, example_inputs, resolve_dims
from seqserve.validate.compare import compare
from seqserve.validate.results import CheckResult
from seqserve.validate.target import Target, Unusable, guarded


# 3. torch_vs_ort ---------------------------------------------------------------------------------

def torch_vs_ort(t: Target) -> list[CheckResult]:
    c, rows = t.config, []
    rng = np.random.default_rng(c.seed)
    for g, spec in t.info.spec.graphs.items():
        if not spec.state:
            thirds = [None]
        elif any(p.seq_axis is not None for p in spec.state):      # KV cache: vary its length
            thirds = [("past", p) for p in c.pasts]
        else:  # recurrent state has no past axis: a zero state and a random non-zero one
            thirds = [("state", "zero"), ("state", "random")]
        for b in c.batches:
            for s in c.sequences:
                for third in thirds:
                    sizes = {BATCH: b, SEQ: s, PAST: third[1] if third and third[0] == "past" else 0}
                    case = f"batch={b} sequence={s}" + (f" {third[0]}={third[1]}" if third else "")
                    feeds = example_inputs(spec, sizes, rng, t.info.spec.io.get("vocab_size"))
                    if third == ("state", "zero"):
                        feeds = {k: np.zeros_like(v) if k in spec.state_inputs else v for k, v in feeds.items()}
                    rows += guarded("torch_vs_ort", g, case, lambda: _torch_vs_ort_case(t, g, case, feeds))
    return rows


def _torch_vs_ort_case(t: Target, g: str, case: str, feeds: dict) -> list[CheckResult]:
    c, spec = t.config, t.info.graph(g)
    ort_out = t.ort(g).run(feeds)
    torch_out = t.torch(g).run(feeds)
    rows = []
    for o in spec.outputs:
        name = f"{case} output={o.name}"
        a = np.asarray(ort_out[o.name])
        if o.name not in torch_out:
            rows.append(CheckResult("torch_vs_ort", g, name, False, detail="torch produced no such output"))
            continue
        r = compare(a, torch_out[o.name], c.atol, c.rtol, "ort", "torch")
        detail = r.detail
        if r.passed and a.dtype != np.dtype(o.dtype):
            detail = f"ORT returned {a.dtype}; the spec says {o.dtype}"
        rows.append(CheckResult("torch_vs_ort", g, name, r.passed and not detail, r.max_abs, r.max_rel,
                                c.atol, c.rtol, detail))
    return rows


# 4. incremental_vs_full --------------------------------------------------------------------------

def incremental_vs_full(t: Target, length: int = 12, batch: int = 2) -> list[CheckResult]:
    c = t.config
    length = min(length, t.info.max_context or length)
    full_spec, step_spec = t.info.spec.full, t.info.spec.step
    vocab = full_spec.role(LOGITS).dims[-1]
    rng = np.random.default_rng(c.seed)
    ids = rng.integers(0, vocab, (batch, length), dtype=np.int64)
    # What the full graph takes besides tokens (features): the chain's once graphs take it too,
    # and the step state starts from their outputs (TaskSpec.links).
    cond = {k: v for k, v in example_inputs(full_spec, {BATCH: batch, SEQ: length}, rng).items()
            if k != full_spec.name_of(TOKENS)}
    head = min(5, length)
    schedules = {
        "token by token": [1] * length,
        f"prefill {head} then 1 at a time": [head] + [1] * (length - head),
        "chunks of 3, 4, 5": _chunks(length, (3, 4, 5)),
    }

    def run(name: str, chunks: list[int]) -> list[CheckResult]:
        from seqserve.generation import start_values

        rows = []
        for ref, full in t.full_refs({**cond, full_spec.name_of(TOKENS): ids}, full_spec.name_of(LOGITS)).items():
            step = t.ort(step_spec.name)
            once = [t.ort(g.name) for g in t.info.spec.once]
            start = start_values(once, cond, step_spec) if once else None
            r, detail = chain_vs_full(step, step_spec, start, ids, chunks, full, c, step_spec.name, ref)
            case = f"batch={batch} length={length} {name}" + ("" if ref == full_spec.name else f" vs {ref}")
            rows.append(CheckResult("incremental_vs_full", "full+step", case, r.passed, r.max_abs, r.max_rel,
                                    c.atol, c.rtol, detail))
        return rows

    rows = []
    for name, chunks in schedules.items():
        rows += guarded("incremental_vs_full", "full+step", f"batch={batch} length={length} {name}",
                        lambda: run(name, chunks))
    return rows


def chain_vs_full(step, step_spec, start, ids: np.ndarray, chunks: list[int], full: np.ndarray, c,
                  name: str, full_name: str):
    """The step graph from `start` (DecodeState's start values) over ids [B, L] in `chunks`, its
    logits compared with the full graph's [B, L, V]: (the comparison, its detail; on a mismatch of
    equal shapes the detail first names the first position that differs)."""
    from seqserve.generation import DecodeState

    state, parts, pos = DecodeState.empty(step.spec, ids.shape[0], step, start), [], 0
    for n in chunks:
        feeds = state.feeds(ids[:, pos:pos + n])
        out = step.run(feeds)
        parts.append(step.to_host(out[step_spec.name_of(LOGITS)]))
        state, pos = state.advance(feeds, out), pos + n
    inc = np.concatenate(parts, axis=1)
    r = compare(inc, full, c.atol, c.rtol, name, full_name)
    detail = r.detail
    if not r.passed and inc.shape == full.shape:
        bad = ~np.isclose(inc, full, atol=c.atol, rtol=c.rtol, equal_nan=False).all(axis=(0, 2))
        detail = f"first mismatch at position {int(np.argmax(bad))}; {detail}"
    return r, detail


def _chunks(length: int, sizes: tuple[int, ...]) -> list[int]:
    out, i = [], 0
    while sum(out) < length:
        out.append(min(sizes[i % len(sizes)], length - sum(out)))
        i += 1
    return out


# 5. greedy_generation ----------------------------------------------------------------------------

def greedy_generation(t: Target) -> list[CheckResult]:
    from seqserve.generation import SamplingParams
    from seqserve.generation.beam import BeamParams

    tok, c = t.info.tokenizer, t.config
    prompts = prompts_for(tok)
    if t.info.spec.once:       # conditioned: no prompt needed (<bos> first), and a text prefix
        prompts = ["", prompts[0]]
    longest = max(len(tok.encode(p)) for p in prompts)
    n = c.generate_tokens if t.info.max_context is None else min(c.generate_tokens, t.info.max_context - longest)
    # Greedy, plus seeded sampling at temperature 1: a briefly trained model often decodes to one
    # repeated token greedily, while sampling walks through many tokens (and still must agree:
    # the same seed gives the same draws, so only a probability difference could change a token).
    modes = {"greedy": SamplingParams(max_tokens=max(n, 1), greedy=True, stop_at_eos=False),
             f"sampled seed={c.seed}": SamplingParams(max_tokens=max(n, 1), temperature=1.0, seed=c.seed,
                                                     stop_at_eos=False),
             # every hypothesis of a 4-beam search: the ranking too must not depend on the runtime
             "beams=4": BeamParams(beams=4, max_tokens=max(n, 1), stop_at_eos=False)}
    rows = []
    for mode, params in modes.items():
        cases = [f"{mode} prompt={p!r} tokens={n}" for p in prompts]
        got = guarded("greedy_generation", "step", " | ".join(cases), lambda: _generation_rows(t, prompts, params, cases, n))
        if len(got) == 1 and len(cases) > 1:
            got = [CheckResult("greedy_generation", "step", case, False, detail=got[0].detail) for case in cases]
        rows += got
    return rows


def _generation_rows(t: Target, prompts: list[str], params, cases: list[str], n: int) -> list[CheckResult]:
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.generation.beam import BeamParams, beam_texts

    if n < 1:
        raise Unusable(f"the model's context ({t.info.max_context}) leaves no room to generate")
    tok = t.info.tokenizer
    # Two prompts of different lengths in one batch: the GPT path also exercises left padding.
    step = t.info.spec.step.name
    chain = _chain_for(t, len(prompts))
    if isinstance(params, BeamParams):
        def run(backend):
            return flat_beams(beam_texts(backend, tok, prompts, params, t.info.max_context, *chain(backend.name)))
    else:
        def run(backend):
            return generate_text(backend, tok, prompts, params, t.info.max_context, *chain(backend.name))
    rows = token_rows("step", cases, run(t.torch(step)), run(t.ort(step)))
    if t.brought and isinstance(params, SamplingParams) and params.greedy and not t.info.spec.once:
        # what users do today: their own forward over the whole prefix for every new token
        ref = [recompute_greedy(t, tok.encode(p), n) for p in prompts]
        rows += token_rows("full", [f"{c} vs the user's forward recomputing the prefix" for c in cases], ref,
                           run(t.ort(step)), "the user's forward")
    return rows


def recompute_greedy(t: Target, ids: list[int], n: int, fixed: dict | None = None) -> SimpleNamespace:
    """n greedy tokens from the full graph's torch side (a brought model: the user's own forward),
    the whole prefix recomputed for every token; fixed: the full graph's other inputs (a source)."""
    full = t.info.spec.full
    backend, tokens = t.torch(full.name), []
    for _ in range(n):
        logits = backend.run({**(fixed or {}), full.name_of(TOKENS): np.asarray([ids + tokens], np.int64)})
        tokens.append(int(np.argmax(logits[full.name_of(LOGITS)][0, -1])))
    return SimpleNamespace(tokens=tokens, text=t.info.tokenizer.decode(tokens))


def flat_beams(hyps_per_row: list) -> list[SimpleNamespace]:
    """All hypotheses of each row, best first, as one token list (-1 between them) and the best
    one's text: what token_rows compares for a beam search."""
    return [SimpleNamespace(tokens=[x for h in hyps for x in (*h.tokens, -1)], text=hyps[0].text)
            for hyps in hyps_per_row]


def token_rows(graph: str, cases: list[str], ref: list, got: list, ref_name: str = "torch") -> list[CheckResult]:
    """A greedy_generation row per case: torch's (ref) and ORT's (got) generated .tokens must be
    identical; a failure names the first generated token that differs and both texts."""
    rows = []
    for case, a, b in zip(cases, got, ref):
        diff = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), None)
        if diff is None and len(a.tokens) != len(b.tokens):
            diff = min(len(a.tokens), len(b.tokens))
        if diff is None:
            rows.append(CheckResult("greedy_generation", graph, case, True,
                                    detail=f"{len(a.tokens)} identical tokens: {b.text[:40]!r}"))
            continue
        rows.append(CheckResult("greedy_generation", graph, case, False, detail=(
            f"first difference at generated token {diff}: {ref_name} {b.tokens[diff:diff + 1]} vs ort "
            f"{a.tokens[diff:diff + 1]}; {ref_name} {b.text[:40]!r}, ort {a.text[:40]!r}")))
    return rows


def _chain_for(t: Target, n: int):
    """chain(backend name) -> (Chain, once inputs per prompt) for the decoding loop; a task without
    once graphs gets the plain loop. The once inputs are the sidecar's held-out examples (real
    features give real text), else random by role."""
    from seqserve.generation import Chain

    once = t.info.spec.once
    if not once:
        return lambda kind: ()
    need = {i.name: i for g in once for i in g.inputs if i.name not in {o for h in once for o in h.output_names}}
    examples = [e for e in t.info.raw.get("examples", []) if isinstance(e, dict) and set(need) <= set(e)]
    rng = np.random.default_rng(t.config.seed)
    inputs = []
    for i in range(n):
        if i < len(examples):
            inputs.append({k: np.asarray([examples[i][k]], dtype=need[k].dtype) for k in need})
        else:
            inputs.append({k: (0.5 * rng.standard_normal(resolve_dims(v, {BATCH: 1}))).astype(v.dtype)
                           for k, v in need.items()})
    bos = bool(t.info.spec.io.get("bos"))
    return lambda kind: (Chain(tuple(getattr(t, kind)(g.name) for g in once), bos), inputs)


def prompts_for(tok) -> list[str]:
    """Two prompts of different lengths that the tokenizer can encode."""
    def ok(p: str) -> bool:
        try:
            return bool(tok.encode(p))
        except SeqserveError:
            return False

    good = [p for p in ("def ", "import os\nclass ") if ok(p)]
    for p in vocabulary_texts(tok):   # vocabularies without code characters
        if len(good) < 2 and p and p not in good and ok(p):
            good.append(p)
    return good


def vocabulary_texts(tok) -> list[str]:
    """Two short texts made of the vocabulary's first and last ordinary tokens (3 and 7 of them),
    for any tokenizer kind."""
    if hasattr(tok, "chars"):
        return ["".join(tok.chars[:3]), "".join(tok.chars[-7:])]
    special = set(getattr(tok, "special_ids", ())) | {tok.pad_id, tok.bos_id, tok.eos_id}
    ids = [i for i in range(tok.vocab_size) if i not in special]
    return [tok.decode(ids[:3]), tok.decode(ids[-7:])]
