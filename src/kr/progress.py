"""Rich progress bars with rates and ETA, shared by every long loop."""

from __future__ import annotations

import contextlib
import sys
import time
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
        """The task's speed as "12.3 img/s" (the finished speed once done), "- img/s" before there is one."""
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class Bar:
    """A live bar on a terminal; in logs (KFP pods, CI, nohup) a plain line every `log_every_s` seconds."""

    def __init__(self, progress: Progress, task_id: int, log_every_s: float = 30.0) -> None:
        self._progress, self._task = progress, task_id
        self._live = console.is_terminal
        self._log_every, self._last_log = log_every_s, time.monotonic()

    def advance(self, n: float = 1) -> None:
        """Count `n` more units done; off a terminal, log a line when `log_every_s` seconds have passed."""
        self._progress.update(self._task, advance=n)
        if not self._live and time.monotonic() - self._last_log >= self._log_every:
            self._last_log = time.monotonic()
            self._log_line()

    def note(self, text: str) -> None:
        """Show `text` as the bar's status (e.g. the latest loss) until the next note; log lines carry it too."""
        self._progress.update(self._task, status=text)

    def _log_line(self) -> None:
        task = self._progress.tasks[self._task]
        unit = task.fields.get("unit", "it")
        rate = f"{task.speed:,.1f} {unit}/s" if task.speed else "-"
        eta = f"{task.time_remaining:,.0f} s" if task.time_remaining is not None else "-"
        console.log(
            f"{task.description}: {task.completed:,.0f}/{task.total:,.0f} {unit}, {rate}, eta {eta} "
            f"{task.fields.get('status', '')}"
        )


@contextlib.contextmanager
def bar(description: str, total: float, unit: str = "it", completed: float = 0) -> Iterator[Bar]:
    """`with bar("generator", total=steps, unit="step") as b: b.advance(); b.note("loss 0.03")`.

    total and completed (where a resumed loop starts) count `unit`s; the bar is drawn on stderr.
    """
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
