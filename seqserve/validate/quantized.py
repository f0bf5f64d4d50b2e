"""The gate of a quantized export (`seqserve export --quantize int8`): the cost, not exact parity.

A quantized graph cannot equal torch to 1e-4, so for an export whose sidecar says `quantize`:

    torch_vs_ort         runs on the fp32 graphs the export keeps (graph "full fp32", ...): the
                         reference the cost is measured against is itself gated as usual
    quantization_cost    held-out bits per token (bits/char for a char tokenizer) of the quantized
                         full graph vs the fp32 full graph, both in ONNX Runtime, on the export's
                         heldout.txt (the validation split of the corpus the checkpoint trained
                         on); passes iff quantized <= fp32 * (1 + tolerance) (`--tolerance`,
                         default 0.02). Without held-out text: text sampled from the fp32 graphs,
                         and the row says so
    incremental_vs_full  on the quantized graphs, at a tolerance loosened for quantization (see
                         QUANT_ATOL): the activation scale of int8's dynamic quantization is taken
                         per call over the whole tensor, so a step over one token and the full
                         graph over twelve round differently
    greedy_generation    the fp32 graphs torch vs ORT as usual, plus one informational row per
                         prompt: greedy tokens quantized vs fp32 (always passes; the agreement
                         fraction in the detail)

onnx_checker, dynamic_axes and sidecar run unchanged on the quantized graphs.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from seqserve.tasks.spec import LOGITS, TOKENS
from seqserve.validate import parity
from seqserve.validate.results import CheckResult
from seqserve.validate.target import Target, guarded

# incremental == full on quantized graphs: |step - full| <= atol + QUANT_RTOL * |full|, atol the
# largest of the gate's atol, QUANT_ATOL and 3x the quantization error itself (max |int8 full -
# fp32 full| on the same ids): the chain and the full graph round activations differently, by about
# as much as int8 differs from fp32. Measured (ORT 1.31, int8): chain vs full 0.010-0.019 on the test
# suite's tiny models, 0.047-0.064 on a briefly trained GPT small (quantization error there 0.049),
# 0.056-0.12 on a briefly trained LSTM small (0.060: int8 rounding compounds through the recurrence);
# a broken chain (wrong state, wrong positions) is off by O(1).
QUANT_ATOL, QUANT_RTOL = 0.05, 0.02
WINDOW, WINDOW_BATCH = 128, 8       # held-out text scored in windows of this many tokens, batches of 8
SAMPLED_TOKENS = 512                # without held-out text: tokens sampled from the fp32 graphs


def fp32_target(t: Target) -> Target:
    """The same export as its fp32 graphs (cached on t): the quantization gate's reference."""
    if getattr(t, "_fp32", None) is None:
        t._fp32 = Target(t.info.fp32(), t.config)
        t._fp32._model = t._model
    return t._fp32


def _relabel(rows: list[CheckResult]) -> list[CheckResult]:
    return [replace(r, graph=f"{r.graph} fp32") for r in rows]


# torch_vs_ort (on fp32) + quantization_cost -----------------------------------------------------

def cost(t: Target) -> list[CheckResult]:
    rows = _relabel(parity.torch_vs_ort(fp32_target(t)))
    return rows + guarded("quantization_cost", "full", "held-out bits per token", lambda: [_cost_row(t)])


def heldout_ids(t: Target) -> tuple[np.ndarray, str]:
    """Token ids to score and what they are: heldout.txt, else text sampled from the fp32 graphs."""
    info = t.info
    held = (info.raw.get("quantization") or {}).get("heldout") or {}
    if held.get("file") and (info.path / held["file"]).is_file():
        text = (info.path / held["file"]).read_text(encoding="utf-8")
        return np.asarray(info.tokenizer.encode(text), np.int64), f"{len(text)} characters of {held.get('source')}"
    from seqserve.generation import SamplingParams, generate_text

    prompt = parity.prompts_for(info.tokenizer)[0]
    n = SAMPLED_TOKENS if info.max_context is None else min(SAMPLED_TOKENS, info.max_context - 8)
    params = SamplingParams(max_tokens=n, temperature=1.0, seed=t.config.seed, stop_at_eos=False)
    out = generate_text(fp32_target(t).ort(info.spec.step.name), info.tokenizer, [prompt], params, info.max_context)[0]
    why = held.get("why") or "the sidecar names no held-out text"
    return (np.asarray(info.tokenizer.encode(prompt) + out.tokens, np.int64),
            f"NO held-out text ({why}): {len(out.tokens)} tokens sampled from the fp32 graphs (seed {t.config.seed})")


def scores(backend, spec, ids: np.ndarray, window: int) -> tuple[float, np.ndarray]:
    """(total bits, argmax per predicted position) of the full graph over ids in windows."""
    n = (len(ids) - 1) // window
    if n < 1:
        window, n = len(ids) - 1, 1
    x = ids[: n * window].reshape(n, window)
    y = ids[1: n * window + 1].reshape(n, window)
    bits, top = 0.0, []
    for i in range(0, n, WINDOW_BATCH):
        logits = np.asarray(backend.run({spec.name_of(TOKENS): x[i:i + WINDOW_BATCH]})[spec.name_of(LOGITS)],
                            np.float64)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        bits -= float(np.take_along_axis(logp, y[i:i + WINDOW_BATCH, :, None], -1).sum()) / math.log(2)
        top.append(logits.argmax(-1).ravel())
    return bits / y.size, np.concatenate(top)


