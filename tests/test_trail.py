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
    # beside the records: the head hint, the run index and the conditional-write probe, none of them a `.json` here
    assert sorted(p.name for p in folder.iterdir()) == [".probe", "000001.json", "000002.json", "000003.json"] + [
        "HEAD",
        "runs",
    ]
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["run-1.json", "run-2.json", "run-3.json"]
    assert json.loads((folder / "HEAD").read_bytes()) == {
        "sequence": 3,
        "record_id": "000003-run-3",
        "record_hash": entries[2]["record_hash"],
    }
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


def s3_extras(key: Callable, n: int) -> list[str]:
    """The objects a trail of `n` records keeps beside them: probe, head hint, run index."""
    return [key(".probe/conditional-write.json"), key("HEAD"), *(key(f"runs/run-{i}.json") for i in range(1, n + 1))]


def test_s3_append_verify_tamper_delete(s3_trail, moto: MotoServer) -> None:
    trail, key, bucket = s3_trail
    entries = fill(trail)
    assert entries[1]["uri"] == f"s3://{bucket}/{key('000002.json')}"
    records = [key(f"00000{i}.json") for i in (1, 2, 3)]
    assert moto.keys(bucket) == sorted([*records, *s3_extras(key, 3)])
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
    assert moto.keys(bucket) == sorted([key("000001.json"), key("000002.json"), *s3_extras(key, 2)])
    assert_chain(trail, 2)


def test_s3_probe_passes_on_a_store_that_honours_if_none_match(s3_trail, moto: MotoServer) -> None:
    trail, key, bucket = s3_trail
    trail.check_conditional_writes()  # moto, like S3, answers 412 to the second If-None-Match: * write
    assert moto.keys(bucket) == [key(".probe/conditional-write.json")]
    assert not trail.store.put_if_absent(".probe/conditional-write.json", b"{}")
    open_trail(trail.uri).check_conditional_writes()  # another process finds the probe in place: still refused
    assert moto.keys(bucket) == [key(".probe/conditional-write.json")]


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
    # the first request is the conditional-write probe's
    with pytest.raises(TrailError, match=r"cannot write \.probe/\S+ in s3://no-such-bucket-kr/audit/.*NoSuchBucket"):
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


# ------------------------------------------------------------------------------------------- the head and tails


def cli(*args: str) -> Any:
    """`kr <args>` in this process (CliRunner); `.output` holds stdout and stderr together."""
    from typer.testing import CliRunner

    from kr.cli import app

    return CliRunner().invoke(app, list(args))


def flat(text: str) -> str:
    """Output with line wrapping undone, so a long hash reads as one token."""
    return " ".join(text.split())


def rewrite_chain(folder: Path, start: int, change: Callable[[dict], None]) -> None:
    """An insider's consistent rewrite: change record `start`, then re-hash and re-link it and every later record."""
    previous = json.loads((folder / f"{start - 1:06d}.json").read_bytes())["record_hash"] if start > 1 else GENESIS
    seq = start
    while (folder / f"{seq:06d}.json").exists():
        record = json.loads((folder / f"{seq:06d}.json").read_bytes())
        if seq == start:
            change(record)
        record["previous_hash"] = previous
        record["record_hash"] = record_hash(record)
        rewrite(folder / f"{seq:06d}.json", canonical(record) + b"\n")
        previous = record["record_hash"]
        seq += 1


