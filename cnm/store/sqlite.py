"""The embedded default store: one SQLite file shared by every pycnm process of a host.

How it keeps etcd's semantics on a single file:

- WAL journal with ``synchronous=NORMAL``: readers never block the writer and a commit
  does not wait for fsync (a power cut may lose the last commits, never corrupt the file).
  That is what keeps a put or a compare-and-swap well under a millisecond.
- Every write runs in ``BEGIN IMMEDIATE``: the file's write lock is taken before the
  compares are read, so two processes' read-compare-writes cannot interleave (no lost
  update); a writer queues behind another's lock with naps of at most 0.5 ms (SQLite's
  own busy handler naps up to 100 ms) for up to the busy timeout, then fails clearly.
- A global revision counter (``meta.revision``, etcd's store revision): every committed
  change bumps it and each key records the revision of its last write.
- Every change is appended to ``changes``. Watchers, in this process or any other, poll it
  from one thread per store object (one indexed read every 25 ms when idle, and at once
  when a writer rings them: ``cnm.store.doorbell``). Writers prune
  rows older than a minute; a watcher that slept past that catches up from a listing
  (``WatchCursor.resync``) instead of missing changes.
- Leases are rows with a wall-clock expiry; leased keys name their lease. Reads hide keys
  whose lease ran out; the next write or watch poll deletes them as one revision, so
  watchers see the deletes.
- One connection per store object, guarded by a lock (and reopened in a forked child).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from cnm.errors import StoreUnavailable
from cnm.store import doorbell
from cnm.store.base import (
    Entry,
    Store,
    Txn,
    WatchCursor,
    WatchEvent,
    decode_value,
    encode_value,
    prefix_end,
)
from cnm.store.lease import Lease, LeaseExpired, LeaseStore, lease_id

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 5.0  # seconds a writer queues behind another process before giving up
POLL_INTERVAL = 0.025  # seconds between two looks at the change log while watching
LOG_RETENTION = 60.0  # seconds a change stays in the log for slow watchers
PRUNE_EVERY = 64  # revisions between two prunings of the change log
_FIRST_NAP = 0.00005  # seconds a writer first waits for another process's write lock
_LONGEST_NAP = 0.0005  # and at most between two tries

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, revision INTEGER NOT NULL, lease INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('pruned', 0);
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, value TEXT,
    at REAL NOT NULL, PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

# A key is alive unless it is on a lease that ran out (a missing lease row counts as that).
_SELECT = ("SELECT kv.key, kv.value, kv.revision, "
           "kv.lease IS NULL OR COALESCE(leases.expires, 0) > ? "
           "FROM kv LEFT JOIN leases ON leases.id = kv.lease ")


class SQLiteStore(Store, LeaseStore):
    """The embedded store on ``path``; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = BUSY_TIMEOUT,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.url = f"sqlite://{self.path}"
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._closed = False
        self._cursors: list[WatchCursor] = []
        self._poller: threading.Thread | None = None
        self._poll_stop = threading.Event()
        self._bell: doorbell.Bell | None = None  # while a poller runs
        self._bells = doorbell.folder_of(self.path)
        self._batch = threading.local()  # this thread's wakeups_batched: depth, pending
        with self._lock:
            self._connection()  # fail at open, with the path, rather than on first use

    # --- the Store interface -------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        rows = self._read(lambda c: c.execute(_SELECT + "WHERE kv.key = ?",
                                              (time.time(), key)).fetchall())
        entries = self._alive(rows)
        return entries[0] if entries else None

    def list(self, prefix: str) -> builtins.list[Entry]:
        return self._alive(self._read(lambda c: self._list_rows(c, prefix)))

    def put(self, key: str, value: Mapping[str, Any]) -> int:
        text = encode_value(value)
        return self._write(lambda c: self._apply(c, {key: text}, []))

    def delete(self, key: str) -> bool:
        def apply(conn: sqlite3.Connection) -> bool:
            if self._revision_of(conn, key) == 0:
                return False
            self._apply(conn, {}, [key])
            return True

        return self._write(apply)

    def commit(self, txn: Txn) -> bool:
        puts = {key: encode_value(value) for key, value in txn.puts.items()}

        def apply(conn: sqlite3.Connection) -> bool:
            for key, expected in txn.compares.items():
                if self._revision_of(conn, key) != expected:
                    return False
            deletes = [k for k in dict.fromkeys(txn.deletes)
                       if k in puts or self._revision_of(conn, k)]
            if puts or deletes:
                self._apply(conn, puts, deletes)
            return True

        return self._write(apply)

    def watch(self, prefix: str, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        def snapshot(conn: sqlite3.Connection) -> WatchCursor:
            keys = [row[0] for row in self._list_rows(conn, prefix)]
            return WatchCursor(prefix, callback, self._meta(conn, "revision"), keys)

        cursor = self._read(snapshot, consistent=True)
        with self._lock:
            self._cursors.append(cursor)
            if self._poller is None:
                self._poll_stop.clear()
                self._bell = self._open_bell()
                self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                                name=f"pycnm-sqlite-watch:{self.path}")
                self._poller.start()

        def cancel() -> None:
            cursor.close()
            with self._lock, contextlib.suppress(ValueError):
                self._cursors.remove(cursor)

        return cancel

    def close(self) -> None:
        """Stop the watch poller and close the connection; idempotent."""
        with self._lock:
            self._closed = True
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
            poller, self._poller = self._poller, None
            self._poll_stop.set()
            bell = self._bell
        if bell is not None:
            bell.wake()
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=5.0)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- leases ------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> Lease:
        def apply(conn: sqlite3.Connection) -> int:
            return conn.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)",
                                (ttl, time.time() + ttl)).lastrowid or 0

        return Lease(self, self._write(apply), float(ttl))

    def refresh_lease(self, lease: Lease | int) -> bool:
        ident = lease_id(lease)
        return self._write(lambda c: c.execute(
            "UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), ident)
        ).rowcount > 0)

    def revoke_lease(self, lease: Lease | int) -> None:
        ident = lease_id(lease)
        self._write(lambda c: self._end_leases(c, [ident]))

    def _put_leased(self, key: str, value: Mapping[str, Any], lease_id: int) -> int:
        text = encode_value(value)

        def apply(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone() is None:
                raise LeaseExpired(f"lease {lease_id} does not exist")
            return self._apply(conn, {key: text}, [], lease_id)

        return self._write(apply)

    # --- transactions ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (call with the lock held)."""
        if self._closed:
            raise StoreUnavailable(f"the store {self.url} was closed")
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._open()  # a forked child must not share its parent's handle
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        try:
            _make_private_dirs(os.path.dirname(self.path))
            if not os.path.exists(self.path):  # state is nobody else's business: 0600
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # Processes opening a new file at once: switching it to WAL takes a lock that
            # SQLite refuses at once, without its busy handler, to all but one of them (two
            # lab builders did). Try again, as a writer does.
            return self._while_locked(self._connect)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(
                f"cannot open the state database {self.path}: {exc} (run as root, or pass "
                "--store or set PYCNM_STORE to a writable place)"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        """A connection in WAL mode to the file, its schema made if it is new."""
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the state database {self.path} was written by a newer pycnm "
                    f"(schema {version}, this one knows {SCHEMA_VERSION}): upgrade pycnm"
                )
            if version < SCHEMA_VERSION:
                conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailable(
                    f"the state database {self.path} stayed locked by another process for "
                    f"{self._busy_timeout:g} s: is a pycnm process stuck? try again"
                ) from exc
            raise StoreUnavailable(f"the state database {self.path} failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the state database {self.path} failed: {exc}") from exc

    def _read(self, query: Callable[[sqlite3.Connection], T], consistent: bool = False) -> T:
        """Run ``query``; ``consistent`` makes its statements share one snapshot."""
        with self._lock, self._errors():
            conn = self._connection()
            if not consistent:
                return query(conn)
            conn.execute("BEGIN")
            try:
                return query(conn)
            finally:
                conn.execute("COMMIT")

    def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``apply`` in one write transaction, after deleting the keys of ended leases
        (so compares never see them)."""
        with self._lock, self._errors():
            conn = self._connection()
            self._begin_immediate(conn)
            try:
                self._reap(conn)
                result = apply(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if getattr(self._batch, "depth", 0):
            self._batch.pending = True  # rung once, when the batch ends
        else:
            doorbell.ring(self._bells)  # watchers in other processes look at once
        return result

    @contextlib.contextmanager
    def wakeups_batched(self, ring: bool = True) -> Iterator[None]:
        # A ring costs the writer 0.15-0.25 ms and wakes every watcher of the host (each
        # then reads the change log): an attach rang 8 times.
        depth = getattr(self._batch, "depth", 0)
        self._batch.depth = depth + 1
        try:
            yield
        finally:
            self._batch.depth = depth
            if depth == 0 and ring:
                self.wake_watchers()

    def wake_watchers(self) -> None:
        if getattr(self._batch, "pending", False):
            self._batch.pending = False
            doorbell.ring(self._bells)

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """Take the file's write lock, queueing behind another process's writer with short
        naps (0.05 ms, doubling to 0.5 ms) for at most the busy timeout. SQLite's own busy
        handler naps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries: two
        processes writing small transactions side by side (a lab built on two cores) lost
        30-110 ms each per 50 sandboxes in it, waiting for a lock held ~0.1 ms."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._while_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def _while_locked(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried again while another process holds the lock it needs, with
        naps of 0.05 ms doubling to 0.5 ms, for at most the busy timeout (then its error)."""
        deadline = 0.0
        pause = _FIRST_NAP
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self._busy_timeout
                if now >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_NAP)

    def _apply(self, conn: sqlite3.Connection, puts: Mapping[str, str], deletes: builtins.list[str],
               lease: int | None = None) -> int:
        """Write ``puts`` then ``deletes`` (keys known to exist) as one new revision, and log
        them for watchers. Returns the revision."""
        now = time.time()
        revision = conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision' "
                                "RETURNING value").fetchall()[0][0]
        if puts:  # (a statement not run is one less for SQLite to look up and reset)
            conn.executemany(
                "INSERT INTO kv (key, value, revision, lease) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "revision = excluded.revision, lease = excluded.lease",
                [(key, text, revision, lease) for key, text in puts.items()])
        if deletes:
            conn.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in deletes])
        changes = [*puts.items(), *((key, None) for key in deletes)]
        conn.executemany("INSERT INTO changes (revision, seq, key, value, at) "
                         "VALUES (?, ?, ?, ?, ?)",
                         [(revision, seq, key, text, now)
                          for seq, (key, text) in enumerate(changes)])
        if revision % PRUNE_EVERY == 0:
            self._prune(conn, now)
        return revision

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        cut = conn.execute("SELECT MAX(revision) FROM changes WHERE at < ?",
                           (now - LOG_RETENTION,)).fetchone()[0]
        if cut is not None:
            conn.execute("DELETE FROM changes WHERE revision <= ?", (cut,))
            conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE name = 'pruned'", (cut,))

    def _reap(self, conn: sqlite3.Connection) -> None:
        ended = [row[0] for row in conn.execute("SELECT id FROM leases WHERE expires <= ?",
                                                (time.time(),))]
        if ended:
            self._end_leases(conn, ended)

    def _end_leases(self, conn: sqlite3.Connection, ids: builtins.list[int]) -> None:
        marks = ",".join("?" * len(ids))
        keys = [row[0] for row in conn.execute(
            f"SELECT key FROM kv WHERE lease IN ({marks}) ORDER BY key", ids)]
        conn.execute(f"DELETE FROM leases WHERE id IN ({marks})", ids)
        if keys:
            log.info("sqlite store %s: leases %s ended; deleting %d key(s)", self.path, ids,
                     len(keys))
            self._apply(conn, {}, keys)

    @staticmethod
    def _revision_of(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT revision FROM kv WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else row[0]

    @staticmethod
    def _meta(conn: sqlite3.Connection, name: str) -> int:
        return conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]

    @staticmethod
    def _list_rows(conn: sqlite3.Connection, prefix: str) -> builtins.list[tuple[Any, ...]]:
        end = prefix_end(prefix)
        if end is None:
            return conn.execute(_SELECT + "WHERE kv.key >= ? ORDER BY kv.key",
                                (time.time(), prefix)).fetchall()
        return conn.execute(_SELECT + "WHERE kv.key >= ? AND kv.key < ? ORDER BY kv.key",
                            (time.time(), prefix, end)).fetchall()

    def _alive(self, rows: builtins.list[tuple[Any, ...]]) -> builtins.list[Entry]:
        """Entries from ``_SELECT`` rows, without keys of ended leases (then deleted)."""
        entries = [Entry(key, decode_value(key, text), revision)
                   for key, text, revision, alive in rows if alive]
        if len(entries) < len(rows):
            self._write(lambda conn: None)  # a write deletes what ended leases left
        return entries

    @contextlib.contextmanager
    def write_waiter(self) -> Iterator[Callable[[float], None]]:
        # A socket of its own in the doorbell's folder, bound before the caller's first
        # look, so that a write after that look rings it; the poll interval bounds a wait
        # whose ring was lost.
        try:
            bell = doorbell.Bell(self._bells)
        except OSError:
            with super().write_waiter() as wait:
                yield wait
            return
        try:
            yield lambda limit: bell.wait(max(0.0, min(limit, self._poll_interval)))
        finally:
            bell.close()

    # --- watching --------------------------------------------------------------------------

    def _open_bell(self) -> doorbell.Bell | None:
        try:
            return doorbell.Bell(self._bells)
        except OSError as exc:  # a path too long for a socket, say: poll only
            log.info("sqlite store %s: watchers poll every %g s only (%s)", self.path,
                     self._poll_interval, exc)
            return None

    def _poll_loop(self) -> None:
        failing = False
        bell = self._bell
        try:
            while True:
                if bell is not None:
                    bell.wait(self._poll_interval)
                if self._poll_stop.wait(0 if bell is not None else self._poll_interval):
                    return
                try:
                    if not self._poll_once():
                        return
                    failing = False
                except StoreUnavailable as exc:
                    if not failing:
                        log.warning("sqlite store %s: watch poll failed, retrying: %s",
                                    self.path, exc)
                    failing = True
                except Exception:  # noqa: BLE001 - the poller must survive to deliver the rest
                    log.exception("sqlite store %s: watch poll failed", self.path)
        finally:
            if bell is not None:
                with self._lock:
                    if self._bell is bell:
                        self._bell = None
                bell.close()

    def _poll_once(self) -> bool:
        """Deliver the changes logged since the slowest watcher; False once none is left."""
        with self._lock:
            if self._closed or not self._cursors:
                self._poller = None
                return False
            cursors = list(self._cursors)
        since = min(cursor.revision for cursor in cursors)

        def changes(conn: sqlite3.Connection) -> tuple[Any, ...]:
            revision, pruned, due = conn.execute(
                "SELECT (SELECT value FROM meta WHERE name = 'revision'), "
                "(SELECT value FROM meta WHERE name = 'pruned'), "
                "(SELECT MIN(expires) FROM leases)").fetchone()
            if revision <= since:
                return revision, pruned, due, [], {}
            rows = conn.execute("SELECT revision, key, value FROM changes WHERE revision > ? "
                                "ORDER BY revision, seq", (since,)).fetchall()
            # Watchers behind the pruned log catch up from a listing of the same snapshot.
            listings = {c.prefix: self._list_rows(conn, c.prefix)
                        for c in cursors if c.revision < pruned}
            return revision, pruned, due, rows, listings

        revision, pruned, due, rows, listings = self._read(changes, consistent=True)
        if due is not None and due <= time.time():
            self._write(lambda conn: None)  # deletes keys of ended leases, logged for next poll
        events = [WatchEvent("put" if text is not None else "delete", key,
                             None if text is None else decode_value(key, text), rev)
                  for rev, key, text in rows]
        for cursor in cursors:
            if cursor.prefix in listings and cursor.revision < pruned:
                cursor.resync(self._alive(listings[cursor.prefix]), revision)
            else:
                cursor.deliver(events, upto=revision)
        return True


def _make_private_dirs(path: str) -> None:
    """Create ``path`` and missing parents with mode 0700 (existing ones are left alone)."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
