"""One conformance suite for every store backend: memory, SQLite (a file in tmp_path) and
etcd (the session's real server, one key prefix per test). Plus what only SQLite promises
(several processes on one file), store URLs and the shared watch catch-up.

etcd's own failure modes (stopped, restarted, several endpoints) are in
tests/integration/test_store_etcd.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnm.errors import InvalidOption, StoreUnavailable
from cnm.store import Entry, Store, Txn, WatchEvent, open_store
from cnm.store.base import WatchCursor, prefix_end
from cnm.store.etcd import EtcdStore
from cnm.store.lease import Lease, LeaseExpired
from cnm.store.memory import MemoryStore
from cnm.store.sqlite import SQLiteStore
from netns_fixtures.etcd import etcd_server  # noqa: F401 - the session's etcd

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 15.0  # seconds any awaited condition gets before the test fails


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


class Backend:
    """Opens stores on one backend's shared data and closes them at the end."""

    def __init__(self, name: str, factory: Callable[[], Store], short_ttl: float) -> None:
        self.name = name
        self.factory = factory
        self.short_ttl = short_ttl  # a TTL the backend honours (etcd grants 2 s at least)
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = self.factory()
        if store not in self.opened:
            self.opened.append(store)
        return store


@pytest.fixture(params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        shared = MemoryStore()
        backend = Backend("memory", lambda: shared, 0.3)
    elif request.param == "sqlite":
        backend = Backend("sqlite", lambda: SQLiteStore(tmp_path / "state.db"), 0.3)
    else:
        server = request.getfixturevalue("etcd_server")
        prefix = f"/pycnm-test/{uuid.uuid4().hex[:12]}/"
        endpoint = f"127.0.0.1:{server.client_port}"
        backend = Backend("etcd", lambda: EtcdStore(endpoint, prefix=prefix), 1.0)
    try:
        yield backend
    finally:
        if backend.opened:
            cleanup = backend.opened[0]
            if backend.name == "etcd":
                for entry in cleanup.list(""):
                    cleanup.delete(entry.key)
        for store in backend.opened:
            store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


class Recorder:
    """A watch callback that keeps what it got (callbacks run on another thread)."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self._lock:
            self.events.append(event)

    def seen(self) -> list[tuple[str, str, Any]]:
        with self._lock:
            return [(e.kind, e.key, e.value) for e in self.events]

    def wait_for(self, kind: str, key: str) -> WatchEvent:
        def find() -> WatchEvent | None:
            with self._lock:
                return next((e for e in self.events if (e.kind, e.key) == (kind, key)), None)

        return wait_until(find, f"a {kind} event for {key}")


# --- get, put, delete, list ----------------------------------------------------------------


def test_put_get_delete_round_trip(store: Store) -> None:
    assert store.get("networks/a") is None
    revision = store.put("networks/a", {"name": "a", "subnets": ["10.0.0.0/24"], "n": 1})
    assert store.get("networks/a") == Entry(
        "networks/a", {"name": "a", "subnets": ["10.0.0.0/24"], "n": 1}, revision)
    assert store.delete("networks/a") is True
    assert store.get("networks/a") is None
    assert store.delete("networks/a") is False


def test_values_are_copies(store: Store) -> None:
    value = {"list": [1, 2]}
    store.put("k", value)
    value["list"].append(3)
    got = store.get("k")
    assert got is not None and got.value == {"list": [1, 2]}
    got.value["list"].append(4)
    again = store.get("k")
    assert again is not None and again.value == {"list": [1, 2]}


def test_list_is_sorted_by_key_and_isolated_by_prefix(store: Store) -> None:
    for key in ["a/2", "a/10", "a/1", "ab/1", "a", "b/1", "a/é", "a/z"]:
        store.put(key, {"k": key})
    assert [e.key for e in store.list("a/")] == ["a/1", "a/10", "a/2", "a/z", "a/é"]
    assert [e.key for e in store.list("ab")] == ["ab/1"]
    assert [e.key for e in store.list("")] == sorted(
        ["a/2", "a/10", "a/1", "ab/1", "a", "b/1", "a/é", "a/z"])
    assert store.list("c/") == []
    assert all(e.value == {"k": e.key} for e in store.list(""))


KEYS = st.text(alphabet="ab/é\U0001f600", min_size=1, max_size=5)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.sets(KEYS, max_size=8), prefix=st.text(alphabet="ab/é\U0001f600", max_size=3))
def test_list_agrees_with_a_sorted_filter(store: Store, keys: set[str], prefix: str) -> None:
    for entry in store.list(""):
        store.delete(entry.key)
    for key in keys:
        store.put(key, {})
    assert [e.key for e in store.list(prefix)] == sorted(k for k in keys if k.startswith(prefix))


def test_prefix_end_bounds_every_key_with_the_prefix() -> None:
    assert prefix_end("a/") == "a0"
    assert prefix_end("") is None
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"


def test_revisions_increase_with_every_write(store: Store) -> None:
    first = store.put("r/a", {"v": 1})
    second = store.put("r/b", {"v": 1})
    third = store.put("r/a", {"v": 2})
    assert 0 < first < second < third
    store.delete("r/b")
    fourth = store.put("r/b", {"v": 2})
    assert fourth > third
    assert [e.revision for e in store.list("r/")] == [third, fourth]


# --- compare-and-swap and transactions -----------------------------------------------------


def test_cas_applies_only_on_the_expected_revision(store: Store) -> None:
    revision = store.put("c", {"v": 1})
    assert store.cas("c", {"v": 2}, revision + 1000) is False
    assert store.cas("c", {"v": 2}, 0) is False
    assert store.get("c") == Entry("c", {"v": 1}, revision)
    assert store.cas("c", {"v": 2}, revision) is True
    current = store.get("c")
    assert current is not None and current.value == {"v": 2} and current.revision > revision
    assert store.cas("c", {"v": 3}, revision) is False
    assert store.cas("c", None, current.revision) is True
    assert store.get("c") is None


def test_create_only_if_absent(store: Store) -> None:
    assert store.create("x", {"owner": "first"}) is True
    assert store.create("x", {"owner": "second"}) is False
    entry = store.get("x")
    assert entry is not None and entry.value == {"owner": "first"}


def test_txn_is_all_or_nothing(store: Store) -> None:
    ra = store.put("t/a", {"v": 1})
    rb = store.put("t/b", {"v": 1})
    before = store.list("t/")
    failing = Txn(compares={"t/a": ra, "t/b": rb + 1000, "t/new": 0},
                  puts={"t/a": {"v": 2}, "t/c": {"v": 1}}, deletes=["t/b"])
    assert store.commit(failing) is False
    assert store.list("t/") == before
    absent_check = Txn(compares={"t/a": 0}, puts={"t/c": {"v": 1}})
    assert store.commit(absent_check) is False
    assert store.get("t/c") is None
    ok = Txn(compares={"t/a": ra, "t/b": rb, "t/c": 0},
             puts={"t/a": {"v": 2}, "t/c": {"v": 1}}, deletes=["t/b"])
    assert store.commit(ok) is True
    after = {e.key: e for e in store.list("t/")}
    assert set(after) == {"t/a", "t/c"}
    assert after["t/a"].value == {"v": 2}
    assert after["t/a"].revision == after["t/c"].revision > rb  # one txn, one revision


def test_update_loses_nothing_under_8_threads(store: Store) -> None:
    threads, increments = 8, 200
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def bump(value: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (value or {"n": 0})["n"] + 1}

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(increments):
                store.update("counter", bump)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "update() workers did not finish"
    assert errors == []
    entry = store.get("counter")
    assert entry is not None and entry.value == {"n": threads * increments}


def test_update_can_delete_and_abort(store: Store) -> None:
    store.put("u", {"n": 1})
    assert store.update("u", lambda v: None) is None
    assert store.get("u") is None

    def refuse(value: dict[str, Any] | None) -> dict[str, Any]:
        raise InvalidOption("no")

    with pytest.raises(InvalidOption):
        store.update("u", refuse)
    assert store.get("u") is None


def test_update_writes_more_keys_in_its_transaction_after_what_mutate_chose(
        store: Store) -> None:
    store.put("slots", {"taken": ["a"]})
    seen: list[str] = []

    def take(value: dict[str, Any] | None) -> dict[str, Any]:
        taken = (value or {})["taken"]
        if len(seen) == 0:  # someone else takes a slot between this read and the write
            store.put("slots", {"taken": [*taken, "b"]})
        free = next(n for n in "abcdef" if n not in taken)
        seen.append(free)
        return {"taken": [*taken, free]}

    def also() -> dict[str, dict[str, Any]]:
        return {"holder": {"slot": seen[-1]}}

    assert store.update("slots", take, also=also) == {"taken": ["a", "b", "c"]}
    assert seen == ["b", "c"]  # retried: "also" asked again, after the second choice
    holder = store.get("holder")
    assert holder is not None and holder.value == {"slot": "c"}
    slots = store.get("slots")
    assert slots is not None and slots.revision == holder.revision  # one transaction
    assert store.update("slots", lambda v: None, also=lambda: {"gone": {"x": 1}}) is None
    assert store.get("slots") is None and store.get("gone") is not None


# --- watches -------------------------------------------------------------------------------


def test_watch_sees_puts_and_deletes_from_another_store(backend: Backend) -> None:
    watcher, writer = backend.open(), backend.open()
    writer.put("w/before", {"old": True})
    got = Recorder()
    cancel = watcher.watch("w/", got)
    try:
        r1 = writer.put("w/1", {"n": 1})
        writer.put("elsewhere/1", {"n": 0})
        r2 = writer.put("w/2", {"n": 2})
        writer.delete("w/1")
        last = got.wait_for("delete", "w/1")
        assert got.seen() == [("put", "w/1", {"n": 1}), ("put", "w/2", {"n": 2}),
                              ("delete", "w/1", None)]
        assert [e.revision for e in got.events[:2]] == [r1, r2]
        assert last.revision > r2
    finally:
        cancel()


def test_watch_sees_a_txn_in_order(store: Store) -> None:
    got = Recorder()
    store.put("o/gone", {})
    cancel = store.watch("o/", got)
    try:
        store.commit(Txn(puts={"o/a": {"n": 1}, "o/b": {"n": 2}}, deletes=["o/gone"]))
        got.wait_for("delete", "o/gone")
        assert got.seen() == [("put", "o/a", {"n": 1}), ("put", "o/b", {"n": 2}),
                              ("delete", "o/gone", None)]
        assert len({e.revision for e in got.events}) == 1
    finally:
        cancel()


def test_cancel_stops_a_watch(backend: Backend) -> None:
    watcher, writer = backend.open(), backend.open()
    cancelled, still = Recorder(), Recorder()
    cancel = watcher.watch("c/", cancelled)
    cancel_still = watcher.watch("c/", still)
    try:
        writer.put("c/1", {})
        cancelled.wait_for("put", "c/1")
        cancel()
        cancel()  # idempotent
        writer.put("c/2", {})
        still.wait_for("put", "c/2")  # the change went round: the cancelled watch had its chance
        assert cancelled.seen() == [("put", "c/1", {})]
    finally:
        cancel_still()


def test_a_failing_callback_does_not_end_the_watch(backend: Backend) -> None:
    store = backend.open()
    got = Recorder()

    def flaky(event: WatchEvent) -> None:
        got(event)
        if event.key == "f/1":
            raise RuntimeError("consumer bug")

    cancel = store.watch("f/", flaky)
    try:
        store.put("f/1", {})
        store.put("f/2", {})
        got.wait_for("put", "f/2")
    finally:
        cancel()


# --- leases --------------------------------------------------------------------------------


def test_leased_key_expires_and_watchers_see_the_delete(backend: Backend) -> None:
    store = backend.open()
    got = Recorder()
    cancel = store.watch("l/", got)
    try:
        lease = store.put_with_lease("l/host", {"vtep": "192.0.2.1"}, backend.short_ttl)
        assert isinstance(lease, Lease) and lease.ttl >= backend.short_ttl
        store.put_with_lease("l/ep", {"mac": "02:00:00:00:00:01"}, lease)
        store.put("l/plain", {})
        assert {e.key for e in store.list("l/")} == {"l/host", "l/ep", "l/plain"}
        wait_until(lambda: store.get("l/host") is None, "the leased key to expire")
        assert [e.key for e in store.list("l/")] == ["l/plain"]
        got.wait_for("delete", "l/host")
        got.wait_for("delete", "l/ep")
        assert store.refresh_lease(lease) is False
        with pytest.raises(LeaseExpired, match="grant a new one"):
            store.put_with_lease("l/late", {}, lease.id)
        assert store.create("l/host", {"again": True}) is True  # expired counts as absent
    finally:
        cancel()


def test_keepalive_holds_a_lease_and_revoke_ends_it(backend: Backend) -> None:
    store = backend.open()
    lost = threading.Event()
    lease = store.grant_lease(backend.short_ttl).keepalive(on_lost=lost.set)
    try:
        store.put_with_lease("k/held", {}, lease)
        held_until = time.monotonic() + 2.5 * lease.ttl
        while time.monotonic() < held_until:  # alive through several TTLs of keepalive
            assert store.get("k/held") is not None
            time.sleep(0.05)
        got = Recorder()
        cancel = store.watch("k/", got)
        try:
            lease.revoke()
            assert store.get("k/held") is None
            got.wait_for("delete", "k/held")
        finally:
            cancel()
        lease.revoke()  # a lease already gone is no error
        assert not lost.is_set()
    finally:
        lease.stop_keepalive()


def test_lease_by_id_from_another_store_and_plain_put_detaches(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    lease = first.grant_lease(backend.short_ttl)
    adopted = second.put_with_lease("d/by-id", {}, lease.id)  # as the CLI does, from a record
    assert adopted.id == lease.id
    first.put_with_lease("d/detached", {}, lease)
    first.put("d/detached", {"plain": True})  # an unleased write takes the key off the lease
    lease.revoke()
    wait_until(lambda: first.get("d/by-id") is None, "the key written by lease id to go")
    entry = first.get("d/detached")
    assert entry is not None and entry.value == {"plain": True}


def test_a_ttl_must_be_positive(store: Store) -> None:
    with pytest.raises(InvalidOption):
        store.put_with_lease("bad", {}, 0.0)
    with pytest.raises(InvalidOption):
        store.put_with_lease("bad", {}, "15")  # type: ignore[arg-type]


# --- SQLite: files and processes -----------------------------------------------------------

_WORKER = """
import sys
from cnm.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
mode, count = sys.argv[2], int(sys.argv[3])
for i in range(count):
    if mode == "increment":
        store.update("counter", lambda v: {"n": (v or {"n": 0})["n"] + 1})
    else:
        store.put(f"x/{i}", {"from": "child", "i": i})
store.delete("x/0") if mode == "write" else None
store.close()
"""


def _run_workers(path: Path, mode: str, count: int, processes: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), mode, str(count)],
                              env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sqlite_two_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteStore(path) as store:
        store.put("counter", {"n": 0})
        _run_workers(path, "increment", 300, processes=2)
        assert store.get("counter") == Entry("counter", {"n": 600},
                                             store.get("counter").revision)  # type: ignore[union-attr]


def test_sqlite_watch_sees_another_process(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteStore(path) as store:
        got = Recorder()
        cancel = store.watch("x/", got)
        try:
            _run_workers(path, "write", 3, processes=1)
            got.wait_for("delete", "x/0")
            assert got.seen() == [("put", "x/0", {"from": "child", "i": 0}),
                                  ("put", "x/1", {"from": "child", "i": 1}),
                                  ("put", "x/2", {"from": "child", "i": 2}),
                                  ("delete", "x/0", None)]
        finally:
            cancel()


def test_sqlite_writer_waits_for_another_writer_then_gives_up_clearly(tmp_path: Path) -> None:
    """A write queues behind another connection's write lock (its own naps, not SQLite's
    busy handler): it goes through once the lock is released, and says what is wrong
    after the busy timeout if it never is; the connection keeps its busy timeout."""
    import sqlite3

    path = tmp_path / "shared.db"
    with SQLiteStore(path, busy_timeout=10.0) as store:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
            release = threading.Timer(0.3, other.execute, ("COMMIT",))
            release.start()
            try:
                store.put("a", {"n": 1})  # waits for the other writer's COMMIT
            finally:
                release.join()
            assert store.get("a").value == {"n": 1}  # type: ignore[union-attr]
            assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10000  # type: ignore[union-attr]
        finally:
            other.close()
    with SQLiteStore(path, busy_timeout=0.2) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="stayed locked by another process"):
                store.put("b", {"n": 2})
            other.execute("ROLLBACK")
            store.put("b", {"n": 2})
            assert store.get("b").value == {"n": 2}  # type: ignore[union-attr]
        finally:
            other.close()


def test_sqlite_new_file_opened_by_several_at_once_opens_for_each(tmp_path: Path) -> None:
    """Processes (here connections) opening a store file that does not exist yet, at the
    same moment, all get it: switching a new file to WAL is refused at once to all but
    one (no busy handler), so the others try again (a lab's two builders did this)."""
    for round_ in range(50):
        path = tmp_path / f"new-{round_}.db"
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(path: Path = path, start: threading.Barrier = start,
                    errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                store = SQLiteStore(path)
                store.put("k", {"v": 1})
                store.close()
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], errors


def test_sqlite_creates_private_parents_and_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "state.db"
    SQLiteStore(path).close()
    for directory in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot open the state database .*PYCNM_STORE"):
        SQLiteStore(blocker / "state.db")


def test_sqlite_watcher_behind_the_pruned_log_catches_up(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cnm.store.sqlite as sqlite_module

    path = tmp_path / "state.db"
    with SQLiteStore(path) as writer, SQLiteStore(path, poll_interval=3600) as slow:
        writer.put("p/stays", {"v": 1})
        writer.put("p/goes", {"v": 1})
        got = Recorder()
        slow.watch("p/", got)
        monkeypatch.setattr(sqlite_module, "LOG_RETENTION", -1.0)  # prune everything
        monkeypatch.setattr(sqlite_module, "PRUNE_EVERY", 1)
        writer.put("p/stays", {"v": 2})
        writer.delete("p/goes")
        writer.put("p/new", {"v": 1})
        slow._poll_once()  # the poll the long interval held back
        assert sorted(got.seen()) == [("delete", "p/goes", None), ("put", "p/new", {"v": 1}),
                                      ("put", "p/stays", {"v": 2})]


def test_watch_cursor_drops_replays_and_resyncs_from_a_listing() -> None:
    got = Recorder()
    cursor = WatchCursor("p/", got, 10, ["p/a", "p/b"])
    cursor.deliver([WatchEvent("put", "p/a", {}, 9), WatchEvent("put", "p/c", {}, 11),
                    WatchEvent("put", "q/x", {}, 11)])
    assert got.seen() == [("put", "p/c", {})] and cursor.revision == 11
    cursor.deliver([WatchEvent("put", "p/c", {}, 11)])  # replayed after a reconnect
    assert len(got.events) == 1
    cursor.resync([Entry("p/a", {"v": 1}, 5), Entry("p/c", {"v": 2}, 14)], revision=15)
    assert got.seen()[1:] == [("put", "p/c", {"v": 2}), ("delete", "p/b", None)]
    assert cursor.keys == {"p/a", "p/c"} and cursor.revision == 15
    cursor.deliver([WatchEvent("put", "elsewhere", {}, 16)])
    assert cursor.revision == 16  # a quiet watch keeps up, so it never looks behind the log
    cursor.deliver([], upto=20)
    assert cursor.revision == 20 and len(got.events) == 3


# --- store URLs ----------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store(f"sqlite://{tmp_path}/abs.db") as s:  # tmp_path is absolute: ///
        assert isinstance(s, SQLiteStore) and s.path == f"{tmp_path}/abs.db"
    with open_store("sqlite://rel/state.db") as s:
        assert isinstance(s, SQLiteStore) and s.path == f"{tmp_path}/rel/state.db"
    with open_store("bare.db") as s:
        assert isinstance(s, SQLiteStore) and s.path == f"{tmp_path}/bare.db"
    assert isinstance(open_store("memory://"), MemoryStore)
    monkeypatch.setenv("PYCNM_STORE", f"{tmp_path}/env.db")
    with open_store(None) as s:
        assert isinstance(s, SQLiteStore) and s.path == f"{tmp_path}/env.db"
    etcd = open_store("etcd://127.0.0.1:2379,[::1]:2380,other?prefix=/x&timeout=0.5"
                      "&user=u&password=secret")
    assert isinstance(etcd, EtcdStore)
    assert etcd.endpoints == [("127.0.0.1", 2379), ("[::1]", 2380), ("other", 2379)]
    assert etcd.prefix == "/x/" and etcd.timeout == 0.5 and "secret" not in etcd.url
    from netns_fixtures.pki import CertificateAuthority

    ca = CertificateAuthority.create(tmp_path, "ca").cert
    tls = open_store(f"etcds://h:2379?ca={ca}")
    assert isinstance(tls, EtcdStore) and tls.client_urls == ["https://h:2379"]


def test_stores_start_on_members_picked_at_random() -> None:
    # A thousand hosts must not all load the first member their URL names; no call is made
    starts = {EtcdStore("h1:2379,h2:2379,h3:2379")._current for _ in range(60)}
    assert starts == {0, 1, 2}  # missing one by chance: 3 * (2/3)**60, about 1e-10


def test_the_default_store_is_the_system_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnm.store.url as url_module

    monkeypatch.delenv("PYCNM_STORE", raising=False)
    opened: list[str] = []
    monkeypatch.setattr("cnm.store.sqlite.SQLiteStore", lambda path: opened.append(path))
    url_module.open_store(None)
    assert opened == ["/var/lib/pycnm/state.db"]


@pytest.mark.parametrize("url", [
    "ftp://host/x", "etcd:/host:2379", "sqlite://", "memory://x", "etcd://", "etcd://h:0",
    "etcd://h?colour=blue", "etcd://h?timeout=soon", "etcds://h:2379", "etcd://h?ca=/x.pem",
    "etcd://u:p@h", "etcd://h/path", "etcd://h?user=u", "etcd://h?prefix=a&prefix=b", "  ",
])
def test_bad_store_urls_say_what_is_accepted(url: str) -> None:
    with pytest.raises(InvalidOption, match="accepted forms: sqlite:///") as info:
        open_store(url)
    assert "secret" not in str(info.value)


def test_a_bad_url_never_echoes_the_password() -> None:
    with pytest.raises(InvalidOption) as info:
        open_store("etcd://h?password=secret&colour=blue")
    assert "secret" not in str(info.value) and "password=***" in str(info.value)
