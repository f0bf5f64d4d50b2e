#!/usr/bin/env python
"""GPT decode per token: torch eager with a KV cache vs ORT today's concat graph vs ORT on an
in-place static buffer (GroupQueryAttention, `seqserve export --kv-cache static`), side by side.

    python benchmarks/kv_cache.py                                  # contexts 64,256,1024; 1 and 2 threads
    python benchmarks/kv_cache.py --contexts 64,1024 --threads 2 --no-ragged --json out.json

GPT small (d_model 256, 4 layers, 4 heads; random weights, a 97-character vocabulary), saved as a
checkpoint and exported twice by seqserve's own exporter (child processes): concat and static.
Batch 1 at each context C: prefill C tokens, then time one-token decode steps (each round
restarts from the prefilled state; the static buffer is simply overwritten from position C
again). Batch 16 ragged: 16 rows of lengths 64 .. 1023 merged as the decoding loop merges them
(concat: left-padded to the longest row; static: a slot per row with its own length; torch: the
left-padded cache and a mask); cells are per token (call / 16). ORT timings go through
seqserve.generation.decode_step (what `seqserve generate` does), torch through model.step.
Variants are interleaved round-robin (seqserve.bench.timing), so machine noise hits all alike.
Opset-24 Attention + TensorScatter is not rebuilt here: ../shared/ENVIRONMENT.md measured it on
one block (flat ~56-66 us, slower than GQA everywhere below ~1000 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import numpy as np  # noqa: E402

TARGET_SPEEDUP, TARGET_GROWTH = 3.0, 1.3        # issue 13 target 1
VARIANTS = ("torch_cache", "ort_concat", "ort_static")


def _export(ckpt: Path, out: Path, kv_cache: str) -> None:
    code = ("import sys; from seqserve.export import export_checkpoint, ExportOptions; "
            "export_checkpoint(sys.argv[1], sys.argv[2], ExportOptions(kv_cache=sys.argv[3]))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), str(out), kv_cache],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"export ({kv_cache}) failed: {proc.stderr.strip().splitlines()[-1:]}")


def _runners(model, backends: dict, contexts: list[np.ndarray], tokens: np.ndarray):
    """name -> run(warmup, steps) decoding `tokens` [N] (each row the same token) after
    prefilling each row of `contexts` alone (rows merged as the decoding loop merges them)."""
    import torch

    from seqserve.bench.timing import timed
    from seqserve.generation import DecodeState, decode_step, prefill

    B = len(contexts)
    runs = {}
    for name, backend in backends.items():
        state0 = DecodeState.merge([prefill(backend, c.tolist())[1] for c in contexts], backend)

        def run(warmup, steps, backend=backend, state0=state0):
            state = state0

            def step(i):
                nonlocal state
                last, state = decode_step(backend, state, np.full(B, tokens[i], np.int64))
                return last[:1]
            return timed(warmup, steps, step)
        runs[name] = run
    # torch: the concat layout (left-padded, masked), straight through model.step.
    concat0 = DecodeState.merge([prefill(backends["ort_concat"], c.tolist())[1] for c in contexts],
                                backends["ort_concat"])
    past0 = tuple(torch.from_numpy(np.ascontiguousarray(concat0.state[n])) for n in concat0.spec.input_names
                  if n in concat0.spec.state_inputs)
    mask0, pos0 = torch.from_numpy(concat0.mask), torch.from_numpy(concat0.positions)

    def torch_run(warmup, steps):
        past, mask, pos = past0, mask0, pos0

        def step(i):
            nonlocal past, mask, pos
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.int64)], dim=1)
            logits, past = model.step(torch.full((B, 1), int(tokens[i])), past, mask, pos[:, None])
            pos = pos + 1
            return logits[:1, -1]
        with torch.inference_mode():
            return timed(warmup, steps, step)
    runs["torch_cache"] = torch_run
    return runs


def measure(args, root: Path, progress) -> dict:
    import onnxruntime as ort
    import torch

    from seqserve.bench.decode import VOCAB_TEXT
    from seqserve.bench.timing import Variant, interleave, stats
    from seqserve.checkpoint import save_checkpoint
    from seqserve.data import Tokenizer
    from seqserve.export import load_export
    from seqserve.models import build_model, make_config
    from seqserve.runtime import RuntimeOptions, ort_backend

    tok = Tokenizer.fit(VOCAB_TEXT)
    torch.manual_seed(0)
    model = build_model("gpt", make_config("gpt", "small", tok.vocab_size)).eval()
    save_checkpoint(root / "ckpt", "gpt", model, tok, training={})
    progress("exporting gpt small twice (concat, static)")
    _export(root / "ckpt", root / "concat", "concat")
    _export(root / "ckpt", root / "static", f"static:{args.max_len}")
    exports = {"ort_concat": load_export(root / "concat"), "ort_static": load_export(root / "static")}
    rng = np.random.default_rng(0)
    n_tok = args.warmup + args.steps
    cases = [(f"b1 C={c}", [rng.integers(3, tok.vocab_size, c)]) for c in args.contexts]
    if args.ragged:
        lengths = np.linspace(64, 1023, 16).astype(int)
        cases.append(("b16 ragged 64..1023", [rng.integers(3, tok.vocab_size, n) for n in lengths]))
    out = {"config": vars(args), "cases": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        backends = {k: ort_backend(e, "step", RuntimeOptions(intra_op_threads=threads)) for k, e in exports.items()}
        for label, ctx in cases:
            toks = rng.integers(3, tok.vocab_size, n_tok)
            runs = _runners(model, backends, ctx, toks)
            variants = [Variant(n, runs[n], args.steps, args.warmup) for n in VARIANTS]
            load = interleave(variants, args.rounds, progress, f"{threads} threads, {label}")
            first = {v.name: v.first_logits for v in variants}
            row = {"threads": threads, "case": label, "batch": len(ctx), "context": int(max(len(c) for c in ctx)),
                   **{v.name: stats(np.asarray(v.times) / len(ctx)) for v in variants},
                   "max_abs_logit_diff": {k: float(np.abs(first[k] - first["torch_cache"]).max())
                                          for k in ("ort_concat", "ort_static")},
                   "other_processes_cpu_share": load["share"]}
            out["cases"].append(row)
        del backends
    out["versions"] = {"onnxruntime": ort.__version__, "torch": torch.__version__}
    return out


def ratios(res: dict) -> list[dict]:
    rows = []
    for threads in sorted({c["threads"] for c in res["cases"]}):
        cases = [c for c in res["cases"] if c["threads"] == threads]
        for c in cases:
            t = c["torch_cache"]["median_ms"]
            for v in ("ort_concat", "ort_static"):
                ok = t / c[v]["median_ms"] >= TARGET_SPEEDUP if v == "ort_static" and c["batch"] == 1 else None
                rows.append({"name": f"{threads}t {c['case']} torch / {v}", "value": t / c[v]["median_ms"],
                             "target": f">= {TARGET_SPEEDUP:g}" if ok is not None else None, "pass": ok})
        b1 = sorted((c for c in cases if c["batch"] == 1), key=lambda c: c["context"])
        if len(b1) > 1:
            lo, hi = b1[0], b1[-1]
            for v in ("ort_concat", "ort_static", "torch_cache"):
                g = hi[v]["median_ms"] / lo[v]["median_ms"]
                ok = g <= TARGET_GROWTH if v == "ort_static" else None
                rows.append({"name": f"{threads}t {v} @{hi['context']} / @{lo['context']}", "value": g,
                             "target": f"<= {TARGET_GROWTH:g}" if ok is not None else None, "pass": ok})
    return rows


def plot(res: dict, path: Path) -> Path:
    """Per-token latency (median ms) against the context, batch 1: one line per variant and thread count."""
    from seqserve.bench.output import plot_lines

    series = {}
    for threads in sorted({c["threads"] for c in res["cases"]}):
        b1 = sorted((c for c in res["cases"] if c["batch"] == 1 and c["threads"] == threads), key=lambda c: c["context"])
        for v in VARIANTS:
            series[f"{v}, {threads} thread(s)"] = ([c["context"] for c in b1], [c[v]["median_ms"] for c in b1])
    return plot_lines(path, series, xlabel="context (tokens)", ylabel="ms per token (median)", log_x=True,
                      title="GPT small decode, batch 1: per-token latency vs context (kv_cache.py)")


def render(res: dict) -> None:
    from rich.table import Table

    from seqserve.bench.output import console as wide_console

    console = wide_console()                                         # redirected: no 80-column cut
    tab = Table(title="GPT small decode, ms per token (median / p90); batch 16 cells = call / 16",
                title_justify="left")
    for col in ("threads", "case", "torch cache", "ORT concat", "ORT static", "torch /\nconcat", "torch /\nstatic",
                "concat /\nstatic", "max |dlogit|\nstatic-torch", "other\nCPU"):
        tab.add_column(col, justify="right")
    for c in res["cases"]:
        t, a, s = (c[v]["median_ms"] for v in VARIANTS)
        cell = {v: f"{c[v]['median_ms']:.3f} / {c[v]['p90_ms']:.3f}" for v in VARIANTS}
        share = c["other_processes_cpu_share"]
        tab.add_row(str(c["threads"]), c["case"], cell["torch_cache"], cell["ort_concat"], cell["ort_static"],
                    f"{t / a:.2f}x", f"{t / s:.2f}x", f"{a / s:.2f}x", f"{c['max_abs_logit_diff']['ort_static']:.1e}",
                    "?" if share is None else f"{share:.0%}")
    console.print(tab)
    tab = Table(title="Ratios of medians (issue 13 target 1)", title_justify="left")
    for col in ("ratio", "value", "target", ""):
        tab.add_column(col, justify="left" if col == "ratio" else "right")
    for r in res["ratios"]:
        mark = "" if r["pass"] is None else ("[bold green]PASS[/]" if r["pass"] else "[bold red]MISS[/]")
        tab.add_row(r["name"], f"{r['value']:.2f}", r["target"] or "-", mark)
    console.print(tab)
    console.print(f"[dim]onnxruntime {res['versions']['onnxruntime']}, torch {res['versions']['torch']}; "
                  f"static buffer {res['config']['max_len']} positions[/]", highlight=False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="kv_cache.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="64,256,1024", help="batch-1 prefill lengths (comma-separated)")
    p.add_argument("--threads", default="1,2", help="torch threads = ORT intra-op threads (comma-separated)")
    p.add_argument("--steps", type=int, default=32, help="timed decode steps per round")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps at the start of each round")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--max-len", type=int, default=2048, help="static buffer positions (export --kv-cache static:N)")
    p.add_argument("--no-ragged", dest="ragged", action="store_false", help="skip the batch-16 ragged case")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--plot", type=Path, help="also write a PNG of per-token latency vs context here")
    args = p.parse_args(argv)
    args.contexts = [int(x) for x in args.contexts.split(",")]
    args.threads = [int(x) for x in args.threads.split(",")]
    if max(args.contexts) + args.warmup + args.steps > args.max_len:
        p.error("the longest context + warmup + steps must fit in --max-len")
    with tempfile.TemporaryDirectory(prefix="seqserve-kv-") as tmp:
        res = measure(args, Path(tmp), lambda m: print(m, file=sys.stderr, flush=True) if sys.stderr.isatty() else None)
    res["ratios"] = ratios(res)
    render(res)
    if args.plot:
        print(f"plot written to {plot(res, args.plot)}")
    if args.json:
        args.json.write_text(json.dumps({**res, "config": {k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in res["config"].items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
