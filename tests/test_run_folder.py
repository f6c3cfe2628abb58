"""The run folder: one run at a time, archives stay inside it, a step's failure note is gone once it succeeds."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from kr.config import RunConfig
from kr.pipelines.local import RunFolderBusy, archive_previous, run_folder_lock
from kr.results import StepResult
from kr.steps.running import FAILURE_NOTE, run_step


@pytest.mark.fault
def test_archive_stays_inside_the_run_folder_whatever_the_summary_says(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"finished_at": "../../escaped"}))
    dest = archive_previous(out)
    assert dest is not None and dest.resolve().parent == (out / "history").resolve()
    assert (dest / "summary.json").exists() and not (tmp_path / "escaped").exists()
    assert not list(tmp_path.glob("escaped*"))


def _hold(out: str, ready, release) -> None:
    with run_folder_lock(Path(out)):
        ready.set()
        release.wait(30)


@pytest.mark.fault
def test_a_second_run_into_a_busy_folder_is_refused(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunFolderBusy, match="another run"), run_folder_lock(tmp_path):
            pass
    finally:
        release.set()
        holder.join(30)
    with run_folder_lock(tmp_path):  # free again once the first run ended
        pass


@pytest.mark.fault
def test_a_step_that_succeeds_on_retry_removes_its_failure_note(tmp_path: Path) -> None:
    cfg = RunConfig()
    attempts = []

    def flaky() -> StepResult:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("preempted")
        return StepResult()

    with pytest.raises(RuntimeError):
        run_step(cfg, "train_student", flaky, folder=tmp_path)
    assert json.loads((tmp_path / FAILURE_NOTE).read_text())["step"] == "train_student"
    run_step(cfg, "train_student", flaky, folder=tmp_path)
    assert not (tmp_path / FAILURE_NOTE).exists()


def test_another_steps_failure_note_is_kept(tmp_path: Path) -> None:
    (tmp_path / FAILURE_NOTE).write_text(json.dumps({"step": "train_teacher", "error": "x"}))
    run_step(RunConfig(), "summarize", StepResult, folder=tmp_path)
    assert json.loads((tmp_path / FAILURE_NOTE).read_text())["step"] == "train_teacher"


def test_a_new_run_archives_the_previous_runs_task_logs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "train_teacher.log").write_text("the old run's teacher\n")
    (out / "summary.json").write_text(json.dumps({"finished_at": "2026-11-30T10:00:00+00:00"}))
    dest = archive_previous(out)
    assert dest is not None and (dest / "logs" / "train_teacher.log").read_text() == "the old run's teacher\n"
    assert not (out / "logs").exists()  # the new run's logs start empty: a tail never shows the old run's lines
