"""The store interface every backend implements, shaped for etcd.

Keys are ``/``-separated strings (``networks/<id>``, ``endpoints/<nid>/<eid>``,
``ipam/pools/<pool-id>``, ``hosts/<name>``); values are JSON-able dicts. Every key carries a
*revision* (etcd's mod_revision): a positive integer that changes on every write of that
key. Compare-and-swap and transactions compare revisions; revision 0 means "absent".
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


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
    ) -> dict[str, Any] | None:
        """Read-modify-write ``key`` with optimistic concurrency: ``mutate`` gets the current
        value (None if absent) and returns the new one (None deletes). Retried on conflict;
        ``mutate`` may raise to abort. Returns what was written."""
        from cnm.errors import StoreUnavailable

        for _ in range(attempts):
            entry = self.get(key)
            current = None if entry is None else dict(entry.value)
            new = mutate(current)
            if entry is None and new is None:
                return None
            if self.cas(key, new, 0 if entry is None else entry.revision):
                return new
        raise StoreUnavailable(f"the store kept changing under {key!r}; try again")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
