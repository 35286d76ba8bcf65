"""The store interface every backend implements, shaped for etcd.

Keys are ``/``-separated strings (``networks/<id>``, ``endpoints/<nid>/<eid>``,
``ipam/pools/<pool-id>``, ``hosts/<name>``); values are JSON-able dicts. Every key carries a
*revision* (etcd's mod_revision): a positive integer that changes on every write of that
key. Compare-and-swap and transactions compare revisions; revision 0 means "absent".

Leases (keys that vanish when their owner stops refreshing them) are an optional part of the
interface, ``cnm.store.lease.LeaseStore``, which every bundled backend implements.

The helpers at the end (value codec, prefix ranges, ``WatchCursor``) are shared by the
backends so that they agree on encoding, ordering and how a watch catches up.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

WRITE_POLL = 0.001  # seconds between two looks of a write_waiter that is not told of writes


@dataclass(frozen=True)
class Entry:
    """One stored key with its value and the revision of its last write."""

    key: str
    value: dict[str, Any]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched prefix; ``value`` is None for deletions."""

    kind: Literal["put", "delete"]
    key: str
    value: dict[str, Any] | None
    revision: int


@dataclass
class Txn:
    """An all-or-nothing batch: applied only if every compare holds.

    ``compares`` maps key -> expected revision (0: the key must be absent).
    """

    compares: dict[str, int] = field(default_factory=dict)
    puts: dict[str, dict[str, Any]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)