def forget_hints(folder: Path) -> None:
    """What a careful insider (or a trail written by older code) leaves: records only, no head hint, no run index."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path.parent == folder and path.suffix == ".json":
            continue
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()


def test_verify_prints_the_head_sequence_and_hash(trail: Trail) -> None:
    entries = fill(trail)
    report = trail.verify()
    assert report.head_sequence == 3 and report.head_hash == entries[2]["record_hash"]
    result = cli("audit", "verify", "--uri", trail.uri)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "3 record(s)" in out and "000003-run-3" in out and entries[2]["record_hash"] in out


@pytest.mark.fault
def test_a_cut_tail_fails_expect_head(trail: Trail, folder: Path) -> None:
    entries = fill(trail)
    head = f"3:{entries[2]['record_hash']}"
    assert cli("audit", "verify", "--uri", trail.uri, "--expect-head", head).exit_code == 0
    (folder / "000003.json").unlink()
    forget_hints(folder)  # the insider also removes the head hint
    assert trail.verify().ok  # the chain alone cannot see a cut tail
    report = trail.verify(expect=[head])
    assert not report.ok and report.sequence == 3 and "ends at 000002" in report.problem
    result = cli("audit", "verify", "--uri", trail.uri, "--expect-head", head)
    assert result.exit_code == 1 and "ends at 000002" in flat(result.output), result.output
    # an older published record, by record_id and hash, is still present and intact
    older = f"{entries[1]['record_id']}:{entries[1]['record_hash']}"
    assert cli("audit", "verify", "--uri", trail.uri, "--expect-head", older).exit_code == 0


@pytest.mark.fault
def test_a_consistently_rewritten_chain_fails_expect_head(trail: Trail, folder: Path) -> None:
    entries = fill(trail)
    forget_hints(folder)

    def improve(record: dict) -> None:
        record["gates"]["accuracy"]["value"] = 0.99

    rewrite_chain(folder, 2, improve)
    assert trail.verify().ok  # re-hashed and re-linked: the chain alone is consistent
    refs = [f"{e['sequence']}:{e['record_hash']}" for e in entries]
    assert trail.verify(expect=refs[:1]).ok  # record 1 was not touched
    report = trail.verify(expect=refs)
    assert not report.ok and report.sequence == 2 and "expected" in report.problem
    result = cli("audit", "verify", "--uri", trail.uri, "--expect-head", refs[2])
    assert result.exit_code == 1 and "000003" in result.output, result.output
    wrong_run = f"000003-run-9:{trail.records()[2]['record_hash']}"
    assert not trail.verify(expect=[wrong_run]).ok


def test_expect_head_syntax(trail: Trail) -> None:
    from kr.governance.trail import RecordRef

    fill(trail, 1)
    digest = "a" * 64
    assert RecordRef.parse(f"7:{digest}") == RecordRef(sequence=7, record_hash=digest)
    ref = RecordRef.parse(f"000007-run:a=b@c:{digest}")  # a run id may hold ':' and '@': the hash is the last field
    assert (ref.sequence, ref.record_id, ref.record_hash) == (7, "000007-run:a=b@c", digest)
    for bad in ["", "7", f"x:{digest}", "7:abc", f"0:{digest}", f"7:{digest.upper()}x"]:
        with pytest.raises(TrailError, match="SEQUENCE:HASH"):
            RecordRef.parse(bad)
    result = cli("audit", "verify", "--uri", trail.uri, "--expect-head", "7")
    assert result.exit_code == 2 and "SEQUENCE:HASH" in result.output


def test_the_head_hint_catches_a_careless_cut(trail: Trail, folder: Path) -> None:
    fill(trail)
    (folder / "000003.json").unlink()  # the hint still names record 3
    report = trail.verify()
    assert not report.ok and report.first_bad == "HEAD" and "000003" in report.problem
    with pytest.raises(TrailError, match="HEAD"):
        trail.append(body("run-4"))  # never chain onto a trail whose newest records are gone


# ---------------------------------------------------------------------------------------------------- signing

KEY = "k" * 32


@pytest.fixture(autouse=True)
def _no_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KR_AUDIT_HMAC_KEY", "KR_AUDIT_HMAC_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)


def key_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def signature(secret: str, digest: str) -> str:
    import hmac

    return hmac.new(secret.encode(), digest.encode(), hashlib.sha256).hexdigest()


def test_records_are_signed_when_a_key_is_set(trail: Trail, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY", KEY)
    entries = fill(open_trail(str(folder)), 2)
    stored = json.loads((folder / "000002.json").read_bytes())
    assert stored["key_id"] == key_id(KEY)
    assert stored["signature"] == signature(KEY, stored["record_hash"])
    # the hash covers key_id (so a signed record cannot pass as unsigned) but not the signature made over it
    assert stored["record_hash"] == record_hash(stored) == entries[1]["record_hash"]
    assert record_hash({k: v for k, v in stored.items() if k != "signature"}) == stored["record_hash"]
    report = open_trail(str(folder)).verify()
    assert report.ok and report.signed == 2 and report.signatures_checked, report.summary()
    result = cli("audit", "verify", "--uri", str(folder), "--require-signatures")
    assert result.exit_code == 0 and "2 signed" in flat(result.output), result.output
    with pytest.raises(TrailError, match="may not set signature"):
        trail.append({**body("run-x"), "signature": "0" * 64})


def test_key_file_from_a_mounted_secret(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret" / "hmac-key"
    secret.parent.mkdir()
    secret.write_text(KEY + "\n")  # `kubectl create secret --from-file` of an echoed key keeps the newline
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY_FILE", str(secret))
    fill(open_trail(str(folder)), 1)
    assert json.loads((folder / "000001.json").read_bytes())["key_id"] == key_id(KEY)
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(TrailError, match="KR_AUDIT_HMAC_KEY_FILE"):
        open_trail(str(folder)).append(body("run-2"))
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY_FILE", "")
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY", "short")
    with pytest.raises(TrailError, match="at least 16 bytes"):
        open_trail(str(folder)).append(body("run-2"))


@pytest.mark.fault
def test_an_insider_without_the_key_is_caught(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(open_trail(str(folder)), 1)  # record 1 predates signing: allowed unless signatures are required
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY", KEY)
    signed = open_trail(str(folder))
    signed.append(body("run-2"))
    signed.append(body("run-3"))
    assert signed.verify().ok
    assert not signed.verify(require_signatures=True).ok
    forget_hints(folder)
    pristine = {p.name: p.read_bytes() for p in folder.glob("*.json")}

    def restore() -> None:
        for name, data in pristine.items():
            rewrite(folder / name, data)

    def keep_signature(record: dict) -> None:  # re-hashed, old signature left in place
        record["promoted"] = True

    rewrite_chain(folder, 2, keep_signature)
    report = signed.verify()
    assert not report.ok and report.sequence == 2 and "signature" in report.problem

    def strip(record: dict) -> None:  # signature and key_id removed, then re-hashed: an unsigned record
        record["promoted"] = True
        record.pop("signature")
        record.pop("key_id")

    restore()
    rewrite_chain(folder, 3, strip)
    report = signed.verify()
    assert not report.ok and report.sequence == 3 and "unsigned" in report.problem

    restore()
    data = json.loads((folder / "000003.json").read_bytes())
    del data["signature"]  # the hash still holds key_id: a stripped signature shows
    rewrite(folder / "000003.json", canonical(data) + b"\n")
    report = open_trail(str(folder), key=None).verify()  # even without the key
    assert not report.ok and report.sequence == 3 and "signature" in report.problem

    restore()
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY", "x" * 32)  # the wrong key
    report = open_trail(str(folder)).verify()
    assert not report.ok and report.sequence == 2 and key_id("x" * 32) in report.problem


def test_a_signed_trail_refuses_unsigned_appends(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY", KEY)
    fill(open_trail(str(folder)), 1)
    monkeypatch.delenv("KR_AUDIT_HMAC_KEY")
    with pytest.raises(TrailError, match="signed"):
        open_trail(str(folder)).append(body("run-2"))


def test_require_signatures_fails_an_unsigned_record(trail: Trail, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(trail, 2)
    monkeypatch.setenv("KR_AUDIT_HMAC_KEY", KEY)
    result = cli("audit", "verify", "--uri", trail.uri, "--require-signatures")
    assert result.exit_code == 1 and "000001.json" in result.output and "unsigned" in result.output, result.output


# ------------------------------------------------------------------------------------------- conditional writes


class IgnoresConditions(FolderStore):
    """A store that answers every conditional write with success and overwrites: the failure the probe catches."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.chmod(0o644)
        path.write_bytes(data)
        return True


