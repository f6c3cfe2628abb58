"""The trail: append-only, hash-chained records in a folder and in S3 (a real moto server process)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from servers import MotoServer, mlflow_server, moto_fixture  # noqa: F401  (registers the `moto` fixture)

from kr.governance.trail import (
    GENESIS,
    SCHEMA,
    FolderStore,
    S3Store,
    Trail,
    TrailError,
    canonical,
    open_trail,
    record_hash,
    sha256_file,
)


def body(run_id: str, accuracy: float = 0.81) -> dict[str, Any]:
    """A body shaped like the lead's: inputs, outputs, gates."""
    return {
        "run_id": run_id,
        "inputs": {"dataset": "breastmnist", "md5": "0" * 32, "code_version": "abc123", "config": {"seed": 0}},
        "outputs": {"model_sha256": "f" * 64, "registry_version": None},
        "gates": {"accuracy": {"threshold": 0.7, "value": accuracy, "passed": accuracy >= 0.7}},
        "promoted": False,
    }


def fill(trail: Trail, n: int = 3) -> list[dict]:
    return [trail.append(body(f"run-{i}")) for i in range(1, n + 1)]


def assert_chain(trail: Trail, n: int) -> None:
    records = trail.records()
    assert [r["sequence"] for r in records] == list(range(1, n + 1))
    assert records[0]["previous_hash"] == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["previous_hash"] == before["record_hash"]
    report = trail.verify()
    assert report.ok, report.summary()
    assert report.checked == n


# ------------------------------------------------------------------------------------------------------ folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def trail(folder: Path) -> Trail:
    return open_trail(str(folder))


def rewrite(path: Path, data: bytes) -> None:
    """Tamper as an attacker would: records are created read-only, so make it writable first."""
    path.chmod(0o644)
    path.write_bytes(data)


def test_append_three_and_verify(trail: Trail, folder: Path) -> None:
    entries = fill(trail)
    assert [e["sequence"] for e in entries] == [1, 2, 3]
    assert [e["record_id"] for e in entries] == ["000001-run-1", "000002-run-2", "000003-run-3"]
    assert entries[0]["previous_hash"] == GENESIS
    assert entries[1]["previous_hash"] == entries[0]["record_hash"]
    assert all(e["created"] for e in entries)
    assert entries[2]["uri"] == str(folder / "000003.json")
    assert sorted(p.name for p in folder.iterdir()) == ["000001.json", "000002.json", "000003.json"]
    # the file is the canonical form and record_hash covers everything but itself
    stored = json.loads((folder / "000002.json").read_bytes())
    assert (folder / "000002.json").read_bytes() == canonical(stored) + b"\n"
    assert stored["record_hash"] == record_hash(stored) == entries[1]["record_hash"]
    assert stored["gates"] == body("run-2")["gates"] and stored["schema"] == "kr.audit/1" == SCHEMA
    assert_chain(trail, 3)
    report = trail.verify()
    assert (report.head, report.head_hash) == ("000003-run-3", entries[2]["record_hash"])


def test_every_single_byte_change_is_detected_and_named(trail: Trail, folder: Path) -> None:
    fill(trail)
    path = folder / "000002.json"
    original = path.read_bytes()
    for i in range(len(original)):
        # an ASCII change at every byte, and now and then a byte that is not even UTF-8
        for mask in (0x01, 0x80) if i % 5 == 0 else (0x01,):
            flipped = bytearray(original)
            flipped[i] ^= mask
            rewrite(path, bytes(flipped))
            report = trail.verify()
            assert not report.ok, f"byte {i} ^ {mask:#x} went unnoticed"
            assert (report.first_bad, report.sequence, report.checked) == ("000002.json", 2, 1), report.problem
    rewrite(path, original)
    assert trail.verify().ok


def test_deleted_record_is_named_missing(trail: Trail, folder: Path) -> None:
    fill(trail)
    (folder / "000002.json").unlink()
    report = trail.verify()
    assert not report.ok and report.first_bad == "000002.json" and report.sequence == 2
    assert "missing" in report.problem
    assert report.head == "000001-run-1"


def test_renamed_record_is_a_name_content_mismatch(trail: Trail, folder: Path) -> None:
    fill(trail)
    (folder / "000002.json").unlink()
    (folder / "000003.json").rename(folder / "000002.json")  # hide the gap by renumbering
    report = trail.verify()
    assert report.first_bad == "000002.json" and "sequence" in report.problem


def test_edit_with_recomputed_hash_breaks_the_next_link(trail: Trail, folder: Path) -> None:
    fill(trail)
    record = json.loads((folder / "000002.json").read_bytes())
    record["gates"]["accuracy"]["value"] = 0.99
    record["record_hash"] = record_hash(record)
    rewrite(folder / "000002.json", canonical(record) + b"\n")
    report = trail.verify()
    assert report.first_bad == "000003.json" and "chain broken" in report.problem


