"""`seqserve loadtest compare A B`: the differences between two reports, level by level.

Levels are matched by value (concurrency 4 with concurrency 4); a level only one report has is
listed as such. A metric regresses when B is worse than A by more than the threshold (relative):
throughput or output tokens/s lower; p50/p99, TTFT or inter-token latency higher; or errors
where A had none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seqserve.errors import SeqserveError

# (label, getter, higher is better)
METRICS = (
    ("throughput (req/s)", lambda lv: lv["throughput_rps"], True),
    ("p50 (ms)", lambda lv: lv["latency_ms"]["p50"], False),
    ("p99 (ms)", lambda lv: lv["latency_ms"]["p99"], False),
    ("TTFT p50 (ms)", lambda lv: ((lv.get("streaming") or {}).get("ttft_ms") or {}).get("p50"), False),
    ("ITL p50 (ms)", lambda lv: ((lv.get("streaming") or {}).get("itl_ms") or {}).get("p50"), False),
    ("tokens/s", lambda lv: (lv.get("streaming") or {}).get("output_tokens_per_s"), True),
)


@dataclass
class Row:
    level: float
    metric: str
    a: float | None
    b: float | None
    change: float | None          # (b - a) / a
    regression: bool


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    only_a: list[float] = field(default_factory=list)
    only_b: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]


def compare(a: dict, b: dict, threshold: float = 0.10) -> Comparison:
    if a["config"]["mode"] != b["config"]["mode"]:
        raise SeqserveError(f"the reports measured different things: {a['config']['mode']} vs {b['config']['mode']} "
                            "(compare a closed-loop report with a closed-loop one, an open-loop with an open-loop)")
    out = Comparison()
    for key in ("workload", "model"):
        va = a["config"].get(key) if key != "model" else a["model"]["name"]
        vb = b["config"].get(key) if key != "model" else b["model"]["name"]
        if va != vb:
            out.notes.append(f"{key} differs: {va} vs {vb}")
    la = {float(lv["level"]): lv for lv in a["levels"]}
    lb = {float(lv["level"]): lv for lv in b["levels"]}
    out.only_a = sorted(set(la) - set(lb))
    out.only_b = sorted(set(lb) - set(la))
    for level in sorted(set(la) & set(lb)):
        x, y = la[level], lb[level]
        for label, get, higher_better in METRICS:
            va, vb = get(x), get(y)
            if va is None and vb is None:
                continue
            change = (vb - va) / va if va and vb is not None else None
            worse = change is not None and (-change if higher_better else change) > threshold
            out.rows.append(Row(level, label, va, vb, change, worse))
        ea, eb = x["errors"], y["errors"]
        if ea or eb:
            out.rows.append(Row(level, "errors", ea, eb, (eb - ea) / ea if ea else None,
                                eb > ea * (1 + threshold) if ea else eb > 0))
    return out


def comparison_table(c: Comparison, name_a: str, name_b: str, threshold: float, label: str):
    from rich.table import Table

    t = Table(title=f"{name_a} (A) -> {name_b} (B); a regression is B worse than A by more than {threshold:.0%}",
              title_justify="left")
    for col in (label, "metric", "A", "B", "change", ""):
        t.add_column(col, justify="right" if col not in ("metric", "") else "left")
    last = None
    for r in c.rows:
        lvl = "" if r.level == last else (str(int(r.level)) if r.level == int(r.level) else f"{r.level:g}")
        last = r.level
        change = "-" if r.change is None else f"{r.change:+.1%}"
        t.add_row(lvl, r.metric, _fmt(r.a), _fmt(r.b), change, "[red]REGRESSION[/]" if r.regression else "")
    return t


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
