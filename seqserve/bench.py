"""Decode latency benchmark: per-token latency at batch 1, torch eager vs ONNX Runtime, side by side.

What is measured (one process, one run, variants interleaved round-robin so machine noise hits
all of them alike):

    gpt, at each context C      prefill C tokens, then time decode steps one by one:
        torch_cache             model.step(token, past) -> logits, present      (torch eager, KV cache)
        torch_nocache           model(all tokens so far)[:, -1]                 (full forward per token)
        ort_cache               seqserve.generation.decode_step over OrtBackend (what users get)
    rnn / lstm / gru            after a short prefill, one step at a time:
        torch                   model.step(token, state)
        ort                     seqserve.generation.decode_step over OrtBackend

Models have random weights (the family's preset, a char-level vocabulary of 100), are saved as a
checkpoint and exported with `seqserve.export.export_checkpoint` into a temporary folder, so the
ONNX graphs are exactly what `seqserve export` writes. Every variant of one configuration decodes
the same token sequence; each round restarts from the same prefilled context, so "context C" means
C .. C + warmup + steps tokens. A step's time covers the backend call and the state bookkeeping,
not sampling (identical for all variants). torch and ONNX Runtime get the same thread count.
"""

from __future__ import annotations

import gc
import json
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

from seqserve.errors import SeqserveError

ALL_FAMILIES = ("gpt", "lstm", "gru", "rnn")
DEFAULT_CONTEXTS = (64, 256, 1024)
VOCAB_TEXT = string.ascii_letters + string.digits + string.punctuation + " \n\t"   # 97 distinct chars

# The targets on a 2-core CPU.
TARGET_GPT_SPEEDUP = 2.0      # torch eager with cache / ORT with cache, per token, at every context
TARGET_LSTM_SPEEDUP = 5.0     # torch eager LSTM step / ORT LSTM step
TARGET_CONTEXT_GROWTH = 2.0   # ORT per-token latency at the longest context / at the shortest
NOISY_SHARE = 0.10            # other processes' CPU share above which rounds are rerun / flagged
LOAD_WINDOW_S = 0.25          # rounds are checked for other processes' load in windows this long


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
        get_family(fam)
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


# --- measurement --------------------------------------------------------------------------------

def _stats(times: list[float]) -> dict:
    a = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


class _Variant:
    """One way of decoding: run_round() decodes from the prefilled context and returns step times."""

    def __init__(self, name: str, run_round: Callable[[int, int], tuple[list[float], np.ndarray]],
                 steps: int, warmup: int):
        self.name, self._run, self.steps, self.warmup = name, run_round, steps, warmup
        self.times: list[float] = []
        self.first_logits: np.ndarray | None = None

    def round(self) -> None:
        times, first = self._run(self.warmup, self.steps)
        self.times += times
        self.first_logits = first


def _interleave(variants: list[_Variant], rounds: int, progress, label: str) -> dict:
    """Round-robin: every round runs each variant once, in a rotated order.

    Other processes matter a lot on a small machine: with one of 2 cores busy elsewhere, torch's
    OpenMP threads wait for time slices (a 1 ms step becomes 100+ ms). Rounds are checked in
    windows of at least LOAD_WINDOW_S (/proc/stat counts in 10 ms ticks); a window during which
    other processes used more than NOISY_SHARE of the CPUs is dropped and run again, for at most
    `rounds` extra rounds in all. Returns {"share": CPU share other processes used during the kept
    rounds (0-1; None without /proc/stat), "dropped": rounds dropped}.
    """
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    kept_load, kept_time, dropped, retries, r = 0.0, 0.0, 0, rounds, 0
    try:
        for v in variants:                                # one untimed round: caches, allocators, pools
            v._run(v.warmup, min(v.steps, 2))
        while r < rounds:
            marks = [len(v.times) for v in variants]
            load, first = _OtherLoad(), r
            while r < rounds and (r == first or load.elapsed() < LOAD_WINDOW_S):
                if progress:
                    progress(f"{label}: round {r + 1}/{rounds}"
                             + (f" ({dropped} dropped: machine busy)" if dropped else ""))
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    v.round()
                r += 1
            share, wall = load.share(), load.elapsed()
            if share is not None and share > NOISY_SHARE and retries >= r - first:
                retries -= r - first
                dropped += r - first
                for v, m in zip(variants, marks):
                    del v.times[m:]
                r = first
                continue
            if share is not None:
                kept_load, kept_time = kept_load + share * wall, kept_time + wall
        return {"share": round(kept_load / kept_time, 3) if kept_time else None, "dropped": dropped}
    finally:
        if gc_was_enabled:
            gc.enable()


