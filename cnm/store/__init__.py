"""State stores: one interface (``Store``), an embedded SQLite default, etcd for clusters."""

from cnm.store.base import Entry, Store, Txn, WatchEvent

__all__ = ["Entry", "Store", "Txn", "WatchEvent", "open_store"]


def open_store(url: str | None = None) -> Store:
    """Open the store named by ``url`` (see ``cnm.store.url``); None means the default."""
    from cnm.store.url import open_store as _open

    return _open(url)
