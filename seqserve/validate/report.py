"""The validation report on a terminal: a summary table, the rows that failed, a one-line verdict."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from seqserve.validate.results import CHECKS, ValidationReport


def render_report(report: ValidationReport, console, verbose: bool = False) -> None:
    """A table per check (only the checks that failed unless verbose), then a summary table with
    one row per check, then the verdict."""
    names = [*CHECKS, *sorted({r.check for r in report.checks} - set(CHECKS))]
    for name in names:
        rows = report.rows(name)
        if rows and (verbose or not all(r.passed for r in rows)):
            console.print(_check_table(name, rows))
    console.print(_summary_table(report, names))
    failed = [r for r in report.checks if not r.passed]
    where = f"{escape(report.export)} ({escape(report.family)})"
    if report.passed:
        console.print(f"[bold green]PASSED[/] {where}: "
                      f"all {len(report.checks)} rows of {len(report.summary())} checks passed")
    elif not report.checks:
        console.print(f"[bold red]FAILED[/] {where}: no check ran")
    else:
        which = sorted({r.check for r in failed}, key=lambda n: names.index(n))
        console.print(f"[bold red]FAILED[/] {where}: {len(failed)} of "
                      f"{len(report.checks)} rows failed in {', '.join(which)}")


def _summary_table(report: ValidationReport, names: list[str]) -> Table:
    table = Table(title=f"validation of {escape(report.export)} ({escape(report.family)})", title_justify="left")
    for col, kw in (("check", {"no_wrap": True}), ("passed", {"justify": "right"}),
                    ("max abs", {"justify": "right"}), ("max rel", {"justify": "right"}), ("tolerance", {}),
                    ("result", {"justify": "center"})):
        table.add_column(col, **kw)
    for name in names:
        rows = report.rows(name)
        if not rows:
            continue
        abs_ = [r.max_abs for r in rows if r.max_abs is not None]
        rel = [r.max_rel for r in rows if r.max_rel is not None]
        tol = next((f"atol={r.atol:g} rtol={r.rtol:g}" for r in rows if r.atol is not None), "identical tokens"
                   if name == "greedy_generation" else "")
        ok = all(r.passed for r in rows)
        table.add_row(name, f"{sum(r.passed for r in rows)}/{len(rows)}", _num(max(abs_, default=None)),
                      _num(max(rel, default=None)), tol, "[green]✓[/]" if ok else "[red]✗[/]")
    return table


def _check_table(name: str, rows) -> Table:
    table = Table(title=f"{name} ({sum(r.passed for r in rows)}/{len(rows)} passed)", title_justify="left")
    for col, kw in (("graph", {}), ("case", {}), ("max abs", {"justify": "right"}),
                    ("max rel", {"justify": "right"}), ("tolerance", {}), ("result", {"justify": "center"}),
                    ("detail", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for r in rows:
        tol = f"atol={r.atol:g} rtol={r.rtol:g}" if r.atol is not None else ""
        # Details quote ORT errors and prompts ("[ONNXRuntimeError]"): never let them parse as markup.
        detail = escape(r.detail) if not r.passed else f"[dim]{escape(r.detail)}[/]"
        table.add_row(escape(r.graph), escape(r.case), _num(r.max_abs), _num(r.max_rel), tol,
                      "[green]✓[/]" if r.passed else "[red]✗[/]", detail)
    return table


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.2e}"
