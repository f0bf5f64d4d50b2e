"""Per-token decode of a BROUGHT Transformer causal LM, side by side in one run, batch 1:

    ort cached step      seqserve's step graph of the user's module (layers rebuilt with a KV cache
                         from its own weights, exported with export_graph), one ORT session
    torch recompute      the user's own forward over the whole prefix for every new token: what a
                         user without a KV cache does today (stock nn.TransformerEncoder, no_grad)
    torch rebuilt cache  the rebuilt torch layers with their KV cache (the adapter's step in eager)

The model is tests/user_models/transformer_lm.py (the PyTorch tutorial's nn.TransformerEncoder LM,
sequence-first, its own sinusoidal PositionalEncoding) at d_model 256, 4 layers, through its
adapter (tests/user_models/adapter_transformer_lm.py). Random weights: timing does not depend on
them. At each context C the cache is prefilled with C tokens, then every variant decodes the same
tokens one at a time; rounds are interleaved (seqserve.bench.timing) and rounds during which
other processes were busy are rerun. Cells: median / p90 ms per token.

    .venv/bin/python benchmarks/byom_decode.py [--contexts 64,256,1024] [--threads 1] [--steps 16] [--rounds 6]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqserve.adapters import adapt
from seqserve.bench.serve import console
from seqserve.bench.timing import NOISY_SHARE, Variant, interleave, stats, timed
from seqserve.export.onnx_graphs import conform_dims, export_graph

ROOT = Path(__file__).resolve().parents[1] / "tests" / "user_models"
VARIANTS = ("ort cached step", "torch recompute", "torch rebuilt cache")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"user_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variants(adapted, session, names, context_ids: np.ndarray, tokens: np.ndarray, steps: int, warmup: int):
    """The three runners, each decoding `tokens` one at a time after `context_ids` (1, C)."""
    user, C = adapted.user, context_ids.shape[1]
    n_layers, nh, hd = adapted.n_layers, adapted.n_heads, adapted.head_dim
    empty = [torch.zeros(1, nh, 0, hd)] * (2 * n_layers)
    with torch.inference_mode():                                    # the shared prefill, torch side
        ids = torch.from_numpy(context_ids)
        _, past0 = adapted.step(ids, empty, torch.ones(1, C, dtype=torch.int64), torch.arange(C)[None])
    past_np0 = {n: t.numpy() for n, t in zip(names, past0)}
    all_ids = torch.from_numpy(np.concatenate([context_ids, tokens[None]], 1))       # (1, C + N)

    def ort_run(w, s):
        past = dict(past_np0)

        def step(i):
            P = C + i
            r = session.run(None, {"input_ids": tokens[None, i:i + 1], "attention_mask": np.ones((1, P + 1), np.int64),
                                   "position_ids": np.array([[P]], np.int64), **past})
            for n, a in zip(names, r[1:]):
                past[n] = a
            return r[0][:, -1]
        return timed(w, s, step)

    def recompute_run(w, s):                      # the user's forward, sequence-first, whole prefix
        with torch.inference_mode():
            return timed(w, s, lambda i: user(all_ids[:, :C + i + 1].T)[-1])

    def cache_run(w, s):
        past = past0

        def step(i):
            nonlocal past
            P = C + i
            logits, past = adapted.step(all_ids[:, P:P + 1], past, torch.ones(1, P + 1, dtype=torch.int64),
                                        torch.tensor([[P]]))
            return logits[:, -1]
        with torch.inference_mode():
            return timed(w, s, step)

    return [Variant(VARIANTS[0], ort_run, steps, warmup), Variant(VARIANTS[1], recompute_run, steps, warmup),
            Variant(VARIANTS[2], cache_run, steps, warmup)]


def main():
    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="64,256,1024")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads = torch threads (default 1)")
    ap.add_argument("--steps", type=int, default=16, help="timed decode steps per variant and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--json", type=Path, dest="json_out", help="also write the results to this JSON file")
    ap.add_argument("--plot", type=Path, help="also write a PNG of per-token latency vs context here")
    a = ap.parse_args()
    contexts = [int(c) for c in a.contexts.split(",")]
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    model = _load("transformer_lm").build(ntoken=a.vocab, d_model=256, nhead=4, d_hid=1024, nlayers=4,
                                          max_len=max(contexts) + a.warmup + a.steps + 8)
    adapted = adapt(model, "causal-lm", _load("adapter_transformer_lm").adapter)
    step = adapted.spec().step
    con = console()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "step.onnx"
        t0 = time.perf_counter()
        export_graph(adapted, step, path, *adapted.export_with)
        conform_dims(path, step)
        export_s = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [t.name for t in step.inputs if t.name.startswith("past_key_values")]
        rng = np.random.default_rng(0)
        rows = []
        for C in contexts:
            context_ids = rng.integers(0, a.vocab, (1, C), dtype=np.int64)
            tokens = rng.integers(0, a.vocab, a.warmup + a.steps, dtype=np.int64)
            vs = variants(adapted, session, names, context_ids, tokens, a.steps, a.warmup)
            load = interleave(vs, a.rounds, None, f"context {C}")
            ref = vs[1].first_logits
            rows.append({"context": C, "load": load, **{v.name: stats(v.times) for v in vs},
                         "diff": {v.name: float(np.abs(v.first_logits - ref).max()) for v in vs if v is not vs[1]}})
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    elapsed = time.perf_counter() - t_start
    render(con, rows, a, n_params, export_s, elapsed)
    if a.plot:
        from seqserve.bench.output import plot_lines

        plot_lines(a.plot, {v: ([r["context"] for r in rows], [r[v]["median_ms"] for r in rows]) for v in VARIANTS},
                   xlabel="context (tokens)", ylabel="ms per new token (median)", log_x=True,
                   title="Brought Transformer LM, batch 1: per-token latency vs context (byom_decode.py)")
        con.print(f"plot written to {a.plot}", highlight=False)
    if a.json_out:
        from seqserve.bench.serve import write_json

        write_json({"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                    "params_m": n_params, "export_s": export_s, "elapsed_s": elapsed, "rows": rows,
                    "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__}}, a.json_out)
        con.print(f"results written to {a.json_out}", highlight=False)


def render(con, rows, a, n_params: float, export_s: float, elapsed: float) -> None:
    from rich.table import Table

    def ms(s):
        return f"{s['median_ms']:.2f} / {s['p90_ms']:.2f}"

    con.print(f"[bold]Brought Transformer LM, per-token decode, batch 1[/] - the PyTorch tutorial's TransformerModel "
              f"(d_model 256, 4 layers, 4 heads, d_hid 1024, vocab {a.vocab}, {n_params:.2f} M params) via its "
              f"adapter; ORT intra-op threads {a.threads} (inter-op 1), torch threads {a.threads}; {a.rounds} "
              f"interleaved rounds x {a.steps} steps after {a.warmup} warmup; step graph exported in {export_s:.1f} s",
              highlight=False)
    tab = Table(title="median / p90 ms per new token; ratios are recompute's median over the variant's",
                title_justify="left")
    for col in ("context", *VARIANTS, "recompute\n/ ORT", "recompute\n/ torch cache", "torch cache\n/ ORT",
                "max |dlogit|\nORT, cache vs user", "other\nCPU load"):
        tab.add_column(col, justify="right")
    for r in rows:
        o, re, tc = (r[v]["median_ms"] for v in VARIANTS)
        share = r["load"]["share"]
        tab.add_row(str(r["context"]), *(ms(r[v]) for v in VARIANTS), f"{re / o:.1f}x", f"{re / tc:.1f}x",
                    f"{tc / o:.2f}x", f"{r['diff'][VARIANTS[0]]:.1e}, {r['diff'][VARIANTS[2]]:.1e}",
                    "?" if share is None else (f"[yellow]{share:.0%}[/]" if share > NOISY_SHARE else f"{share:.0%}"))
    con.print(tab)
    con.print(f"[dim]{elapsed:.0f} s; onnxruntime {ort.__version__}, torch {torch.__version__}[/]", highlight=False)


if __name__ == "__main__":
    main()
