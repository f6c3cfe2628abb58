"""The chain: record bytes and hashes, body checks, and `Trail` (append, read, verify) over any `Store`.

The design (why names are sequence numbers, why records are stored canonical) is in the package docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel

from kr.serialization import finite

# stored in every record: existing trails say `kr.audit/1`, so the string outlives the module's rename
SCHEMA = "kr.audit/1"
GENESIS = "0" * 64
# fields the trail sets; a body may not carry them
CHAIN_FIELDS = ("schema", "sequence", "record_id", "previous_hash", "recorded_at", "record_hash")
REQUIRED_FIELDS = (*CHAIN_FIELDS, "run_id")
RECORD_NAME = re.compile(r"^(\d+)\.json$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@=-]{0,199}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 1 << 20  # a record is a few KB; a megabyte means someone put data, not metadata, in it
MAX_ATTEMPTS = 50
READ_THREADS = 8


class TrailError(RuntimeError):
    """A bad trail location, an unusable body, a conflicting or unreadable record, or a failed S3 call."""


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that hashes and comparisons use.

    Takes any JSON-serialisable value; returns ASCII bytes (sorted keys, `,`/`:` separators, no whitespace, no
    trailing newline). Raises ValueError for NaN/infinity or a circular reference, TypeError for a value JSON cannot
    encode or keys that cannot be sorted together.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash a record must carry: hex SHA-256 (64 lowercase chars) of `canonical(record)` minus `record_hash`.

    Raises what `canonical` raises.
    """
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "record_hash"})).hexdigest()


def stored_bytes(record: Mapping[str, Any]) -> bytes:
    """The exact bytes a record is stored as: `canonical(record)` plus one `\\n`. Raises what `canonical` raises."""
    return canonical(record) + b"\n"