def test_pretty_printed_record_is_flagged(trail: Trail, folder: Path) -> None:
    fill(trail, 2)
    record = json.loads((folder / "000001.json").read_bytes())
    rewrite(folder / "000001.json", json.dumps(record, indent=2).encode())
    report = trail.verify()
    assert report.first_bad == "000001.json" and "canonical" in report.problem


def test_invalid_json_and_stray_objects(trail: Trail, folder: Path) -> None:
    fill(trail)
    rewrite(folder / "000002.json", b'{"not": "closed"')
    report = trail.verify()
    assert report.first_bad == "000002.json" and "not valid JSON" in report.problem
    with pytest.raises(TrailError, match="000002.json"):
        trail.records()
    (folder / "000002.json").unlink()
    (folder / "2.json").write_text("{}")  # a record name without the zero padding is not a record
    assert trail.verify().first_bad == "000002.json"


def test_stray_object_after_an_intact_chain(trail: Trail, folder: Path) -> None:
    fill(trail, 2)
    (folder / "notes.json").write_text("{}")
    report = trail.verify()
    assert not report.ok and report.first_bad == "notes.json" and report.checked == 2


def test_empty_trail_verifies(trail: Trail) -> None:
    report = trail.verify()
    assert report.ok and report.checked == 0 and report.head is None
    assert trail.records() == [] and trail.find("run-1") is None


def test_append_is_idempotent_per_run(trail: Trail, folder: Path) -> None:
    first = fill(trail, 2)[1]
    again = trail.append(body("run-2"))
    assert again == {**first, "created": False}
    assert len(list(folder.glob("*.json"))) == 2


def test_conflicting_append_for_a_run_raises(trail: Trail) -> None:
    fill(trail, 2)
    with pytest.raises(TrailError, match=r"run 'run-1' already has audit record 000001-run-1 .*fields: gates"):
        trail.append(body("run-1", accuracy=0.5))
    assert trail.verify().checked == 2


def test_get_find_and_records(trail: Trail) -> None:
    entries = fill(trail)
    assert trail.get("000002-run-2")["record_hash"] == entries[1]["record_hash"]
    assert trail.get("000002")["run_id"] == "run-2"
    assert trail.find("run-3")["sequence"] == 3 and trail.find("nope") is None
    assert [r["run_id"] for r in trail.records()] == ["run-1", "run-2", "run-3"]
    with pytest.raises(TrailError, match="holds 000002-run-2"):
        trail.get("000002-run-9")
    with pytest.raises(TrailError, match="no audit record"):
        trail.get("000009-run-9")


def test_body_is_normalised_and_checked(trail: Trail) -> None:
    entry = trail.append({**body("run-nan"), "auc": float("nan"), "shape": (28, 28)})
    record = trail.get(entry["record_id"])
    assert record["auc"] is None and record["shape"] == [28, 28]
    for bad, message in [
        ({"inputs": {}}, "needs a run_id"),
        ({"run_id": "a/b"}, "needs a run_id"),
        ({"run_id": "r", "sequence": 4}, "may not set sequence"),
        ({"run_id": "r", "blob": object()}, "not JSON-serialisable"),
    ]:
        with pytest.raises(TrailError, match=message):
            trail.append(bad)


def test_records_are_never_overwritten(folder: Path) -> None:
    store = FolderStore(folder)
    assert store.put_if_absent("000001.json", b"first")
    assert not store.put_if_absent("000001.json", b"second")
    assert (folder / "000001.json").read_bytes() == b"first"
    assert store.names() == ["000001.json"]  # no temporary file left behind


def test_concurrent_appends_from_threads(trail: Trail) -> None:
    n = 8
    barrier = threading.Barrier(n)

    def one(i: int) -> dict:
        barrier.wait()  # all at once, so they really contend for the same sequence
        return open_trail(trail.uri).append(body(f"thread-{i}"))

    with ThreadPoolExecutor(n) as pool:
        entries = list(pool.map(one, range(n)))
    assert sorted(e["sequence"] for e in entries) == list(range(1, n + 1))
    assert_chain(trail, n)


def _append_runs(uri: str, run_ids: list[str]) -> list[int]:
    trail = open_trail(uri)
    return [trail.append(body(r))["sequence"] for r in run_ids]


def test_concurrent_appends_from_processes(trail: Trail) -> None:
    jobs = [[f"proc-{p}-{i}" for i in range(3)] for p in range(3)]
    with ProcessPoolExecutor(3, mp_context=get_context("fork")) as pool:
        results = list(pool.map(_append_runs, [trail.uri] * len(jobs), jobs))
    assert sorted(s for seqs in results for s in seqs) == list(range(1, 10))
    assert_chain(trail, 9)


