"""Where a trail's records live: a folder or an S3 prefix, both create-only, and `open_trail` to pick one by URI."""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from kr.governance.trail.chain import Store, Trail, TrailError

__all__ = ["BUCKET", "ENDPOINT_VARS", "FolderStore", "S3Store", "Store", "open_trail", "s3_client"]

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


class FolderStore:
    """A `Store` in a local folder: one read-only file per record, created exclusively, never replaced.

    `root` (a Path) need not exist: reads then find nothing and the first write creates it with its parents. A
    relative `root` resolves against the working directory at each call. `get` and `put_if_absent` raise OSError
    for file-system failures other than a missing file (permissions, a full disk, `root` not a directory).
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

    def get(self, key: str) -> bytes | None:
        """The bytes of `root/key`, or None if there is no such file."""
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `root/key` (mode 0444) holding `data`, fsynced; False (nothing written) if `key` already exists.

        Written to a dot-named temporary file, then hard-linked into place, so readers see the whole record or none
        and exactly one of several concurrent writers wins. Where the file system has no hard links the file is
        created exclusively in place instead: still one winner, but a reader may see it half written. The
        directory is fsynced too, best effort, so the new name survives a crash.
        """
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
        """The path of `root/key` as a string."""
        return str(self.root / key)


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
    """A `Store` under `s3://bucket/prefix`, written with conditional puts (If-None-Match: *), never overwritten.

    `prefix` is "" or ends in "/"; `client` is a boto3 S3 client (None: `s3_client()`, which may raise). Construction
    makes no request. `names`, `get` and `put_if_absent` raise TrailError when S3 fails (no bucket, no credentials,
    endpoint unreachable, access denied), with the botocore error chained.
    """

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else s3_client()
        self.uri = f"s3://{bucket}/{prefix}"

    def names(self) -> list[str]:
        """Sorted names (prefix removed) of the `*.json` keys directly under the prefix, not in sub-"folders"."""
        pages = self._call("list", lambda: list(self._pages()))
        names = (obj["Key"][len(self.prefix) :] for page in pages for obj in page.get("Contents", []))
        return sorted(n for n in names if n.endswith(".json") and "/" not in n)

    def _pages(self) -> Any:
        return self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)

    def get(self, key: str) -> bytes | None:
        """The bytes of object `prefix + key`, or None if S3 answers NoSuchKey/404."""
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
        """Run one S3 operation; its failures (no bucket, no credentials, no endpoint) become TrailErrors."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise TrailError(f"cannot {what} {self.uri}: {exc}") from exc

    def location(self, key: str) -> str:
        """The object's URI, `s3://bucket/prefix` + `key`."""
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


def open_trail(uri: str | os.PathLike[str], *, client: Any = None) -> Trail:
    """The trail at `uri`: a folder path, `file:///path`, or `s3://bucket/prefix` (`client`: a ready boto3 client).

    Surrounding whitespace is ignored and `~` expands in a plain path. Opening reads and writes nothing; a folder is
    created by the first append. For S3 without `client`, a client is made now (`s3_client`, and what it raises).
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
        return Trail(FolderStore(Path(text).expanduser()))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise TrailError(f"audit.uri {text!r}: a file:// URI must be local (file:///path)")
        return Trail(FolderStore(Path(url2pathname(parts.path))))
    if scheme == "s3":
        return Trail(_s3_store(text, parts.netloc, parts.path, parts.query or parts.fragment, client))
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
