"""`kr run`'s output (issue 16): a live table of the steps on a terminal, plain lines in a log, a short result block;
every task's output in `<run folder>/logs/<step>.log`, and a failed step's last lines under the error."""

import io
import json
import re
from pathlib import Path

import pytest
from datagen import REAL_ROOT, kr, needs_real
from rich.console import Console
from typer.testing import CliRunner

from kr.cli import app
from kr.pipelines import local
from kr.progress import EVENT_PREFIX, EVENTS_ENV, bar, event_line, parse_event
from kr.run.step_table import ORDER
from kr.run.view import PLAIN_EVERY_S, RunView, State, StepListener, failure_lines, result_lines

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUMMARY = {
    "total_wall_s": 204.0,
    "outcome": "promoted",
    "registry": {"model_name": "kr-breastmnist-student", "version": "3", "alias": "champion", "promoted": True},
    "teacher": {"test": {"accuracy": 0.8205}},
    "student": {"test": {"accuracy": 0.7949}},
    "cas_gap_pp": -2.56,
    "gates": {
        "data": {"passed": True},
        "accuracy": {"passed": True},
        "privacy": {"passed": False, "state": "inconclusive"},
        "champion": {"passed": True},
        "passed": False,
    },
    "reused_steps": [],
}


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def screen(raw: str) -> list[str]:
    """The lines a terminal shows at the end of `raw`: rich's live display moves the cursor up and erases lines to
    redraw, so the text holds every frame; this replays the moves (cursor up, erase line, carriage return)."""
    lines, row = [""], 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", raw):
        if token == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            pass
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
        elif token:
            lines[row] += token
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def steps_of_a_run() -> list[str]:
    """A smoke run's executed steps: two regeneration shards, promoted (so record_rejection never runs)."""
    steps = [s for s in ORDER if s not in ("regenerate", "record_rejection")]
    at = steps.index("plan_shards") + 1
    return [*steps[:at], "regenerate-0", "regenerate-1", *steps[at:]]


def play(view: RunView, clock: Clock, seconds_per_step: float = 10.0) -> None:
    """A whole run's events: every step starts, moves its bar each second, and ends done."""
    with view:
        for step in steps_of_a_run():
            view.step_started(step)
            for i in range(int(seconds_per_step)):
                clock.now += 1
                view.step_progress(step, {"bar": step, "completed": i + 1, "total": 10, "unit": "it", "rate": 1.0})
                view.step_log(step, f"{step} line {i}")
            view.step_ended(step, State.DONE)


def test_plain_view_prints_one_line_per_finished_step_and_no_ansi(tmp_path: Path) -> None:
    out, clock = io.StringIO(), Clock()
    view = RunView(Console(file=out, force_terminal=False, width=60), ORDER, tmp_path / "logs", 0, clock)
    play(view, clock)
    lines = out.getvalue().splitlines()
    assert not ANSI.search(out.getvalue())
    # a header, then one line per step that ran: short steps say only that they ended (and how long they took)
    assert len(lines) == 1 + len(steps_of_a_run()), lines
    assert lines[0].startswith("running the pipeline; each step's log: ") and len(lines[0]) > 60  # never wrapped
    assert [line.split()[2] for line in lines[1:]] == steps_of_a_run()
    assert all(line.endswith("done in 10s") for line in lines[1:])


def test_plain_view_says_how_far_a_long_step_is_at_most_every_30_s(tmp_path: Path) -> None:
    out, clock = io.StringIO(), Clock()
    view = RunView(Console(file=out, force_terminal=False), ORDER, tmp_path / "logs", 0, clock)
    with view:
        view.step_started("train_generator")
        for i in range(100):
            clock.now += 1
            view.step_progress("train_generator", {"bar": "generator", "completed": i, "total": 400, "unit": "step"})
        view.step_ended("train_generator", State.DONE)
    lines = out.getvalue().splitlines()
    progress = lines[1:-1]  # between the header and the end
    assert len(progress) == 100 // int(PLAIN_EVERY_S), lines
    assert "generator 29/400 step" in progress[0]
    assert lines[-1].endswith("train_generator    done in 1m40s")