def test_open_trail_locations(tmp_path: Path) -> None:
    assert isinstance(open_trail(str(tmp_path)).store, FolderStore)
    assert open_trail(tmp_path.as_uri()).uri == str(tmp_path)
    s3 = open_trail("s3://kr-audit/teams/x/", client=object()).store
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("kr-audit", "teams/x/")
    assert open_trail("s3://kr-audit", client=object()).store.prefix == ""
    for uri, message in [
        ("", "empty"),
        ("s3://", "names no bucket"),
        ("s3:///audit", "names no bucket"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("file://elsewhere/x", "must be local"),
    ]:
        with pytest.raises(TrailError, match=message):
            open_trail(uri, client=object())


def test_public_api_is_re_exported() -> None:
    import kr.governance.trail as trail_pkg
    from kr.governance.trail import chain, stores

    expected = {"Trail", "TrailError", "VerifyReport", "open_trail", "sha256_file", "canonical", "record_hash"}
    expected |= {"stored_bytes", "record_key", "Store", "FolderStore", "S3Store", "s3_client", "normalise_body"}
    expected |= {"SCHEMA", "GENESIS"}
    assert expected <= set(trail_pkg.__all__)
    assert all(hasattr(trail_pkg, name) for name in trail_pkg.__all__)
    assert trail_pkg.Trail is chain.Trail and trail_pkg.open_trail is stores.open_trail
    assert stores.Store is chain.Store  # one protocol, defined beside the Trail that consumes it
    assert not hasattr(trail_pkg, "AuditTrail") and not hasattr(trail_pkg, "AuditError")


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(3 << 20 | 5))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------- S3


@pytest.fixture
def s3_trail(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Trail, Callable, str]:
    """A trail in a fresh bucket, reached the production way: endpoint and credentials from the environment."""
    for key in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(key)
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    bucket = moto.create_bucket()

    def key(name: str) -> str:
        return f"audit/trail/{name}"

    return open_trail(f"s3://{bucket}/audit/trail"), key, bucket


def test_s3_append_verify_tamper_delete(s3_trail, moto: MotoServer) -> None:
    trail, key, bucket = s3_trail
    entries = fill(trail)
    assert entries[1]["uri"] == f"s3://{bucket}/{key('000002.json')}"
    assert moto.keys(bucket) == [key(f"00000{i}.json") for i in (1, 2, 3)]
    assert_chain(trail, 3)

    client = moto.client()
    original = client.get_object(Bucket=bucket, Key=key("000002.json"))["Body"].read()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key("000002.json"), Body=bytes(flipped))
    report = trail.verify()
    assert (report.ok, report.first_bad, report.checked) == (False, "000002.json", 1)

    client.delete_object(Bucket=bucket, Key=key("000002.json"))
    report = trail.verify()
    assert report.first_bad == "000002.json" and "missing" in report.problem


def test_s3_conditional_write_and_idempotency(s3_trail, moto: MotoServer) -> None:
    trail, key, bucket = s3_trail
    first = fill(trail, 2)[0]
    assert trail.append(body("run-1")) == {**first, "created": False}
    with pytest.raises(TrailError, match="already has audit record"):
        trail.append(body("run-1", accuracy=0.1))
    # the store itself refuses to replace an object (If-None-Match: *, answered 412 by moto as by S3)
    assert not trail.store.put_if_absent("000001.json", b"{}")
    assert moto.keys(bucket) == [key("000001.json"), key("000002.json")]
    assert_chain(trail, 2)


def test_s3_concurrent_appends(s3_trail) -> None:
    trail, _, _ = s3_trail
    n = 6
    barrier = threading.Barrier(n)

    def one(i: int) -> dict:
        barrier.wait()
        return trail.append(body(f"s3-thread-{i}"))  # one boto3 client, shared: clients are thread-safe

    with ThreadPoolExecutor(n) as pool:
        entries = list(pool.map(one, range(n)))
    assert sorted(e["sequence"] for e in entries) == list(range(1, n + 1))
    assert_chain(trail, n)


def test_s3_missing_bucket_is_a_clear_error(s3_trail) -> None:
    _ = s3_trail  # the environment points at moto
    with pytest.raises(TrailError, match="cannot list s3://no-such-bucket-kr/audit/.*NoSuchBucket"):
        open_trail("s3://no-such-bucket-kr/audit").append(body("run-1"))


# ------------------------------------------------------------------------------------------------------ MLflow


def test_mlflow_server_proxies_artifacts_to_moto(moto: MotoServer, tmp_path: Path) -> None:
    """The servers helper end to end: an MLflow server whose artifacts land in the moto bucket."""
    from mlflow import MlflowClient

    bucket = moto.create_bucket()
    with mlflow_server(tmp_path / "mlflow", f"s3://{bucket}/mlflow", moto.env) as server:
        client = MlflowClient(tracking_uri=server.uri)
        run = client.create_run(client.create_experiment("audit-smoke"))
        client.log_param(run.info.run_id, "seed", "0")
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert client.get_run(run.info.run_id).data.params == {"seed": "0"}
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in moto.keys(bucket, "mlflow/"))
    assert server.process.proc.returncode is not None  # stopped
