"""The results in three forms besides the HTML report (plots.py): results.json, a CSV with
perf_analyzer's column names, and a rich table for the terminal.

The CSV has perf_analyzer 2.51's `-f --verbose-csv` columns first, in its order and units
(microseconds), so scripts written for perf_analyzer read it unchanged; seqserve's own columns
(errors, max latency, send lag, streaming numbers) follow them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from seqserve.errors import SeqserveError

PA_COLUMNS = ("Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
              "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
              "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency",
              "request/response", "response wait")
EXTRA_COLUMNS = ("Max latency", "Requests", "Errors", "Late Sends", "Waited For Connection",
                 "Time To First Token p50", "Time To First Token p99", "Inter Token Latency p50",
                 "Inter Token Latency p99", "Output Tokens/Second")


def level_label(results: dict) -> str:
    return "Concurrency" if results["config"]["mode"] == "concurrency" else "Request Rate"


def _us(ms) -> int | None:
    return None if ms is None else int(round(ms * 1000))


def csv_rows(results: dict) -> list[dict]:
    rows = []
    for lv in results["levels"]:
        lat, srv, st = lv["latency_ms"], lv["server"] or {}, lv["streaming"] or {}
        send = _us(lv["send_lag_ms"]["mean"]) or 0
        avg = _us(lat["mean"])
        server = [srv.get(k) for k in ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us")]
        server_total = sum(v for v in server if v is not None)
        row = {level_label(results): lv["level"], "Inferences/Second": round(lv["throughput_rps"], 3),
               "Client Send": send,
               "Network+Server Send/Recv": None if avg is None else max(avg - send - int(round(server_total)), 0),
               "Server Queue": _round(server[0]), "Server Compute Input": _round(server[1]),
               "Server Compute Infer": _round(server[2]), "Server Compute Output": _round(server[3]),
               "Client Recv": 0,
               **{f"p{q} latency": _us(lat[f"p{q}"]) for q in (50, 90, 95, 99)},
               "Avg latency": avg, "request/response": send,
               "response wait": None if avg is None else avg - send,
               "Max latency": _us(lat["max"]), "Requests": lv["requests"], "Errors": lv["errors"],
               "Late Sends": lv["late_sends"], "Waited For Connection": lv.get("waited_for_connection", 0),
               "Time To First Token p50": _us((st.get("ttft_ms") or {}).get("p50")),
               "Time To First Token p99": _us((st.get("ttft_ms") or {}).get("p99")),
               "Inter Token Latency p50": _us((st.get("itl_ms") or {}).get("p50")),
               "Inter Token Latency p99": _us((st.get("itl_ms") or {}).get("p99")),
               "Output Tokens/Second": round(st["output_tokens_per_s"], 3) if st else None}
        rows.append(row)
    return rows


def _round(v):
    return None if v is None else int(round(v))


def csv_text(results: dict) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=[level_label(results), *PA_COLUMNS, *EXTRA_COLUMNS], lineterminator="\n")
    w.writeheader()
    for r in csv_rows(results):
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return out.getvalue()


def public(results: dict) -> dict:
    """The results without in-memory extras (raw samples)."""
    return {k: v for k, v in results.items() if not k.startswith("_")}


def write_reports(results: dict, folder: Path) -> list[Path]:
    """results.json, results.csv, report.html + PNG plots into `folder` (created); the paths written."""
    from seqserve.loadtest.plots import write_html

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "results.json", folder / "results.csv"]
        paths[0].write_text(json.dumps(public(results), indent=2) + "\n")
        paths[1].write_text(csv_text(results))
        paths += write_html(results, folder)
    except OSError as e:
        raise SeqserveError(f"cannot write the report into {folder}: {e.strerror or e}") from None
    return paths


def load_results(path: str | Path) -> dict:
    """results.json, or a report folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise SeqserveError(f"cannot read {p}: {e.strerror or e}") from None
    except ValueError as e:
        raise SeqserveError(f"{p} is not JSON: {e}") from None
    if not isinstance(data, dict) or "levels" not in data or "config" not in data:
        raise SeqserveError(f"{p} is not a `seqserve loadtest` results.json")
    return data


# ---- terminal ---------------------------------------------------------------------------------