@pytest.mark.fault
def test_a_store_ignoring_conditional_writes_is_refused(folder: Path) -> None:
    trail = Trail(IgnoresConditions(folder))
    with pytest.raises(TrailError, match=r"does not honour conditional writes \(If-None-Match\)"):
        trail.append(body("run-1"))
    assert not list(folder.glob("*.json"))  # refused before the first record


# ------------------------------------------------------------------------------------------- O(1) appends


class CountingStore:
    """A FolderStore that counts the calls made to it."""

    def __init__(self, root: Path) -> None:
        self.inner = FolderStore(root)
        self.uri = self.inner.uri
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def test_an_append_reads_a_bounded_number_of_objects(folder: Path) -> None:
    store = CountingStore(folder)
    trail = Trail(store)
    for i in range(1, 50):
        trail.append(body(f"run-{i}"))
    store.calls.clear()
    assert trail.append(body("run-50"))["sequence"] == 50
    assert store.calls.get("get", 0) <= 6 and store.calls.get("names", 0) == 0, store.calls
    # a new process (a new Trail) costs the same, plus the conditional-write probe
    store.calls.clear()
    assert Trail(store).append(body("run-51"))["sequence"] == 51
    assert store.calls.get("get", 0) <= 6 and store.calls.get("names", 0) == 0, store.calls
    # and so does finding a run's record, or learning that a run has none
    store.calls.clear()
    assert trail.find("run-7")["sequence"] == 7 and trail.find("run-99") is None
    assert store.calls.get("get", 0) <= 8 and store.calls.get("names", 0) == 0, store.calls
    assert_chain(trail, 51)


