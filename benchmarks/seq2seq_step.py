#!/usr/bin/env python
"""seq2seq RNN decoder step, per token: ONNX Runtime vs torch eager, every attention, side by side.

    python benchmarks/seq2seq_step.py                        # small preset, gru, batch 1 and 8
    python benchmarks/seq2seq_step.py --cell lstm --batches 1 --threads 2 --json out.json

For each attention (none, dot, general, additive) a `small` seq2seq model (random weights: the
speed does not depend on training) is exported with seqserve's exporter; the encoder runs once on
a source of --source characters, then the decoder step is timed one token at a time (the state
and constants fed back as the decoding loop feeds them, DecodeState), through the ORT backend and
the torch backend of seqserve.runtime. Printed: microseconds per decoder step (one new token for
each of the batch's rows), the fastest and the median of --repeats runs of --tokens steps after
a warm-up run, and torch / ORT of the fastest (on a machine shared with other work the fastest
run is the least disturbed one; the median shows how disturbed it was).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runnable from a plain checkout

import numpy as np  # noqa: E402


def build_export(root: Path, cell: str, attention: str, preset: str) -> Path:
    import torch

    from seqserve.checkpoint import save_checkpoint
    from seqserve.data import Tokenizer
    from seqserve.export import export_checkpoint
    from seqserve.models import build_model, make_config

    torch.manual_seed(0)
    tok = Tokenizer.fit("0123456789 abcdefghijklmnopqrstuvwxyz,-", "char")
    model = build_model("seq2seq", make_config("seq2seq", preset, tok.vocab_size, cell=cell, attention=attention,
                                               source_chars="0123456789", max_source_len=64)).eval()
    ckpt = save_checkpoint(root / f"{cell}-{attention}", "seq2seq", model, tok, {})
    return export_checkpoint(ckpt, root / f"{cell}-{attention}-onnx").path


def per_step_us(backend, encoder, spec, batch: int, source: int, tokens: int, repeats: int) -> tuple[float, float]:
    from seqserve.generation import DecodeState, start_values

    rng = np.random.default_rng(0)
    vocab = spec.io["vocab_size"]
    src = {"source_ids": rng.integers(3, 13, (batch, source), dtype=np.int64),
           "source_mask": np.ones((batch, source), np.int64)}
    start = start_values([encoder], src, spec.step)             # the encoder, once (not timed)
    ids = rng.integers(3, vocab, (batch, 1), dtype=np.int64)
    times = []
    for r in range(repeats + 1):
        state = DecodeState.empty(spec.step, batch, backend, start)
        t0 = time.perf_counter()
        for _ in range(tokens):
            feeds = state.feeds(ids)
            state = state.advance(feeds, backend.run(feeds))
        if r:                                                   # run 0 warms up
            times.append((time.perf_counter() - t0) / tokens * 1e6)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--attentions", default="none,dot,general,additive")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--source", type=int, default=8, help="source characters (4-digit numbers: 4)")
    ap.add_argument("--tokens", type=int, default=50, help="decoder steps per timed run")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    import torch

    from seqserve.export import load_export
    from seqserve.runtime import RuntimeOptions, make_backend

    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attention in a.attentions.split(","):
            info = load_export(build_export(Path(tmp), a.cell, attention, a.preset))
            opts = RuntimeOptions(intra_op_threads=a.threads)
            for b in (int(x) for x in a.batches.split(",")):
                us = {}
                for kind in ("ort", "torch"):
                    step = make_backend(info, kind, info.spec.step.name, opts)
                    encoder = make_backend(info, kind, "encoder", opts)
                    us[kind] = per_step_us(step, encoder, info.spec, b, a.source, a.tokens, a.repeats)
                (o, om), (t, tm) = us["ort"], us["torch"]
                rows.append({"cell": a.cell, "attention": attention, "batch": b, "source": a.source,
                             "ort_us": round(o, 1), "ort_median_us": round(om, 1), "torch_us": round(t, 1),
                             "torch_median_us": round(tm, 1), "torch_over_ort": round(t / o, 2)})
                print(f"{a.cell:4} {attention:9} batch {b:2}  ort {o:7.1f} (median {om:7.1f}) us/step  "
                      f"torch {t:7.1f} (median {tm:7.1f}) us/step  torch/ort {t / o:5.2f}x", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "preset": a.preset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
