"""The resolver follows the store from its watch events alone (``cnm/dns/mirror.py``): with
the periodic resync pushed out of reach (``--resync-interval 3600``), every change below
must reach the answers ``dig`` gets inside a sandbox through the event path: this host's
attach and detach (the local store's events), and another host's published names written
straight into a real etcd, updated, deleted, and dropped by etcd itself when their lease
runs out (the cluster store's events, a lease expiry included).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cnm.store import open_store
from cnm.store.prefixed import PrefixedStore
from tests.integration.agent_helpers import wait_for
from tests.integration.dns_helpers import dig
from tests.integration.overlay_lab import Host, OverlayLab, overlay_lab
from tests.integration.test_dns_cluster import quiet_upstream

pytestmark = [pytest.mark.root, pytest.mark.etcd]

LEASE_TTL = 2.0
NO_RESYNC = ("--resync-interval", "3600")
CHANGE = 10.0  # seconds a change may take to show: far below the resync's hour


@dataclass
class OneHost:
    lab: OverlayLab
    host: Host
    overlay: str

    def attach(self, key: str) -> tuple[str, str, str]:
        """(name, netns name, address) of a new sandbox attached to the overlay."""
        name = f"{key}{self.lab.tag}"
        self.lab.pycnm(self.host, "sandbox", "create", name)
        self.lab.pycnm(self.host, "attach", "blue", name)
        info = self.lab.pycnm_json(self.host, "sandbox", "inspect", name)[0]
        return name, f"pcsb-{name}", info["Interfaces"]["eth0"]["IPv4Address"].split("/")[0]


@pytest.fixture
def one_host(etcd_server) -> Iterator[OneHost]:
    with overlay_lab(etcd_server.url, lease_ttl=LEASE_TTL) as lab:
        host = lab.add_host("1", "172.31.1.0/24")
        upstream = quiet_upstream(host)
        try:
            lab.start_agent(host, extra=NO_RESYNC)
            overlay = f"ov{lab.tag}"
            lab.pycnm(host, "network", "create", "-d", "overlay", "--subnet", "10.0.0.0/24",
                      "-o", f"overlay={overlay}", "blue")
            yield OneHost(lab, host, overlay)
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)


def test_local_attach_and_detach_answer_at_once_without_a_resync(one_host: OneHost) -> None:
    _, near, _ = one_host.attach("cli")
    for round_ in range(3):  # several events in a row, each applied on its own
        web, _, web_ip = one_host.attach(f"web{round_}")
        # No waiting: the attach returns once the resolver has applied it.
        assert dig(near, web).addresses == [web_ip], round_
        one_host.lab.pycnm(one_host.host, "detach", "blue", web)
        assert dig(near, web).status == "NXDOMAIN", round_


def test_another_hosts_names_follow_put_update_delete_and_lease_expiry(
        one_host: OneHost) -> None:
    _, near, _ = one_host.attach("cli")
    ghost = f"ghost{one_host.lab.tag}"
    key = f"dns/scopes/overlay:{one_host.overlay}/hghost{one_host.lab.tag}/e{one_host.lab.tag}"

    def record(address: str) -> dict:
        return {"names": [ghost], "ptr": ghost, "host": f"hghost{one_host.lab.tag}",
                "addresses": [address]}

    def answers() -> list[str]:
        return dig(near, ghost).addresses

    with open_store(one_host.lab.store_url) as raw:
        cluster = PrefixedStore(raw, "global/")
        lease = cluster.grant_lease(60.0)
        try:
            cluster.put_with_lease(key, record("10.0.0.200"), lease)  # put
            wait_for(lambda: answers() == ["10.0.0.200"], CHANGE, "the put name to answer")
            cluster.put_with_lease(key, record("10.0.0.201"), lease)  # update
            wait_for(lambda: answers() == ["10.0.0.201"], CHANGE, "the updated address")
            cluster.delete(key)  # delete
            wait_for(lambda: dig(near, ghost).status == "NXDOMAIN", CHANGE,
                     "the deleted name to go")
        finally:
            lease.revoke()
        short = cluster.grant_lease(LEASE_TTL)  # never refreshed: etcd drops the key
        cluster.put_with_lease(key, record("10.0.0.202"), short)
        written = time.monotonic()
        wait_for(lambda: answers() == ["10.0.0.202"], CHANGE, "the leased name to answer")
        wait_for(lambda: dig(near, ghost).status == "NXDOMAIN", CHANGE + LEASE_TTL,
                 "the name to go when its lease ran out")
        assert time.monotonic() - written >= LEASE_TTL * 0.5  # the lease removed it


def test_a_published_name_deleted_by_someone_else_is_published_again(
        one_host: OneHost) -> None:
    web, _, web_ip = one_host.attach("web")
    scope = f"dns/scopes/overlay:{one_host.overlay}/"

    with open_store(one_host.lab.store_url) as raw:
        cluster = PrefixedStore(raw, "global/")

        def published() -> list[str]:
            return [e.key for e in cluster.list(scope) if web in e.value.get("names", ())]

        keys = wait_for(published, CHANGE, "the host to publish its name")
        assert cluster.get(keys[0]).value["addresses"] == [web_ip]
        cluster.delete(keys[0])
        wait_for(lambda: published() == keys, CHANGE, "the name to be published again")
