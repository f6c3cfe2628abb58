"""Where a trail's objects live: a folder or an S3 prefix, records create-only, and `open_trail` to pick one by URI.

Both stores create objects exclusively (`put_if_absent`: a hard link in a folder, `If-None-Match: *` on S3) and
replace one only through `put`, which the trail uses for its head hint alone. Keys may name sub-folders
(`runs/<run_id>.json`, `leases/<name>/...`); `names()` lists only the records' level.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from kr.governance.trail.base import Store, TrailError, check_key
from kr.governance.trail.chain import Trail
from kr.governance.trail.signing import HmacKey

__all__ = ["BUCKET", "ENDPOINT_VARS", "FolderStore", "S3Store", "Store", "open_trail", "s3_client"]

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


class FolderStore:
    """A `Store` in a local folder: one read-only file per record, created exclusively, never replaced.

    `root` (a Path) need not exist: reads then find nothing and the first write creates it (and a key's sub-folders)
    with its parents. A relative `root` resolves against the working directory at each call. `get`, `put_if_absent`
    and `put` raise OSError for file-system failures other than a missing file (permissions, a full disk, `root` not
    a directory), TrailError for a malformed key.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def names(self) -> list[str]:
        """Sorted names of the `*.json` files in `root`, excluding dot files; [] if `root` is not a directory."""
        if not self.root.is_dir():
            return []
        # dot files are our own temporary files (and never records)
        return sorted(n for n in os.listdir(self.root) if n.endswith(".json") and not n.startswith("."))

    def children(self, prefix: str) -> list[str]:
        """Sorted names of the files (not dot files, not folders) in `root/prefix`; [] if there is no such folder."""
        folder = self.root / check_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not folder.is_dir():
            return []
        return sorted(n for n in os.listdir(folder) if not n.startswith(".") and (folder / n).is_file())

    def get(self, key: str) -> bytes | None:
        """The bytes of `root/key`, or None if there is no such file."""
        try:
            return (self.root / check_key(key)).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `root/key` (mode 0444) holding `data`, fsynced; False (nothing written) if `key` already exists.

        Written to a dot-named temporary file, then hard-linked into place, so readers see the whole record or none
        and exactly one of several concurrent writers wins. Where the file system has no hard links the file is
        created exclusively in place instead: still one winner, but a reader may see it half written. The
        directory is fsynced too, best effort, so the new name survives a crash.
        """
        final = self.root / check_key(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # read-only from birth: an accidental edit needs a deliberate chmod first
        tmp = self._temporary(final, data, 0o444)
        try:
            return self._publish(tmp, final, data)
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        """Create or replace `root/key` (mode 0644) with `data`: written to a temporary file, fsynced, renamed over.

        Readers see the old file or the new one. The trail uses it for its head hint only, never for a record.
        """
        final = self.root / check_key(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temporary(final, data, 0o644)
        try:
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir(final.parent)

    @staticmethod
    def _temporary(final: Path, data: bytes, mode: int) -> Path:
        """A dot-named file beside `final` holding `data`, fsynced (dot files are never records or children)."""
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

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
        self._sync_dir(final.parent)
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
        self._sync_dir(final.parent)
        return True

    @staticmethod
    def _sync_dir(folder: Path) -> None:
        """Make the new name itself durable, not just the file's bytes."""
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def location(self, key: str) -> str:
        """The path of `root/key` as a string."""
        return str(self.root / check_key(key))


def s3_client() -> Any:
    """A new boto3 S3 client: endpoint variables for MinIO/moto, boto3's own credential chain.

    The endpoint is the first non-empty of AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL (none set:
    boto3's default), with path-style addressing when one is set; retries: botocore's standard mode, 5 attempts.
    Makes no request. Raises ValueError if the endpoint is not a valid URL, and botocore's BotoCoreError for a broken
    AWS configuration (e.g. ProfileNotFound for an unknown AWS_PROFILE).
    """
    import boto3
    from botocore.config import Config

    endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
    # path-style addressing: a custom endpoint (MinIO, moto, an IP address) rarely resolves bucket subdomains
    s3_config = {"addressing_style": "path"} if endpoint else {}
    config = Config(retries={"mode": "standard", "max_attempts": 5}, s3=s3_config)
    return boto3.client("s3", endpoint_url=endpoint, config=config)


class S3Store:
    """A `Store` under `s3://bucket/prefix`, written with conditional puts (If-None-Match: *).

    `prefix` is "" or ends in "/"; `client` is a boto3 S3 client (None: `s3_client()`, which may raise). Construction
    makes no request. Every method raises TrailError when S3 fails (no bucket, no credentials, endpoint
    unreachable, access denied), with the botocore error chained, and for a malformed key. Only `put` (the head hint)
    replaces an object; under versioning or Object Lock that adds a version and destroys nothing.
    """

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else s3_client()
        self.uri = f"s3://{bucket}/{prefix}"

    def names(self) -> list[str]:
        """Sorted names (prefix removed) of the `*.json` keys directly under the prefix, not in sub-"folders"."""
        return [n for n in self._list(self.prefix) if n.endswith(".json")]

    def children(self, prefix: str) -> list[str]:
        """Sorted names, relative to `prefix + prefix-argument` (a folder ending in "/"), of the keys directly in it."""
        folder = f"{check_key(prefix.rstrip('/'))}/" if prefix.strip("/") else ""
        return self._list(self.prefix + folder)

    def _list(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (a delimiter listing: sub-"folders" are neither listed nor paged through)."""

        def pages() -> list[dict]:
            paginator = self.client.get_paginator("list_objects_v2")
            return list(paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"))

        names = (obj["Key"][len(prefix) :] for page in self._call("list", pages) for obj in page.get("Contents", []))
        return sorted(n for n in names if n and "/" not in n)

    def get(self, key: str) -> bytes | None:
        """The bytes of object `prefix + key`, or None if S3 answers NoSuchKey/404."""
        from botocore.exceptions import ClientError

        def read() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + check_key(key))["Body"].read()
            except ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404"):
                    return None
                raise

        return self._call(f"read {key} in", read)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create object `prefix + key` holding `data` (application/json); False if S3 answers 412 or 409.

        412: the key exists; 409: another conditional write to it is in flight. Either way nothing of ours landed,
        except when a retried request's first attempt did: the caller then finds its own record on re-reading.
        """
        from botocore.exceptions import ClientError

        def write() -> bool:
            try:
                # S3 conditional write: 412 if the key exists, 409 if another conditional write to it is in flight
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + check_key(key),
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

    def put(self, key: str, data: bytes) -> None:
        """Create or replace object `prefix + key` (the head hint only; a new version where versioning is on)."""
        full = self.prefix + check_key(key)
        self._call(
            f"write {key} in",
            lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType="application/json"),
        )

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one S3 operation; its failures (no bucket, no credentials, no endpoint) become TrailErrors."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise TrailError(f"cannot {what} {self.uri}: {exc}") from exc

    def location(self, key: str) -> str:
        """The object's URI, `s3://bucket/prefix` + `key`."""
        return self.uri + check_key(key)


def _is_conflict(exc: Any) -> bool:
    """412 PreconditionFailed (the key exists) or 409 (a concurrent conditional write to it): retry elsewhere.

    A retried request whose first attempt did land also ends here; the next pass finds it as this run's record.
    """
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status in (409, 412) or _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict")


def _error_code(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def open_trail(
    uri: str | os.PathLike[str], *, client: Any = None, key: HmacKey | None | Literal["env"] = "env"
) -> Trail:
    """The trail at `uri`: a folder path, `file:///path`, or `s3://bucket/prefix` (`client`: a ready boto3 client).

    `key` signs new records and checks signatures: "env" (default) reads KR_AUDIT_HMAC_KEY / KR_AUDIT_HMAC_KEY_FILE
    on first use (`HmacKey.from_env`), None turns signing off, an HmacKey is used as given. Surrounding whitespace is
    ignored and `~` expands in a plain path. Opening reads and writes nothing (the environment's key is read later);
    a folder is created by the first append. For S3 without `client`, a client is made now (`s3_client`, and what
    it raises).
    Raises TrailError if `uri` is empty, is a `file://` URI with a host other than localhost, has a scheme other
    than file or s3, names no S3 bucket or an invalid one, or is an S3 URI with a query or fragment; ValueError (from
    urlsplit) for a malformed host such as an unclosed `[`.
    """
    text = os.fspath(uri).strip()
    if not text:
        raise TrailError("audit.uri is empty: give a folder, file:///path or s3://bucket/prefix")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        return Trail(FolderStore(Path(text).expanduser()), key=key)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise TrailError(f"audit.uri {text!r}: a file:// URI must be local (file:///path)")
        return Trail(FolderStore(Path(url2pathname(parts.path))), key=key)
    if scheme == "s3":
        return Trail(_s3_store(text, parts.netloc, parts.path, parts.query or parts.fragment, client), key=key)
    raise TrailError(
        f"audit.uri {text!r}: unsupported scheme {scheme!r}; use a folder, file:///path or s3://bucket/prefix"
    )


def _s3_store(text: str, bucket: str, path: str, extra: str, client: Any) -> S3Store:
    if not bucket:
        raise TrailError(f"audit.uri {text!r} names no bucket: use s3://bucket/prefix")
    if not BUCKET.match(bucket):
        raise TrailError(f"audit.uri {text!r}: {bucket!r} is not a valid S3 bucket name")
    if extra:
        raise TrailError(f"audit.uri {text!r}: an S3 location takes no query or fragment")
    prefix = path.strip("/")
    return S3Store(bucket, f"{prefix}/" if prefix else "", client)
