"""Audit trail: one tamper-evident record per run, append-only, chained by SHA-256 hashes.

A trail lives at `audit.uri`: a folder (a path or `file://` URI) or `s3://bucket/prefix` (boto3; the endpoint comes
from `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or `MLFLOW_S3_ENDPOINT_URL`, credentials only from boto3's default
chain). Record N is the object `<N:06d>.json`; its body names the run (`record_id` = `<N:06d>-<run_id>`) and holds
the `record_hash` of record N-1 (64 zeros for record 1), so changing, removing or reordering any record breaks the
chain at that record.

Why the object name is the sequence alone (not `<N>-<run_id>.json`): the create-exclusive write is what stops two
runs finishing together from both taking sequence N, and it only excludes writers of the *same* name. With the run id
in the name, two runs would write two different names for sequence N and both succeed, forking the chain.

Stored bytes are the canonical JSON (sorted keys, compact separators, ASCII, one trailing newline) of the whole
record, and `record_hash` is the SHA-256 of the canonical JSON of the record without `record_hash`. Storing the
canonical form means every byte of the file is covered: any change is either invalid JSON, a hash mismatch, or a
non-canonical file, and verification needs no re-formatting rules. `kr audit show` pretty-prints for people.

What the chain alone cannot show is a cut tail (the newest records deleted): `verify()` reports the head it reached,
and each registered model version carries its record's id and hash to compare against.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import BaseModel

from kr.serialization import finite

SCHEMA = "kr.governance.trail/1"
GENESIS = "0" * 64
# fields the trail sets; a body may not carry them
CHAIN_FIELDS = ("schema", "sequence", "record_id", "previous_hash", "recorded_at", "record_hash")
REQUIRED_FIELDS = (*CHAIN_FIELDS, "run_id")
RECORD_NAME = re.compile(r"^(\d+)\.json$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@=-]{0,199}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_RECORD_BYTES = 1 << 20  # a record is a few KB; a megabyte means someone put data, not metadata, in it
MAX_ATTEMPTS = 50
READ_THREADS = 8
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


class AuditError(RuntimeError):
    """A bad trail location, an unusable body, or a conflicting record."""


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that hashes and comparisons use."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "record_hash"})).hexdigest()


def stored_bytes(record: Mapping[str, Any]) -> bytes:
    return canonical(record) + b"\n"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (a model's weights), read in chunks so a large file never sits in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record_key(sequence: int) -> str:
    return f"{sequence:06d}.json"


# ---------------------------------------------------------------------------------------------------------- stores


class Store(Protocol):
    """Where records live. Writes only ever create; nothing here can overwrite or delete."""

    uri: str

    def names(self) -> list[str]: ...

    def get(self, key: str) -> bytes | None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` atomically; False (and nothing written) if `key` already exists."""
        ...

    def location(self, key: str) -> str: ...


class FolderStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # dot files are our own temporary files (and never records)
        return sorted(n for n in os.listdir(self.root) if n.endswith(".json") and not n.startswith("."))

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{uuid.uuid4().hex}.tmp"
        # read-only from birth: an accidental edit needs a deliberate chmod first
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return self._publish(tmp, self.root / key, data)
        finally:
            tmp.unlink(missing_ok=True)

    def _publish(self, tmp: Path, final: Path, data: bytes) -> bool:
        """link() is atomic and fails if the name exists: readers see a whole record or none, and one writer wins."""
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._create_exclusive(final, data)  # a file system without hard links
        self._sync_dir()
        return True

    def _create_exclusive(self, final: Path, data: bytes) -> bool:
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._sync_dir()
        return True

    def _sync_dir(self) -> None:
        """Make the new name itself durable, not just the file's bytes."""
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def location(self, key: str) -> str:
        return str(self.root / key)


def s3_client() -> Any:
    """A boto3 S3 client from the environment: endpoint variables for MinIO/moto, boto3's own credential chain."""
    import boto3
    from botocore.config import Config

    endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
    # path-style addressing: a custom endpoint (MinIO, moto, an IP address) rarely resolves bucket subdomains
    s3_config = {"addressing_style": "path"} if endpoint else {}
    config = Config(retries={"mode": "standard", "max_attempts": 5}, s3=s3_config)
    return boto3.client("s3", endpoint_url=endpoint, config=config)


