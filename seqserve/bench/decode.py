"""Decode latency benchmark: per-token latency at batch 1, torch eager vs ONNX Runtime, side by side.

What is measured (one process, one run, variants interleaved round-robin so machine noise hits
all of them alike):

    gpt, at each context C      prefill C tokens, then time decode steps one by one:
        torch_cache             model.step(token, past) -> logits, present      (torch eager, KV cache)
        torch_nocache           model(all tokens so far)[:, -1]                 (full forward per token)
        ort_cache               seqserve.generation.decode_step over OrtBackend (what users get)
        ort_int8                the same over the `--quantize int8` graphs (--int8, the default)
    rnn / lstm / gru            after a short prefill, one step at a time:
        torch                   model.step(token, state)
        ort                     seqserve.generation.decode_step over OrtBackend
        ort_int8                the same over the int8 graphs

Models have random weights (the family's preset, a char-level vocabulary of 100), are saved as a
checkpoint and exported with `seqserve.export.export_checkpoint` into a temporary folder, so the
ONNX graphs are exactly what `seqserve export` writes. Every variant of one configuration decodes
the same token sequence; each round restarts from the same prefilled context, so "context C" means
C .. C + warmup + steps tokens. A step's time covers the backend call and the state bookkeeping,
not sampling (identical for all variants). torch and ONNX Runtime get the same thread count.
"""

from __future__ import annotations

import os
import platform
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from seqserve.bench.report import ratios
from seqserve.bench.timing import Variant, interleave, stats, timed
from seqserve.errors import SeqserveError

ALL_FAMILIES = ("gpt", "lstm", "gru", "rnn")
DEFAULT_CONTEXTS = (64, 256, 1024)
VOCAB_TEXT = string.ascii_letters + string.digits + string.punctuation + " \n\t"   # 97 distinct chars


