"""Process-wide settings a step starts from: intra-op threads sized to the container's CPU quota (kr.runtime), and
the code version every record carries (kr.run.tracking.code_version)."""

import logging
import os
from pathlib import Path

import pytest
import torch
from datagen import git

import kr
from kr import runtime
from kr.run import tracking

# --- threads ----------------------------------------------------------------------------------------------------


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def cgroup_v1(root: Path, quota: str, period: str = "100000", controller: str = "cpu") -> Path:
    folder = root / controller
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (folder / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.fixture
def affinity(monkeypatch):
    """Pretend this process may run on `n` CPUs; torch's thread count is restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(n)), raising=False)

    yield set_cpus
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("800000 100000", 8), ("150000 100000", 2), ("50000 100000", 1), ("100000 100000", 1), ("max 100000", None)],
)
def test_cgroup_v2_quota_counts_whole_cpus_rounded_up(tmp_path, cpu_max, cpus):
    assert runtime.cgroup_cpu_limit(cgroup_v2(tmp_path, cpu_max)) == cpus


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota_and_period(tmp_path, controller):
    assert runtime.cgroup_cpu_limit(cgroup_v1(tmp_path / "a", "400000", controller=controller)) == 4
    assert runtime.cgroup_cpu_limit(cgroup_v1(tmp_path / "b", "250000", "100000", controller)) == 3
    assert runtime.cgroup_cpu_limit(cgroup_v1(tmp_path / "c", "-1", controller=controller)) is None


@pytest.mark.parametrize("cpu_max", ["", "garbage", "abc 100000", "800000 abc", "800000 0", "0 100000", "1 2 3"])
def test_malformed_cgroup_files_mean_no_quota(tmp_path, cpu_max):
    assert runtime.cgroup_cpu_limit(cgroup_v2(tmp_path, cpu_max)) is None


def test_missing_or_unreadable_cgroup_files_mean_no_quota(tmp_path):
    assert runtime.cgroup_cpu_limit(tmp_path / "absent") is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")  # no period file
    assert runtime.cgroup_cpu_limit(tmp_path) is None
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "cpu.max").write_bytes(b"\xff\xfe\x00")
    assert runtime.cgroup_cpu_limit(binary) is None


def test_threads_are_capped_at_the_containers_cpu_quota(tmp_path, affinity):
    """A pod limited to 8 CPUs on a 96-core node sees all 96 in its affinity mask: it must start 8 threads."""
    affinity(96)
    assert runtime.configure_threads(cgroup_v2(tmp_path / "v2", "800000 100000")) == 8
    assert torch.get_num_threads() == 8
    assert runtime.configure_threads(cgroup_v1(tmp_path / "v1", "300000")) == 3
    assert torch.get_num_threads() == 3


def test_threads_follow_the_affinity_when_it_is_smaller_or_there_is_no_quota(tmp_path, affinity):
    affinity(2)
    assert runtime.configure_threads(cgroup_v2(tmp_path / "quota", "800000 100000")) == 2
    assert runtime.configure_threads(cgroup_v2(tmp_path / "max", "max 100000")) == 2
    assert runtime.configure_threads(cgroup_v2(tmp_path / "bad", "not a quota")) == 2
    assert runtime.configure_threads(tmp_path / "no-cgroup") == 2
    assert torch.get_num_threads() == 2


def test_omp_num_threads_set_by_the_user_wins(tmp_path, affinity, monkeypatch):
    affinity(96)
    root = cgroup_v2(tmp_path, "800000 100000")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.configure_threads(root) == 3
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")  # nested levels: the outermost is torch's
    assert runtime.thread_count(root)[0] == 5
    for unusable in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert runtime.thread_count(root)[0] == 8


def test_the_thread_choice_is_logged_once(tmp_path, affinity, monkeypatch, caplog):
    affinity(96)
    monkeypatch.setattr(runtime, "_logged_threads", None)
    root = cgroup_v2(tmp_path, "800000 100000")
    with caplog.at_level(logging.INFO, logger="kr.runtime"):
        runtime.configure_threads(root)
        runtime.configure_threads(root)
    lines = [r.getMessage() for r in caplog.records if r.name == "kr.runtime"]
    assert len(lines) == 1 and "8" in lines[0] and "quota" in lines[0], lines


# --- code version -----------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def provenance_env(monkeypatch):
    for name in ("KR_COMMIT", "KR_DIRTY", "KR_GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository with one commit: a package folder `pkg`, a README, and an ignored `venv/`."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('__version__ = "0"\n')
    (tmp_path / "README.md").write_text("readme\n")
    (tmp_path / ".gitignore").write_text("venv/\n")
    git("init", "-q", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("commit", "-q", "-m", "one", cwd=tmp_path)
    return tmp_path


def test_code_version_names_the_commit_and_marks_a_dirty_tree(checkout, provenance_env):
    pkg = checkout / "pkg"
    clean = f"{kr.__version__}+{git('rev-parse', 'HEAD', cwd=checkout)[:12]}"
    assert tracking.code_version(pkg) == clean

    (pkg / "__init__.py").write_text('__version__ = "1"\n')  # an edit not committed
    assert tracking.code_version(pkg) == clean + ".dirty"
    git("add", "-A", cwd=checkout)  # staged is still not committed
    assert tracking.code_version(pkg) == clean + ".dirty"
    git("reset", "-q", "--hard", cwd=checkout)
    assert tracking.code_version(pkg) == clean

    (checkout / "README.md").write_text("changed\n")  # a tracked file outside the package changes the tree too
    assert tracking.code_version(pkg) == clean + ".dirty"
    git("checkout", "-q", "--", "README.md", cwd=checkout)

    (pkg / "new_module.py").write_text("")  # an untracked module in the package would be imported
    assert tracking.code_version(pkg) == clean + ".dirty"
    (pkg / "new_module.py").unlink()
    (checkout / "notes.txt").write_text("")  # an untracked file elsewhere runs no code
    assert tracking.code_version(pkg) == clean

    provenance_env.setenv("KR_COMMIT", COMMIT)  # a real checkout wins over the environment
    assert tracking.code_version(pkg) == clean


def test_code_version_without_a_checkout_reads_the_commit_the_image_was_built_from(tmp_path, provenance_env):
    assert tracking.code_version(tmp_path) == f"{kr.__version__}+unknown"
    provenance_env.setenv("KR_COMMIT", "unknown")  # an image built without --build-arg KR_COMMIT
    assert tracking.code_version(tmp_path) == f"{kr.__version__}+unknown"
    provenance_env.setenv("KR_COMMIT", COMMIT)
    assert tracking.code_version(tmp_path) == f"{kr.__version__}+{COMMIT[:12]}"
    provenance_env.setenv("KR_DIRTY", "0")
    assert tracking.code_version(tmp_path) == f"{kr.__version__}+{COMMIT[:12]}"
    provenance_env.setenv("KR_DIRTY", "1")
    assert tracking.code_version(tmp_path) == f"{kr.__version__}+{COMMIT[:12]}.dirty"
    provenance_env.delenv("KR_COMMIT")
    provenance_env.delenv("KR_DIRTY")
    provenance_env.setenv("KR_GIT_COMMIT", "abc123")  # the older variable
    assert tracking.code_version(tmp_path) == f"{kr.__version__}+abc123"


def test_an_installed_copy_inside_some_repository_is_not_that_repositorys_code(checkout, provenance_env):
    """A wheel installed into an (ignored) venv that lives inside a checkout does not take the checkout's commit."""
    installed = checkout / "venv" / "site-packages" / "kr"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    provenance_env.setenv("KR_COMMIT", COMMIT)
    assert tracking.code_version(installed) == f"{kr.__version__}+{COMMIT[:12]}"


def test_code_version_of_this_checkout_has_the_documented_shape():
    assert tracking.code_version().startswith(f"{kr.__version__}+")
    assert tracking.code_version().split("+", 1)[1].removesuffix(".dirty") != ""