class S3Store:
    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else s3_client()
        self.uri = f"s3://{bucket}/{prefix}"

    def names(self) -> list[str]:
        pages = self._call("list", lambda: list(self._pages()))
        names = (obj["Key"][len(self.prefix) :] for page in pages for obj in page.get("Contents", []))
        return sorted(n for n in names if n.endswith(".json") and "/" not in n)

    def _pages(self) -> Any:
        return self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def read() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
            except ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404"):
                    return None
                raise

        return self._call(f"read {key} in", read)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        def write() -> bool:
            try:
                # S3 conditional write: 412 if the key exists, 409 if another conditional write to it is in flight
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=data,
                    IfNoneMatch="*",
                    ContentType="application/json",
                )
                return True
            except ClientError as exc:
                if _is_conflict(exc):
                    return False
                raise

        return self._call(f"write {key} in", write)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one S3 operation; its failures (no bucket, no credentials, no endpoint) become AuditErrors."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise AuditError(f"cannot {what} {self.uri}: {exc}") from exc

    def location(self, key: str) -> str:
        return self.uri + key


def _is_conflict(exc: Any) -> bool:
    """412 PreconditionFailed (the key exists) or 409 (a concurrent conditional write to it): retry elsewhere.

    A retried request whose first attempt did land also ends here; the next pass finds it as this run's record.
    """
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status in (409, 412) or _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict")


