"""What every command shares: the consoles, clean error messages, progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mtc.errors import MtcError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn an MtcError (a mistake the user can fix) into a one-line message and exit code 2."""
    try:
        yield
    except MtcError as err:
        err_console.print(f"[bold red]error:[/] {err}", soft_wrap=True)
        raise typer.Exit(2) from None


def progress_bar() -> Progress:
    """A rich progress bar with counts and elapsed time (quiet when output is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
