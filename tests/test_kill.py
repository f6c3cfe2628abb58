"""SIGKILL during each training step, then the same step run again: the re-run must finish, and what was already
safe must survive (the data file, the generator's complete checkpoints).

Each test is a row of the fault table ("kill during training, re-run: what was lost"). With KR_FAULT_LOG set, each
appends one JSON line to that file: {fault, step, injected, survived, lost, data_lost}.

The step runs in a real process, called through the public step API (`kr.steps`) with a tiny config. The child
prints each progress-bar tick on stdout (`kr.progress.Bar.advance`, patched in the child only), so the kill lands at
a known point of training: mid-epoch for the classifiers, between two checkpoints for the generator (where the
test then leaves the .tmp folder that a kill during the next checkpoint's write would leave).

The re-run is in the test's process: a fresh one would add ~10 s of imports, and what a kill leaves is on disk.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import write_npz

import kr.steps
from kr.config import CanaryConfig, ClassifierConfig, GeneratorConfig, GKDConfig, RunConfig
from kr.data import file_md5, load_dataset, load_saved_dataset, save_dataset
from kr.method.classifier import load_classifier
from kr.run.step_table import step_config

N_CLASSES = 3
EPOCHS = 8  # teacher and student; the kill lands in epoch 3
KILL_AT_EPOCH = 2
GEN_STEPS, GEN_EVERY, KILL_AT_STEP = 60, 5, 12  # the kill lands between checkpoints 10 and 15
STARTUP_S = 150  # the child's imports alone take ~10 s on a loaded 2-core machine

CHILD = r"""
import json, sys
import kr.progress
import kr.steps

advance = kr.progress.Bar.advance

def tick(self, n=1):
    advance(self, n)
    task = self._progress.tasks[self._task]
    print(f"PROGRESS {task.description}|{task.completed:.0f}|{task.total:.0f}", flush=True)