class Store(abc.ABC):
    """Key/value state shared by every pycnm process using the same backend."""

    url: str
    # Shared by several hosts (a cluster store): a host's own records then live in a local
    # store of its own (see Controller), the cluster store keeps what hosts share.
    cluster: bool = False

    @abc.abstractmethod
    def get(self, key: str) -> Entry | None:
        """Return the entry stored at ``key``, or None if there is none."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[Entry]:
        """Return every entry whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def put(self, key: str, value: Mapping[str, Any]) -> int:
        """Write ``value`` at ``key`` unconditionally and return the new revision."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key`` unconditionally; return whether it existed."""

    @abc.abstractmethod
    def commit(self, txn: Txn) -> bool:
        """Apply ``txn`` atomically if all its compares hold; return whether it applied."""

    @abc.abstractmethod
    def watch(self, prefix: str, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        """Call ``callback`` for every later change under ``prefix`` (from a background
        thread) until the returned cancel function is called."""

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        """Release connections and threads."""

    def check(self) -> None:
        """One cheap read: raises StoreRefused if the store refuses this client, and
        StoreUnavailable if it cannot be reached."""
        self.get("")

    # Conveniences built on the primitives; backends need not override them.

    def cas(self, key: str, value: Mapping[str, Any] | None, expected_revision: int) -> bool:
        """Write (or delete, when ``value`` is None) ``key`` only if its revision is still
        ``expected_revision`` (0: only if absent). Return whether it was applied."""
        txn = Txn(compares={key: expected_revision})
        if value is None:
            txn.deletes.append(key)
        else:
            txn.puts[key] = dict(value)
        return self.commit(txn)

    def create(self, key: str, value: Mapping[str, Any]) -> bool:
        """Write ``key`` only if it does not exist yet; return whether it was created."""
        return self.cas(key, value, 0)

    def update(
        self,
        key: str,
        mutate: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        attempts: int = 1000,
        also: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> dict[str, Any] | None:
        """Read-modify-write ``key`` with optimistic concurrency: ``mutate`` gets the current
        value (None if absent) and returns the new one (None deletes). Retried on conflict;
        ``mutate`` may raise to abort. Returns what was written. ``also``: more keys to
        write in the same transaction, asked for after each ``mutate`` (they may depend on
        what it chose)."""
        from cnm.errors import StoreUnavailable

        for _ in range(attempts):
            entry = self.get(key)
            current = None if entry is None else dict(entry.value)
            new = mutate(current)
            if entry is None and new is None:
                return None
            revision = 0 if entry is None else entry.revision
            if also is None:
                written = self.cas(key, new, revision)
            else:
                txn = Txn(compares={key: revision},
                          puts={k: dict(v) for k, v in also().items()})
                if new is None:
                    txn.deletes.append(key)
                else:
                    txn.puts[key] = dict(new)
                written = self.commit(txn)
            if written:
                return new
        raise StoreUnavailable(f"the store kept changing under {key!r}; try again")

    def wakeups_batched(self, ring: bool = True) -> contextlib.AbstractContextManager[None]:
        """Inside, this thread's writes tell other processes' watchers of themselves once,
        when the outermost such block ends (or at ``wake_watchers``), not each on its own:
        an operation of several writes wakes every watcher of the host once. The writes
        themselves are committed as before, one by one. ``ring=False``: the end does not
        ring either; what is left goes with this store's next ring, or watchers see it at
        their next poll (for writes nobody waits for, after the ones they do wait for were
        told with ``wake_watchers``). A no-op where watchers are not woken by writers
        (etcd pushes every change)."""
        return contextlib.nullcontext()

    def wake_watchers(self) -> None:  # noqa: B027 - optional, see wakeups_batched
        """Tell the watchers now of this thread's writes so far in a ``wakeups_batched``
        block (one that another process must see at once: names the resolver builds
        while the operation goes on)."""

    def write_waiter(self) -> contextlib.AbstractContextManager[Callable[[float], None]]:
        """For a loop that waits until some process has written something: ``wait(limit)``
        returns once the store may have been written since the with-statement began, or
        after at most ``limit`` seconds. This default cannot tell and returns after a short
        poll (``WRITE_POLL``); a backend told of writes (SQLite's doorbell) returns at the
        write."""
        return _polling_waiter()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _polling_waiter() -> Iterator[Callable[[float], None]]:
    yield lambda limit: time.sleep(max(0.0, min(limit, WRITE_POLL)))


# --- helpers shared by the backends ----------------------------------------------------------


def encode_value(value: Mapping[str, Any]) -> str:
    """The one serialised form of a value (compact JSON, sorted keys) every backend stores."""
    return json.dumps(dict(value), separators=(",", ":"), sort_keys=True)


def decode_value(key: str, raw: str | bytes) -> dict[str, Any]:
    """Parse a stored value; a foreign value under pycnm's keys is reported, not guessed at."""
    from cnm.errors import StoreUnavailable

    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StoreUnavailable(
            f"the store holds a value at {key!r} that is not a JSON object: was it written by "
            "something other than pycnm?"
        )
    return value


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (the end of
    a half-open key range, as etcd's range_end), or None when no such bound exists.

    Strings compare by code point, which is also the byte order of their UTF-8 form, so the
    bound works for SQLite's BINARY collation and, encoded, for etcd.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # surrogates cannot be encoded: skip to the next encodable point
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def call_watcher(callback: Callable[[WatchEvent], None], event: WatchEvent) -> None:
    """Deliver one event; a failing callback is logged, never allowed to end the watch."""
    try:
        callback(event)
    except Exception:  # noqa: BLE001 - the watch must outlive a faulty consumer
        log.exception("store watch callback failed on %s %s (revision %d)",
                      event.kind, event.key, event.revision)


class WatchCursor:
    """Where one watch stands: the last revision it delivered and the keys it knows exist.

    A backend feeds it events in revision order; events at or below the cursor are dropped,
    so replaying history after a reconnect is harmless. When a backend has lost the history
    a watch needs (etcd compaction, SQLite's pruned change log), ``resync`` catches the watch
    up from a fresh listing: puts for keys written since, deletes for keys that went away.
    Callers therefore never see a gap, only (at worst) one delete carrying the listing's
    revision instead of the exact one.
    """

    def __init__(self, prefix: str, callback: Callable[[WatchEvent], None], revision: int,
                 keys: Iterable[str]) -> None:
        self.prefix = prefix
        self.callback = callback
        self.revision = revision
        self.keys = set(keys)
        self.active = True
        # Held while delivering: once ``close`` returns, the callback is never called again
        # (re-entrant, so a callback may cancel its own watch).
        self._lock = threading.RLock()

    def close(self) -> None:
        """Stop delivering; waits for a delivery in progress on another thread."""
        with self._lock:
            self.active = False

    def deliver(self, events: Iterable[WatchEvent], upto: int = 0) -> None:
        """Pass on the events under the prefix newer than the cursor; events of one
        revision must come in the same call. ``upto``: the backend has shown every change
        up to that revision, so the cursor moves there even if none was under the prefix
        (a quiet watch then never looks behind the history kept)."""
        with self._lock:
            newest = max(self.revision, upto)
            for event in events:
                if event.revision <= self.revision:
                    continue
                newest = max(newest, event.revision)
                if not event.key.startswith(self.prefix):
                    continue
                if event.kind == "put":
                    self.keys.add(event.key)
                else:
                    self.keys.discard(event.key)
                if self.active:
                    call_watcher(self.callback, event)
            self.revision = newest

    def resync(self, entries: Iterable[Entry], revision: int) -> None:
        """Catch up from ``entries`` (the prefix's listing at ``revision``)."""
        with self._lock:
            if revision > self.revision:
                self._resync(entries, revision)

    def _resync(self, entries: Iterable[Entry], revision: int) -> None:
        events: list[WatchEvent] = []
        present: set[str] = set()
        for entry in entries:
            if not entry.key.startswith(self.prefix):
                continue
            present.add(entry.key)
            if entry.revision > self.revision:
                events.append(WatchEvent("put", entry.key, entry.value, entry.revision))
        events.extend(WatchEvent("delete", key, None, revision)
                      for key in sorted(self.keys - present))
        events.sort(key=lambda e: e.revision)
        log.warning("store watch on %r fell behind the history kept (revision %d, now %d): "
                    "caught up from a listing, %d change(s)", self.prefix, self.revision,
                    revision, len(events))
        for event in events:
            if self.active:
                call_watcher(self.callback, event)
        self.keys = present
        self.revision = revision
