"""The container tests' own safeguards (tests/docker_engine.py, conftest.py): they run after every other test, and
they refuse to start building on a disk that cannot hold the images."""

import pytest
from docker_engine import ROOT, short_of_disk


def test_docker_tests_run_after_every_other_test(request: pytest.FixtureRequest) -> None:
    marks = [item.get_closest_marker("docker") is not None for item in request.session.items]
    assert marks == sorted(marks), "a docker-marked test is collected before a test without the mark"


def test_a_disk_without_room_for_the_images_is_named_before_any_build(tmp_path) -> None:
    why = short_of_disk([tmp_path / "not" / "made", ROOT], needed_gb=1e9)
    assert why is not None and "GB free at" in why and str(tmp_path) in why
    assert short_of_disk([tmp_path, ROOT], needed_gb=0) is None