def test_terminal_view_is_one_table_of_every_step(tmp_path: Path) -> None:
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=True, width=120, color_system="standard")
    view = RunView(console, ORDER, tmp_path / "logs", 0, clock)
    play(view, clock, seconds_per_step=3)
    shown = screen(out.getvalue())
    assert ANSI.search(out.getvalue())
    rows = {line.split()[0]: line.split()[1] for line in shown[2:-1]}  # under the header, above the caption
    # the shards took the place of the queued `regenerate` row, in order; the branch that never ran is skipped
    shards = [s for s in ORDER if s != "regenerate"]
    shards[shards.index("plan_shards") + 1 : shards.index("plan_shards") + 1] = ["regenerate-0", "regenerate-1"]
    assert list(rows) == shards, shown
    assert rows == {step: "skipped" if step == "record_rejection" else "done" for step in shards}
    assert shown[-1].strip() == f"logs: {tmp_path / 'logs'}"
    # with the result block under it, well inside 40 lines
    assert len(shown) + len(result_lines(SUMMARY, tmp_path)) <= 40, "\n".join(shown)


def test_terminal_view_shows_the_running_steps_bar_rate_and_eta(tmp_path: Path) -> None:
    clock = Clock()
    view = RunView(Console(file=io.StringIO(), force_terminal=True), ORDER, tmp_path / "logs", 0, clock)
    view.step_started("train_teacher")
    clock.now += 75
    event = {"bar": "teacher", "completed": 3, "total": 10, "unit": "epoch", "rate": 0.04, "eta": 175.0}
    view.step_progress("train_teacher", event)
    text = io.StringIO()
    Console(file=text, width=160, force_terminal=False).print(view.render())
    row = next(line for line in text.getvalue().splitlines() if line.startswith("train_teacher"))
    assert "running" in row and "1m15s" in row and "teacher 3/10 epoch, 0.0 epoch/s, eta 2m55s" in row
    assert "queued" in text.getvalue()


def test_verbose_streams_log_lines_and_quiet_prints_nothing(tmp_path: Path) -> None:
    outputs = {}
    for level in (-1, 1):
        out, clock = io.StringIO(), Clock()
        play(RunView(Console(file=out, force_terminal=False), ORDER, tmp_path / "logs", level, clock), clock, 2)
        outputs[level] = out.getvalue().splitlines()
    assert outputs[-1] == []
    assert "train_teacher | train_teacher line 1" in outputs[1]
    assert any(line.endswith("train_teacher      running") for line in outputs[1])


def test_the_result_block_names_accuracies_gates_registry_and_files(tmp_path: Path) -> None:
    lines = result_lines(SUMMARY, tmp_path)
    assert lines[0] == "done in 3m24s: promoted: kr-breastmnist-student v3 is @champion"
    assert "teacher 0.821, student 0.795 (CAS gap -2.56 pp)" in lines[1]
    assert "data pass, accuracy pass, privacy inconclusive, champion pass" in lines[2]
    assert lines[-1].endswith(str(tmp_path / "logs")) and len(lines) == 6
    rejected = SUMMARY | {"outcome": "rejected", "registry": {"model_name": "m", "version": "4", "promoted": False}}
    assert result_lines(rejected, tmp_path)[0].endswith("rejected: m v4 registered, not champion")


def test_a_failure_shows_the_last_30_lines_of_the_failed_steps_log(tmp_path: Path) -> None:
    log = tmp_path / "train_naive.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    lines = failure_lines("train_naive", log)
    assert lines[0].startswith("step train_naive failed") and lines[-1] == f"full log: {log}"
    assert [line.strip() for line in lines[1:-1]] == [f"line {i}" for i in range(70, 100)]


def test_progress_events_travel_as_one_json_line() -> None:
    event = {"bar": "generator", "completed": 3, "total": 40, "unit": "step", "rate": 1.5, "eta": 24.7, "status": ""}
    line = event_line(event)
    assert "\n" not in line and line.startswith(EVENT_PREFIX)
    assert parse_event("    " + line + "\n") == event  # kfp.local may indent a task's line
    assert parse_event("generator: 3/40 step") is None and parse_event(EVENT_PREFIX + "{broken") is None


