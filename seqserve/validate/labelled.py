"""Checks of the classify and tag tasks, in place of causal-lm's (seqserve/validate/__init__.py).

    sidecar              tokenizer == the vocabulary the task declares; label names in the sidecar
                         == the class (tag) axis of every graph; spec and tokenizer == checkpoint's;
                         the held-out examples encode and are labelled with known names
    incremental_vs_full  the step graph fed chunk by chunk, its state carried: classify: the
                         class_logits after each chunk == the full graph on that prefix; tag: the
                         tag_logits of the chunks, concatenated == the full graph's
greedy_generation does not apply (nothing is generated). A transformer or bidirectional encoder
has no step graph: incremental_vs_full has no rows then.
"""

from __future__ import annotations

import numpy as np

from seqserve.tasks.spec import CLASS_LOGITS, TAG_LOGITS, TOKENS
from seqserve.validate import static
from seqserve.validate.compare import compare
from seqserve.validate.parity import _chunks
from seqserve.validate.results import CheckResult
from seqserve.validate.target import Target, guarded


def scores_tensor(graph):
    """The graph's class or tag logits."""
    return graph.role(CLASS_LOGITS) or graph.role(TAG_LOGITS)


def sidecar(t: Target) -> list[CheckResult]:
    info, rows = t.info, []
    labels, vocab = info.spec.io.get("labels") or [], info.spec.io.get("vocab_size")
    rows.append(CheckResult("sidecar", "full", "tokenizer size == the task's vocab_size",
                            info.tokenizer.vocab_size == vocab,
                            detail=f"tokenizer has {info.tokenizer.vocab_size} ids, io.vocab_size is {vocab}"))
    for g in info.spec.graphs.values():
        out = scores_tensor(g)
        width = out.dims[-1] if out is not None else None
        rows.append(CheckResult("sidecar", g.name, f"{len(labels)} label names == {out.name if out else '?'} "
                                f"axis {len(out.dims) - 1 if out else '?'}", width == len(labels) and len(labels) > 1,
                                detail=f"labels {labels[:8]}{' ...' if len(labels) > 8 else ''}; the graph has "
                                       f"{width} scores"))
    examples = info.raw.get("examples") or []

    def check_examples() -> list[CheckResult]:
        bad = []
        for e in examples:
            info.tokenizer.encode(e["input"])
            want = e["expected"] if isinstance(e["expected"], list) else [e["expected"]]
            bad += [x for x in want if x not in labels]
        brought = "source" in info.raw          # a user's module carries no held-out examples
        return [CheckResult("sidecar", "full", f"{len(examples)} held-out examples", (bool(examples) or brought) and not bad,
                            detail="inputs encode, expected outputs are label names" if examples and not bad
                            else "no examples" if not examples else f"unknown labels {sorted(set(bad))[:5]}")]

    return rows + guarded("sidecar", "full", "examples", check_examples) + static.against_torch_side(t, "full")


def incremental_vs_full(t: Target, length: int = 12, batch: int = 2) -> list[CheckResult]:
    from seqserve.generation import DecodeState

    spec, c = t.info.spec, t.config
    if "step" not in [g.runs for g in spec.graphs.values()]:
        return []
    full, step_spec = spec.full, spec.step
    ids = np.random.default_rng(c.seed).integers(0, spec.io["vocab_size"], (batch, length), dtype=np.int64)
    out_name = scores_tensor(full).name
    tag = full.role(TAG_LOGITS) is not None
    schedules = {"token by token": [1] * length, "chunks of 3, 4, 5": _chunks(length, (3, 4, 5))}

    def run(name: str, chunks: list[int]) -> list[CheckResult]:
        step = t.ort(step_spec.name)
        state, got, want, pos = DecodeState.empty(step.spec, batch, step), [], [], 0
        whole = t.ort(full.name).run({full.name_of(TOKENS): ids})[out_name]
        for n in chunks:
            feeds = state.feeds(ids[:, pos:pos + n])
            out = step.run(feeds)
            state, pos = state.advance(feeds, out), pos + n
            got.append(step.to_host(out[scores_tensor(step_spec).name]))
            if not tag:     # the class scores of the prefix read so far
                want.append(t.ort(full.name).run({full.name_of(TOKENS): ids[:, :pos]})[out_name])
        a, b = (np.concatenate(got, axis=1), whole) if tag else (np.stack(got, 1), np.stack(want, 1))
        r = compare(a, b, c.atol, c.rtol, step_spec.name, full.name)
        return [CheckResult("incremental_vs_full", "full+step", f"batch={batch} length={length} {name}",
                            r.passed, r.max_abs, r.max_rel, c.atol, c.rtol,
                            r.detail or ("every chunk's class scores == full on the prefix" if not tag else
                                         "concatenated tag scores == full"))]

    rows = []
    for name, chunks in schedules.items():
        rows += guarded("incremental_vs_full", "full+step", f"batch={batch} length={length} {name}",
                        lambda: run(name, chunks))
    return rows
