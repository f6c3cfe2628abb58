"""The chain: record bytes and hashes, body checks, and `Trail` (append, read, verify, lease) over any `Store`.

The design (why names are sequence numbers, why records are stored canonical, what the head hint and the run index
are for) is in the package docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from kr.governance.trail.base import Store, TrailError
from kr.governance.trail.lease import Lease
from kr.governance.trail.signing import KEY_ENV, KEY_FILE_ENV, KEY_ID, HmacKey
from kr.serialization import finite

__all__ = [
    "CHAIN_FIELDS",
    "GENESIS",
    "HEAD_KEY",
    "MAX_RECORD_BYTES",
    "PROBE_KEY",
    "REQUIRED_FIELDS",
    "RUNS_PREFIX",
    "SCHEMA",
    "SIGNATURE_FIELDS",
    "UNHASHED_FIELDS",
    "RecordRef",
    "Store",
    "Trail",
    "TrailError",
    "VerifyReport",
    "canonical",
    "normalise_body",
    "record_hash",
    "record_key",
    "sha256_file",
    "stored_bytes",
]

# stored in every record: existing trails say `kr.audit/1`, so the string outlives the module's rename
SCHEMA = "kr.audit/1"
GENESIS = "0" * 64
# set by the trail on signed records only: `key_id` names the key (and is hashed), `signature` signs the record_hash
SIGNATURE_FIELDS = ("key_id", "signature")
# fields the trail sets; a body may not carry them
CHAIN_FIELDS = ("schema", "sequence", "record_id", "previous_hash", "recorded_at", "record_hash", *SIGNATURE_FIELDS)
# fields every record has (signed or not)
REQUIRED_FIELDS = ("schema", "sequence", "record_id", "previous_hash", "recorded_at", "record_hash", "run_id")
# left out of what record_hash covers: the hash itself, and the signature made over it
UNHASHED_FIELDS = ("record_hash", "signature")
# objects beside the records (never `.json` names at the records' level, so `names()` never lists them)
HEAD_KEY = "HEAD"  # the head hint: the newest record's sequence and hash, overwritten by each append
RUNS_PREFIX = "runs/"  # the run index: `runs/<run_id>.json` -> the sequence of that run's record, created once
PROBE_KEY = ".probe/conditional-write.json"  # written twice per Trail object before its first write
RECORD_NAME = re.compile(r"^(\d+)\.json$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@=-]{0,199}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 1 << 20  # a record is a few KB; a megabyte means someone put data, not metadata, in it
MAX_ATTEMPTS = 50
READ_THREADS = 8


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that hashes and comparisons use.

    Takes any JSON-serialisable value; returns ASCII bytes (sorted keys, `,`/`:` separators, no whitespace, no
    trailing newline). Raises ValueError for NaN/infinity or a circular reference, TypeError for a value JSON cannot
    encode or keys that cannot be sorted together.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash a record must carry: hex SHA-256 (64 lowercase chars) of `canonical(record)` without UNHASHED_FIELDS.

    UNHASHED_FIELDS are `record_hash` itself and `signature` (an HMAC made over the record_hash, so it cannot be inside
    it); `key_id` is hashed, so a signed record cannot pass as unsigned. Raises what `canonical` raises.
    """
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k not in UNHASHED_FIELDS})).hexdigest()


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


class RecordRef(BaseModel):
    """A published record to look for in the trail: its sequence, its record_hash, and optionally its record_id.

    Written `SEQUENCE:HASH` (`7:<64 hex>`, `000007:<64 hex>`) or `RECORD_ID:HASH` (`000007-<run_id>:<64 hex>`, as
    the registry's tags kr.audit_record_id and kr.audit_record_hash hold it); see `parse`.
    """

    model_config = ConfigDict(frozen=True)

    sequence: int
    record_hash: str
    record_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> RecordRef:
        """Read `SEQUENCE:HASH` or `RECORD_ID:HASH`; the hash is the part after the last `:` (a run id may hold `:`).

        The hash is 64 hex digits (case ignored), the sequence >= 1; `7-run` is read as record_id `000007-run`.
        Raises TrailError for anything else.
        """
        left, _, digest = str(text).strip().rpartition(":")
        match = re.match(r"^(\d+)(?:-(.+))?$", left)
        digest = digest.lower()
        if not match or not HEX64.match(digest) or int(match.group(1)) < 1:
            raise TrailError(
                f"{text!r} is not SEQUENCE:HASH or RECORD_ID:HASH (e.g. 7:<64 hex> or 000007-<run_id>:<64 hex>)"
            )
        sequence, run_id = int(match.group(1)), match.group(2)
        if run_id is not None and not RUN_ID.match(run_id):
            raise TrailError(f"{text!r}: {run_id!r} is not a run id (in SEQUENCE:HASH or RECORD_ID:HASH)")
        record_id = f"{sequence:06d}-{run_id}" if run_id is not None else None
        return cls(sequence=sequence, record_hash=digest, record_id=record_id)

    def __str__(self) -> str:
        return f"{self.record_id or f'{self.sequence:06d}'}:{self.record_hash}"