@dataclass(frozen=True)
class BenchConfig:
    families: tuple[str, ...] = ALL_FAMILIES
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS   # gpt prefill lengths
    steps: int = 32               # timed decode steps per variant and round
    rounds: int = 16              # round-robin rounds; each restarts from the prefilled context
    warmup: int = 4               # untimed steps at the start of every round
    nocache_steps: int = 0        # timed steps of torch without cache per round; 0: fewer as C grows
    threads: int = 0              # ORT intra-op threads = torch threads; 0: one per physical core
    rnn_context: int = 64         # prefill length for the recurrent families
    int8: bool = True             # also time the `--quantize int8` graphs (ort_int8)
    preset: str = "small"
    seed: int = 0

    def nocache_steps_for(self, context: int) -> int:
        if self.nocache_steps:
            return min(self.nocache_steps, self.steps)
        return max(1, min(self.steps, 2048 // max(context, 1)))


def parse_list(text: str, what: str, cast=str) -> tuple:
    """'a,b,c' -> ('a', 'b', 'c') (cast each); one-line SeqserveError on a bad item."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise SeqserveError(f"no {what} given; expected a comma-separated list")
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise SeqserveError(f"bad {what} list {text!r}; expected comma-separated {cast.__name__} values") from None


def check_config(config: BenchConfig) -> None:
    from seqserve.models import get_family, make_config

    for fam in config.families:
        if get_family(fam).task != "causal-lm":
            raise SeqserveError(f"seqserve bench measures language-model decoding (rnn, lstm, gru, gpt); {fam} is a "
                                f"{get_family(fam).task} family (its benchmarks are in benchmarks/)")
        if config.preset not in get_family(fam).presets:
            make_config(fam, config.preset, 100)          # raises the one-line error
    for name in ("steps", "rounds"):
        if getattr(config, name) < 1:
            raise SeqserveError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if config.warmup < 0 or config.nocache_steps < 0 or config.threads < 0:
        raise SeqserveError("--warmup, --nocache-steps and --threads must not be negative")
    if config.rnn_context < 1:
        raise SeqserveError(f"--rnn-context must be at least 1, got {config.rnn_context}")
    if "gpt" in config.families:
        if not config.contexts or min(config.contexts) < 1:
            raise SeqserveError(f"contexts must be positive token counts, got {list(config.contexts)}")
        max_len = make_config("gpt", config.preset, 100).max_seq_len
        longest = max(config.contexts) + config.warmup + config.steps
        if longest > max_len:
            raise SeqserveError(f"context {max(config.contexts)} + warmup {config.warmup} + steps {config.steps} "
                                f"= {longest} exceeds the gpt {config.preset} preset's {max_len} positions")


def _stepping(model, backend, context_ids: np.ndarray, tokens: np.ndarray):
    """Two timed runners, torch eager and ORT, each decoding `tokens` one at a time from the
    state after prefilling `context_ids` (KV cache for gpt, h/c for recurrent families)."""
    import torch

    with torch.inference_mode():
        _, torch_state0 = model.step(torch.from_numpy(context_ids[None]), model.initial_state(1))
    tok_t = [torch.from_numpy(tokens[i:i + 1][None]) for i in range(len(tokens))]     # (1, 1) each

    def torch_run(warmup, steps):
        state = torch_state0

        def step(i):
            nonlocal state
            logits, state = model.step(tok_t[i], state)
            return logits[:, -1]

        with torch.inference_mode():
            return timed(warmup, steps, step)

    return torch_run, _ort_stepping(backend, context_ids, tokens)


def _ort_stepping(backend, context_ids: np.ndarray, tokens: np.ndarray):
    """A timed runner decoding `tokens` one at a time through `backend` after prefilling `context_ids`."""
    from seqserve.generation import decode_step, prefill

    _, ort_state0 = prefill(backend, context_ids.tolist())
    tok_n = [tokens[i:i + 1] for i in range(len(tokens))]                             # (1,) each

    def ort_run(warmup, steps):
        state = ort_state0

        def step(i):
            nonlocal state
            last, state = decode_step(backend, state, tok_n[i])
            return last

        return timed(warmup, steps, step)

    return ort_run


def _gpt_variants(model, backend, context_ids: np.ndarray, tokens: np.ndarray, config: BenchConfig,
                  context: int, int8=None) -> list[Variant]:
    import torch

    torch_cache, ort_cache = _stepping(model, backend, context_ids, tokens)
    full = torch.from_numpy(np.concatenate([context_ids, tokens])[None])             # (1, C + W + N)

    def torch_nocache(warmup, steps):
        with torch.inference_mode():
            return timed(warmup, steps, lambda i: model(full[:, :context + i + 1])[:, -1])

    return [Variant("torch_cache", torch_cache, config.steps, config.warmup),
            Variant("torch_nocache", torch_nocache, config.nocache_steps_for(context), min(config.warmup, 1)),
            Variant("ort_cache", ort_cache, config.steps, config.warmup),
            *_int8_variant(int8, context_ids, tokens, config)]


def _rnn_variants(model, backend, context_ids: np.ndarray, tokens: np.ndarray, config: BenchConfig, int8=None):
    torch_step, ort_step = _stepping(model, backend, context_ids, tokens)
    return [Variant("torch", torch_step, config.steps, config.warmup),
            Variant("ort", ort_step, config.steps, config.warmup),
            *_int8_variant(int8, context_ids, tokens, config)]


def _int8_variant(backend, context_ids, tokens, config: BenchConfig) -> list[Variant]:
    if backend is None:
        return []
    return [Variant("ort_int8", _ort_stepping(backend, context_ids, tokens), config.steps, config.warmup)]


def _diff(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    return None if a is None or b is None else float(np.max(np.abs(a - b)))


def _build_export(family: str, config: BenchConfig, root: Path, progress):
    import torch

    from seqserve.checkpoint import save_checkpoint
    from seqserve.data import Tokenizer
    from seqserve.export import load_export
    from seqserve.models import build_model, make_config

    tok = Tokenizer.fit(VOCAB_TEXT)
    torch.manual_seed(config.seed)
    model = build_model(family, make_config(family, config.preset, tok.vocab_size)).eval()
    ckpt, out = root / f"{family}-checkpoint", root / f"{family}-export"
    save_checkpoint(ckpt, family, model, tok, training={})
    if progress:
        progress(f"exporting {family} ({config.preset}, random weights) with seqserve's export")
    # In a child process: the exporter leaves hundreds of thousands of objects and a grown heap
    # behind, and a second in-process recurrent export can fail (measured with torch 2.13); the timing
    # process should look like a serving process that only loads the export.
    import seqserve

    env = dict(os.environ)                               # the child imports this very seqserve
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(seqserve.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _EXPORT_CODE, str(ckpt), str(out), "int8" if config.int8 else ""],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise SeqserveError(f"exporting the {family} benchmark model failed: "
                            f"{lines[-1] if lines else f'exit code {proc.returncode}'}")
    return load_export(out)


_EXPORT_CODE = ("import sys; from seqserve.export import ExportOptions, export_checkpoint; "
                "export_checkpoint(sys.argv[1], sys.argv[2], ExportOptions(quantize=sys.argv[3] or None))")


def _int8_diff(by: dict, torch_name: str) -> dict:
    if "ort_int8" not in by:
        return {}
    return {"max_abs_logit_diff_int8_vs_torch": _diff(by["ort_int8"].first_logits, by[torch_name].first_logits)}


def _graph_facts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    meta = {p.key: p.value for p in m.metadata_props}
    return {"opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "nodes": len(m.graph.node), "attention_ops": ops.get("Attention", 0),
            "graph_optimizations": meta.get("seqserve.graph_optimizations", "")}


def run_benchmark(config: BenchConfig = BenchConfig(), progress: Callable[[str], None] | None = None,
                  workdir: str | Path | None = None) -> dict:
    """Build, export and time every configuration; returns the results (see render / write_json)."""
    check_config(config)
    import onnxruntime as ort
    import torch

    from seqserve.checkpoint import load_checkpoint
    from seqserve.runtime import RuntimeOptions, make_backend
    from seqserve.runtime.ort import physical_cores

    threads = config.threads or physical_cores()
    torch.set_num_threads(threads)
    options = RuntimeOptions(intra_op_threads=threads)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    results: dict = {
        "config": {**asdict(config), "threads": threads},
        "threads": {"ort_intra_op": threads, "ort_inter_op": options.inter_op_threads,
                    "torch_intra_op": torch.get_num_threads()},
        "machine": _machine(),
        "gpt": None, "recurrent": [],
    }
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        for family in dict.fromkeys(config.families):         # each once, in order
            info = _build_export(family, config, root, progress)
            backend = make_backend(info.fp32(), "ort", options=options)      # fp32: the graphs it keeps
            int8 = make_backend(info, "ort", options=options) if info.quantized else None
            model = load_checkpoint(info.checkpoint_path).model.eval()
            vocab = info.tokenizer.vocab_size
            facts = {"family": family, "preset": config.preset, "model": info.raw["model_config"],
                     "export": info.raw.get("export_options", {}),
                     "step_graph": _graph_facts(info.graph_path("step", fp32=True)),
                     **({"int8_step_graph": _graph_facts(info.graph_path("step"))} if int8 else {})}
            if family == "gpt":
                rows = []
                for C in config.contexts:
                    ctx = rng.integers(3, vocab, C, dtype=np.int64)
                    toks = rng.integers(3, vocab, config.warmup + config.steps, dtype=np.int64)
                    variants = _gpt_variants(model, backend, ctx, toks, config, C, int8)
                    other = interleave(variants, config.rounds, progress, f"gpt context {C}")
                    by = {v.name: v for v in variants}
                    rows.append({"context": C, **{v.name: stats(v.times) for v in variants},
                                 "max_abs_logit_diff_ort_vs_torch": _diff(by["ort_cache"].first_logits,
                                                                         by["torch_cache"].first_logits),
                                 **_int8_diff(by, "torch_cache"),
                                 "other_processes_cpu_share": other["share"],
                                 "rounds_dropped_busy": other["dropped"]})
                results["gpt"] = {**facts, "contexts": rows}
            else:
                ctx = rng.integers(3, vocab, config.rnn_context, dtype=np.int64)
                toks = rng.integers(3, vocab, config.warmup + config.steps, dtype=np.int64)
                variants = _rnn_variants(model, backend, ctx, toks, config, int8)
                other = interleave(variants, config.rounds, progress, f"{family} step")
                by = {v.name: v for v in variants}
                results["recurrent"].append({**facts, "context": config.rnn_context,
                                             "torch": stats(by["torch"].times), "ort": stats(by["ort"].times),
                                             **({"ort_int8": stats(by["ort_int8"].times)} if int8 else {}),
                                             "max_abs_logit_diff_ort_vs_torch": _diff(by["ort"].first_logits,
                                                                                     by["torch"].first_logits),
                                             **_int8_diff(by, "torch"),
                                             "other_processes_cpu_share": other["share"],
                                             "rounds_dropped_busy": other["dropped"]})
            del backend, int8, model
    results["ratios"] = ratios(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["versions"] = {"onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__}
    return results


def _machine() -> dict:
    from seqserve.runtime.ort import physical_cores

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "physical_cores": physical_cores(), "python": platform.python_version(),
            "platform": platform.platform()}
