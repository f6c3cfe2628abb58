"""`kr run`'s output: the DAG's steps as one live table on a terminal (plain lines in a log), then a short result.

The runner (`kr.pipelines.local`) tells a `StepListener` what happens: a step started, ended (done, failed,
cached), reported progress (an event of `kr.progress`) or printed a log line. Everything a task prints goes to
`<run folder>/logs/<step>.log`; `RunView` shows only the steps, their state and time, and the running step's bar.

Levels (`kr.cli.options.verbosity`): -1 (--quiet) shows nothing while the run goes, 0 the table (or the plain lines),
1+ (-v) also every task's log lines as they come.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

LOGS_DIR = "logs"  # in the run folder: one <step>.log per KFP task, PIPELINE_LOG for kfp.local's own lines
PIPELINE_LOG = "pipeline"
PLAIN_EVERY_S = 30.0  # off a terminal, a running step says how far it is at most this often
TAIL_LINES = 30  # of a failed step's log, shown under the error
SHARD = re.compile(r"^(?P<family>.+)-(?P<index>\d+)$")  # a ParallelFor iteration's step: regenerate-0


class State(StrEnum):
    """Where a step is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CACHED = "cached"  # kfp.local reused an earlier execution: the task never ran
    SKIPPED = "skipped"  # the run ended without it: the other branch of a condition, or after a failure


STYLE = {
    State.QUEUED: "dim",
    State.RUNNING: "bold yellow",
    State.DONE: "green",
    State.FAILED: "bold red",
    State.CACHED: "cyan",
    State.SKIPPED: "dim",
}


def log_path(logs: Path, step: str) -> Path:
    """The log file of `step` (or of PIPELINE_LOG) in the logs folder."""
    return logs / f"{step}.log"


class StepListener:
    """What a runner tells about its steps; every method does nothing here (a run nobody watches)."""

    def step_started(self, step: str) -> None:
        """`step` began executing (a cached step never does)."""

    def step_ended(self, step: str, state: State) -> None:
        """`step` ended: DONE, FAILED or CACHED."""

    def step_progress(self, step: str, event: dict[str, Any]) -> None:
        """`step`'s bar moved: an event of `kr.progress.progress_event`."""

    def step_log(self, step: str, line: str) -> None:
        """`step` printed `line` (already in its log file)."""


@dataclass
class Row:
    """One step in the table."""

    step: str
    state: State = State.QUEUED
    started: float | None = None
    ended: float | None = None
    progress: dict[str, Any] | None = None
    told: float = 0.0  # when the plain view last said how far this step is

    def elapsed(self, now: float) -> float | None:
        """Seconds it ran (so far, while it runs); None for a step that never ran."""
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started


