"""Benchmark output: ratios against the issue's targets, rich tables, JSON."""

from __future__ import annotations

import json
from pathlib import Path

from seqserve.bench.timing import NOISY_SHARE
from seqserve.errors import SeqserveError

# The targets on a 2-core CPU.
TARGET_GPT_SPEEDUP = 2.0      # torch eager with cache / ORT with cache, per token, at every context
TARGET_LSTM_SPEEDUP = 5.0     # torch eager LSTM step / ORT LSTM step
TARGET_CONTEXT_GROWTH = 2.0   # ORT per-token latency at the longest context / at the shortest
TARGET_INT8_SPEEDUP = 6.0     # torch eager fp32 with cache / ORT int8, per token, at these contexts
TARGET_INT8_CONTEXTS = (64, 256)


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
        for r in rows:
            if "ort_int8" in r:
                add(f"gpt@{r['context']} torch cache / ORT int8",
                    r["torch_cache"]["median_ms"] / r["ort_int8"]["median_ms"], TARGET_INT8_SPEEDUP if r["context"] in TARGET_INT8_CONTEXTS else None)
        if len(rows) > 1:
            lo, hi = min(rows, key=lambda r: r["context"]), max(rows, key=lambda r: r["context"])
            add(f"gpt ORT@{hi['context']} / ORT@{lo['context']}",
                hi["ort_cache"]["median_ms"] / lo["ort_cache"]["median_ms"], TARGET_CONTEXT_GROWTH, "<=")
            add(f"gpt torch cache@{hi['context']} / @{lo['context']}",
                hi["torch_cache"]["median_ms"] / lo["torch_cache"]["median_ms"])
    for r in results.get("recurrent", []):
        target = TARGET_LSTM_SPEEDUP if r["family"] == "lstm" else None
        add(f"{r['family']} torch / ORT", r["torch"]["median_ms"] / r["ort"]["median_ms"], target)
        if "ort_int8" in r:
            add(f"{r['family']} torch / ORT int8", r["torch"]["median_ms"] / r["ort_int8"]["median_ms"])
    return out


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
    from rich.table import Table

    from seqserve.bench.output import console as wide_console

    console = console or wide_console()
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
        q = "ort_int8" in gpt["contexts"][0]
        for col in ("context", "torch cache", "torch no-cache", "ORT cache", *(("ORT int8",) if q else ()),
                    "torch cache\n/ ORT", *(("torch cache\n/ ORT int8",) if q else ()),
                    "no-cache\n/ ORT", "max |dlogit|\nORT-torch", *(("max |dlogit|\nint8-torch",) if q else ()),
                    "other\nCPU load"):
            tab.add_column(col, justify="right")
        for r in gpt["contexts"]:
            o = r["ort_cache"]["median_ms"]
            sp = r["torch_cache"]["median_ms"] / o
            if q:
                sq = r["torch_cache"]["median_ms"] / r["ort_int8"]["median_ms"]
                mark = _mark(sq >= TARGET_INT8_SPEEDUP) if r["context"] in TARGET_INT8_CONTEXTS else ""
            tab.add_row(str(r["context"]), _ms(r["torch_cache"]), _ms(r["torch_nocache"]),
                        _ms(r["ort_cache"]), *((_ms(r["ort_int8"]),) if q else ()),
                        f"{sp:.2f}x {_mark(sp >= TARGET_GPT_SPEEDUP)}", *((f"{sq:.2f}x {mark}",) if q else ()),
                        f"{r['torch_nocache']['median_ms'] / o:.1f}x", f"{r['max_abs_logit_diff_ort_vs_torch']:.1e}",
                        *((f"{r['max_abs_logit_diff_int8_vs_torch']:.1e}",) if q else ()), _load(r))
        console.print(tab)
    if results.get("recurrent"):
        tab = Table(title="Recurrent step (after a short prefill)", title_justify="left")
        q = "ort_int8" in results["recurrent"][0]
        for col in ("family", "model", "torch step", "ORT step", *(("ORT int8 step",) if q else ()), "torch / ORT",
                    *(("torch / int8",) if q else ()), "max |dlogit|\nORT-torch",
                    *(("max |dlogit|\nint8-torch",) if q else ()), "other\nCPU load"):
            tab.add_column(col, justify="right")
        for r in results["recurrent"]:
            m = r["model"]
            sp = r["torch"]["median_ms"] / r["ort"]["median_ms"]
            mark = _mark(sp >= TARGET_LSTM_SPEEDUP) if r["family"] == "lstm" else ""
            tab.add_row(r["family"], f"{m['num_layers']}x{m['hidden_size']}, embed {m['embed_dim']}",
                        _ms(r["torch"]), _ms(r["ort"]), *((_ms(r["ort_int8"]),) if q else ()), f"{sp:.2f}x {mark}",
                        *((f"{r['torch']['median_ms'] / r['ort_int8']['median_ms']:.2f}x",) if q else ()),
                        f"{r['max_abs_logit_diff_ort_vs_torch']:.1e}",
                        *((f"{r['max_abs_logit_diff_int8_vs_torch']:.1e}",) if q else ()), _load(r))
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


def plot(results: dict, path: str | Path) -> Path:
    """PNG of GPT per-token latency (median ms) against the context, one line per variant."""
    from seqserve.bench.output import plot_lines

    cs = (results.get("gpt") or {}).get("contexts") or []
    if not cs:
        raise SeqserveError("--plot needs the gpt family (per-token latency vs context)")
    names = {"torch_cache": "torch eager, cache", "torch_nocache": "torch eager, no cache",
             "ort_cache": "ORT fp32", "ort_int8": "ORT int8"}
    series = {label: ([r["context"] for r in cs], [r[k]["median_ms"] for r in cs])
              for k, label in names.items() if k in cs[0]}
    return plot_lines(path, series, xlabel="context (tokens)", ylabel="ms per token (median)", log_x=True,
                      title=f"GPT decode, batch 1, {results['threads']} thread(s): per-token latency vs context")


def write_json(results: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    except OSError as e:
        raise SeqserveError(f"cannot write {path}: {e.strerror}") from None