def _cost_row(t: Target) -> CheckResult:
    info, tol = t.info, t.config.tolerance
    full = info.spec.full
    ids, what = heldout_ids(t)
    window = min(WINDOW, (info.max_context or WINDOW))
    q_bits, q_top = scores(t.ort(full.name), full, ids, window)
    f_bits, f_top = scores(fp32_target(t).ort(full.name), full, ids, window)
    agree = float(np.mean(q_top == f_top))
    rel = (q_bits - f_bits) / f_bits if f_bits else math.inf
    passed = bool(np.isfinite(q_bits)) and q_bits <= f_bits * (1 + tol)
    unit = "bits/char" if hasattr(info.tokenizer, "chars") else "bits/token"
    return CheckResult("quantization_cost", "full", f"held-out {unit}, {info.quantized} vs fp32", passed,
                       abs(q_bits - f_bits), abs(rel), 0.0, tol,   # read: int8 <= fp32 + 0 + tol * fp32
                       f"{info.quantized} {q_bits:.4f} vs fp32 {f_bits:.4f} {unit} ({rel:+.2%}; passes at "
                       f"<= {tol:+.0%}); top-1 agreement {agree:.1%} over {len(q_top)} positions; {what}")


# incremental_vs_full on the quantized graphs -----------------------------------------------------

def incremental_vs_full(t: Target) -> list[CheckResult]:
    c = t.config
    noise = guarded("incremental_vs_full", "full", "quantization error int8 vs fp32", lambda: _noise(t))
    if isinstance(noise, list):          # the full graphs do not run: the chain rows say why too
        noise = 0.0
    atol = max(c.atol, QUANT_ATOL, 3 * noise)
    loose = Target(t.info, replace(c, atol=atol, rtol=max(c.rtol, QUANT_RTOL)))
    loose._ort, loose._model, loose.broken = t._ort, t._model, t.broken
    rows = parity.incremental_vs_full(loose)
    note = (f"quantized graphs: tolerance atol {atol:.3g} rtol {loose.config.rtol:g} (max |{t.info.quantized} "
            f"full - fp32 full| = {noise:.3g} on the same ids)")
    return [replace(r, detail=f"{r.detail}; {note}" if r.detail else note) for r in rows]


def _noise(t: Target, length: int = 12, batch: int = 2) -> float:
    full = t.info.spec.full
    length = min(length, t.info.max_context or length)
    ids = np.random.default_rng(t.config.seed).integers(0, full.role(LOGITS).dims[-1], (batch, length), dtype=np.int64)
    feeds = {full.name_of(TOKENS): ids}
    q = np.asarray(t.ort(full.name).run(feeds)[full.name_of(LOGITS)])
    f = np.asarray(fp32_target(t).ort(full.name).run(feeds)[full.name_of(LOGITS)])
    return float(np.abs(q - f).max())


# greedy_generation: fp32 torch vs ORT, and quantized vs fp32 (informational) ----------------------

def generation(t: Target) -> list[CheckResult]:
    rows = _relabel(parity.greedy_generation(fp32_target(t)))
    prompts = parity.prompts_for(t.info.tokenizer)
    return rows + guarded("greedy_generation", "step", f"greedy {t.info.quantized} vs fp32",
                          lambda: _agreement_rows(t, prompts))


def _agreement_rows(t: Target, prompts: list[str]) -> list[CheckResult]:
    from seqserve.generation import SamplingParams, generate_text

    info, c = t.info, t.config
    longest = max(len(info.tokenizer.encode(p)) for p in prompts)
    n = c.generate_tokens if info.max_context is None else max(1, min(c.generate_tokens, info.max_context - longest))
    params = SamplingParams(max_tokens=n, greedy=True, stop_at_eos=False)
    step = info.spec.step.name
    q = generate_text(t.ort(step), info.tokenizer, prompts, params, info.max_context)
    f = generate_text(fp32_target(t).ort(step), info.tokenizer, prompts, params, info.max_context)
    rows = []
    for p, a, b in zip(prompts, q, f):
        same = sum(x == y for x, y in zip(a.tokens, b.tokens))
        first = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), None)
        total = max(len(a.tokens), len(b.tokens), 1)
        if first is None and len(a.tokens) != len(b.tokens):
            first = min(len(a.tokens), len(b.tokens))
        detail = (f"agreement {same / total:.2f} ({same}/{total} positions); "
                  + ("identical" if first is None else f"first difference at generated token {first}")
                  + f"; {info.quantized} {a.text[:30]!r}, fp32 {b.text[:30]!r} (informational: always passes)")
        rows.append(CheckResult("greedy_generation", "step", f"greedy {info.quantized} vs fp32 prompt={p!r} tokens={n}",
                                True, detail=detail))
    return rows


CHECKS = {
    "torch_vs_ort": (cost, "torch vs ONNX Runtime on the fp32 graphs; held-out bits per token, quantized vs fp32"),
    "incremental_vs_full": (incremental_vs_full, "comparing step-by-step decoding with the full graph (quantized)"),
    "greedy_generation": (generation, "comparing generation: fp32 torch vs ORT, and quantized vs fp32 tokens"),
}
