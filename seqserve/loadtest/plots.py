"""PNG plots (matplotlib, Agg: no display needed) and report.html, which shows them with the tables.

    load.png                    latency percentiles and throughput against the load level
    latency_distribution.png    per level, the latency histogram (log axis)
    latency_over_time.png       per level, each request's latency at its scheduled time: queueing
                                that builds up in an open loop shows as a rising cloud
    ttft_distribution.png       generate: time to first token, per level
    itl_distribution.png        generate: inter-token latency, per level
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(n - 1, 1) * 0.85) for i in range(n)]


def _label(results: dict, level) -> str:
    v = int(level) if float(level) == int(level) else level
    return f"{v} concurrent" if results["config"]["mode"] == "concurrency" else f"{v} req/s"


def plot_load(results: dict, path: Path) -> None:
    plt = _plt()
    levels = [lv for lv in results["levels"] if lv["ok"]]
    x = [lv["level"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for q, style in (("p50", "o-"), ("p90", "s--"), ("p95", "^--"), ("p99", "v-")):
        a.plot(x, [lv["latency_ms"][q] for lv in levels], style, label=q)
    a.set_ylabel("latency (ms)")
    b.plot(x, [lv["throughput_rps"] for lv in levels], "o-", label="throughput")
    if results["config"]["mode"] == "request_rate" and x:
        b.plot(x, x, ":", color="gray", label="offered rate")
    b.set_ylabel("requests / s")
    xlabel = "concurrency" if results["config"]["mode"] == "concurrency" else "request rate (req/s)"
    for ax in (a, b):
        ax.set_xlabel(xlabel)
        if len(x) > 1 and max(x) / max(min(x), 1e-9) >= 8:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    a.set_title("latency percentiles")
    b.set_title("throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_histograms(results: dict, key: tuple[str, ...], title: str, path: Path) -> bool:
    """Step histograms of one histogram field per level (e.g. ("latency_histogram_ms",))."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = False
    levels = results["levels"]
    for color, lv in zip(_colors(len(levels)), levels):
        h = lv
        for k in key:
            h = (h or {}).get(k)
        if not h or not h.get("counts"):
            continue
        edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], dtype=float)
        share = counts / counts.sum()
        ax.stairs(share, edges, color=color, label=_label(results, lv["level"]))
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("share of requests" if key[0].startswith("latency") else "share")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_over_time(results: dict, path: Path) -> bool:
    samples = results.get("_samples") or {}
    if not samples:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    levels = results["levels"]
    drawn = False
    for color, (i, lv) in zip(_colors(len(levels)), enumerate(levels)):
        s = samples.get(i)
        if s is None or not len(s["t_s"]):
            continue
        ok = s["ok"]
        ax.scatter(s["t_s"][ok], s["latency_ms"][ok], s=2, color=color, alpha=0.5, label=_label(results, lv["level"]))
        if (~ok).any():
            ax.scatter(s["t_s"][~ok], s["latency_ms"][~ok], s=8, marker="x", color="red")
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_yscale("log")
    ax.set_xlabel("time in the window (s, scheduled send)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency over time (x: errors)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(results: dict, folder: Path) -> list[Path]:
    out = []
    p = folder / "load.png"
    plot_load(results, p)
    out.append(p)
    for name, key, title in (
            ("latency_distribution.png", ("latency_histogram_ms",), "request latency distribution"),
            ("ttft_distribution.png", ("streaming", "ttft_histogram_ms"), "time to first token"),
            ("itl_distribution.png", ("streaming", "itl_histogram_ms"),
             "inter-token latency (gaps of 0 - tokens that arrived in one read - at the left edge)")):
        if plot_histograms(results, key, title, folder / name):
            out.append(folder / name)
    if plot_over_time(results, folder / "latency_over_time.png"):
        out.append(folder / "latency_over_time.png")
    return out


def write_html(results: dict, folder: Path) -> list[Path]:
    """The PNGs and report.html beside them; the paths written."""
    from seqserve.loadtest.report import csv_rows, footer, level_label, notes

    pngs = write_plots(results, folder)
    cfg, model = results["config"], results["model"]
    esc = html.escape
    rows = csv_rows(results)
    cols = [level_label(results), "Inferences/Second", "p50 latency", "p90 latency", "p95 latency",
            "p99 latency", "Max latency", "Avg latency", "Server Queue", "Server Compute Infer", "Requests", "Errors"]
    if cfg["workload"] == "generate":
        cols += ["Time To First Token p50", "Time To First Token p99", "Inter Token Latency p50",
                 "Inter Token Latency p99", "Output Tokens/Second"]
    head = "".join(f"<th>{esc(c)}</th>" for c in cols) + "<th>notes</th>"
    body = "".join("<tr>" + "".join(f"<td>{'' if r[c] is None else esc(str(r[c]))}</td>" for c in cols)
                   + f"<td class=l>{esc(notes(lv, results))}</td></tr>" for r, lv in zip(rows, results["levels"]))
    mode = "closed loop (fixed concurrency)" if cfg["mode"] == "concurrency" else "open loop (Poisson arrivals)"
    window = f"{cfg['duration_s']:g} s" if cfg["duration_s"] else f"{cfg['requests']} requests"
    facts = [("server", f"{cfg['target']['url']} ({model['server']})"), ("model", model["name"]),
             ("workload", cfg["workload"] + (f", {cfg['sequence_length']} steps per sequence"
                                             if cfg["workload"] == "sequence" else "")),
             ("load", f"{mode}; levels {', '.join(str(v) for v in cfg['levels'])}"),
             ("window", f"{cfg['warmup_s']:g} s warm-up, then {window} per level"),
             ("started", f"{results['started']} ({results['seconds']:g} s)"),
             ("server metrics", str(results.get("server_metrics") or "off"))]
    if results.get("interrupted"):
        facts.append(("interrupted", "yes: the report covers what was measured before Ctrl-C"))
    extra = "".join(f"<li>{esc(line)}</li>" for line in footer(results))
    imgs = "".join(f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{p.stem.replace("_", " ")}'
                   f"</figcaption></figure>" for p in pngs)
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>seqserve loadtest: {esc(model['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td.l, .facts td {{ text-align: left; }} th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>seqserve loadtest: {esc(model['name'])}</h1>
<table class="facts">{''.join(f'<tr><td><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>' for k, v in facts)}</table>
<h2>Results (latencies in microseconds, perf_analyzer's columns)</h2>
<table><tr>{head}</tr>{body}</table>
<ul>{extra}</ul>
{imgs}
<p><small>results.json and results.csv beside this file hold every number; written
{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</small></p>
</body></html>
"""
    path = folder / "report.html"
    path.write_text(text)
    return [*pngs, path]