@pytest.mark.parametrize("under_kr_run", [True, False])
def test_a_bar_writes_events_only_under_kr_run_and_at_most_one_a_second(
    under_kr_run: bool, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    if under_kr_run:
        monkeypatch.setenv(EVENTS_ENV, "1")
    else:  # a pod on a cluster, CI, nohup: plain log lines only
        monkeypatch.delenv(EVENTS_ENV, raising=False)
    with bar("work", total=5000, unit="it") as b:
        for _ in range(5000):
            b.advance()
    events = [e for line in capsys.readouterr().err.splitlines() if (e := parse_event(line))]
    if not under_kr_run:
        assert events == []
        return
    # where it starts, the first unit (the rate limit's first window), where it ends; 5000 advances in well under 1 s
    assert [e["completed"] for e in events] == [0, 1, 5000], events
    assert events[-1]["total"] == 5000 and events[-1]["unit"] == "it"


# --- the CLI, with the pipeline replaced by its events ------------------------------------------------------------


def fake_run(fail_at: str | None = None):
    """A run_local that tells the listener of a few steps, writes their logs, and returns SUMMARY (or fails)."""

    def run_local(req, out: Path, cache_root=None, image=None, listener: StepListener | None = None) -> dict:
        logs = Path(out) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for step in ("resolve_config", "validate_data", "train_teacher"):
            listener.step_started(step)
            (logs / f"{step}.log").write_text("".join(f"{step} says {i}\n" for i in range(50)))
            listener.step_log(step, f"{step} says 49")
            failed = step == fail_at
            listener.step_ended(step, State.FAILED if failed else State.DONE)
            if failed:
                raise local.PipelineFailed(f"the pipeline failed: step {step} failed: RuntimeError: boom")
        return SUMMARY

    return run_local


@pytest.mark.parametrize("flags", [[], ["--quiet"]])
def test_kr_run_prints_the_steps_then_the_result_block(flags, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "run_local", fake_run())
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--out", str(out), *flags])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    block = result_lines(SUMMARY, out)
    assert lines[-len(block) :] == block and not ANSI.search(result.output)
    # --quiet: the result block and nothing else; normal: a header and one line per step before it
    assert len(lines) == len(block) + (0 if flags else 4), lines


def test_kr_run_shows_the_failed_steps_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "run_local", fake_run(fail_at="train_teacher"))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--out", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "step train_teacher failed; the last 30 lines of its log:"
    assert lines[1].strip() == "train_teacher says 20" and lines[30].strip() == "train_teacher says 49"
    assert lines[31] == f"full log: {out / 'logs' / 'train_teacher.log'}"
    assert "RuntimeError: boom" in result.output


def test_quiet_and_verbose_together_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--out", str(tmp_path / "run"), "-q", "-v"])
    assert result.exit_code == 2 and "contradict" in result.output


# --- the runner: real kfp.local tasks, one log per task -----------------------------------------------------------


