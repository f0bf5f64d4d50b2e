"""What every command shares: consoles, one-line errors, progress bars."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.markup import escape

# emoji=False: a path or a FILE.py:NAME:... reference must print as typed, never as an emoji code
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def handle_errors(fn):
    """Turn user-fixable failures into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from seqserve.errors import SeqserveError

        try:
            return fn(*args, **kwargs)
        except SeqserveError as e:
            fail(str(e))
        except OSError as e:   # a path we cannot read or write: say which and why
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def fail(message: str):
    # Paths and prompts may contain "[...]": print them as text, never as rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def progress_bar(*extra_columns):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra_columns, TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=not sys.stdout.isatty())
