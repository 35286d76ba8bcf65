"""The records the resolver reads, kept in memory from the store's watch events.

Listing a whole prefix on every change made each event cost every host time in proportion
to the cluster's size (a few hundred published names took tens of milliseconds a listing
to decode). A ``Mirror`` is listed once when its watch starts (and on the resolver's
periodic resync); after that each event changes one key.

Ordering: the watch is started before the listing, and its events are queued rather than
applied by the watch's thread; ``drain`` applies the queue in order on the resolver's
thread. An event the listing already reflects is then applied again, which changes
nothing: the last event of each key is the key's state, whether it came before or after
the listing. So the queue is never dropped, only at reconnect (new watches, new listing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cnm.store.base import Store, WatchEvent

# (key, old value, new value; None: absent) -> whether the change is immaterial
Same = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], bool]


class Mirror:
    """The values under some prefixes of one store, by key."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self.tables: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in prefixes}
        self._pending: list[WatchEvent] = []
        self._lock = threading.Lock()

    def prefix_of(self, key: str) -> str | None:
        return next((p for p in self.prefixes if key.startswith(p)), None)

    def note(self, event: WatchEvent) -> bool:
        """Queue an event (called on the watch's thread); False if no prefix holds it."""
        if self.prefix_of(event.key) is None:
            return False
        with self._lock:
            self._pending.append(event)
        return True

    def forget_pending(self) -> None:
        """Drop the queue: only when the watches were replaced (a listing follows)."""
        with self._lock:
            self._pending = []

    def load(self, store: Store) -> None:
        """Replace every table with a fresh listing (the watch must already run)."""
        for prefix in self.prefixes:
            self.tables[prefix] = {e.key: e.value for e in store.list(prefix)}

    def drain(self, same: Same | None = None) -> tuple[set[str], int]:
        """Apply the queued events in order; the keys they changed and the newest
        revision among them (0 if none). ``same(key, old, new)``: whether a change
        is immaterial to the caller (its key is then applied but not reported); by
        default only a value written again unchanged is."""
        with self._lock:
            events, self._pending = self._pending, []
        changed: set[str] = set()
        newest = 0
        for event in events:
            prefix = self.prefix_of(event.key)
            if prefix is None:
                continue
            table = self.tables[prefix]
            old = table.get(event.key)
            new = event.value if event.kind == "put" else None
            if new is not None:
                table[event.key] = new
            else:
                table.pop(event.key, None)
            if not (old == new or (same is not None and same(event.key, old, new))):
                changed.add(event.key)
            newest = max(newest, event.revision)
        return changed, newest

    def values(self, prefix: str) -> list[dict[str, Any]]:
        """The values under ``prefix``, in key order (as a listing gives them)."""
        table = self.tables[prefix]
        return [table[key] for key in sorted(table)]

    def items(self, prefix: str) -> dict[str, dict[str, Any]]:
        table = self.tables[prefix]
        return {key: table[key] for key in sorted(table)}