class VerifyReport(BaseModel):
    """The result of recomputing a chain. `checked` counts the records found good before the first bad one.

    `ok` True: every record from 1 up to the highest sequence is present and good (signatures included, see
    `Trail.verify`), no other `.json` object is at the records' level, the head hint agrees, and every expected
    record was found intact. `ok` False: `first_bad` (an object name, or `HEAD`), `sequence` (None for a stray object)
    and `problem` say where and why. `head`/`head_sequence`/`head_hash` describe the last good record (None if there
    is none). `signed`: records carrying a signature; `unsigned`: records before signing started;
    `signatures_checked`: whether a key was there to check them (`key_ids`: the keys given); `confirmed`: the
    expected records found intact.
    """

    uri: str
    ok: bool
    checked: int
    first_bad: str | None = None  # the object name (e.g. `000002.json`) of the first altered or missing record
    sequence: int | None = None  # its sequence number
    problem: str | None = None
    head: str | None = None  # record_id of the newest record verified good
    head_hash: str | None = None
    head_sequence: int | None = None
    signed: int = 0
    unsigned: int = 0
    signatures_checked: bool = False
    key_ids: list[str] = []
    confirmed: list[str] = []

    def summary(self) -> str:
        """One line for people: the record count and head when intact, else the first bad record and why."""
        if not self.ok:
            return f"{self.uri}: first bad record {self.first_bad}: {self.problem} ({self.checked} good before it)"
        head = "head (empty)"
        if self.head:
            head = f"head {self.head} (sequence {self.head_sequence}, record_hash {self.head_hash})"
        return f"{self.uri}: {self.checked} record(s), chain intact; {head}{self.signature_summary('; ')}"

    def signature_summary(self, lead: str = "") -> str:
        """`lead` + how many records are signed and whether their signatures were checked; "" if none is signed."""
        if not self.signed:
            return ""
        checked = f"checked with key {', '.join(self.key_ids)}" if self.signatures_checked else "NOT checked (no key)"
        before = f"; {self.unsigned} unsigned from before signing started" if self.unsigned else ""
        return f"{lead}{self.signed} signed record(s), {checked}{before}"


@dataclass
class _Tail:
    """The newest record an append found, and the records it read past the head hint on the way (sequence, record)."""

    last: int
    record: dict | None
    fresh: list[tuple[int, dict]] = field(default_factory=list)


@dataclass
class _Signatures:
    """Signature state along a chain being verified: where signing started, what was seen, which keys check it."""

    keys: dict[str, HmacKey]
    required: bool
    first_signed: int | None = None
    signed: int = 0
    unsigned: int = 0

    def problem(self, record: dict, seq: int) -> str | None:
        key_id, signature = record.get("key_id"), record.get("signature")
        if key_id is None and signature is None:
            if self.first_signed is not None:
                return (
                    f"unsigned, but the trail is signed from record {self.first_signed:06d} on: a record rewritten "
                    f"without the key, or written by a run without {KEY_ENV}"
                )
            if self.required:
                return "unsigned, and signatures are required"
            self.unsigned += 1
            return None
        if signature is None:
            return f"signature removed: the record names key {key_id!r} (a hashed field) but carries no signature"
        if not isinstance(key_id, str) or not KEY_ID.match(key_id):
            return f"a signature without a valid key_id (got {key_id!r})"
        if not isinstance(signature, str) or not HEX64.match(signature):
            return f"signature {signature!r} is not 64 hex digits"
        if self.first_signed is None:
            self.first_signed = seq
        self.signed += 1
        if not self.keys:
            return None
        key = self.keys.get(key_id)
        if key is None:
            return f"signed with key {key_id}, not with the key given ({', '.join(self.keys)})"
        if not key.verify(record["record_hash"], signature):
            return f"bad signature (key {key_id}): the record was changed and re-hashed by someone without the key"
        return None