def duration(seconds: float | None) -> str:
    """12s, 3m05s, 1h02m; "-" for None."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_text(event: dict[str, Any]) -> str:
    """A bar event in words: "generator 20/40 step, 1.2 step/s, eta 17s, loss 0.03"."""
    unit = event.get("unit", "it")
    parts = [f"{event.get('bar', '')} {event.get('completed', 0):,.0f}/{event.get('total') or 0:,.0f} {unit}"]
    if event.get("rate"):
        parts.append(f"{event['rate']:,.1f} {unit}/s")
    if event.get("eta") is not None:
        parts.append(f"eta {duration(event['eta'])}")
    if event.get("status"):
        parts.append(str(event["status"]))
    return ", ".join(parts)


class RunView(StepListener):
    """The steps of one run on `console` (stderr): a live table when it is a terminal, plain lines otherwise.

    Use it as a context manager around the run; the runner calls the StepListener methods from its threads. Printing
    happens outside the view's lock: rich's live thread takes its own lock, then the view's (to render).
    """

    def __init__(
        self,
        console: Console,
        steps: Sequence[str],
        logs: Path,
        verbosity: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.logs, self.verbosity, self._clock = console, logs, verbosity, clock
        self._rows = [Row(step) for step in steps]
        self._lock = threading.Lock()
        self._t0 = clock()
        self._live: Live | None = None
        self._begun = False
        self._begin_lock = threading.Lock()  # not the view's lock: starting Live renders, which takes that one

    # --- the run's life -----------------------------------------------------------------------------------------

    def __enter__(self) -> RunView:
        self._t0 = self._clock()
        return self

    def _begin(self) -> None:
        """Show the view, at the first step event: a run refused before any step (a busy folder) shows none."""
        with self._begin_lock:
            if self._begun:
                return
            self._begun = True
            if self.verbosity >= 0 and self.console.is_terminal:
                # the runner has taken sys.stdout and sys.stderr for the tasks' logs: rich must not redirect them too
                self._live = Live(
                    get_renderable=self.render,
                    console=self.console,
                    refresh_per_second=1,  # the clock column moves by seconds; a redraw rewrites every row
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self._live.start(refresh=True)
            elif self.verbosity >= 0:
                self._say(f"running the pipeline; each step's log: {log_path(self.logs, '<step>')}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._lock:
            for row in self._rows:
                if row.state is State.QUEUED:
                    row.state = State.SKIPPED
                elif row.state is State.RUNNING:  # interrupted (Ctrl-C): it did not finish
                    row.state, row.ended = State.FAILED, self._clock()
        if self._live is not None:
            self._live.stop()  # draws the final table once more, and leaves it on the screen
            self._live = None

    # --- StepListener --------------------------------------------------------------------------------------------

    def step_started(self, step: str) -> None:
        self._begin()
        with self._lock:
            row = self._row(step)
            row.state, row.started, row.told = State.RUNNING, self._clock(), self._clock()
        if self.verbosity >= 1:
            self._plain(self._line(step, "running"))

    def step_ended(self, step: str, state: State) -> None:
        self._begin()
        now = self._clock()
        with self._lock:
            row = self._row(step)
            row.state, row.ended = state, now
            took = row.elapsed(now)
        self._plain(self._line(step, state.value if took is None else f"{state.value} in {duration(took)}"))

    def step_progress(self, step: str, event: dict[str, Any]) -> None:
        with self._lock:
            self._row(step).progress = event
        self._heartbeat(step)

    def step_log(self, step: str, line: str) -> None:
        if self.verbosity >= 1:
            self._say(f"{step} | {line}")
        self._heartbeat(step)

    # --- what it shows --------------------------------------------------------------------------------------------

    def render(self) -> RenderableType:
        """The table (step, state, time, and the running step's bar with its rate and ETA) and where the logs are."""
        now = self._clock()
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in ("step", "state", "time", "progress"):
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        with self._lock:
            rows = [(r.step, r.state, r.elapsed(now), dict(r.progress) if r.progress else None) for r in self._rows]
        for step, state, took, event in rows:
            bar = _bar_cell(event) if state is State.RUNNING and event else ""
            table.add_row(step, Text(state.value, style=STYLE[state]), duration(took), bar)
        # under the table, on one line whatever the table's width (a caption would wrap to it)
        return Group(table, Text(f"logs: {self.logs}", style="dim", no_wrap=True, overflow="ellipsis"))

    def failed_step(self) -> str | None:
        """The first step that failed, in DAG order (a later exit handler's failure is a consequence)."""
        with self._lock:
            return next((r.step for r in self._rows if r.state is State.FAILED), None)

    def print_failure(self) -> None:
        """The failed step's last TAIL_LINES log lines and where its whole log is (in every mode, --quiet too)."""
        if step := self.failed_step():
            for line in failure_lines(step, log_path(self.logs, step)):
                self._say(line)

    # --- helpers ------------------------------------------------------------------------------------------------

    def _find(self, step: str) -> Row | None:
        """The row of `step`, if it has one. The caller holds the lock."""
        return next((row for row in self._rows if row.step == step), None)

    def _row(self, step: str) -> Row:
        """The row of `step`, added when new: a ParallelFor shard (regenerate-1) takes its family's queued row or
        goes after its last sibling. The caller holds the lock."""
        if (found := self._find(step)) is not None:
            return found
        family = m["family"] if (m := SHARD.match(step)) else step
        at = len(self._rows)
        for i, row in enumerate(self._rows):
            if row.step == family and row.state is State.QUEUED:
                self._rows[i] = Row(step)
                return self._rows[i]
            if row.step == family or (SHARD.match(row.step) and SHARD.match(row.step)["family"] == family):
                at = i + 1
        self._rows.insert(at, Row(step))
        return self._rows[at]

    def _heartbeat(self, step: str) -> None:
        """Off a terminal, say how far a running step is, at most every PLAIN_EVERY_S seconds."""
        if self._live is not None or self.verbosity < 0:
            return
        now = self._clock()
        with self._lock:
            row = self._find(step)  # kfp.local's own lines (PIPELINE_LOG) have no row
            if row is None or row.state is not State.RUNNING or now - row.told < PLAIN_EVERY_S:
                return
            row.told = now
            detail = f": {progress_text(row.progress)}" if row.progress else ""
            took = row.elapsed(now)
        self._say(self._line(step, f"running {duration(took)}{detail}"))

    def _line(self, step: str, what: str) -> str:
        return f"[{duration(self._clock() - self._t0):>6}] {step:<18} {what}"

    def _plain(self, line: str) -> None:
        """A state line, for the plain view only: the live table shows states itself."""
        if self._live is None and self.verbosity >= 0:
            self._say(line)

    def _say(self, line: str) -> None:
        # as text: no markup, no highlighting, never wrapped (one event, one line)
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _bar_cell(event: dict[str, Any]) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        ProgressBar(total=event.get("total") or None, completed=event.get("completed", 0), width=20),
        Text(progress_text(event), no_wrap=True, overflow="ellipsis"),  # one row per step, however narrow
    )
    return grid


def tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last `n` lines of a text file; none when it does not exist."""
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def failure_lines(step: str, log: Path) -> list[str]:
    """What a failed run prints before its error: the failed step, the last lines of its log and where the whole log
    is."""
    lines = tail(log)
    return [
        f"step {step} failed; the last {len(lines)} lines of its log:",
        *(f"  {line}" for line in lines),
        f"full log: {log}",
    ]


def _verdict(gate: Any) -> str:
    """pass / fail / inconclusive / not evaluated, for one gate of summary.json's `gates`."""
    if not isinstance(gate, dict):
        return "-"
    if gate.get("evaluated") is False:
        return "not evaluated"
    return str(gate.get("state") or ("pass" if gate.get("passed") else "fail"))


def _accuracy(section: Any) -> str:
    test = (section or {}).get("test") or {}
    return f"{test['accuracy']:.3f}" if test.get("accuracy") is not None else "-"


def registry_line(summary: dict[str, Any]) -> str:
    """The registry's outcome in words: promoted (the version is @champion), registered but not champion, or not
    registered."""
    reg = summary.get("registry") or {}
    outcome = summary.get("outcome") or "unknown"
    if not reg.get("version"):
        return f"{outcome}; nothing registered"
    name = f"{reg.get('model_name')} v{reg['version']}"
    if reg.get("promoted"):
        return f"{outcome}: {name} is @{reg.get('alias') or 'champion'}"
    return f"{outcome}: {name} registered, not champion"


def result_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """The result block: accuracies and CAS gap, each gate's verdict, the registry's outcome, reused steps and where
    the summary, report and logs are."""
    gap = summary.get("cas_gap_pp")
    gates = summary.get("gates") or {}
    verdicts = ", ".join(f"{g} {_verdict(gates.get(g))}" for g in ("data", "accuracy", "privacy", "champion"))
    lines = [
        f"done in {duration(summary.get('total_wall_s'))}: {registry_line(summary)}",
        f"  accuracy: teacher {_accuracy(summary.get('teacher'))}, student {_accuracy(summary.get('student'))}"
        + (f" (CAS gap {gap:+.2f} pp)" if gap is not None else ""),
        f"  gates:    {verdicts}",
    ]
    if summary.get("reused_steps"):
        lines.append(f"  reused:   {', '.join(summary['reused_steps'])}")
    lines += [
        f"  summary:  {out / 'summary.json'}",
        f"  report:   {out / 'report.md'}",
        f"  logs:     {out / LOGS_DIR}",
    ]
    return lines
