"""An in-process store: for unit tests and throwaway controllers. Nothing persists."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Any

from cnm.store.base import Entry, Store, Txn, WatchEvent


class MemoryStore(Store):
    """Thread-safe dict-backed store with the same semantics as the real backends."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.RLock()
        self._data: dict[str, Entry] = {}
        self._revision = 0
        self._watchers: list[tuple[str, Callable[[WatchEvent], None]]] = []

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._data.get(key)
            return None if entry is None else Entry(key, copy.deepcopy(entry.value), entry.revision)

    def list(self, prefix: str) -> list[Entry]:
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
            existed = key in self._data
            self.commit(Txn(deletes=[key]))
            return existed

    def commit(self, txn: Txn) -> bool:
        events: list[WatchEvent] = []
        with self._lock:
            for key, expected in txn.compares.items():
                entry = self._data.get(key)
                if (0 if entry is None else entry.revision) != expected:
                    return False
            self._revision += 1
            for key, value in txn.puts.items():
                self._data[key] = Entry(key, copy.deepcopy(dict(value)), self._revision)
                events.append(WatchEvent("put", key, copy.deepcopy(dict(value)), self._revision))
            for key in txn.deletes:
                if self._data.pop(key, None) is not None:
                    events.append(WatchEvent("delete", key, None, self._revision))
            watchers = list(self._watchers)
        for event in events:
            for prefix, callback in watchers:
                if event.key.startswith(prefix):
                    callback(event)
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