class Trail:
    """The hash-chained trail in one `Store`: one record per run, appended, read and verified, never rewritten.

    `key` signs new records and checks signatures: "env" (default) reads KR_AUDIT_HMAC_KEY or KR_AUDIT_HMAC_KEY_FILE
    when first needed (`HmacKey.from_env`), None turns signing off, an HmacKey is used as given. Construction does no
    I/O. Every method may raise TrailError for a failed S3 call (S3Store wraps them) or a bad key in the environment,
    and OSError for a failed folder operation other than a missing file.
    """

    def __init__(self, store: Store, key: HmacKey | None | Literal["env"] = "env") -> None:
        if not (key is None or key == "env" or isinstance(key, HmacKey)):
            raise TrailError(f"key is an HmacKey, None or 'env', not {type(key).__name__}")
        self.store = store
        self._key: HmacKey | None = None if key == "env" else key
        self._key_from_env = key == "env"
        self._conditional_writes_checked = False

    @property
    def uri(self) -> str:
        """The store's location: a folder path or `s3://bucket/prefix/`."""
        return self.store.uri

    @property
    def key(self) -> HmacKey | None:
        """The signing key: as given, or read from the environment on first use (then kept). Raises TrailError for
        a key variable that is set but unusable (see `HmacKey.from_env`)."""
        if self._key_from_env:
            self._key = HmacKey.from_env()
            self._key_from_env = False
        return self._key

    # ----------------------------------------------------------------------------------------------- writing

    def check_conditional_writes(self) -> None:
        """Refuse a store that ignores create-only writes, before this object first writes to it (then remembered).

        Creates PROBE_KEY if absent, then asks to create it again: that second write must be refused. A store that
        answers it with success (an S3-compatible server ignoring If-None-Match) would let two concurrent runs both
        write record N, the later silently replacing the earlier. Raises TrailError "refusing a store that does not
        honour conditional writes (If-None-Match)" then.
        """
        if self._conditional_writes_checked:
            return
        probe = canonical({"purpose": "kr audit: a store must refuse to create an object twice"}) + b"\n"
        self.store.put_if_absent(PROBE_KEY, probe)
        if self.store.put_if_absent(PROBE_KEY, probe):
            raise TrailError(
                f"refusing a store that does not honour conditional writes (If-None-Match): "
                f"{self.store.location(PROBE_KEY)} was created twice, so concurrent runs could overwrite each "
                f"other's records; use S3 (or a server) that answers 412 to If-None-Match: *"
            )
        self._conditional_writes_checked = True

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Add one run's record; returns {record_id, record_hash, previous_hash, sequence, uri, created}.

        `body` is checked and normalised by `normalise_body`; the trail adds CHAIN_FIELDS (`recorded_at`: UTC ISO
        8601, milliseconds; `key_id` and `signature` when there is a key). Returned: record_id `<N:06d>-<run_id>`
        (str), record_hash and previous_hash (hex SHA-256, 64 chars), sequence N (int, from 1), uri (str, the record
        object's path or URI), created (bool).

        A run that already has a record gets that record back (`created` False) if the body is the same, and a
        TrailError if not: records are never overwritten. The body must therefore not carry a fresh timestamp of its
        own on every call; the trail stamps `recorded_at`.

        A constant number of reads: the head hint, the run's index entry, the record after the hint (usually
        missing) and the newest record; then the record, the run index entry and the hint are written. A trail with
        no hint (written by older code) is read whole once, and indexed. Raises TrailError also for a store that
        ignores conditional writes (`check_conditional_writes`), a bad body, a newest record that is unreadable or
        does not hash to its record_hash, a head hint naming a missing record or another hash (records deleted or
        rewritten), a signed trail and no key, a matching record missing chain fields, and MAX_ATTEMPTS (50) writes
        all lost to concurrent writers.
        """
        body = normalise_body(body)
        key = self.key
        self.check_conditional_writes()
        run_id = body["run_id"]
        # the hint first: every record up to it has its run index entry (written before the hint moved past it)
        hint = self._read_hint()
        indexed = self._indexed(run_id)
        if indexed is not None:
            return self._existing(indexed, body)
        tail = self._tail(hint, repair=True)
        for attempt in range(MAX_ATTEMPTS):
            mine = next((r for _, r in tail.fresh if r.get("run_id") == run_id), None)
            if mine is not None:
                return self._existing(mine, body)
            record = self._next_record(body, tail, key)
            if self.store.put_if_absent(record_key(record["sequence"]), stored_bytes(record)):
                self._index(record["sequence"], record)
                self.store.put(HEAD_KEY, _hint_bytes(record))
                return self._entry(record, created=True)
            # another run took this sequence: back off a little (random, so contenders spread out), read on from it
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
            fresh = self._forward(tail.last, repair=True)
            if fresh:
                tail = _Tail(fresh[-1][0], fresh[-1][1], fresh)
        raise TrailError(f"could not append to {self.uri}: {MAX_ATTEMPTS} attempts lost to concurrent writers")

    def _next_record(self, body: dict, tail: _Tail, key: HmacKey | None) -> dict[str, Any]:
        previous = GENESIS
        if tail.last:
            where = self.store.location(record_key(tail.last))
            problem = _damaged(tail.record, tail.last)
            if problem:
                raise TrailError(f"the newest record {where} {problem}; run `kr audit verify --uri {self.uri}`")
            assert tail.record is not None
            if key is None and tail.record.get("key_id") is not None:
                raise TrailError(
                    f"the trail {self.uri} is signed (record {tail.last:06d}, key {tail.record['key_id']}): set "
                    f"{KEY_ENV} or {KEY_FILE_ENV} to append to it; an unsigned record would fail verification"
                )
            previous = tail.record["record_hash"]
        sequence = tail.last + 1
        record = {
            **body,
            "schema": SCHEMA,
            "sequence": sequence,
            "record_id": f"{sequence:06d}-{body['run_id']}",
            "previous_hash": previous,
            "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        if key is not None:
            record["key_id"] = key.key_id
        record["record_hash"] = record_hash(record)
        if key is not None:
            record["signature"] = key.sign(record["record_hash"])
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

    # ------------------------------------------------------------------------------------- head hint, run index

    def _read_hint(self) -> tuple[int, str] | None:
        """(sequence, record_hash) from the head hint; None if there is none or it is not one (then: scan)."""
        return _parse_hint(self.store.get(HEAD_KEY))

    def _indexed(self, run_id: str) -> dict | None:
        """The record the run index names for `run_id`, if the index has it and the record is that run's."""
        entry = _parse(self.store.get(f"{RUNS_PREFIX}{run_id}.json"))
        sequence = entry.get("sequence") if entry else None
        if type(sequence) is not int or sequence < 1:
            return None
        record = _parse(self.store.get(record_key(sequence)))
        return record if record is not None and record.get("run_id") == run_id else None

    def _index(self, sequence: int, record: dict) -> None:
        """Create the run index entry of `record` (a no-op if the run has one: the index keeps a run's first)."""
        run_id = record.get("run_id")
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            return
        entry = {"run_id": run_id, "sequence": sequence, "record_id": record.get("record_id")}
        self.store.put_if_absent(f"{RUNS_PREFIX}{run_id}.json", canonical(entry) + b"\n")

    def _tail(self, hint: tuple[int, str] | None, repair: bool) -> _Tail:
        """The newest record, found from the hint by reading forward until a sequence is missing (usually at once).

        `repair`: create the index entries of the records read past the hint (a writer that died before writing
        its own), so the hint, once moved past them, still has every record below it indexed.
        """
        if hint is None:
            return self._scan(repair)
        sequence, digest = hint
        fresh = self._forward(sequence, repair)
        if fresh:
            return _Tail(fresh[-1][0], fresh[-1][1], fresh)
        record = _parse(self.store.get(record_key(sequence)))
        if record is None:
            raise TrailError(
                f"the head hint {self.store.location(HEAD_KEY)} names record {sequence:06d}, which is missing or "
                f"unreadable: were the newest records deleted? Run `kr audit verify --uri {self.uri}`"
            )
        if record.get("record_hash") != digest:
            raise TrailError(
                f"the head hint {self.store.location(HEAD_KEY)} says record {sequence:06d} has record_hash {digest}, "
                f"the record says {record.get('record_hash')}: rewritten? Run `kr audit verify --uri {self.uri}`"
            )
        return _Tail(sequence, record)

    def _forward(self, sequence: int, repair: bool) -> list[tuple[int, dict]]:
        """The records after `sequence`, read one by one until one is missing."""
        out: list[tuple[int, dict]] = []
        while (data := self.store.get(record_key(sequence + len(out) + 1))) is not None:
            seq = sequence + len(out) + 1
            record = _parse(data)
            if record is None:
                where = self.store.location(record_key(seq))
                raise TrailError(f"{where} is not a JSON record; run `kr audit verify --uri {self.uri}`")
            if repair:
                self._index(seq, record)
            out.append((seq, record))
        return out

    def _scan(self, repair: bool) -> _Tail:
        """The whole trail read once (no hint: a trail from older code, or a lost hint); a writer also indexes it
        and sets the hint, so the next append reads a constant number of objects again."""
        sequences = self._sequences()
        order = sorted(sequences)
        records = [(s, _parse(d)) for s, d in zip(order, self._fetch([sequences[s] for s in order]), strict=True)]
        if not records:
            return _Tail(0, None)
        last, newest = records[-1]
        fresh = [(s, r) for s, r in records if r is not None]
        if repair:
            first: dict[str, tuple[int, dict]] = {}
            for seq, record in fresh:
                first.setdefault(str(record.get("run_id")), (seq, record))
            self._map(lambda item: self._index(*item), list(first.values()))
            if _damaged(newest, last) is None:
                self.store.put(HEAD_KEY, _hint_bytes(newest))  # type: ignore[arg-type]
        return _Tail(last, newest, fresh)

    # ----------------------------------------------------------------------------------------------- reading

    def _sequences(self) -> dict[int, str]:
        """sequence -> object name, for names in the canonical `<N:06d>.json` form only."""
        out = {}
        for key in self.store.names():
            match = RECORD_NAME.match(key)
            if match and key == record_key(int(match.group(1))):
                out[int(match.group(1))] = key
        return out

    def _map(self, fn: Any, items: list) -> list:
        """`fn` over `items`; in parallel, since on S3 each call is a round trip."""
        if len(items) <= 2:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(items))) as pool:
            return list(pool.map(fn, items))

    def _fetch(self, keys: list[str]) -> list[bytes | None]:
        """Read many objects, in parallel."""
        return self._map(self.store.get, keys)

    def read_all(self) -> list[tuple[str, dict | None]]:
        """Every record object, oldest first: (object name, the record as a dict, or None if it is not a JSON
        object). Nothing is checked; gaps are skipped. For showing a damaged trail; see `records` and `verify`."""
        sequences = self._sequences()
        order = sorted(sequences)
        blobs = self._fetch([sequences[s] for s in order])
        return [(sequences[s], _parse(data)) for s, data in zip(order, blobs, strict=True)]

    def records(self) -> list[dict[str, Any]]:
        """All records as dicts, oldest first (by sequence; gaps skipped). Hashes are not checked: see `verify`.

        Raises TrailError if a record object is gone or is not a UTF-8 JSON object.
        """
        out = []
        for name, record in self.read_all():
            if record is None:
                raise TrailError(f"{self.store.location(name)} is missing or not a JSON record; run verify")
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
        """The record of run `run_id` (the oldest, should there be several), or None. Its hash is not checked.

        Reads the run index (a few objects); a trail without a head hint (written by older code) is scanned instead.
        The index is a cache kept beside the chain, not part of it: `verify` checks the chain. Raises TrailError if
        a record past the head hint, or (scanning) any record, is not a JSON object.
        """
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            return next((r for r in self.records() if r.get("run_id") == run_id), None)
        hint = self._read_hint()
        record = self._indexed(run_id)
        if record is not None:
            return record
        if hint is None:
            return next((r for r in self.records() if r.get("run_id") == run_id), None)
        return next((r for _, r in self._forward(hint[0], repair=False) if r.get("run_id") == run_id), None)

    # ----------------------------------------------------------------------------------------------- leasing

    def lease(
        self, name: str, holder: str, ttl_s: float = 600.0, wait_s: float = 300.0, *, poll_s: float = 1.0
    ) -> Lease:
        """A lease on `name` (e.g. a model name) in this trail's store, for `holder` (e.g. the run id); see `Lease`.

        `with trail.lease(name, run_id) as lease:` waits up to `wait_s` to take it, holds it at most `ttl_s` unless
        renewed, and releases it on leaving the block; call `lease.check()` right before the action it protects.
        Raises TrailError for a bad name, holder or duration, and (after the probe, which writes) for a store that
        ignores conditional writes; `acquire` raises LeaseTimeout after `wait_s`.
        """
        lease = Lease(self.store, name, holder, ttl_s, wait_s, poll_s=poll_s)
        self.check_conditional_writes()
        return lease

    # ----------------------------------------------------------------------------------------------- verifying

    def verify(
        self,
        expect: Iterable[str | RecordRef] | str | RecordRef = (),
        *,
        keys: Iterable[HmacKey] | None = None,
        require_signatures: bool = False,
    ) -> VerifyReport:
        """Recompute the whole chain from record 1 and name the first altered, missing or unexpected record.

        Checks, in order, and reports the first failure: every record's bytes, hash, name and link; signatures (see
        below); no stray `.json` object at the records' level; the head hint (`HEAD`), if any, names a record that
        exists with that hash (a hint past the end means the newest records were deleted); and each `expect`ed
        record (`RecordRef` or its text, `SEQUENCE:HASH` or `RECORD_ID:HASH`, e.g. the head a run published) is
        present with that hash, which also vouches for every record before it. The chain alone cannot see a cut
        tail or a consistent rewrite; an expected head can.

        Signatures: `keys` (default: the trail's key, if any) check every signed record; a record naming a key not
        given fails. Without keys, signatures are counted but not checked. Whatever the keys, an unsigned record after
        the first signed one fails (a signed trail stays signed: `append` refuses to add unsigned records to it),
        and a record with `key_id` but no `signature` fails. `require_signatures`: unsigned records before signing
        started fail too; it needs a key (TrailError without one).

        A damaged trail is a report with `ok` False, not an exception; it raises TrailError when the store cannot be
        read (see the class), for a malformed expected record, or for require_signatures without a key.
        """
        refs = _refs(expect)
        given = list(keys) if keys is not None else ([self.key] if self.key is not None else [])
        if require_signatures and not given:
            raise TrailError(f"signatures can only be required with a key: set {KEY_ENV} or {KEY_FILE_ENV}")
        signatures = _Signatures({k.key_id: k for k in given}, require_signatures)
        sequences = self._sequences()
        order = sorted(sequences)
        blobs = dict(zip(order, self._fetch([sequences[s] for s in order]), strict=True))
        previous: dict | None = None
        hashes: dict[int, tuple[str, str]] = {}
        checked = 0

        def report(ok: bool, **bad: Any) -> VerifyReport:
            return self._report(ok, checked, previous, signatures, [str(r) for r in refs if ok], **bad)

        for seq in range(1, max(sequences, default=0) + 1):
            key = record_key(seq)
            data = blobs.get(seq)
            problem = _check(data, seq, previous, sequences)
            record = json.loads(data) if problem is None else None  # type: ignore[arg-type]
            if record is not None:
                problem = signatures.problem(record, seq)
            if problem:
                return report(False, bad=key, sequence=seq, problem=problem)
            previous = record
            hashes[seq] = (record["record_id"], record["record_hash"])
            checked += 1
        stray = sorted(set(self.store.names()) - set(sequences.values()))
        if stray:
            problem = "not a record name: a record renamed or an object that does not belong in the trail"
            return report(False, bad=stray[0], problem=problem)
        problem, seq = self._check_hint(hashes, checked)
        if problem:
            return report(False, bad=HEAD_KEY, sequence=seq, problem=problem)
        for ref in refs:
            problem = _check_ref(ref, hashes, checked)
            if problem:
                return report(False, bad=record_key(ref.sequence), sequence=ref.sequence, problem=problem)
        return report(True)

    def _check_hint(self, hashes: dict[int, tuple[str, str]], last: int) -> tuple[str | None, int | None]:
        data = self.store.get(HEAD_KEY)
        if data is None:
            return None, None
        hint = _parse_hint(data)
        if hint is None:
            return "the head hint is not {sequence, record_id, record_hash} JSON: it was changed by hand", None
        sequence, digest = hint
        if sequence > last:
            end = f"ends at {last:06d}" if last else "is empty"
            return (
                f"the head hint names record {sequence:06d}, but the trail {end}: the newest records were deleted",
                sequence,
            )
        if hashes[sequence][1] != digest:
            return (
                f"the head hint says record {sequence:06d} has record_hash {digest}, the record has "
                f"{hashes[sequence][1]}: the records (or the hint) were rewritten",
                sequence,
            )
        return None, None

    def _report(
        self,
        ok: bool,
        checked: int,
        head: dict | None,
        signatures: _Signatures,
        confirmed: list[str],
        **bad: Any,
    ) -> VerifyReport:
        return VerifyReport(
            uri=self.uri,
            ok=ok,
            checked=checked,
            first_bad=bad.get("bad"),
            sequence=bad.get("sequence"),
            problem=bad.get("problem"),
            head=head["record_id"] if head else None,
            head_hash=head["record_hash"] if head else None,
            head_sequence=head["sequence"] if head else None,
            signed=signatures.signed,
            unsigned=signatures.unsigned,
            signatures_checked=bool(signatures.keys),
            key_ids=sorted(signatures.keys),
            confirmed=confirmed,
        )