def record_key(sequence: int) -> str:
    """The object name of record `sequence` (>= 1): the number zero-padded to 6 digits, e.g. 7 -> `000007.json`."""
    return f"{sequence:06d}.json"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 (64 lowercase chars) of the file at `path` (a model's weights), read `chunk` bytes at a time.

    Chunked so a large file never sits in memory whole. Raises OSError (FileNotFoundError, IsADirectoryError,
    PermissionError, ...) when the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def normalise_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as it will read back from JSON (NaN -> null, numpy -> Python, tuples -> lists), checked.

    Takes a mapping with a `run_id` (1-200 chars of letters, digits and `._:+@=-`, starting with a letter or digit)
    and none of CHAIN_FIELDS. Returns a new plain dict. Raises TrailError if `body` is not a mapping, its run_id is
    missing or malformed, it sets a chain field, it is not JSON-serialisable, or its canonical form exceeds
    MAX_RECORD_BYTES (1 MiB).
    """
    if not isinstance(body, Mapping):
        raise TrailError(f"an audit body is a mapping, not {type(body).__name__}")
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise TrailError(f"an audit body needs a run_id of letters, digits and ._:+@=- (got {run_id!r})")
    reserved = sorted(set(body) & set(CHAIN_FIELDS))
    if reserved:
        raise TrailError(f"an audit body may not set {', '.join(reserved)}: the trail sets them")
    try:
        data = canonical(finite(dict(body)))
    except (TypeError, ValueError) as exc:
        raise TrailError(f"audit body of run {run_id!r} is not JSON-serialisable: {exc}") from exc
    if len(data) > MAX_RECORD_BYTES:
        raise TrailError(f"audit body of run {run_id!r} is {len(data)} bytes; records hold metadata, not data")
    return json.loads(data)


# The interface lives here, with the one class that consumes it, so the chain never imports the stores module
# (which imports the chain for TrailError and Trail); stores.py re-exports it beside its implementations.
class Store(Protocol):
    """Where records live, as flat object names (`000001.json`) under one location.

    Writes only ever create; nothing here can overwrite or delete. Implementations: FolderStore, S3Store.
    """

    uri: str

    def names(self) -> list[str]:
        """Sorted names of the `.json` objects directly under the location (no prefix); [] if there are none."""
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes of object `key`, or None if it does not exist."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` atomically; False (and nothing written) if `key` already exists."""
        ...

    def location(self, key: str) -> str:
        """Where object `key` is (a path or URI), for messages and for `Trail.append`'s `uri`."""
        ...


class VerifyReport(BaseModel):
    """The result of recomputing a chain. `checked` counts the records found good before the first bad one.

    `ok` True: every record from 1 up to the highest sequence is present and good, and no other `.json` object
    is in the location. `ok` False: `first_bad`, `sequence` (None for a stray object) and `problem` say where and
    why. `head`/`head_hash` are the record_id and record_hash of the last good record (None if there is none).
    """

    uri: str
    ok: bool
    checked: int
    first_bad: str | None = None  # the object name (e.g. `000002.json`) of the first altered or missing record
    sequence: int | None = None  # its sequence number
    problem: str | None = None
    head: str | None = None  # record_id of the newest record verified good
    head_hash: str | None = None

    def summary(self) -> str:
        """One line for people: the record count and head when intact, else the first bad record and why."""
        if self.ok:
            return f"{self.uri}: {self.checked} record(s), chain intact; head {self.head or '(empty)'}"
        return f"{self.uri}: first bad record {self.first_bad}: {self.problem} ({self.checked} good before it)"


class Trail:
    """The hash-chained trail in one `Store`: one record per run, appended, read and verified, never rewritten.

    Construction does no I/O. Every method may raise TrailError for a failed S3 call (S3Store wraps them) and
    OSError for a failed folder operation other than a missing file.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def uri(self) -> str:
        """The store's location: a folder path or `s3://bucket/prefix/`."""
        return self.store.uri

    # ----------------------------------------------------------------------------------------------- writing

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Add one run's record; returns {record_id, record_hash, previous_hash, sequence, uri, created}.

        `body` is checked and normalised by `normalise_body`; the trail adds CHAIN_FIELDS (`recorded_at`: UTC ISO
        8601, milliseconds). Returned: record_id `<N:06d>-<run_id>` (str), record_hash and previous_hash (hex
        SHA-256, 64 chars), sequence N (int, from 1), uri (str, the record object's path or URI), created (bool).

        A run that already has a record gets that record back (`created` False) if the body is the same, and a
        TrailError if not: records are never overwritten. The body must therefore not carry a fresh timestamp of its
        own on every call; the trail stamps `recorded_at`.

        Raises TrailError also for a bad body, a newest record that is unreadable or lacks a valid record_hash, a
        matching record missing chain fields, and MAX_ATTEMPTS (50) writes all lost to concurrent writers.
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
        raise TrailError(f"could not append to {self.uri}: {MAX_ATTEMPTS} attempts lost to concurrent writers")

    def _next_record(self, body: dict, sequences: dict[int, str], seen: dict[int, dict | None]) -> dict[str, Any]:
        last = max(sequences, default=0)
        previous = GENESIS
        if last:
            head = seen.get(last)
            if not head or not HEX64.match(str(head.get("record_hash", ""))):
                raise TrailError(
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
            raise TrailError(
                f"run {body['run_id']!r} already has audit record {record.get('record_id')} in {self.uri} with "
                f"different content (fields: {', '.join(changed)}); records are never overwritten"
            )
        return self._entry(record, created=False)

    def _entry(self, record: dict, created: bool) -> dict[str, Any]:
        if any(f not in record for f in REQUIRED_FIELDS):
            raise TrailError(f"record {record.get('record_id')} in {self.uri} is incomplete; run verify")
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
        """All records as dicts, oldest first (by sequence; gaps skipped). Hashes are not checked: see `verify`.

        Raises TrailError if a record object is gone or is not a UTF-8 JSON object.
        """
        sequences = self._sequences()
        order = sorted(sequences)
        out = []
        for seq, data in zip(order, self._fetch([sequences[s] for s in order]), strict=True):
            record = _parse(data)
            if record is None:
                raise TrailError(f"{self.store.location(sequences[seq])} is missing or not a JSON record; run verify")
            out.append(record)
        return out

    def get(self, record_id: str) -> dict[str, Any]:
        """The record `000007-<run_id>` (or just `000007`, or `7`) as a dict. Its hash is not checked.

        Raises TrailError if `record_id` is not `<digits>[-<run_id>]`, no JSON object is stored at that sequence,
        or the stored record_id differs from a full `record_id` given.
        """
        match = re.match(r"^(\d+)(?:-(.+))?$", str(record_id).strip())
        if not match:
            raise TrailError(f"{record_id!r} is not a record id (<sequence>-<run_id>)")
        key = record_key(int(match.group(1)))
        record = _parse(self.store.get(key))
        if record is None:
            raise TrailError(f"no audit record {record_id} in {self.uri}")
        if match.group(2) is not None and record.get("record_id") != record_id:
            raise TrailError(f"{self.store.location(key)} holds {record.get('record_id')}, not {record_id}")
        return record

    def find(self, run_id: str) -> dict[str, Any] | None:
        """The record of run `run_id` (the oldest, should there be several), or None. Raises as `records` does."""
        return next((r for r in self.records() if r.get("run_id") == run_id), None)

    # ----------------------------------------------------------------------------------------------- verifying

    def verify(self) -> VerifyReport:
        """Recompute the whole chain from record 1 and name the first altered or missing record.

        A damaged trail is a report with `ok` False, not an exception; it raises when the store cannot be read (see
        the class) and, one gap, ValueError for a record holding a bare NaN or Infinity (json.loads accepts them,
        `canonical` does not). Cannot see a cut tail: compare `head`/`head_hash` with what the registry holds.
        """
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
