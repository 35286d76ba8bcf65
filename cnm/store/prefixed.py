"""A view of a store under a key prefix: per-host and per-driver key spaces.

Local-scope objects of host H live under ``local/H/``; a driver's own state under
``local/H/drivers/NAME/``; cluster-wide state under ``global/``. Several hosts can then share
one etcd without seeing each other's bridges, while the SQLite default looks the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from cnm.store.base import Entry, Store, Txn, WatchEvent


class PrefixedStore(Store):
    def __init__(self, inner: Store, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self.url = inner.url

    def _strip(self, entry: Entry) -> Entry:
        return Entry(entry.key[len(self.prefix):], entry.value, entry.revision)

    def get(self, key: str) -> Entry | None:
        entry = self.inner.get(self.prefix + key)
        return None if entry is None else self._strip(entry)

    def list(self, prefix: str) -> list[Entry]:
        return [self._strip(e) for e in self.inner.list(self.prefix + prefix)]

    def put(self, key: str, value: Mapping[str, Any]) -> int:
        return self.inner.put(self.prefix + key, value)

    def delete(self, key: str) -> bool:
        return self.inner.delete(self.prefix + key)

    def commit(self, txn: Txn) -> bool:
        return self.inner.commit(
            Txn(
                compares={self.prefix + k: v for k, v in txn.compares.items()},
                puts={self.prefix + k: v for k, v in txn.puts.items()},
                deletes=[self.prefix + k for k in txn.deletes],
            )
        )

    def watch(self, prefix: str, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        cut = len(self.prefix)

        def relay(event: WatchEvent) -> None:
            callback(WatchEvent(event.kind, event.key[cut:], event.value, event.revision))

        return self.inner.watch(self.prefix + prefix, relay)

    def write_waiter(self) -> contextlib.AbstractContextManager[Callable[[float], None]]:
        return self.inner.write_waiter()

    def wakeups_batched(self, ring: bool = True) -> contextlib.AbstractContextManager[None]:
        return self.inner.wakeups_batched(ring)

    def wake_watchers(self) -> None:
        self.inner.wake_watchers()

    def __getattr__(self, name: str) -> Any:
        # Backend extras (leases) pass through with the prefix applied where it matters.
        attr = getattr(self.inner, name)
        if name == "put_with_lease":
            return lambda key, *a, **kw: attr(self.prefix + key, *a, **kw)
        return attr

    def close(self) -> None:
        """The inner store belongs to whoever opened it."""
