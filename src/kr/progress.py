"""Rich progress bars with rates and ETA, shared by every long loop."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# pipeline logs are not terminals: give bars room instead of the 80-column default
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class RateColumn(ProgressColumn):
    """Items per second in the bar's own unit (images/s, steps/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class Bar:
    def __init__(self, progress: Progress, task_id: int) -> None:
        self._progress, self._task = progress, task_id

    def advance(self, n: float = 1) -> None:
        self._progress.update(self._task, advance=n)

    def note(self, text: str) -> None:
        self._progress.update(self._task, status=text)


@contextlib.contextmanager
def bar(description: str, total: float, unit: str = "it", completed: float = 0) -> Iterator[Bar]:
    """`with bar("generator", total=steps, unit="step") as b: b.advance(); b.note("loss 0.03")`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        refresh_per_second=2,
    )
    with progress:
        task_id = progress.add_task(description, total=total, completed=completed, status="", unit=unit)
        yield Bar(progress, task_id)
