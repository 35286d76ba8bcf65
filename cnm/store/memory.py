"""An in-process store: for unit tests and throwaway controllers. Nothing persists."""

from __future__ import annotations

import builtins
import copy
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cnm.store.base import Entry, Store, Txn, WatchEvent, call_watcher
from cnm.store.lease import Lease, LeaseExpired, LeaseStore, lease_id


class MemoryStore(Store, LeaseStore):
    """Thread-safe dict-backed store with the same semantics as the real backends."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.RLock()
        self._data: dict[str, Entry] = {}
        self._revision = 0
        self._watchers: list[tuple[str, Callable[[WatchEvent], None]]] = []
        # Leases: id -> [ttl, monotonic expiry]; which lease each leased key is on.
        self._leases: dict[int, list[float]] = {}
        self._key_lease: dict[str, int] = {}
        self._lease_ids = itertools.count(1)
        self._lease_cond = threading.Condition(self._lock)
        self._reaper: threading.Thread | None = None
        self._closed = False

    def get(self, key: str) -> Entry | None:
        self._expire()
        with self._lock:
            entry = self._data.get(key)
            return None if entry is None else Entry(key, copy.deepcopy(entry.value), entry.revision)

    def list(self, prefix: str) -> builtins.list[Entry]:
        self._expire()
        with self._lock:
            return [
                Entry(k, copy.deepcopy(e.value), e.revision)
                for k, e in sorted(self._data.items())
                if k.startswith(prefix)
            ]

    def put(self, key: str, value: Mapping[str, Any]) -> int:
        with self._lock:
            self.commit(Txn(puts={key: dict(value)}))
            return self._data[key].revision

    def delete(self, key: str) -> bool:
        with self._lock:
            self._expire()
            existed = key in self._data
            self.commit(Txn(deletes=[key]))
            return existed

    def commit(self, txn: Txn) -> bool:
        self._expire()
        events: list[WatchEvent] = []
        with self._lock:
            for key, expected in txn.compares.items():
                entry = self._data.get(key)
                if (0 if entry is None else entry.revision) != expected:
                    return False
            self._revision += 1
            for key, value in txn.puts.items():
                self._key_lease.pop(key, None)
                self._data[key] = Entry(key, copy.deepcopy(dict(value)), self._revision)
                events.append(WatchEvent("put", key, copy.deepcopy(dict(value)), self._revision))
            for key in txn.deletes:
                self._key_lease.pop(key, None)
                if self._data.pop(key, None) is not None:
                    events.append(WatchEvent("delete", key, None, self._revision))
            watchers = list(self._watchers)
        self._notify(events, watchers)
        return True

    def watch(self, prefix: str, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        item = (prefix, callback)
        with self._lock:
            self._watchers.append(item)

        def cancel() -> None:
            with self._lock:
                if item in self._watchers:
                    self._watchers.remove(item)

        return cancel

    def close(self) -> None:
        """Stop the lease reaper thread (if one was started)."""
        with self._lock:
            self._closed = True
            self._lease_cond.notify_all()

    @staticmethod
    def _notify(events: builtins.list[WatchEvent],
                watchers: builtins.list[tuple[str, Callable[[WatchEvent], None]]]) -> None:
        for event in events:
            for prefix, callback in watchers:
                if event.key.startswith(prefix):
                    call_watcher(callback, event)  # a consumer's bug must not fail the write

    # --- leases ----------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> Lease:
        with self._lock:
            ident = next(self._lease_ids)
            self._leases[ident] = [float(ttl), time.monotonic() + ttl]
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_loop, daemon=True,
                                                name="pycnm-memory-leases")
                self._reaper.start()
            self._lease_cond.notify_all()
        return Lease(self, ident, float(ttl))

    def refresh_lease(self, lease: Lease | int) -> bool:
        self._expire()
        with self._lock:
            record = self._leases.get(lease_id(lease))
            if record is None:
                return False
            record[1] = time.monotonic() + record[0]
            return True

    def revoke_lease(self, lease: Lease | int) -> None:
        self._expire(revoke=lease_id(lease))

    def _put_leased(self, key: str, value: Mapping[str, Any], lease_id: int) -> int:
        self._expire()
        with self._lock:
            if lease_id not in self._leases:
                raise LeaseExpired(f"lease {lease_id} does not exist")
            revision = self.put(key, value)
            self._key_lease[key] = lease_id
            return revision

    def _expire(self, revoke: int | None = None) -> None:
        """Delete the keys of leases that ran out (and of ``revoke``), as one revision."""
        with self._lock:
            now = time.monotonic()
            ended = {i for i, (_, expires) in self._leases.items() if expires <= now}
            if revoke is not None and revoke in self._leases:
                ended.add(revoke)
            if not ended:
                return
            for ident in ended:
                del self._leases[ident]
            keys = sorted(k for k, i in self._key_lease.items() if i in ended)
            for key in keys:
                del self._key_lease[key]
            if not keys:
                return
            self._revision += 1
            events = [WatchEvent("delete", k, None, self._revision) for k in keys]
            for key in keys:
                del self._data[key]
            watchers = list(self._watchers)
        self._notify(events, watchers)

    def _reap_loop(self) -> None:
        """Expire leases on time even when nobody reads, so watchers see the deletes."""
        while True:
            with self._lock:
                if self._closed:
                    return
                due = min((exp for _, exp in self._leases.values()), default=None)
                delay = None if due is None else due - time.monotonic()
                if delay is None or delay > 0:
                    self._lease_cond.wait(delay)
                    continue
            self._expire()
