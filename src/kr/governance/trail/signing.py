"""Optional HMAC signing of records: a secret from the environment, an HMAC-SHA256 over each record_hash.

The chain shows that records were not changed *one at a time*; whoever can write the store can still rewrite the
chain from some record on, consistently. A signature needs the secret: with signing on, each new record carries
`key_id` (inside what record_hash covers) and `signature` = hex HMAC-SHA256(secret, record_hash) (outside it, since it
is made over it). An insider who can write the store but has no secret can then neither re-sign a changed record nor
pass it off as unsigned: `key_id` is hashed, and an unsigned record after the first signed one fails verification.

The secret comes from `KR_AUDIT_HMAC_KEY` (the value) or `KR_AUDIT_HMAC_KEY_FILE` (a path, e.g. a Kubernetes Secret
mounted as a file); trailing CR/LF are dropped from either, so `echo`ed keys match. At least 16 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

from kr.governance.trail.base import TrailError

KEY_ENV = "KR_AUDIT_HMAC_KEY"
KEY_FILE_ENV = "KR_AUDIT_HMAC_KEY_FILE"
MIN_KEY_BYTES = 16
KEY_ID = re.compile(r"^[0-9a-f]{8}$")


class HmacKey:
    """A signing secret: `key_id` (first 8 hex of its SHA-256) names it in records; the secret never leaves it.

    `secret`: the key bytes (at least MIN_KEY_BYTES, 16); `source` says where it came from, for messages. Raises
    TrailError for a shorter secret.
    """

    def __init__(self, secret: bytes, source: str = "the audit HMAC key") -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_KEY_BYTES:
            raise TrailError(f"{source} must be at least {MIN_KEY_BYTES} bytes (use e.g. `openssl rand -hex 32`)")
        self._secret = secret
        self.key_id = hashlib.sha256(secret).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"HmacKey(key_id={self.key_id!r})"

    def sign(self, record_hash: str) -> str:
        """Hex HMAC-SHA256 (64 lowercase chars) of the ASCII `record_hash` under this key."""
        return hmac.new(self._secret, record_hash.encode("ascii"), hashlib.sha256).hexdigest()

    def verify(self, record_hash: str, signature: str) -> bool:
        """Whether `signature` is this key's signature of `record_hash` (constant-time comparison)."""
        try:
            return hmac.compare_digest(self.sign(record_hash), signature)
        except (TypeError, UnicodeEncodeError):
            return False

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], source: str | None = None) -> HmacKey:
        """The key held in the file at `path` (trailing CR/LF dropped). Raises TrailError if unreadable or short."""
        label = source or f"key file {os.fspath(path)}"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise TrailError(f"cannot read {label}: {exc}") from exc
        return cls(data.rstrip(b"\r\n"), label)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HmacKey | None:
        """The key named by the environment (`environ`, default os.environ), or None when neither variable is set.

        KR_AUDIT_HMAC_KEY holds the key itself (UTF-8), KR_AUDIT_HMAC_KEY_FILE a path to a file holding it; empty
        values count as unset. Raises TrailError when both are set, the file cannot be read, or the key is shorter
        than 16 bytes.
        """
        env = os.environ if environ is None else environ
        value, path = env.get(KEY_ENV) or "", env.get(KEY_FILE_ENV) or ""
        if value and path:
            raise TrailError(f"set one of {KEY_ENV} and {KEY_FILE_ENV}, not both")
        if value:
            return cls(value.encode("utf-8").rstrip(b"\r\n"), KEY_ENV)
        if path:
            return cls.from_file(path, f"{KEY_FILE_ENV} ({path})")
        return None
