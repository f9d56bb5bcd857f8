"""Progress bars for long work (training, replay of many jobs, benchmarks), on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Report = Callable[[str, int, int], None]
LINE_INTERVAL_SECONDS = 10.0
"""Without a terminal (a log file, a pipe), one line per task this often, and when it is done."""


@contextmanager
def progress_bars() -> Iterator[Report]:
    """Yields ``report(description, done, total)``; one bar per description."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as bars:
        tasks: dict[str, TaskID] = {}
        printed: dict[str, float] = {}

        def report(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bars.add_task(description, total=total)
            bars.update(tasks[description], completed=done, total=total)
            if console.is_terminal:
                return
            now = time.monotonic()
            if done == total or now - printed.get(description, 0.0) >= LINE_INTERVAL_SECONDS:
                printed[description] = now
                console.print(f"{description}: {done}/{total}{' done' if done == total else ''}")

        yield report