def _error_code(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def open_trail(uri: str | os.PathLike[str], *, client: Any = None) -> AuditTrail:
    """The trail at `uri`: a folder path, `file:///path`, or `s3://bucket/prefix` (`client`: a ready boto3 client)."""
    text = os.fspath(uri).strip()
    if not text:
        raise AuditError("audit.uri is empty: give a folder, file:///path or s3://bucket/prefix")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        return AuditTrail(FolderStore(Path(text).expanduser()))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise AuditError(f"audit.uri {text!r}: a file:// URI must be local (file:///path)")
        return AuditTrail(FolderStore(Path(url2pathname(parts.path))))
    if scheme == "s3":
        return AuditTrail(_s3_store(text, parts.netloc, parts.path, parts.query or parts.fragment, client))
    raise AuditError(
        f"audit.uri {text!r}: unsupported scheme {scheme!r}; use a folder, file:///path or s3://bucket/prefix"
    )


def _s3_store(text: str, bucket: str, path: str, extra: str, client: Any) -> S3Store:
    if not bucket:
        raise AuditError(f"audit.uri {text!r} names no bucket: use s3://bucket/prefix")
    if not BUCKET.match(bucket):
        raise AuditError(f"audit.uri {text!r}: {bucket!r} is not a valid S3 bucket name")
    if extra:
        raise AuditError(f"audit.uri {text!r}: an S3 location takes no query or fragment")
    prefix = path.strip("/")
    return S3Store(bucket, f"{prefix}/" if prefix else "", client)


# ----------------------------------------------------------------------------------------------------------- trail


class VerifyReport(BaseModel):
    """The result of recomputing a chain. `checked` counts the records found good before the first bad one."""

    uri: str
    ok: bool
    checked: int
    first_bad: str | None = None  # the object name (e.g. `000002.json`) of the first altered or missing record
    sequence: int | None = None  # its sequence number
    problem: str | None = None
    head: str | None = None  # record_id of the newest record verified good
    head_hash: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"{self.uri}: {self.checked} record(s), chain intact; head {self.head or '(empty)'}"
        return f"{self.uri}: first bad record {self.first_bad}: {self.problem} ({self.checked} good before it)"


class AuditTrail:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def uri(self) -> str:
        return self.store.uri

    # ----------------------------------------------------------------------------------------------- writing

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Add one run's record; returns {record_id, record_hash, previous_hash, sequence, uri, created}.

        A run that already has a record gets that record back (`created` False) if the body is the same, and an
        AuditError if not: records are never overwritten. The body must therefore not carry a fresh timestamp of its
        own on every call; the trail stamps `recorded_at`.
        """
        body = normalise_body(body)
        seen: dict[int, dict | None] = {}
        for attempt in range(MAX_ATTEMPTS):
            sequences = self._sequences()
            self._load_missing(sequences, seen)
            existing = next((r for r in seen.values() if r and r.get("run_id") == body["run_id"]), None)
            if existing is not None:
                return self._existing(existing, body)
            record = self._next_record(body, sequences, seen)
            if self.store.put_if_absent(record_key(record["sequence"]), stored_bytes(record)):
                return self._entry(record, created=True)
            # another run took this sequence: back off a little (random, so contenders spread out) and re-read
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise AuditError(f"could not append to {self.uri}: {MAX_ATTEMPTS} attempts lost to concurrent writers")

    def _next_record(self, body: dict, sequences: dict[int, str], seen: dict[int, dict | None]) -> dict[str, Any]:
        last = max(sequences, default=0)
        previous = GENESIS
        if last:
            head = seen.get(last)
            if not head or not HEX64.match(str(head.get("record_hash", ""))):
                raise AuditError(
                    f"the newest record {self.store.location(sequences[last])} is unreadable or has no record_hash; "
                    f"run `kr audit verify --uri {self.uri}`"
                )
            previous = head["record_hash"]
        sequence = last + 1
        record = {
            **body,
            "schema": SCHEMA,
            "sequence": sequence,
            "record_id": f"{sequence:06d}-{body['run_id']}",
            "previous_hash": previous,
            "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        record["record_hash"] = record_hash(record)
        return record

    def _existing(self, record: dict, body: dict) -> dict[str, Any]:
        old = {k: v for k, v in record.items() if k not in CHAIN_FIELDS}
        if old != body:
            changed = sorted(k for k in old.keys() | body.keys() if old.get(k) != body.get(k))
            raise AuditError(
                f"run {body['run_id']!r} already has audit record {record.get('record_id')} in {self.uri} with "
                f"different content (fields: {', '.join(changed)}); records are never overwritten"
            )
        return self._entry(record, created=False)

    def _entry(self, record: dict, created: bool) -> dict[str, Any]:
        if any(f not in record for f in REQUIRED_FIELDS):
            raise AuditError(f"record {record.get('record_id')} in {self.uri} is incomplete; run verify")
        return {
            "record_id": record["record_id"],
            "record_hash": record["record_hash"],
            "previous_hash": record["previous_hash"],
            "sequence": record["sequence"],
            "uri": self.store.location(record_key(record["sequence"])),
            "created": created,
        }

    # ----------------------------------------------------------------------------------------------- reading

    def _sequences(self) -> dict[int, str]:
        """sequence -> object name, for names in the canonical `<N:06d>.json` form only."""
        out = {}
        for key in self.store.names():
            match = RECORD_NAME.match(key)
            if match and key == record_key(int(match.group(1))):
                out[int(match.group(1))] = key
        return out

    def _fetch(self, keys: list[str]) -> list[bytes | None]:
        """Read many records; in parallel, since on S3 each one is a round trip."""
        if len(keys) <= 2:
            return [self.store.get(k) for k in keys]
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(keys))) as pool:
            return list(pool.map(self.store.get, keys))

    def _load_missing(self, sequences: dict[int, str], seen: dict[int, dict | None]) -> None:
        """Records never change, so a retry only reads those that appeared since the last look."""
        todo = sorted(s for s in sequences if s not in seen)
        for seq, data in zip(todo, self._fetch([sequences[s] for s in todo]), strict=True):
            seen[seq] = _parse(data)

    def records(self) -> list[dict[str, Any]]:
        """All records, oldest first. A record that is not valid JSON is an AuditError (see `verify`)."""
        sequences = self._sequences()
        order = sorted(sequences)
        out = []
        for seq, data in zip(order, self._fetch([sequences[s] for s in order]), strict=True):
            record = _parse(data)
            if record is None:
                raise AuditError(f"{self.store.location(sequences[seq])} is missing or not a JSON record; run verify")
            out.append(record)
        return out

    def get(self, record_id: str) -> dict[str, Any]:
        """The record `000007-<run_id>` (or just `000007`)."""
        match = re.match(r"^(\d+)(?:-(.+))?$", str(record_id).strip())
        if not match:
            raise AuditError(f"{record_id!r} is not a record id (<sequence>-<run_id>)")
        key = record_key(int(match.group(1)))
        record = _parse(self.store.get(key))
        if record is None:
            raise AuditError(f"no audit record {record_id} in {self.uri}")
        if match.group(2) is not None and record.get("record_id") != record_id:
            raise AuditError(f"{self.store.location(key)} holds {record.get('record_id')}, not {record_id}")
        return record

    def find(self, run_id: str) -> dict[str, Any] | None:
        """The record of run `run_id`, or None."""
        return next((r for r in self.records() if r.get("run_id") == run_id), None)

    # ----------------------------------------------------------------------------------------------- verifying

    def verify(self) -> VerifyReport:
        """Recompute the whole chain from record 1 and name the first altered or missing record."""
        sequences = self._sequences()
        order = sorted(sequences)
        blobs = dict(zip(order, self._fetch([sequences[s] for s in order]), strict=True))
        previous: dict | None = None
        checked = 0
        for seq in range(1, max(sequences, default=0) + 1):
            key = record_key(seq)
            data = blobs.get(seq)
            problem = _check(data, seq, previous, sequences)
            if problem:
                return self._report(False, checked, previous, bad=key, sequence=seq, problem=problem)
            previous = json.loads(data)  # type: ignore[arg-type]
            checked += 1
        stray = sorted(set(self.store.names()) - set(sequences.values()))
        if stray:
            problem = "not a record name: a record renamed or an object that does not belong in the trail"
            return self._report(False, checked, previous, bad=stray[0], problem=problem)
        return self._report(True, checked, previous)

    def _report(self, ok: bool, checked: int, head: dict | None, **bad: Any) -> VerifyReport:
        return VerifyReport(
            uri=self.uri,
            ok=ok,
            checked=checked,
            first_bad=bad.get("bad"),
            sequence=bad.get("sequence"),
            problem=bad.get("problem"),
            head=head["record_id"] if head else None,
            head_hash=head["record_hash"] if head else None,
        )


def normalise_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as it will read back from JSON (NaN -> null, numpy -> Python, tuples -> lists), checked."""
    if not isinstance(body, Mapping):
        raise AuditError(f"an audit body is a mapping, not {type(body).__name__}")
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise AuditError(f"an audit body needs a run_id of letters, digits and ._:+@=- (got {run_id!r})")
    reserved = sorted(set(body) & set(CHAIN_FIELDS))
    if reserved:
        raise AuditError(f"an audit body may not set {', '.join(reserved)}: the trail sets them")
    try:
        data = canonical(finite(dict(body)))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit body of run {run_id!r} is not JSON-serialisable: {exc}") from exc
    if len(data) > MAX_RECORD_BYTES:
        raise AuditError(f"audit body of run {run_id!r} is {len(data)} bytes; records hold metadata, not data")
    return json.loads(data)


def _parse(data: bytes | None) -> dict | None:
    try:
        record = json.loads(data.decode("utf-8")) if data is not None else None
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _check(data: bytes | None, seq: int, previous: dict | None, sequences: dict[int, str]) -> str | None:
    """What is wrong with record `seq` (None if nothing), given the verified record before it."""
    if data is None:
        return f"record {seq:06d} is missing (the trail goes up to {max(sequences):06d})"
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    return _check_fields(record, data, seq, previous)


def _check_fields(record: dict, data: bytes, seq: int, previous: dict | None) -> str | None:
    if record["sequence"] != seq:
        return f"name says sequence {seq} but the record says {record['sequence']!r}"
    if record["record_id"] != f"{seq:06d}-{record['run_id']}":
        return f"record_id {record['record_id']!r} does not match sequence {seq} and run_id {record['run_id']!r}"
    actual = record_hash(record)
    if record["record_hash"] != actual:
        return f"content altered: record_hash {record['record_hash']!r} but the content hashes to {actual}"
    if data != stored_bytes(record):
        return "bytes altered: the content still hashes right but the file is not in canonical form"
    expected = previous["record_hash"] if previous else GENESIS
    if record["previous_hash"] != expected:
        before = previous["record_id"] if previous else "the start of the trail"
        return f"chain broken: previous_hash {record['previous_hash']} does not match {before} ({expected})"
    return None
