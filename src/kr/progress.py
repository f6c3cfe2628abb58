"""Rich progress bars with rates and ETA, shared by every long loop.

Three ways a bar shows, by where its process runs: on a terminal, a live bar; in a log (a KFP pod, CI, nohup), a plain
line every 30 s; under `kr run` (which sets KR_PROGRESS_EVENTS in its tasks' environment), the plain lines plus one
structured event line (EVENT_PREFIX + JSON) at most every second, which `kr run` reads from the task's output to
draw the step's progress and keeps out of the step's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

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

EVENTS_ENV = "KR_PROGRESS_EVENTS"  # set (to 1) by a runner that reads the event lines: `kr run`
EVENT_PREFIX = "@kr-progress "  # starts an event line; nothing a person or a library logs starts so
EVENT_EVERY_S = 1.0  # at most one event a second: a JSON line costs microseconds, a training step far more


class RateColumn(ProgressColumn):
    """Items per second in the bar's own unit (images/s, steps/s)."""

    def render(self, task: Task) -> Text:
        """The task's speed as "12.3 img/s" (the finished speed once done), "- img/s" before there is one."""
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


def progress_event(task: Task) -> dict[str, Any]:
    """A bar's state as a JSON-able event: description, completed, total, unit, rate (units/s) and eta (s), both
    None while unknown, and the status note."""
    return {
        "bar": task.description,
        "completed": task.completed,
        "total": task.total,
        "unit": task.fields.get("unit", "it"),
        "rate": task.finished_speed or task.speed,
        "eta": task.time_remaining,
        "status": task.fields.get("status", ""),
    }


def event_line(event: dict[str, Any]) -> str:
    """The one line (no newline) that carries `event` through a task's output."""
    return EVENT_PREFIX + json.dumps(event, separators=(",", ":"))


def parse_event(line: str) -> dict[str, Any] | None:
    """The event an event line carries (surrounding whitespace ignored: kfp.local indents task output), else None:
    any other line, or a damaged event line."""
    text = line.strip()
    if not text.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(text[len(EVENT_PREFIX) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class Bar:
    """A live bar on a terminal; in logs (KFP pods, CI, nohup) a plain line every `log_every_s` seconds, and under
    `kr run` an event line at most every `EVENT_EVERY_S` seconds too."""

    def __init__(self, progress: Progress, task_id: int, log_every_s: float = 30.0) -> None:
        self._progress, self._task = progress, task_id
        self._live = console.is_terminal
        self._events = not self._live and bool(os.environ.get(EVENTS_ENV))
        self._log_every, self._last_log = log_every_s, time.monotonic()
        self._last_event = float("-inf")  # the first advance reports at once: the runner learns the total

    def advance(self, n: float = 1) -> None:
        """Count `n` more units done; off a terminal, log a line when `log_every_s` seconds have passed."""
        self._progress.update(self._task, advance=n)
        if self._live:
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            self._log_line()
        if self._events and now - self._last_event >= EVENT_EVERY_S:
            self._last_event = now
            self.emit()

    def note(self, text: str) -> None:
        """Show `text` as the bar's status (e.g. the latest loss) until the next note; log lines carry it too."""
        self._progress.update(self._task, status=text)

    def emit(self) -> None:
        """Write the bar's event line to stderr (kfp.local merges a task's stderr into the output it streams), when
        the process runs under an event-reading runner."""
        if self._events:
            sys.stderr.write(event_line(progress_event(self._progress.tasks[self._task])) + "\n")
            sys.stderr.flush()

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
        b = Bar(progress, task_id)
        b.emit()  # the total and where a resumed loop starts, before the first (maybe slow) unit
        yield b
        b.emit()  # the last state: the runner never keeps a bar at 99 % whose loop ended
