"""The etcd store when etcd misbehaves: stopped, crashed, restarted, silent, one of several
endpoints dead, history compacted. These tests stop their own etcd (started for this
module), never the session's shared one. Everything stays on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm.errors import StoreUnavailable
from cnm.store.base import WatchCursor
from cnm.store.etcd import EtcdStore, _Watch
from netns_fixtures.etcd import EtcdServer, start_etcd
from tests.unit.test_store import Recorder, wait_until

pytestmark = pytest.mark.etcd

BUDGET = 5.0  # seconds an unreachable etcd may take to be reported (timeout is 1 s here)


@pytest.fixture(scope="module")
def own_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path_factory.mktemp("etcd-own"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(own_etcd: EtcdServer) -> Iterator[EtcdServer]:
    """The module's etcd, running at the start of each test and again after it."""
    own_etcd.start()
    try:
        yield own_etcd
    finally:
        own_etcd.start()


@pytest.fixture
def stores(server: EtcdServer,
           request: pytest.FixtureRequest) -> Iterator[Callable[..., EtcdStore]]:
    opened: list[EtcdStore] = []
    prefix = f"/pycnm-test/{request.node.name}/"

    def make(endpoints: str | None = None, **kwargs: Any) -> EtcdStore:
        store = EtcdStore(endpoints or f"127.0.0.1:{server.client_port}", prefix=prefix,
                          timeout=kwargs.pop("timeout", 1.0), **kwargs)
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            store.close()


def raises_within(budget: float, call: Callable[[], Any]) -> BaseException:
    """Run ``call`` on a thread; it must raise within ``budget`` seconds. Returns the error."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(budget)
    assert not thread.is_alive(), f"the call still hangs after {budget:g} s"
    assert outcome and outcome[0] is not None, "the call succeeded against a dead etcd"
    return outcome[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stopped_etcd_is_reported_quickly_by_every_call(server: EtcdServer, stores) -> None:
    store = stores()
    store.put("k", {"v": 1})
    server.stop()
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: store.get("k"),
        "list": lambda: store.list(""),
        "put": lambda: store.put("k", {"v": 2}),
        "delete": lambda: store.delete("k"),
        "cas": lambda: store.cas("k", {"v": 3}, 1),
        "watch": lambda: store.watch("", lambda e: None),
        "lease": lambda: store.grant_lease(5.0),
        "fresh store": lambda: stores().get("k"),
    }
    for name, call in calls.items():
        error = raises_within(BUDGET, call)
        assert isinstance(error, StoreUnavailable), f"{name}: {error!r}"
        assert str(error) == (f"cannot reach etcd at {server.client_url}: is etcd running? "
                              "(pass --store or set PYCNM_STORE)"), name


def test_a_silent_endpoint_times_out_instead_of_hanging(stores) -> None:
    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        error = raises_within(BUDGET, lambda: stores(endpoint, timeout=0.5).get("k"))
        assert isinstance(error, StoreUnavailable) and "cannot reach etcd" in str(error)
        # A write that ran out of time may have been applied: it is not retried, and says so.
        error = raises_within(BUDGET, lambda: stores(endpoint, timeout=0.5).put("k", {}))
        assert isinstance(error, StoreUnavailable) and "may or may not" in str(error)


def test_restart_works_again_and_an_earlier_watch_still_delivers(server: EtcdServer,
                                                                 stores) -> None:
    watcher, writer = stores(), stores()
    got = Recorder()
    cancel = watcher.watch("w/", got)
    try:
        writer.put("w/before", {"n": 1})
        got.wait_for("put", "w/before")
        for stop in (server.stop, server.kill):  # a clean stop, then a crash
            stop()
            assert isinstance(raises_within(BUDGET, lambda: writer.get("w/before")),
                              StoreUnavailable)
            server.start()
            key = f"w/after-{stop.__name__}"
            wait_until(lambda k=key: _succeeds(lambda: writer.put(k, {"n": 2})),
                       "etcd to take writes again")
            got.wait_for("put", key)
        assert writer.get("w/before") is not None
        assert [key for kind, key, _ in got.seen()] == ["w/before", "w/after-stop",
                                                        "w/after-kill"]
    finally:
        cancel()


def test_a_dead_endpoint_is_skipped(server: EtcdServer, stores) -> None:
    store = stores(f"127.0.0.1:{closed_port()},127.0.0.1:{server.client_port}")
    got = Recorder()
    cancel = store.watch("f/", got)
    try:
        store.put("f/1", {})
        assert store.get("f/1") is not None
        got.wait_for("put", "f/1")
    finally:
        cancel()
    dead = stores(f"127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}")
    error = raises_within(BUDGET, lambda: dead.get("x"))
    assert " or http://127.0.0.1:" in str(error)


def test_a_watch_behind_compacted_history_catches_up(server: EtcdServer, stores) -> None:
    store = stores()
    start = store.put("c/stays", {"v": 1})
    store.put("c/goes", {"v": 1})
    store.put("c/stays", {"v": 2})
    store.delete("c/goes")
    now = store.put("c/new", {"v": 1})
    store._call(lambda client: client.compact(now))
    got = Recorder()
    # A watch that last saw revision ``start`` (as after a long outage) asks for history
    # etcd no longer has: it must catch up from a listing instead of going quiet.
    watch = _Watch(store, WatchCursor("c/", got, start, ["c/stays", "c/goes"]))
    watch.start()
    try:
        got.wait_for("delete", "c/goes")
        assert sorted(got.seen()) == [("delete", "c/goes", None), ("put", "c/new", {"v": 1}),
                                      ("put", "c/stays", {"v": 2})]
        store.put("c/later", {})
        got.wait_for("put", "c/later")
    finally:
        watch.cancel()


def test_a_closed_store_says_so(stores) -> None:
    store = stores()
    store.close()
    with pytest.raises(StoreUnavailable, match="was closed"):
        store.get("k")


def _succeeds(call: Callable[[], Any]) -> bool:
    try:
        call()
    except StoreUnavailable:
        return False
    return True


def test_the_fixture_helper_restarts_on_the_same_ports(tmp_path: Path) -> None:
    server = start_etcd(tmp_path)
    try:
        ports = (server.client_port, server.peer_port)
        server.kill()
        assert not server.running
        server.start()
        assert server.running and (server.client_port, server.peer_port) == ports
        assert server.url == f"etcd://127.0.0.1:{server.client_port}"
    finally:
        server.stop()
    assert not server.running
