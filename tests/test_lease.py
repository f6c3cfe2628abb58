"""The lease: one holder at a time per name, from create-only tickets in the trail's store (a folder, and S3 on a
real moto server), taken over when its holder crashed and its time ran out."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import pytest
from servers import MotoServer, moto_fixture  # noqa: F401  (registers the `moto` fixture)

from kr.governance.trail import FolderStore, Lease, LeaseLost, LeaseTimeout, Trail, TrailError, open_trail

NAME = "kr-breastmnist-student"
FAST = {"poll_s": 0.05}  # tests poll often: the default backs off to a second


@pytest.fixture(autouse=True)
def _no_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KR_AUDIT_HMAC_KEY", "KR_AUDIT_HMAC_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def trail(tmp_path: Path) -> Trail:
    return open_trail(str(tmp_path / "audit"))


@pytest.fixture
def s3_trail(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Trail:
    for key in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(key)
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    return open_trail(f"s3://{moto.create_bucket()}/audit")


def hold(trail: Trail, holder: str, seconds: float = 0.01) -> tuple[float, float, int]:
    """Take the lease, hold it a moment, give it back: (entered, left, ticket), by the system-wide monotonic clock."""
    with trail.lease(NAME, holder, ttl_s=60, wait_s=120, **FAST) as lease:
        entered = time.monotonic()
        lease.check()
        time.sleep(seconds)
        lease.check()
        left = time.monotonic()
    return entered, left, lease.ticket


def assert_one_at_a_time(intervals: list[tuple[float, float, int]], n: int) -> None:
    assert len(intervals) == n
    ordered = sorted(intervals)
    for (_, left, _), (entered, _, _) in zip(ordered, ordered[1:], strict=False):
        assert entered >= left, "two holders at once"
    assert sorted(t for _, _, t in intervals) == list(range(1, n + 1))  # one ticket each, no gaps


def contend(trail_of: callable, n: int) -> list[tuple[float, float, int]]:
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[float, float, int]:
        barrier.wait()
        return hold(trail_of(), f"thread-{i}")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_twenty_threads_one_holder_at_a_time_in_a_folder(trail: Trail) -> None:
    intervals = contend(lambda: open_trail(trail.uri), 20)  # a Trail each, as separate processes would have
    assert_one_at_a_time(intervals, 20)
    folder = Path(trail.uri) / "leases" / NAME
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{n:09d}.json" for n in range(1, 21)] + [f"{n:09d}.released" for n in range(1, 21)]
    )
    assert trail.verify().ok  # leases are not records: the chain check ignores them


def test_twenty_threads_one_holder_at_a_time_on_s3(s3_trail: Trail) -> None:
    assert_one_at_a_time(contend(lambda: s3_trail, 20), 20)  # one S3Store and boto3 client, shared


def _hold_several(uri: str, process: int, times: int) -> list[tuple[float, float, int]]:
    trail = open_trail(uri)
    return [hold(trail, f"process-{process}-{i}", 0.005) for i in range(times)]


def test_two_processes_one_holder_at_a_time(trail: Trail) -> None:
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        results = list(pool.map(_hold_several, [trail.uri] * 2, [0, 1], [6, 6]))
    assert_one_at_a_time([i for r in results for i in r], 12)


def test_the_ticket_says_who_holds_it_until_when(trail: Trail) -> None:
    before = datetime.now(UTC)
    with trail.lease(NAME, "run-abc", ttl_s=30) as lease:
        ticket = json.loads((Path(trail.uri) / "leases" / NAME / "000000001.json").read_bytes())
        assert (ticket["name"], ticket["holder"], ticket["ticket"]) == (NAME, "run-abc", 1)
        acquired = datetime.fromisoformat(ticket["acquired_at"])
        expires = datetime.fromisoformat(ticket["expires_at"])
        assert acquired.tzinfo is not None and acquired.utcoffset().total_seconds() == 0
        assert before <= acquired <= datetime.now(UTC)
        assert abs((expires - acquired).total_seconds() - 30) < 0.01
        assert (lease.holder, lease.acquired_at, lease.expires_at) == ("run-abc", acquired, expires)
        assert lease.held
    assert not lease.held
    assert (Path(trail.uri) / "leases" / NAME / "000000001.released").exists()


def test_a_lease_is_released_when_the_block_raises(trail: Trail) -> None:
    with pytest.raises(KeyError), trail.lease(NAME, "a"):
        raise KeyError("boom")
    with trail.lease(NAME, "b", wait_s=0) as lease:  # free at once
        assert lease.ticket == 2


@pytest.mark.fault
def test_a_crashed_holders_expired_lease_is_taken_over(trail: Trail) -> None:
    started = time.monotonic()
    crashed = trail.lease(NAME, "crashed-run", ttl_s=0.3).acquire()  # never released: the process died
    with trail.lease(NAME, "next-run", wait_s=10, **FAST) as lease:
        assert lease.ticket == 2 and time.monotonic() - started >= 0.2
        with pytest.raises(LeaseLost, match="expired"):
            crashed.check()  # had the crashed run come back, it must not act
        with pytest.raises(LeaseLost):
            crashed.renew()


def test_check_fails_once_the_lease_has_expired(trail: Trail) -> None:
    with trail.lease(NAME, "slow-run", ttl_s=1) as lease:
        lease.check()
        time.sleep(1.05)
        with pytest.raises(LeaseLost, match="expired"):
            lease.check()


def test_renew_extends_a_held_lease(trail: Trail) -> None:
    with trail.lease(NAME, "long-run", ttl_s=0.4, **FAST) as lease:
        time.sleep(0.2)
        lease.renew(ttl_s=5)
        time.sleep(0.3)
        lease.check()  # past the first expiry, within the renewed one
        with pytest.raises(LeaseTimeout):
            trail.lease(NAME, "other", wait_s=0.2, **FAST).acquire()
    assert lease.ticket == 2  # a renewal is the holder's own next ticket


def test_waiting_too_long_is_a_timeout_naming_the_holder(trail: Trail) -> None:
    with trail.lease(NAME, "champion-run", ttl_s=60):
        started = time.monotonic()
        with pytest.raises(LeaseTimeout, match="champion-run") as caught:
            trail.lease(NAME, "challenger", wait_s=0.3, **FAST).acquire()
        assert 0.3 <= time.monotonic() - started < 2
        assert isinstance(caught.value, TrailError)
    with trail.lease("other-model", "challenger", wait_s=0):  # another name is another lease
        pass


def test_lease_names_and_arguments_are_checked(trail: Trail) -> None:
    for bad in ["", "a/b", "../x", ".hidden"]:
        with pytest.raises(TrailError, match="lease name"):
            trail.lease(bad, "run")
    with pytest.raises(TrailError, match="ttl_s"):
        trail.lease(NAME, "run", ttl_s=0)
    lease = trail.lease(NAME, "run")
    with pytest.raises(LeaseLost, match="not held"):
        lease.check()


def test_a_lease_needs_conditional_writes(tmp_path: Path) -> None:
    class IgnoresConditions(FolderStore):
        def put_if_absent(self, key: str, data: bytes) -> bool:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return True

    with pytest.raises(TrailError, match="conditional writes"):
        Trail(IgnoresConditions(tmp_path)).lease(NAME, "run").acquire()


def test_lease_class_on_a_bare_store(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    with Lease(store, NAME, "a", ttl_s=5) as lease:
        assert lease.ticket == 1
