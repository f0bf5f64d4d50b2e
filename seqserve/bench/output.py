"""What every benchmark's output shares (benchmarks/*.py and `seqserve bench`).

    console()       the results console: the terminal's width on a terminal; redirected to a file
                    or a pipe, at least REDIRECTED_WIDTH columns, so no table is cut at 80
    progress()      a progress message function: dim lines on stderr when stderr is a terminal,
                    nothing otherwise (no progress spam in logs)
    plot_lines()    one PNG of y against x per series (matplotlib, Agg: no display needed)
"""

from __future__ import annotations

import sys
from pathlib import Path

REDIRECTED_WIDTH = 200


def console(width: int | None = None, stderr: bool = False):
    """A rich console for the result tables (see the module docstring); `width` raises the
    redirected width for a wider table."""
    from rich.console import Console

    c = Console(emoji=False, stderr=stderr)
    if c.is_terminal:
        return c
    return Console(emoji=False, stderr=stderr, width=max(width or 0, REDIRECTED_WIDTH, c.width))


def progress():
    """`report(message)`: a dim line on stderr when it is a terminal; silent when redirected."""
    err = console(stderr=True)
    if not err.is_terminal:
        return lambda message, *_: None
    return lambda message, *_: err.print(f"[dim]{message}[/]", highlight=False)


def plot_lines(path: str | Path, series: dict, *, xlabel: str, ylabel: str, title: str,
               log_x: bool = False, ylim0: bool = True) -> Path:
    """series: label -> (xs, ys); points whose y is None are left out. Writes a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, (xs, ys) in series.items():
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    if log_x:
        ax.set_xscale("log", base=2)
    xs_all = sorted({x for xs, _ in series.values() for x in xs})
    if xs_all:
        ax.set_xticks(xs_all)
        ax.set_xticklabels([str(x) for x in xs_all])
        ax.minorticks_off()
    if ylim0:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def script_name() -> str:
    """The running script's file name, for usage lines (`python benchmarks/x.py --help`)."""
    return Path(sys.argv[0]).name or "benchmark"