def _refs(expect: Iterable[str | RecordRef] | str | RecordRef) -> list[RecordRef]:
    items = [expect] if isinstance(expect, str | RecordRef) else list(expect)
    return [r if isinstance(r, RecordRef) else RecordRef.parse(r) for r in items]


def _check_ref(ref: RecordRef, hashes: dict[int, tuple[str, str]], last: int) -> str | None:
    """What is wrong with the verified chain given an expected record (None: it is there, intact)."""
    if ref.sequence > last:
        end = f"ends at {last:06d}" if last else "is empty"
        return f"expected {ref}, but the trail {end}: the newest records were deleted (a cut tail)"
    record_id, digest = hashes[ref.sequence]
    if ref.record_id is not None and ref.record_id != record_id:
        return f"expected {ref.record_id} at sequence {ref.sequence}, found {record_id}"
    if digest != ref.record_hash:
        return (
            f"record {ref.sequence:06d} has record_hash {digest}, expected {ref.record_hash}: the chain was rewritten "
            f"at or before this record"
        )
    return None


def _hint_bytes(record: Mapping[str, Any]) -> bytes:
    hint = {k: record[k] for k in ("sequence", "record_id", "record_hash")}
    return canonical(hint) + b"\n"


def _parse_hint(data: bytes | None) -> tuple[int, str] | None:
    hint = _parse(data)
    if hint is None:
        return None
    sequence, digest = hint.get("sequence"), hint.get("record_hash")
    if type(sequence) is not int or sequence < 1 or not isinstance(digest, str) or not HEX64.match(digest):
        return None
    return sequence, digest


def _damaged(record: dict | None, seq: int) -> str | None:
    """Why a record cannot be chained onto (None if it can): the checks that need no earlier record."""
    if record is None:
        return "is unreadable or not a JSON object"
    digest = record.get("record_hash")
    if not isinstance(digest, str) or not HEX64.match(digest):
        return "has no valid record_hash"
    if record.get("sequence") != seq:
        return f"says sequence {record.get('sequence')!r}, not {seq}"
    try:
        actual = record_hash(record)
    except (TypeError, ValueError):
        return "holds a value canonical JSON cannot (a bare NaN or Infinity)"
    return None if actual == digest else "does not hash to its record_hash: it was altered"


def _parse(data: bytes | None) -> dict | None:
    try:
        record = json.loads(data.decode("utf-8")) if data is not None else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"bare {name} (NaN and Infinity are not JSON; canonical JSON cannot hold them)")


def _check(data: bytes | None, seq: int, previous: dict | None, sequences: dict[int, str]) -> str | None:
    """What is wrong with record `seq` (None if nothing), given the verified record before it."""
    if data is None:
        return f"record {seq:06d} is missing (the trail goes up to {max(sequences):06d})"
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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
