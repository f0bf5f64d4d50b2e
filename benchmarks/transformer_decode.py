"""Per-token decode of the `transformer` family (task seq2seq), side by side in one run, batch 1:

    ort cross once     the exported step graph: cross-attention K/V computed once by the encoder
                       graph and fed unchanged every step (the task's contract)
    ort recompute      a step graph that takes the encoder memory instead and projects it to every
                       layer's cross K/V inside each step (what a step without the encoder's K/V costs)
    torch eager cache  the torch model with its self KV cache, cross K/V from the encoder once

each greedy and with 4 beams, all through the one decoding loop (seqserve.generation). Per-token
time = (time for N tokens - time for 1 token) / (N - 1): the encoder and the first step cancel.

    .venv/bin/python benchmarks/transformer_decode.py [--checkpoint CKPT] [--source-len 16] [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqserve.export.onnx_graphs import conform_dims, export_graph
from seqserve.generation import SamplingParams
from seqserve.generation.beam import BeamParams
from seqserve.models import build_model, make_config
from seqserve.runtime.torch_backend import TorchBackend
from seqserve.tasks import seq2seq as translate
from seqserve.tasks.spec import BATCH, CONSTANT, SOURCE, TensorSpec


class OrtGraph:
    """The decoding loop's backend protocol over one ORT session (spec, run, to_host, from_host)."""

    name = "ort"

    def __init__(self, path, spec, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess, self.spec = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]), spec
        self.outputs = spec.output_names

    def run(self, feeds):
        return dict(zip(self.outputs, self.sess.run(self.outputs, {n: feeds[n] for n in self.spec.input_names})))

    to_host = from_host = staticmethod(lambda a: a)


class RecomputeStep(torch.nn.Module):
    """The step, but from the encoder memory: cross K/V projected inside every call."""

    def __init__(self, model, spec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, *args):
        x = dict(zip(self.spec.input_names, args))
        memory = x.pop(translate.MEMORY)
        cross = [t for block in self.model.dec for t in block.cross.keys_values(memory)]
        names = [n for i in range(self.model.config.n_dec_layers) for n in translate.cross_cache_names(i)]
        out = self.model.run_step({**x, **dict(zip(names, cross))})
        return tuple(out[n] for n in self.spec.output_names)


def recompute_spec(step, d_model: int):
    """The step graph's spec with the cross K/V inputs replaced by the memory (role CONSTANT)."""
    inputs = [t for t in step.inputs if t.role != CONSTANT]
    inputs.append(TensorSpec(translate.MEMORY, "float32", (BATCH, SOURCE, d_model), CONSTANT))
    return replace(step, inputs=tuple(inputs))


def export_recompute(model, spec, path):
    from seqserve.tasks.spec import example_inputs

    feeds = example_inputs(spec, {"batch": 2, "sequence": 3, "past_sequence": 5, "source_sequence": 7},
                           np.random.default_rng(0), model.config.vocab_size)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    torch.onnx.export(RecomputeStep(model, spec).eval(), args, str(path), dynamo=True, external_data=False,
                      dynamic_shapes=(tuple(t.dynamic_axes or None for t in spec.inputs),),
                      input_names=spec.input_names, output_names=spec.output_names, opset_version=23)
    conform_dims(path, spec)


def timed(fn, repeats: int) -> float:
    fn()                                             # warm-up
    return statistics.median(_once(fn) for _ in range(repeats))


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    import warnings

    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a trained transformer checkpoint (default: small, random weights)")
    ap.add_argument("--source-len", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, dest="json_out", help="also write the results to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.checkpoint:
        from seqserve.checkpoint import load_checkpoint

        ck = load_checkpoint(a.checkpoint)
        model, tok = ck.model.eval(), ck.tokenizer
    else:
        from seqserve.data import Tokenizer

        torch.manual_seed(0)
        tok = Tokenizer.fit("0123456789 abcdefghijklmnopqrstuvwxyz,-")
        model = build_model("transformer", make_config("transformer", "small", tok.vocab_size)).eval()
    spec = model.spec()
    spec = replace(spec, io={k: v for k, v in spec.io.items() if k != "source_chars"})
    enc_spec, step_spec = spec.graph(translate.ENCODER_GRAPH), spec.step
    re_spec = recompute_spec(step_spec, model.config.d_model)
    rng = np.random.default_rng(0)
    source = "".join(rng.choice(list("0123456789"), a.source_len))
    with tempfile.TemporaryDirectory() as d:
        paths = {g: Path(d) / f"{g}.onnx" for g in ("encoder", "step", "recompute")}
        for g, gs in ((translate.ENCODER_GRAPH, enc_spec), ("step", step_spec)):
            export_graph(model, gs, paths[g], "dynamo", 23)
            conform_dims(paths[g], gs)
        export_recompute(model, re_spec, paths["recompute"])
        enc = OrtGraph(paths["encoder"], enc_spec, a.threads)
        # the recompute variant's "encoder" hands the step the memory (and the source mask) only
        re_enc = OrtGraph(paths["encoder"], replace(enc_spec, outputs=enc_spec.outputs[:1]), a.threads)
        variants = {
            "ort cross once": (enc, OrtGraph(paths["step"], step_spec, a.threads)),
            "ort recompute": (re_enc, OrtGraph(paths["recompute"], re_spec, a.threads)),
            "torch eager cache": (TorchBackend(model, translate.ENCODER_GRAPH), TorchBackend(model, "step")),
        }
        modes = {"greedy": lambda n: SamplingParams(max_tokens=n, greedy=True, stop_at_eos=False),
                 "beams 4": lambda n: BeamParams(beams=4, max_tokens=n, stop_at_eos=False)}
        print(f"transformer small ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
              f"{model.config.n_dec_layers} decoder layers), batch 1, source {a.source_len} tokens, "
              f"{a.tokens} new tokens, {a.threads} threads; median of {a.repeats}")
        print(f"{'variant':<20}{'mode':<10}{'ms per new token (beams: per step, 4 rows)':>45}")
        results = {}
        for mode, make in modes.items():
            for name, (e, s) in variants.items():
                def go(n, e=e, s=s):
                    out = translate.generate_targets(e, s, spec, tok, [source], make(n))
                    if not isinstance(out, list):
                        for _ in out:
                            pass
                t_n, t_1 = timed(lambda: go(a.tokens), a.repeats), timed(lambda: go(1), a.repeats)
                per = (t_n - t_1) / (a.tokens - 1) * 1e3
                results[(name, mode)] = per
                print(f"{name:<20}{mode:<10}{per:>45.3f}")
        for mode in modes:
            once, re, te = (results[(v, mode)] for v in variants)
            print(f"{mode}: recompute / once = {re / once:.2f}x, torch / ort once = {te / once:.2f}x")
    if a.json_out:
        from seqserve.bench.serve import write_json

        write_json({"config": vars(a), "ms_per_new_token": {mode: {name: results[(name, mode)] for name in variants}
                                                            for mode in modes},
                    "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__}}, a.json_out)
        print(f"results written to {a.json_out}")


if __name__ == "__main__":
    main()
