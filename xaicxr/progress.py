"""Progress bars and messages on stderr, so stdout stays clean for ``--json``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .interrupts import raise_if_interrupted

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows count, rate and time left while the block runs. Each advance
    is a safe point for a held Ctrl-C or SIGTERM (:mod:`xaicxr.interrupts`)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            raise_if_interrupted()
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:.1f} {unit}/s")

        yield advance
