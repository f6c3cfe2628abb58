"""The lease: one holder at a time per name (e.g. one promotion per model name), built from create-only objects.

Tickets `leases/<name>/<n:09d>.json` in the trail's store, each created with `put_if_absent`. The holder is the
newest ticket, until it is released (the object `leases/<name>/<n:09d>.released` exists) or it expires (its
`expires_at` has passed). A contender may create ticket n+1 only when ticket n is released or expired, and because
creating n+1 is exclusive, exactly one contender wins it. Nothing is ever overwritten or deleted, so the scheme works
on a create-only store, S3 Object Lock included.

A holder that crashes leaves its ticket unreleased: the next contender waits until it expires, then takes n+1.
Expiry compares the holder's clock (which wrote `expires_at`) with each contender's: keep clocks in sync (NTP) and the
TTL well above any skew. A holder must call `check()` right before each action the lease protects (setting the
champion alias): it raises LeaseLost once the lease expired or another run took it over. `renew()` extends a held
lease by creating the holder's own next ticket, which fails (LeaseLost) if someone else took that ticket first.
"""

from __future__ import annotations

import json
import random
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kr.governance.trail.base import Store, TrailError

__all__ = ["LEASES_PREFIX", "Lease", "LeaseError", "LeaseLost", "LeaseTimeout"]

LEASES_PREFIX = "leases/"
LEASE_SCHEMA = "kr.lease/1"
LEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@=-]{0,199}$")
TICKET_NAME = re.compile(r"^(\d{9})\.json$")
FIRST_DELAY_S = 0.02


class LeaseError(TrailError):
    """A lease could not be taken, or is no longer held."""


class LeaseTimeout(LeaseError):
    """`wait_s` passed while another holder kept the lease."""


class LeaseLost(LeaseError):
    """The lease is not held (never acquired, released, expired, or taken over by another run): do not act."""


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


