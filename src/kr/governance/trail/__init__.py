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

What the chain alone cannot show is a cut tail (the newest records deleted): `verify()` reports the head it reached,
and each registered model version carries its record's id and hash to compare against.

Modules: `chain` (record bytes and hashes, body checks, `Trail`, `VerifyReport`) and `stores` (`FolderStore`,
`S3Store`, `open_trail`); `stores` imports `chain`, never the reverse. Everything public is re-exported here.
"""

from kr.governance.trail.chain import (
    CHAIN_FIELDS,
    GENESIS,
    MAX_RECORD_BYTES,
    REQUIRED_FIELDS,
    SCHEMA,
    Store,
    Trail,
    TrailError,
    VerifyReport,
    canonical,
    normalise_body,
    record_hash,
    record_key,
    sha256_file,
    stored_bytes,
)
from kr.governance.trail.stores import FolderStore, S3Store, open_trail, s3_client

__all__ = [
    "CHAIN_FIELDS",
    "GENESIS",
    "MAX_RECORD_BYTES",
    "REQUIRED_FIELDS",
    "SCHEMA",
    "FolderStore",
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