def _ms(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits - 1 if v >= 10 else digits}f}"


def tables(results: dict) -> list:
    """Rich tables, one row per level: latency and throughput, then (generate) the streaming numbers.
    Notes go below them (`footer`)."""
    from rich import box
    from rich.table import Table

    cfg = results["config"]
    closed = cfg["mode"] == "concurrency"
    first = "conc" if closed else "rate/s"
    kw = dict(title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    t = Table(title=f"{cfg['workload']} on {results['model']['name']} ({cfg['target']['url']}), "
                    f"{'closed loop' if closed else 'open loop, Poisson arrivals'}; ms", **kw)
    for c in (first, "req/s", "ok", "err", "p50", "p90", "p95", "p99", "max", "srv\nqueue", "srv\ncomp"):
        t.add_column(c, justify="right", no_wrap=True)
    for lv in results["levels"]:
        lat, srv = lv["latency_ms"], lv["server"]
        rps = lv["throughput_rps"]
        row = [_level(lv["level"]) + ("*" if lv["interrupted"] else ""), f"{rps:.0f}" if rps >= 100 else f"{rps:.1f}",
               str(lv["ok"]), str(lv["errors"]) if not lv["errors"] else f"[red]{lv['errors']}[/]",
               *(_ms(lat[k]) for k in ("p50", "p90", "p95", "p99", "max"))]
        if srv and srv.get("queue_us") is not None:
            compute = sum(srv[k] or 0 for k in ("compute_input_us", "compute_infer_us", "compute_output_us"))
            row += [_ms(srv["queue_us"] / 1000), _ms(compute / 1000)]
        else:
            row += ["-", "-"]
        t.add_row(*row)
    out = [t]
    if cfg["workload"] == "generate":
        s = Table(title="streaming: time to first token, inter-token latency (ms), output tokens", **kw)
        for c in (first, "TTFT\np50", "TTFT\np90", "TTFT\np99", "ITL\np50", "ITL\np90", "ITL\np99", "tokens\n/s",
                  "tokens\n/req"):
            s.add_column(c, justify="right", no_wrap=True)
        for lv in results["levels"]:
            st = lv["streaming"]
            s.add_row(_level(lv["level"]), *(_ms(st["ttft_ms"][k]) for k in ("p50", "p90", "p99")),
                      *(_ms(st["itl_ms"][k]) for k in ("p50", "p90", "p99")), f"{st['output_tokens_per_s']:.0f}",
                      _ms(st["tokens_per_request"]["mean"]))
        out.append(s)
    return out


def _level(v) -> str:
    return str(int(v)) if float(v) == int(v) else f"{v:g}"


def notes(lv: dict, results: dict) -> str:
    out = []
    if lv["interrupted"]:
        out.append("interrupted (*): the window ends at Ctrl-C")
    if lv["errors"]:
        out.append("; ".join(f"{k} x{v['count']}" for k, v in lv["error_kinds"].items()))
    if lv["client_behind"]:
        out.append(f"client behind schedule: {lv['late_share']:.1%} sent >1 ms late")
    if lv.get("waited_for_connection", 0) > 0.01 * max(lv["requests"], 1):
        out.append(f"{lv['waited_for_connection']} waited for a connection "
                   f"(p99 {_ms(lv['connection_wait_ms']['p99'])} ms)")
    if lv["errors_outside_window"]:
        out.append(f"{lv['errors_outside_window']} errors in warm-up/drain")
    if lv.get("sequences"):
        out.append(f"{lv['sequences']['completed']} sequences")
    return "; ".join(out)


def footer(results: dict) -> list[str]:
    """Lines to print under the table: each level's notes, the servers' notes, error examples."""
    lines = []
    for lv in results["levels"]:
        n = notes(lv, results)
        if n:
            lines.append(f"{_level(lv['level'])}: {n}")
    notes_ = {lv.get("server_note") for lv in results["levels"] if lv.get("server_note")}
    for n in sorted(notes_):
        lines.append(f"server breakdown unavailable: {n}")
    for lv in results["levels"]:
        for kind, e in lv["error_kinds"].items():
            if e["example"]:
                lines.append(f"{_level(lv['level'])}: {kind}, e.g.: {e['example']}")
    return lines
