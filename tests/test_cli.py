"""The command line's conventions: --version, shell completion, -v/-q on every command, exit 2 before any work for a
bad option or dataset, no side effects from `kr config`, --size, and `kr data`."""

from __future__ import annotations

import inspect
import json
import logging
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import kr.data
from kr.cli import app

runner = CliRunner()


def leaves(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command that runs something (a click command), by its words (`("schedule", "create")`)."""
    if not hasattr(group, "commands"):
        return [(path, group)]
    return [leaf for name, sub in group.commands.items() for leaf in leaves(sub, (*path, name))]


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with every kr default ($KR_HOME unset: ./runs) pointing into it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KR_HOME", raising=False)
    monkeypatch.setenv("KR_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path


def test_version_names_the_installed_package_and_the_code() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"kr {version('kr')}") and "code" in result.output


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "--install-completion" in result.output and "--show-completion" in result.output


def test_every_command_takes_verbose_and_quiet() -> None:
    commands = leaves(typer.main.get_command(app))
    assert len(commands) >= 15
    for words, command in commands:
        flags = {opt for param in command.params for opt in param.opts}
        assert {"-v", "--verbose", "-q", "--quiet"} <= flags, words


def test_verbosity_sets_the_log_level_and_quiet_with_verbose_is_refused() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        assert runner.invoke(app, ["data", "list", "--json", "-vv"]).exit_code == 0
        assert root.level == logging.DEBUG
        assert runner.invoke(app, ["data", "list", "--json", "-v"]).exit_code == 0
        assert root.level == logging.INFO
        assert runner.invoke(app, ["data", "list", "--json", "-q"]).exit_code == 0
        assert root.level == logging.ERROR
    finally:
        root.setLevel(before)
    result = runner.invoke(app, ["config", "-q", "-v"])
    assert result.exit_code == 2 and "contradict" in result.output


def test_config_writes_nothing(empty_cwd: Path) -> None:
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tracking"]["uri"] == f"sqlite:///{empty_cwd / 'runs' / 'mlflow.db'}"
    assert list(empty_cwd.iterdir()) == []  # no ./runs: only a command that runs makes the store's folder


@pytest.mark.parametrize("command", ["config", "run"])
def test_an_unknown_dataset_exits_2_before_anything_is_written(empty_cwd: Path, command: str) -> None:
    result = runner.invoke(app, [command, "--dataset", "breastmnsit", "--profile", "smoke"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    out = " ".join(result.output.split())
    assert "'breastmnsit'" in out and "did you mean breastmnist?" in out and "bloodmnist, " in out
    assert list(empty_cwd.iterdir()) == []


def test_a_missing_dataset_path_is_named(empty_cwd: Path) -> None:
    result = runner.invoke(app, ["config", "--dataset", "data/mine.npz"])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    assert str(empty_cwd / "data" / "mine.npz") in result.output.replace("\n", "")


def test_valid_datasets_pass(empty_cwd: Path) -> None:
    (empty_cwd / "images").mkdir()
    (empty_cwd / "mine.npz").write_bytes(b"")
    for dataset in ("BreastMNIST", "images", "mine.npz", "s3://bucket/data/mine.npz"):
        result = runner.invoke(app, ["config", "--json", "--dataset", dataset])
        assert result.exit_code == 0, (dataset, result.output)
        assert json.loads(result.output)["data"]["dataset"] == dataset


def test_size_flag_sets_data_size_over_the_config(tmp_path: Path) -> None:
    def size(*args: str) -> int:
        result = runner.invoke(app, ["config", "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["data"]["size"]

    assert size() == 28
    assert size("--size", "64") == 64
    assert size("--set", "data.size=128", "--size", "224") == 224  # a flag beats --set
    assert size("--set", "data.size=128") == 128
    result = runner.invoke(app, ["config", "--size", "65"])
    assert result.exit_code == 2 and "65" in result.output
    assert runner.invoke(app, ["config", "--no-such-option"]).exit_code == 2


def test_data_download_calls_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(flag: str, size: int, root: Path, *, url=None, md5=None, progress=True) -> Path:
        calls.append((flag, size, root, progress))
        return root / f"{flag}_{size}.npz"

    monkeypatch.setattr(kr.data, "download_medmnist", fake, raising=False)  # until kr.data has it
    monkeypatch.setenv("KR_DATA_ROOT", str(tmp_path / "env-root"))
    result = runner.invoke(app, ["data", "download", "BreastMNIST", "--size", "64", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert calls[-1] == ("breastmnist", 64, tmp_path, True) and result.output.strip() == str(
        tmp_path / "breastmnist_64.npz"
    )
    result = runner.invoke(app, ["data", "download", "pathmnist", "-q"])
    assert result.exit_code == 0 and calls[-1] == ("pathmnist", 28, tmp_path / "env-root", False)

    result = runner.invoke(app, ["data", "download", "pathmnst"])
    assert result.exit_code == 2 and "did you mean pathmnist?" in result.output and len(calls) == 2

    def broken(*args, **kwargs) -> Path:
        raise kr.data.DataError("breastmnist.npz: download failed (no network). Place the file by hand")

    monkeypatch.setattr(kr.data, "download_medmnist", broken, raising=False)
    result = runner.invoke(app, ["data", "download", "breastmnist"])
    assert result.exit_code == 1 and "Place the file by hand" in result.output


@pytest.mark.skipif(not hasattr(kr.data, "download_medmnist"), reason="kr.data.download_medmnist not written yet")
def test_data_download_matches_the_library_signature() -> None:
    params = inspect.signature(kr.data.download_medmnist).parameters
    assert list(params)[:3] == ["flag", "size", "root"] and "progress" in params


def test_data_list() -> None:
    result = runner.invoke(app, ["data", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["flag"]: r for r in json.loads(result.output)}
    assert "organmnist3d" not in rows
    assert rows["breastmnist"]["classes"] == ["malignant", "normal, benign"]
    assert rows["breastmnist"]["sizes"] == [28, 64, 128, 224] and rows["breastmnist"]["channels"] == 1
    assert os.environ.get("KR_HOME")  # the autouse fixture is in place: nothing here wrote into the user's home
