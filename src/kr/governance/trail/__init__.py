"""The trail (the audit trail): one tamper-evident record per run, append-only, chained by SHA-256 hashes.

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

What the chain alone cannot show is a cut tail (the newest records deleted) or a consistent rewrite from some record
on: `verify()` reports the head it reached (sequence, record_id, record_hash), and `verify(expect=[...])` (`kr audit
verify --expect-head SEQ:HASH`) checks a head published elsewhere: each registered model version's tags
(kr.audit_record_id, kr.audit_record_hash) and the run summary. With a key (KR_AUDIT_HMAC_KEY or
KR_AUDIT_HMAC_KEY_FILE), each record also carries `key_id` and an HMAC `signature` over its record_hash (`signing`),
so rewriting needs the key as well as write access.

Beside the records, never listed by `names()`: the head hint `HEAD` (the newest record's sequence and hash, replaced
by each append: not authoritative, but a hint naming a missing record or another hash fails `verify`), the run index
`runs/<run_id>.json` (created once per run: the sequence of its record), the probe `.probe/conditional-write.json`
(a store must refuse to create it twice) and lease tickets `leases/<name>/`. With them an append reads a constant
number of objects, not the whole trail. docs/audit-trail.md has the whole design and how to run it.

Modules: `base` (`TrailError`, the `Store` protocol), `signing` (`HmacKey`), `lease` (`Lease`), `chain` (record
bytes and hashes, body checks, `Trail`, `VerifyReport`, `RecordRef`) and `stores` (`FolderStore`, `S3Store`,
`open_trail`); `stores` imports `chain`, `chain` imports `lease` and `signing`, never the reverse. Everything public
is re-exported here.
"""

from kr.governance.trail.base import Store, TrailError
from kr.governance.trail.chain import (
    CHAIN_FIELDS,
    GENESIS,
    HEAD_KEY,
    MAX_RECORD_BYTES,
    PROBE_KEY,
    REQUIRED_FIELDS,
    RUNS_PREFIX,
    SCHEMA,
    SIGNATURE_FIELDS,
    UNHASHED_FIELDS,
    RecordRef,
    Trail,
    VerifyReport,
    canonical,
    normalise_body,
    record_hash,
    record_key,
    sha256_file,
    stored_bytes,
)
from kr.governance.trail.lease import LEASES_PREFIX, Lease, LeaseError, LeaseLost, LeaseTimeout
from kr.governance.trail.signing import KEY_ENV, KEY_FILE_ENV, HmacKey
from kr.governance.trail.stores import FolderStore, S3Store, open_trail, s3_client

__all__ = [
    "CHAIN_FIELDS",
    "GENESIS",
    "HEAD_KEY",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "LEASES_PREFIX",
    "MAX_RECORD_BYTES",
    "PROBE_KEY",
    "REQUIRED_FIELDS",
    "RUNS_PREFIX",
    "SCHEMA",
    "SIGNATURE_FIELDS",
    "UNHASHED_FIELDS",
    "FolderStore",
    "HmacKey",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseTimeout",
    "RecordRef",
    "S3Store",
    "Store",
    "Trail",
    "TrailError",
    "VerifyReport",
    "canonical",
    "normalise_body",
    "open_trail",
    "record_hash",
    "record_key",
    "s3_client",
    "sha256_file",
    "stored_bytes",
]