class Recorder(StepListener):
    """Every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def step_started(self, step: str) -> None:
        self.events.append(("started", step))

    def step_ended(self, step: str, state: State) -> None:
        self.events.append(("ended", step, state))

    def step_progress(self, step: str, event: dict) -> None:
        self.events.append(("progress", step, event["completed"]))

    def step_log(self, step: str, line: str) -> None:
        self.events.append(("log", step, line))


def toy_pipeline():
    """A task, then a ParallelFor of two of another, each printing a line and moving a kr.progress bar; `fail` makes
    the first one raise."""
    from kfp import dsl

    @dsl.component(base_image="python:3.11")
    def talk(n: int, fail: bool) -> int:
        from kr.progress import bar

        print(f"talking {n}")
        with bar("talk", total=n, unit="word") as b:
            for _ in range(n):
                b.advance()
        if fail:
            raise RuntimeError("boom")
        return n

    @dsl.component(base_image="python:3.11")
    def shard(n: int) -> None:
        print(f"shard {n}")

    @dsl.pipeline(name="toy")
    def toy(fail: bool = False) -> None:
        first = talk(n=3, fail=fail)
        with dsl.ParallelFor([1, 2], parallelism=2) as i:
            shard(n=i).after(first)

    return toy


def test_every_task_gets_its_own_log_and_nothing_reaches_the_terminal(tmp_path: Path, capfd) -> None:
    from kfp import local as kfp_local

    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    logs, recorder = tmp_path / "logs", Recorder()
    with local.capture_tasks(logs, recorder):
        toy_pipeline()()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    # the first task, then the two iterations (one log each, though both run a task named `shard`)
    assert sorted(p.name for p in logs.iterdir()) == ["pipeline.log", "shard-0.log", "shard-1.log", "talk.log"]
    assert "talking 3" in (logs / "talk.log").read_text() and "shard 2" in (logs / "shard-1.log").read_text()
    assert "Executing task" in (logs / "talk.log").read_text()  # kfp.local's own lines about the task, too
    written = "".join(p.read_text() for p in logs.iterdir())
    assert EVENT_PREFIX not in written and not ANSI.search(written)  # events go to the listener only; text, no colour
    ended = {e[1]: e[2] for e in recorder.events if e[0] == "ended"}
    assert ended == {"talk": State.DONE, "shard-0": State.DONE, "shard-1": State.DONE}
    assert ("progress", "talk", 3) in recorder.events
    assert recorder.events.index(("started", "talk")) < recorder.events.index(("ended", "talk", State.DONE))


def test_a_failed_task_is_failed_and_its_traceback_is_in_its_log(tmp_path: Path) -> None:
    from kfp import local as kfp_local

    kfp_local.init(
        runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=False
    )
    logs, recorder = tmp_path / "logs", Recorder()
    with local.capture_tasks(logs, recorder):
        toy_pipeline()(fail=True)
    assert ("ended", "talk", State.FAILED) in recorder.events
    assert not any(e[0] == "started" and e[1].startswith("shard") for e in recorder.events)  # never ran
    assert "RuntimeError: boom" in (logs / "talk.log").read_text()


def test_containers_get_the_progress_events_switch(tmp_path: Path) -> None:
    from kr.config import RunConfig

    cfg = RunConfig.model_validate(
        {"data": {"dataset": "breastmnist", "data_root": str(tmp_path / "data")}, "audit": {"uri": str(tmp_path)}}
    )
    env = local.container_runner(cfg, tmp_path / "run", tmp_path / "checkpoints").container_run_args["environment"]
    assert env[EVENTS_ENV] == "1"  # the DockerRunner's tasks do not inherit this process's environment


def test_step_names_follow_kr_and_shards_get_their_index() -> None:
    assert local.step_of("train-teacher", "knowledge-recycling-2026") == "train_teacher"
    assert local.step_of("regenerate", "knowledge-recycling-2026/for-loop-2-iteration-1") == "regenerate-1"


# --- the real thing (slow) -----------------------------------------------------------------------------------------


@pytest.mark.e2e
@needs_real
def test_a_smoke_run_prints_at_most_40_lines_and_keeps_every_tasks_log(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = kr(
        "run", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(out), env={"KR_HOME": str(tmp_path)}
    )
    printed = done.stdout.splitlines() + done.stderr.splitlines()
    assert done.returncode == 0, "\n".join(printed[-60:])
    assert len(printed) <= 40, "\n".join(printed)
    assert not ANSI.search(done.stdout + done.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert done.stdout.splitlines() == result_lines(summary, out)  # the result on stdout, the steps on stderr
    concluded = "promote" if summary["outcome"] == "promoted" else "record_rejection"
    ran = {*ORDER} - {"regenerate", "promote", "record_rejection"} | {concluded, "regenerate-0", "regenerate-1"}
    assert {p.stem for p in (out / "logs").glob("*.log")} == ran | {"pipeline"}
    assert "Executing task" in (out / "logs" / "train_teacher.log").read_text()
