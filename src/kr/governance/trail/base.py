"""What every trail module shares: `TrailError` and the `Store` protocol. Imports nothing of the trail's own.

A module of its own so that `chain` (records, `Trail`), `signing` and `lease` can all use them and `chain` can still
import `lease` (for `Trail.lease`) without an import cycle.
"""

from __future__ import annotations

import re
from typing import Protocol

# a store key: "/"-separated segments, none empty, none "." or "..", no backslash, not absolute
STORE_KEY = re.compile(r"^(?!/)(?:(?!\.\.?(?:/|$))[^/\\\x00]+/)*(?!\.\.?$)[^/\\\x00]+$")


class TrailError(RuntimeError):
    """A bad trail location, an unusable body, a conflicting or unreadable record, or a failed S3 call."""


def check_key(key: str) -> str:
    """`key` if it is a relative "/"-separated object name without empty, `.` or `..` segments; else TrailError."""
    if not isinstance(key, str) or not STORE_KEY.match(key):
        raise TrailError(f"{key!r} is not a store key (relative, '/'-separated, no empty, '.' or '..' parts)")
    return key


class Store(Protocol):
    """Where a trail's objects live, as "/"-separated names under one location.

    Records are the flat names `000001.json`, `000002.json`, ... directly under the location; beside them the trail
    keeps objects that are not records, under names `names()` never returns: the head hint `HEAD`, the run index
    `runs/<run_id>.json`, the conditional-write probe `.probe/conditional-write.json` and lease tickets
    `leases/<name>/...`. Only `put` replaces an object, and only the head hint is written with it; nothing deletes.
    Implementations: FolderStore, S3Store. Every method raises TrailError for a malformed key.
    """

    uri: str

    def names(self) -> list[str]:
        """Sorted names of the `.json` objects directly under the location (no prefix); [] if there are none."""
        ...

    def children(self, prefix: str) -> list[str]:
        """Sorted names, relative to `prefix` (a folder ending in "/"), of the objects directly in that folder."""
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes of object `key`, or None if it does not exist."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` atomically; False (and nothing written) if `key` already exists."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace `key` with `data` atomically (readers see the old bytes or the new, never a mix)."""
        ...

    def location(self, key: str) -> str:
        """Where object `key` is (a path or URI), for messages and for `Trail.append`'s `uri`."""
        ...