kr.progress.Bar.advance = tick
getattr(kr.steps, sys.argv[1])(*json.loads(sys.argv[2]))
"""
PROGRESS = re.compile(r"PROGRESS (?P<bar>.+)\|(?P<done>\d+)\|(?P<total>\d+)")


def record(step: str, survived: bool, lost: str, data_lost: bool) -> None:
    """One row of the fault table, appended to $KR_FAULT_LOG (nothing when unset)."""
    if path := os.environ.get("KR_FAULT_LOG"):
        row = {"fault": "SIGKILL during training", "step": step, "injected": 1, "survived": int(survived)}
        with open(path, "a") as f:
            f.write(json.dumps(row | {"lost": lost, "data_lost": int(data_lost)}) + "\n")


class Step:
    """One step in its own process: `python -c CHILD <step> <json args>`; stdout read line by line."""

    def __init__(self, tmp: Path, step: str, *args: object) -> None:
        self.err = tmp / f"{step}-{time.monotonic_ns()}.stderr"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.err, "w") as err:
            argv = [sys.executable, "-c", CHILD, step, json.dumps([str(a) if isinstance(a, Path) else a for a in args])]
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr_tail(self) -> str:
        return self.err.read_text()[-3000:]

    def wait_for(self, done: int, timeout: float) -> int:
        """Block until a progress tick reports `done` units (epochs, steps); returns the last count read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the step ended before the kill:\n{self.stderr_tail()}")
            if (m := PROGRESS.fullmatch(line)) and int(m["done"]) >= done:
                return int(m["done"])
        self.proc.kill()
        raise AssertionError(f"no progress to {done} within {timeout} s:\n{self.stderr_tail()}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic data file, validated and saved as a dataset reference (what the steps read)."""
    root = tmp_path_factory.mktemp("kill-data")
    path = write_npz(root / "data.npz", n_train=120, n_val=30, n_test=30, channels=1, n_classes=N_CLASSES)
    folder = save_dataset(load_dataset(str(path)), root / "data")
    return {"path": path, "dir": folder, "md5": file_md5(path)}


def config() -> RunConfig:
    classifier = ClassifierConfig(width=4, blocks_per_stage=1, epochs=EPOCHS, batch_size=16, bf16=False)
    generator = GeneratorConfig(
        block_out_channels=[8, 16],
        attention_levels=[False, False],
        norm_num_groups=4,
        batch_size=8,
        warmup_steps=2,
        train_steps=GEN_STEPS,
        checkpoint_every=GEN_EVERY,
        bf16=False,
        compile=False,
    )
    return RunConfig(
        teacher=classifier,
        generator=generator,
        gkd=GKDConfig(epochs=EPOCHS, pool_slices=2, student=classifier),
        canaries=CanaryConfig(enabled=False),  # no teacher recipe to derive copies from; the audit is not run here
    )


def data_intact(data: dict) -> bool:
    """The data file is the one validated: same MD5, and its saved reference still loads."""
    return file_md5(data["path"]) == data["md5"] and load_saved_dataset(data["dir"]).info.md5 == data["md5"]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")) if Path(folder).exists() else []


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.tmp"))


def complete_checkpoints(work: Path) -> list[int]:
    """Steps of the complete checkpoints (step-NNNNNN/ with an ema/ folder; never a .tmp) in a generator folder."""
    root = Path(work) / "checkpoints"
    found = [re.fullmatch(r"step-(\d+)", p.name) for p in root.iterdir()] if root.is_dir() else []
    return sorted(int(m[1]) for m in found if m and (root / m[0] / "ema").is_dir())


def kill_then_rerun(
    tmp: Path, step: str, kill_at: int, *args: object, after_kill: Callable[[], None] = lambda: None
) -> tuple[int, dict | None, str]:
    """Run `step` in a process, SIGKILL it once it reports `kill_at` units done, call `after_kill`, then run the
    step again to completion in this process. Returns (units done at the kill, the re-run's result as JSON or None
    when it raised, its traceback)."""
    killed = Step(tmp, step, *args)
    done = killed.wait_for(kill_at, STARTUP_S)
    killed.kill()
    after_kill()
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")  # run_step sets torch's threads from it: 2 cores are shared here
            return done, getattr(kr.steps, step)(*args).model_dump(mode="json"), ""
    except Exception:
        return done, None, traceback.format_exc()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.fault
def test_kill_during_train_teacher_then_rerun(tmp_path: Path, data: dict) -> None:
    out = tmp_path / "teacher"
    left: list[str] = []  # what the killed attempt wrote: nothing, weights are written once, at the end
    done, result, err = kill_then_rerun(
        tmp_path,
        "train_teacher",
        KILL_AT_EPOCH,
        step_config(config(), "train_teacher"),
        data["dir"],
        out,
        after_kill=lambda: left.extend(listing(out)),
    )
    survived = result is not None and (out / "teacher.pt").is_file()
    intact = data_intact(data)
    record(
        "train_teacher",
        survived,
        f"{done} complete + 1 partial epoch of {EPOCHS} lost (no mid-training checkpoint: all {EPOCHS} redone)",
        not intact,
    )
    assert survived, f"the re-run after a kill failed:\n{err}"
    assert intact, "the data file changed or its saved reference no longer loads"
    assert len(result["history"]) == EPOCHS, "the re-run trains every epoch from the start"
    assert left == [] and leftovers(out) == [], f"the killed attempt left {left}"
    assert load_classifier(out / "teacher.pt").arch["n_classes"] == N_CLASSES


@pytest.mark.fault
def test_kill_during_train_generator_then_rerun(tmp_path: Path, data: dict) -> None:
    cfg = config()
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "generator"
    args = (step_config(cfg, "train_generator"), data["dir"], out, checkpoints)
    workspaces: list[Path] = []  # the killed attempt's work folder: the re-run must resume in it
    safe: list[int] = []  # what the kill left: the newest complete checkpoint must be resumed

    def after_kill() -> None:
        workspaces.extend(checkpoints.glob("generator-*"))
        assert len(workspaces) == 1, f"one work folder expected under {checkpoints}: {workspaces}"
        work = workspaces[0]
        safe.extend(complete_checkpoints(work))
        # what a kill during the next checkpoint's write leaves: a .tmp folder, here with an ema/ in it already
        (work / "checkpoints" / f"step-{max(safe, default=0) + GEN_EVERY:06d}.tmp" / "ema").mkdir(parents=True)

    done, result, err = kill_then_rerun(tmp_path, "train_generator", KILL_AT_STEP, *args, after_kill=after_kill)

    survived = result is not None and result["complete"] and bool(complete_checkpoints(out))
    resumed = result["resumed_from"] if result else 0
    intact = data_intact(data)
    record(
        "train_generator",
        survived,
        f"{max(done - resumed, 0)} of {GEN_STEPS} generator steps lost: killed after step {done}, resumed from "
        f"checkpoint step {resumed} (at most checkpoint_every={GEN_EVERY})",
        not intact,
    )
    assert survived, f"the re-run after a kill failed:\n{err}"
    assert intact, "the data file changed or its saved reference no longer loads"
    assert result["workspace"] == str(workspaces[0]), "the re-run trained in another folder than the killed attempt"
    assert safe and 0 < max(safe) < GEN_STEPS, f"the kill must land mid-training: checkpoints {safe}"
    assert resumed == max(safe), f"resumed from {resumed}, not the newest complete checkpoint of {safe}"
    assert done - resumed <= GEN_EVERY  # `done` was read before the kill: the child may have gone a step further
    assert result["steps"] == GEN_STEPS and f"step-{GEN_STEPS:06d}" in result["checkpoints"]
    assert leftovers(workspaces[0]) == [] and leftovers(out) == [], "a .tmp checkpoint was left behind or copied"
    assert not any(name.endswith(".tmp") for name in result["checkpoints"])


def write_shard(folder: Path, n: int, seed: int) -> Path:
    """A regeneration shard as `regenerate` writes it: folder/shard.npz with images, gen_labels, teacher_logits."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    with open(folder / "shard.npz", "wb") as f:
        np.savez(
            f,
            images=rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
            gen_labels=rng.permutation(np.arange(n) % N_CLASSES).astype(np.int64),
            teacher_logits=rng.normal(size=(n, N_CLASSES)).astype(np.float32),
        )
    return folder


@pytest.mark.fault
def test_kill_during_train_student_then_rerun(tmp_path: Path, data: dict) -> None:
    shards = [str(write_shard(tmp_path / f"shard-{i}", 64, i)) for i in range(2)]
    shard_md5 = [file_md5(Path(s) / "shard.npz") for s in shards]
    out = tmp_path / "student"
    left: list[str] = []  # what the killed attempt wrote: nothing, weights are written once, at the end
    done, result, err = kill_then_rerun(
        tmp_path,
        "train_student",
        KILL_AT_EPOCH,
        step_config(config(), "train_student"),
        data["dir"],
        shards,
        out,
        after_kill=lambda: left.extend(listing(out)),
    )
    survived = result is not None and (out / "student.pt").is_file()
    intact = data_intact(data) and [file_md5(Path(s) / "shard.npz") for s in shards] == shard_md5
    record(
        "train_student",
        survived,
        f"{done} complete + 1 partial epoch of {EPOCHS} lost (no mid-training checkpoint: all {EPOCHS} redone)",
        not intact,
    )
    assert survived, f"the re-run after a kill failed:\n{err}"
    assert intact, "the data file or a shard changed"
    assert len(result["history"]) == EPOCHS and result["pool_images"] == 128
    assert left == [] and leftovers(out) == [], f"the killed attempt left {left}"
    assert load_classifier(out / "student.pt").arch["n_classes"] == N_CLASSES