class _OtherLoad:
    """CPU time used by other processes since construction, as a share of all CPUs' time."""

    def __init__(self):
        self.wall, self.own, self.busy = time.perf_counter(), _own_cpu(), _busy_cpu()

    def elapsed(self) -> float:
        return time.perf_counter() - self.wall

    def share(self) -> float | None:
        busy = _busy_cpu()
        if busy is None or self.busy is None:
            return None
        wall = self.elapsed()
        ncpu = os.cpu_count() or 1
        other = (busy - self.busy) - (_own_cpu() - self.own)
        return round(min(max(other / (wall * ncpu), 0.0), 1.0), 3) if wall > 0 else None


def _own_cpu() -> float:
    return time.process_time()                            # all threads of this process, ns resolution


def _busy_cpu() -> float | None:
    """Seconds all CPUs spent busy since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def _timed(warmup: int, steps: int, step: Callable[[int], object]) -> tuple[list[float], np.ndarray]:
    """Run step(i) for i < warmup + steps; times of the last `steps` calls, logits of the first timed."""
    times, first = [], None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        last = step(i)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
        if i == warmup:
            first = np.array(last, dtype=np.float32, copy=True)
    return times, first


def _gpt_variants(model, backend, context_ids: np.ndarray, tokens: np.ndarray, config: BenchConfig,
                  context: int) -> list[_Variant]:
    import torch

    from seqserve.generation import decode_step, prefill

    with torch.inference_mode():
        _, past0 = model.step(torch.from_numpy(context_ids[None]), model.initial_state(1))
    _, state0 = prefill(backend, context_ids.tolist())
    tok_t = [torch.from_numpy(tokens[i:i + 1][None]) for i in range(len(tokens))]     # (1, 1) each
    tok_n = [tokens[i:i + 1] for i in range(len(tokens))]                             # (1,) each
    full = torch.from_numpy(np.concatenate([context_ids, tokens])[None])             # (1, C + W + N)

    def torch_cache(warmup, steps):
        past = past0

        def step(i):
            nonlocal past
            logits, past = model.step(tok_t[i], past)
            return logits[:, -1]

        with torch.inference_mode():
            return _timed(warmup, steps, step)

    def torch_nocache(warmup, steps):
        with torch.inference_mode():
            return _timed(warmup, steps, lambda i: model(full[:, :context + i + 1])[:, -1])

    def ort_cache(warmup, steps):
        state = state0

        def step(i):
            nonlocal state
            last, state = decode_step(backend, state, tok_n[i])
            return last

        return _timed(warmup, steps, step)

    return [_Variant("torch_cache", torch_cache, config.steps, config.warmup),
            _Variant("torch_nocache", torch_nocache, config.nocache_steps_for(context), min(config.warmup, 1)),
            _Variant("ort_cache", ort_cache, config.steps, config.warmup)]


def _rnn_variants(model, backend, context_ids: np.ndarray, tokens: np.ndarray, config: BenchConfig):
    import torch

    from seqserve.generation import decode_step, prefill

    with torch.inference_mode():
        _, state_t0 = model.step(torch.from_numpy(context_ids[None]), model.initial_state(1))
    _, state0 = prefill(backend, context_ids.tolist())
    tok_t = [torch.from_numpy(tokens[i:i + 1][None]) for i in range(len(tokens))]
    tok_n = [tokens[i:i + 1] for i in range(len(tokens))]

    def torch_step(warmup, steps):
        state = state_t0

        def step(i):
            nonlocal state
            logits, state = model.step(tok_t[i], state)
            return logits[:, -1]

        with torch.inference_mode():
            return _timed(warmup, steps, step)

    def ort_step(warmup, steps):
        state = state0

        def step(i):
            nonlocal state
            last, state = decode_step(backend, state, tok_n[i])
            return last

        return _timed(warmup, steps, step)

    return [_Variant("torch", torch_step, config.steps, config.warmup),
            _Variant("ort", ort_step, config.steps, config.warmup)]


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
    # behind, and a second in-process recurrent export can fail (see ENVIRONMENT.md); the timing
    # process should look like a serving process that only loads the export.
    import seqserve

    env = dict(os.environ)                               # the child imports this very seqserve
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(seqserve.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _EXPORT_CODE, str(ckpt), str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise SeqserveError(f"exporting the {family} benchmark model failed: "
                            f"{lines[-1] if lines else f'exit code {proc.returncode}'}")
    return load_export(out)


_EXPORT_CODE = "import sys; from seqserve.export import export_checkpoint; export_checkpoint(sys.argv[1], sys.argv[2])"


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
            backend = make_backend(info, "ort", options=options)
            model = load_checkpoint(info.checkpoint_path).model.eval()
            vocab = info.tokenizer.vocab_size
            facts = {"family": family, "preset": config.preset, "model": info.raw["model_config"],
                     "export": info.raw.get("export_options", {}), "step_graph": _graph_facts(info.graph_path("step"))}
            if family == "gpt":
                rows = []
                for C in config.contexts:
                    ctx = rng.integers(3, vocab, C, dtype=np.int64)
                    toks = rng.integers(3, vocab, config.warmup + config.steps, dtype=np.int64)
                    variants = _gpt_variants(model, backend, ctx, toks, config, C)
                    other = _interleave(variants, config.rounds, progress, f"gpt context {C}")
                    by = {v.name: v for v in variants}
                    rows.append({"context": C, **{v.name: _stats(v.times) for v in variants},
                                 "max_abs_logit_diff_ort_vs_torch": _diff(by["ort_cache"].first_logits,
                                                                         by["torch_cache"].first_logits),
                                 "other_processes_cpu_share": other["share"],
                                 "rounds_dropped_busy": other["dropped"]})
                results["gpt"] = {**facts, "contexts": rows}
            else:
                ctx = rng.integers(3, vocab, config.rnn_context, dtype=np.int64)
                toks = rng.integers(3, vocab, config.warmup + config.steps, dtype=np.int64)
                variants = _rnn_variants(model, backend, ctx, toks, config)
                other = _interleave(variants, config.rounds, progress, f"{family} step")
                by = {v.name: v for v in variants}
                results["recurrent"].append({**facts, "context": config.rnn_context,
                                             "torch": _stats(by["torch"].times), "ort": _stats(by["ort"].times),
                                             "max_abs_logit_diff_ort_vs_torch": _diff(by["ort"].first_logits,
                                                                                     by["torch"].first_logits),
                                             "other_processes_cpu_share": other["share"],
                                             "rounds_dropped_busy": other["dropped"]})
            del backend, model
    results["ratios"] = ratios(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["versions"] = {"onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__}
    return results


def ratios(results: dict) -> list[dict]:
    """Speed-up ratios of medians, each with its target (None: for information)."""
    out = []

    def add(name, value, target=None, op=">="):
        ok = None if target is None else (value >= target if op == ">=" else value <= target)
        out.append({"name": name, "value": value, "target": None if target is None else f"{op} {target:g}",
                    "pass": ok})

    gpt = results.get("gpt")
    if gpt:
        rows = gpt["contexts"]
        for r in rows:
            ort_ms = r["ort_cache"]["median_ms"]
            add(f"gpt@{r['context']} torch cache / ORT", r["torch_cache"]["median_ms"] / ort_ms, TARGET_GPT_SPEEDUP)
        for r in rows:
            add(f"gpt@{r['context']} torch no-cache / ORT", r["torch_nocache"]["median_ms"] / r["ort_cache"]["median_ms"])
        if len(rows) > 1:
            lo, hi = min(rows, key=lambda r: r["context"]), max(rows, key=lambda r: r["context"])
            add(f"gpt ORT@{hi['context']} / ORT@{lo['context']}",
                hi["ort_cache"]["median_ms"] / lo["ort_cache"]["median_ms"], TARGET_CONTEXT_GROWTH, "<=")
            add(f"gpt torch cache@{hi['context']} / @{lo['context']}",
                hi["torch_cache"]["median_ms"] / lo["torch_cache"]["median_ms"])
    for r in results.get("recurrent", []):
        target = TARGET_LSTM_SPEEDUP if r["family"] == "lstm" else None
        add(f"{r['family']} torch / ORT", r["torch"]["median_ms"] / r["ort"]["median_ms"], target)
    return out


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


# --- output ---------------------------------------------------------------------------------------

def _num(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _ms(s: dict | None) -> str:
    return "-" if not s else f"{_num(s['median_ms'])} / {_num(s['p90_ms'])}"


def _load(row: dict) -> str:
    share, dropped = row["other_processes_cpu_share"], row.get("rounds_dropped_busy", 0)
    text = "?" if share is None else (f"[yellow]{share:.0%}[/]" if share > NOISY_SHARE else f"{share:.0%}")
    return text + (f" ({dropped} dropped)" if dropped else "")


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("[bold green]PASS[/]" if ok else "[bold red]MISS[/]")


def render(results: dict, console=None) -> None:
    """Print the results as rich tables: latencies (median / p90 ms per token), then the ratios."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = results["threads"]
    cfg = results["config"]
    console.print(f"[bold]Decode latency per token, batch 1[/] - {results['machine']['cpu']}, "
                  f"ORT intra-op threads {t['ort_intra_op']} (inter-op {t['ort_inter_op']}), "
                  f"torch threads {t['torch_intra_op']}; {cfg['rounds']} interleaved rounds x "
                  f"{cfg['steps']} steps after {cfg['warmup']} warmup; cells are median / p90 ms per token",
                  highlight=False)
    gpt = results.get("gpt")
    if gpt:
        m, g = gpt["model"], gpt["step_graph"]
        tab = Table(title=f"GPT {gpt['preset']} (d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, "
                          f"vocab {m['vocab_size']}); ORT step graph opset {g['opset']}, {g['nodes']} nodes, "
                          f"{g['attention_ops']} Attention"
                          + (f", {g['graph_optimizations']}" if g["graph_optimizations"] else ""),
                    title_justify="left")
        for col in ("context", "torch cache", "torch no-cache", "ORT cache", "torch cache\n/ ORT",
                    "no-cache\n/ ORT", "max |dlogit|\nORT-torch", "other\nCPU load"):
            tab.add_column(col, justify="right")
        for r in gpt["contexts"]:
            o = r["ort_cache"]["median_ms"]
            sp = r["torch_cache"]["median_ms"] / o
            tab.add_row(str(r["context"]), _ms(r["torch_cache"]), _ms(r["torch_nocache"]),
                        _ms(r["ort_cache"]), f"{sp:.2f}x {_mark(sp >= TARGET_GPT_SPEEDUP)}",
                        f"{r['torch_nocache']['median_ms'] / o:.1f}x", f"{r['max_abs_logit_diff_ort_vs_torch']:.1e}",
                        _load(r))
        console.print(tab)
    if results.get("recurrent"):
        tab = Table(title="Recurrent step (after a short prefill)", title_justify="left")
        for col in ("family", "model", "torch step", "ORT step", "torch / ORT", "max |dlogit|\nORT-torch",
                    "other\nCPU load"):
            tab.add_column(col, justify="right")
        for r in results["recurrent"]:
            m = r["model"]
            sp = r["torch"]["median_ms"] / r["ort"]["median_ms"]
            mark = _mark(sp >= TARGET_LSTM_SPEEDUP) if r["family"] == "lstm" else ""
            tab.add_row(r["family"], f"{m['num_layers']}x{m['hidden_size']}, embed {m['embed_dim']}",
                        _ms(r["torch"]), _ms(r["ort"]), f"{sp:.2f}x {mark}",
                        f"{r['max_abs_logit_diff_ort_vs_torch']:.1e}", _load(r))
        console.print(tab)
    tab = Table(title="Ratios of medians", title_justify="left")
    for col in ("ratio", "value", "target", ""):
        tab.add_column(col, justify="right" if col != "ratio" else "left")
    for r in results["ratios"]:
        tab.add_row(r["name"], f"{r['value']:.2f}", r["target"] or "-", _mark(r["pass"]))
    console.print(tab)
    loads = [r["other_processes_cpu_share"] for r in (gpt["contexts"] if gpt else []) + results.get("recurrent", [])]
    if any(x is not None and x > NOISY_SHARE for x in loads):
        console.print(f"[bold yellow]warning:[/] other processes used up to {max(x for x in loads if x is not None):.0%} "
                      "of the CPUs during the measurement; torch's OpenMP threads then wait for time slices and "
                      "ratios are not trustworthy - rerun on a quiet machine", highlight=False)
    console.print(f"[dim]{results['elapsed_s']} s; onnxruntime {results['versions']['onnxruntime']}, "
                  f"torch {results['versions']['torch']}[/]", highlight=False)


def write_json(results: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    except OSError as e:
        raise SeqserveError(f"cannot write {path}: {e.strerror}") from None


__all__ = ["ALL_FAMILIES", "BenchConfig", "DEFAULT_CONTEXTS", "check_config", "parse_list", "ratios",
           "render", "run_benchmark", "write_json"]
