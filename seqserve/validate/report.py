"""The validation report on a terminal: one rich table per check, then a one-line verdict."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from seqserve.validate.results import CHECKS, ValidationReport


def render_report(report: ValidationReport, console) -> None:
    names = [*CHECKS, *sorted({r.check for r in report.checks} - set(CHECKS))]
    for name in names:
        rows = report.rows(name)
        if not rows:
            continue
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
        console.print(table)
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


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.2e}"