class Lease:
    """A lease on `name` in `store` for `holder`; no I/O until `acquire()` (or `with lease:`).

    `name`: 1-200 letters, digits and `._:+@=-`, starting with a letter or digit (a model name); `holder`: who takes
    it (a run id), non-empty; `ttl_s` (> 0): how long a ticket holds without renewal; `wait_s` (>= 0): how long
    `acquire` waits for another holder; `poll_s` (> 0): the longest pause between looks (jittered exponential backoff
    from 20 ms). Raises TrailError for a bad name, holder or duration.

    After `acquire`: `ticket` (int), `acquired_at` and `expires_at` (aware UTC datetimes) describe the ticket held.
    Methods raise TrailError when the store fails (S3Store wraps S3 errors).
    """

    def __init__(
        self,
        store: Store,
        name: str,
        holder: str,
        ttl_s: float = 600.0,
        wait_s: float = 300.0,
        *,
        poll_s: float = 1.0,
    ) -> None:
        if not isinstance(name, str) or not LEASE_NAME.match(name):
            raise TrailError(f"{name!r} is not a lease name (1-200 letters, digits and ._:+@=-, first alphanumeric)")
        if not isinstance(holder, str) or not holder.strip() or len(holder) > 500:
            raise TrailError(f"a lease holder is a non-empty string of at most 500 chars (got {holder!r})")
        if not ttl_s > 0 or not wait_s >= 0 or not poll_s > 0:
            raise TrailError(f"lease needs ttl_s > 0, wait_s >= 0, poll_s > 0 (got {ttl_s}, {wait_s}, {poll_s})")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = float(ttl_s)
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self.ticket: int | None = None
        self.acquired_at: datetime | None = None
        self.expires_at: datetime | None = None
        self._released = False

    def __repr__(self) -> str:
        return f"Lease(name={self.name!r}, holder={self.holder!r}, ticket={self.ticket}, held={self.held})"

    @property
    def folder(self) -> str:
        """The store folder of this name's tickets, `leases/<name>/`."""
        return f"{LEASES_PREFIX}{self.name}/"

    def ticket_key(self, n: int) -> str:
        """The object name of ticket `n`: `leases/<name>/<n:09d>.json`."""
        return f"{self.folder}{n:09d}.json"

    def released_key(self, n: int) -> str:
        """The object name of ticket `n`'s release marker: `leases/<name>/<n:09d>.released`."""
        return f"{self.folder}{n:09d}.released"

    @property
    def held(self) -> bool:
        """Acquired, not released, and not past `expires_at` by this machine's clock (no I/O; see `check`)."""
        return (
            self.ticket is not None
            and not self._released
            and self.expires_at is not None
            and datetime.now(UTC) < self.expires_at
        )

    # ------------------------------------------------------------------------------------------------ taking

    def acquire(self) -> Lease:
        """Take the lease, waiting up to `wait_s` for the current holder to release it or for its ticket to expire.

        Returns self. Raises LeaseTimeout (a TrailError) naming the current holder when `wait_s` runs out,
        LeaseError if this object holds the lease already or a ticket is unreadable, TrailError if the store fails.
        """
        if self.ticket is not None and not self._released:
            raise LeaseError(f"lease {self.name!r} is already held by this object (ticket {self.ticket})")
        deadline = time.monotonic() + self.wait_s
        delay = min(FIRST_DELAY_S, self.poll_s)
        while True:
            newest, current = self._newest()
            if current is None and self._take(newest + 1, self.ttl_s):
                return self
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseTimeout(self._busy_message(newest, current))
            pause = delay * random.uniform(0.5, 1.5)
            if current is not None:  # no point sleeping much past the moment the current ticket expires
                pause = min(pause, max(0.0, (_expiry(current) - datetime.now(UTC)).total_seconds()) + 0.005)
            time.sleep(min(pause, remaining))
            delay = min(delay * 2, self.poll_s)

    def _busy_message(self, newest: int, current: dict | None) -> str:
        who = (
            f"held by {current.get('holder')!r} (ticket {newest}, until {current.get('expires_at')})"
            if current
            else "taken by another contender each time it came free"
        )
        return f"could not take lease {self.name!r} in {self.store.uri} within {self.wait_s:g} s: {who}"

    def _newest(self) -> tuple[int, dict | None]:
        """(newest ticket number or 0, its body if it still holds, else None)."""
        names = self.store.children(self.folder)
        numbers = [int(m.group(1)) for n in names if (m := TICKET_NAME.match(n))]
        if not numbers:
            return 0, None
        newest = max(numbers)
        if f"{newest:09d}.released" in names:
            return newest, None
        body = self._read(newest)
        if body is None:  # listed a moment ago: a concurrent writer's file not yet whole; look again
            return newest, {"holder": "(unreadable)", "expires_at": datetime.now(UTC).isoformat()}
        return (newest, body) if datetime.now(UTC) < _expiry(body) else (newest, None)

    def _read(self, n: int) -> dict | None:
        data = self.store.get(self.ticket_key(n))
        if data is None:
            return None
        try:
            body = json.loads(data.decode("utf-8"))
            _expiry(body)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LeaseError(
                f"lease ticket {self.store.location(self.ticket_key(n))} is unreadable ({exc}); "
                f"a ticket is only ever created whole, so this one was changed"
            ) from exc
        return body

    def _take(self, n: int, ttl_s: float, renews: int | None = None) -> bool:
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=ttl_s)
        body: dict[str, Any] = {
            "schema": LEASE_SCHEMA,
            "name": self.name,
            "holder": self.holder,
            "ticket": n,
            "acquired_at": now.isoformat(timespec="microseconds"),
            "expires_at": expires.isoformat(timespec="microseconds"),
            "ttl_s": ttl_s,
        }
        if renews is not None:
            body["renews"] = renews
        if not self.store.put_if_absent(self.ticket_key(n), _dump(body)):
            return False
        self.ticket, self.acquired_at, self.expires_at, self._released = n, now, expires, False
        return True

    # ------------------------------------------------------------------------------------------------ holding

    def check(self) -> None:
        """Raise LeaseLost unless this object still holds the lease; call it right before each protected action.

        Fails when the lease was never acquired or was released, when `expires_at` has passed by this machine's
        clock, or when ticket n+1 exists (another run took over: its clock said this ticket had expired). One store
        read. Raises TrailError if the store fails.
        """
        if self.ticket is None or self._released or self.expires_at is None:
            raise LeaseLost(f"lease {self.name!r} is not held by {self.holder!r} (not acquired, or released)")
        now = datetime.now(UTC)
        if now >= self.expires_at:
            late = (now - self.expires_at).total_seconds()
            raise LeaseLost(
                f"lease {self.name!r} (ticket {self.ticket}) expired at {self.expires_at.isoformat()}, {late:.1f} s "
                f"ago; another run may hold it now"
            )
        if self.store.get(self.ticket_key(self.ticket + 1)) is not None:
            raise LeaseLost(self._taken_over(self.ticket + 1))

    def _taken_over(self, n: int) -> str:
        try:
            other = self._read(n) or {}
        except LeaseError:
            other = {}
        return f"lease {self.name!r} was taken over: ticket {n} belongs to {other.get('holder', '(unknown)')!r}"

    def renew(self, ttl_s: float | None = None) -> None:
        """Extend the lease to now + `ttl_s` (default: the lease's ttl_s) by creating the holder's next ticket.

        Raises LeaseLost if the lease is not held or another run took the next ticket first (then this object no
        longer holds it), TrailError for ttl_s <= 0 or a failed store.
        """
        ttl = self.ttl_s if ttl_s is None else float(ttl_s)
        if not ttl > 0:
            raise TrailError(f"lease ttl_s must be > 0 (got {ttl_s})")
        if self.ticket is None or self._released:
            raise LeaseLost(f"lease {self.name!r} is not held by {self.holder!r} (not acquired, or released)")
        current = self.ticket
        if not self._take(current + 1, ttl, renews=current):
            self._released = True  # someone else holds it now: this object must never act or release on it
            raise LeaseLost(self._taken_over(current + 1))

    def release(self) -> None:
        """Give the lease back (create the ticket's `.released` marker); a no-op if not held. TrailError if the
        store fails."""
        if self.ticket is None or self._released:
            return
        marker = {"holder": self.holder, "ticket": self.ticket, "released_at": datetime.now(UTC).isoformat()}
        self.store.put_if_absent(self.released_key(self.ticket), _dump(marker))
        self._released = True

    def __enter__(self) -> Lease:
        if not (self.ticket is not None and not self._released):
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _expiry(body: dict) -> datetime:
    """A ticket's `expires_at` as an aware datetime (naive values are read as UTC)."""
    expires = datetime.fromisoformat(body["expires_at"])
    return expires if expires.tzinfo else expires.replace(tzinfo=UTC)
