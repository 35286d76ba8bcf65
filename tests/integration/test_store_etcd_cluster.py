"""The etcd store on a 3-member cluster (TLS with client certificates, on loopback) when
the member it talks to dies: calls, watches and leases move to the other members and
lose nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.errors import StoreUnavailable
from cnm.store import open_store
from cnm.store.etcd import EtcdStore
from netns_fixtures.etcd import EtcdCluster, EtcdTLS, start_cluster
from tests.unit.test_store import Recorder, wait_until

pytestmark = pytest.mark.etcd

PREFIX = "/pycnm-cluster/"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    tls = EtcdTLS.create(tmp_path / "pki")
    with start_cluster(tmp_path / "etcd", 3, tls=tls) as members:
        yield members


def open_on(cluster: EtcdCluster) -> EtcdStore:
    store = open_store(f"{cluster.url}&prefix={PREFIX}&timeout=1")
    assert isinstance(store, EtcdStore) and len(store.endpoints) == 3
    return store


def test_killing_the_member_in_use_moves_calls_watches_and_leases(
        cluster: EtcdCluster) -> None:
    store, watcher = open_on(cluster), open_on(cluster)
    got = Recorder()
    cancel = watcher.watch("k/", got)
    try:
        lease = store.grant_lease(10.0)
        store.put_with_lease("k/leased", {"n": 0}, lease)
        store.put("k/before", {"n": 1})
        got.wait_for("put", "k/before")
        for round_ in range(2):  # the member in use dies, then the next one in use
            in_use = cluster.members[watcher._current]
            assert in_use.running
            in_use.kill()
            # Refused calls move to the next member at once; but if the dead member led
            # the cluster, writes wait for an election (about etcd's 1 s election timeout)
            # and may time out meanwhile, with a sentence saying so: retry, bounded.
            key = f"k/after-{round_}"
            wait_until(lambda k=key: _succeeds(lambda: store.put(k, {"n": 2})),
                       "a write to succeed on the remaining members", timeout=15)
            got.wait_for("put", key)
            assert store.refresh_lease(lease), "the lease did not survive the member's death"
            assert store.get("k/leased") is not None
            if round_ == 0:
                in_use.start()  # back, so that two members of three keep a quorum
                wait_until(lambda m=in_use: m.running, "the member to restart")
        keys = [key for kind, key, _ in got.seen() if kind == "put"]
        assert keys == ["k/leased", "k/before", "k/after-0", "k/after-1"]
    finally:
        cancel()
        store.close()
        watcher.close()


def _succeeds(call) -> bool:
    try:
        call()
    except StoreUnavailable as exc:
        assert "did not answer within" in str(exc) or "cannot reach" in str(exc), exc
        return False
    return True