def test_a_trail_written_by_older_code_still_works(trail: Trail, folder: Path) -> None:
    entries = fill(trail)
    forget_hints(folder)
    fresh = open_trail(str(folder))
    assert fresh.find("run-2")["record_hash"] == entries[1]["record_hash"]
    assert fresh.append(body("run-2")) == {**entries[1], "created": False}
    assert fresh.append(body("run-4"))["sequence"] == 4
    assert open_trail(str(folder)).append(body("run-3")) == {**entries[2], "created": False}
    assert_chain(fresh, 4)


def test_a_crash_between_record_and_index_is_repaired(trail: Trail, folder: Path) -> None:
    fill(trail)
    hint = (folder / "HEAD").read_bytes()
    entry = trail.append(body("run-4"))
    # as if the writer died right after creating record 4: no run index, the hint still at 3
    (folder / "runs" / "run-4.json").unlink()
    (folder / "HEAD").write_bytes(hint)
    fresh = open_trail(str(folder))
    assert fresh.find("run-4")["sequence"] == 4
    assert fresh.append(body("run-4")) == {**entry, "created": False}
    assert (folder / "runs" / "run-4.json").exists()
    assert_chain(fresh, 4)


# ---------------------------------------------------------------------------------------------- damaged records


def test_show_a_record_missing_fields(trail: Trail, folder: Path) -> None:
    fill(trail, 2)
    record = json.loads((folder / "000002.json").read_bytes())
    del record["record_hash"], record["promoted"]
    rewrite(folder / "000002.json", canonical(record) + b"\n")
    result = cli("audit", "show", "--uri", trail.uri)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    out = flat(result.output)
    assert "000001-run-1" in out and "000002-run-2" in out  # what is there is still shown
    assert "000002.json" in out and "missing record_hash" in out
    as_json = cli("audit", "show", "--uri", trail.uri, "--json")
    assert as_json.exit_code == 1 and '"run_id": "run-2"' in as_json.stdout


def test_show_an_unreadable_record(trail: Trail, folder: Path) -> None:
    fill(trail, 2)
    rewrite(folder / "000001.json", b"{not json")
    result = cli("audit", "show", "--uri", trail.uri)
    assert result.exit_code == 1 and "000002-run-2" in result.output
    assert "000001.json" in flat(result.output) and "not a JSON object" in flat(result.output)


def test_verify_reports_a_bare_nan(trail: Trail, folder: Path) -> None:
    fill(trail, 2)
    data = (folder / "000002.json").read_bytes().replace(b'"value":0.81', b'"value":NaN')
    rewrite(folder / "000002.json", data)
    report = trail.verify()
    assert not report.ok and report.first_bad == "000002.json" and "NaN" in report.problem
    result = cli("audit", "verify", "--uri", trail.uri)
    assert result.exit_code == 1 and "000002.json" in result.output
