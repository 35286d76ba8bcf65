"""Leases: keys that vanish when their owner stops refreshing them.

The overlay driver registers each host (``hosts/<name>``) and its endpoints under the host's
lease, so a host that dies drops out of every peer's view after ``ttl`` seconds without
anyone cleaning up after it. etcd has real leases; the embedded backends record an expiry
time per lease, hide keys of expired leases from reads and delete them (watchers see the
deletes) as soon as they notice.

    lease = store.put_with_lease("hosts/h1", {...}, 15.0)    # grants a lease, returns it
    store.put_with_lease("overlays/o/endpoints/e", {...}, lease)   # more keys on it
    lease.keepalive()      # a daemon thread refreshes it every ttl/3
    lease.revoke()         # keys go at once

A lease is stored in records by its integer ``id``; another process can write under it by
passing that id (``put_with_lease(key, value, 7587...)``). A bare TTL must therefore be a
float: an int is always a lease id.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from cnm.errors import InvalidOption, StoreUnavailable

log = logging.getLogger(__name__)


class LeaseExpired(StoreUnavailable):
    """A write named a lease that no longer exists (expired or revoked): grant a new one.

    A StoreUnavailable because, to the writer, the store can no longer keep its key alive.
    """


class Lease:
    """A granted lease: ``id`` (what records store), ``ttl`` in seconds (0.0 when the lease
    was adopted by id and its TTL is unknown)."""

    def __init__(self, store: LeaseStore, lease_id: int, ttl: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Restart the TTL; False if the lease is gone (its keys are gone with it)."""
        return self._store.refresh_lease(self)

    def revoke(self) -> None:
        """End the lease now (its keys are deleted); stops any keepalive. Idempotent."""
        self.stop_keepalive()
        self._store.revoke_lease(self)

    def keepalive(self, interval: float | None = None,
                  on_lost: Callable[[], None] | None = None) -> Lease:
        """Refresh from a daemon thread every ``interval`` seconds (default ttl/3) until
        ``stop_keepalive``/``revoke``. If the lease is found gone, the thread calls
        ``on_lost`` and ends; an unreachable store is retried every second meanwhile."""
        if interval is None:
            if self.ttl <= 0:
                raise InvalidOption(f"lease {self.id}: its TTL is unknown, pass an interval")
            interval = self.ttl / 3.0
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, args=(interval, on_lost),
                                        name=f"pycnm-lease-{self.id:x}", daemon=True)
        self._thread.start()
        return self

    def stop_keepalive(self) -> None:
        """Stop the keepalive thread, if any (the lease then runs out after its TTL)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None

    def _keep(self, interval: float, on_lost: Callable[[], None] | None) -> None:
        wait = interval
        while not self._stop.wait(wait):
            try:
                alive = self.refresh()
            except StoreUnavailable as exc:
                log.warning("lease %x: refresh failed, retrying: %s", self.id, exc)
                wait = min(interval, 1.0)
                continue
            wait = interval
            if not alive:
                log.warning("lease %x: expired; its keys are gone", self.id)
                if on_lost is not None:
                    on_lost()
                return

    def __repr__(self) -> str:
        return f"Lease(id={self.id}, ttl={self.ttl})"


def lease_id(lease: Lease | int) -> int:
    """The id of a Lease or of a lease id (as stored in records)."""
    if isinstance(lease, Lease):
        return lease.id
    if isinstance(lease, int) and not isinstance(lease, bool):
        return lease
    raise InvalidOption(f"not a lease or lease id: {lease!r}")


class LeaseStore(abc.ABC):
    """The lease half of the store interface, mixed into every bundled backend.

    Backends implement grant/refresh/revoke and ``_put_leased``; ``put_with_lease`` is
    shared. Wrappers (``PrefixedStore``) pass these through, which is why they live here
    rather than on ``Store``.
    """

    @abc.abstractmethod
    def grant_lease(self, ttl: float) -> Lease:
        """Create a lease that ends ``ttl`` seconds from now unless refreshed."""

    @abc.abstractmethod
    def refresh_lease(self, lease: Lease | int) -> bool:
        """Restart the lease's TTL; False if it no longer exists."""

    @abc.abstractmethod
    def revoke_lease(self, lease: Lease | int) -> None:
        """End the lease and delete its keys now; a lease already gone is no error."""

    @abc.abstractmethod
    def _put_leased(self, key: str, value: Mapping[str, Any], lease_id: int) -> int:
        """Write ``key`` attached to lease ``lease_id``; return the new revision. Raises
        LeaseExpired if the lease does not exist."""

    def put_with_lease(self, key: str, value: Mapping[str, Any],
                       lease: Lease | int | float) -> Lease:
        """Write ``key`` so that it is deleted when the lease ends. ``lease`` is a Lease, a
        lease id (int, from a record), or a TTL in seconds (float: a new lease is granted).
        Returns the lease the key is attached to."""
        if isinstance(lease, float):
            if lease <= 0:
                raise InvalidOption(f"a lease TTL must be positive, not {lease}")
            lease = self.grant_lease(lease)
        ident = lease_id(lease)
        try:
            self._put_leased(key, value, ident)
        except LeaseExpired as exc:
            raise LeaseExpired(
                f"cannot write {key}: lease {ident} does not exist (expired or revoked); "
                "grant a new one (a TTL must be passed as a float, e.g. 15.0)"
            ) from exc
        return lease if isinstance(lease, Lease) else Lease(self, ident, 0.0)
