"""A service on an overlay across two emulated hosts with a real etcd and a ``pycnm agent``
per host: backends and clients on both hosts, an even spread from either, the published
port reached from an "outside" namespace through either host, a backend that leaves
stops being used everywhere, and an agent killed with SIGKILL (the service goes on; once
it is back, its host follows the other host's changes again).

    outside 203.0.113.2 --- router --- h1 172.31.2.2  (pycnm agent, LB namespace, backends)
                                   \\-- h2 192.168.2.2 (pycnm agent, LB namespace, backends)
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netns_fixtures.netns import Namespace, add_route, veth
from tests.integration.lb_helpers import Backends, spread, wait_for
from tests.integration.overlay_lab import Host, OverlayLab, overlay_lab

pytestmark = [pytest.mark.root, pytest.mark.etcd]

CONVERGE = 20.0  # seconds for the other host's agent to follow a change
OUTSIDE = "203.0.113.2"


@dataclass
class Cluster:
    lab: OverlayLab
    h1: Host
    h2: Host
    nets: dict[str, str]  # host name -> its name for the overlay
    servers: Backends
    outside: Namespace

    def sandbox(self, host: Host, key: str, *services: str) -> str:
        name = f"{key}{self.lab.tag}"
        self.lab.pycnm(host, "sandbox", "create", name)
        flags = [f for s in services for f in ("--service", s)]
        self.lab.pycnm(host, "attach", self.nets[host.name], name, *flags)
        return name

    def backend(self, host: Host, key: str) -> str:
        name = self.sandbox(host, key, "web")
        self.servers.serve(f"pcsb-{name}", name)
        return name

    def inspect(self, host: Host) -> dict:
        found = self.lab.pycnm_json(host, "service", "ls")
        return next((s for s in found if s["Name"] == "web"), {})

    def backends_seen(self, host: Host) -> set[str]:
        return {b["Endpoint"] for b in self.inspect(host).get("Backends", ())}


@pytest.fixture
def cluster(etcd_server, netns, tmp_path) -> Iterator[Cluster]:
    servers = Backends(str(tmp_path))
    with overlay_lab(etcd_server.url, lease_ttl=20.0) as lab:
        try:
            h1 = lab.add_host("1", "172.31.2.0/24")
            h2 = lab.add_host("2", "192.168.2.0/24")
            router = Namespace(lab.router, create=False)
            far = netns("outside")
            veth(router, f"o{lab.tag}", far, "eth0", "203.0.113.1/24", f"{OUTSIDE}/24")
            add_route(far, "default", "203.0.113.1")
            for host in (h1, h2):
                lab.start_agent(host)
            overlay = f"ov{lab.tag}"
            nets = {h1.name: "blue", h2.name: "green"}
            for host in (h1, h2):
                lab.pycnm(host, "network", "create", "-d", "overlay", "--subnet",
                          "10.0.7.0/24", "-o", f"overlay={overlay}", nets[host.name])
            yield Cluster(lab, h1, h2, nets, servers, far)
        finally:
            servers.close()


def test_backends_and_clients_on_both_hosts_and_the_published_port_on_each(
        cluster: Cluster) -> None:
    lab, h1, h2 = cluster.lab, cluster.h1, cluster.h2
    lab.pycnm(h1, "service", "create", "web", "--network", "blue", "--port", "80/tcp",
              "--publish", "8080:80/tcp")
    vip = cluster.inspect(h1)["VirtualIP"]
    wait_for(lambda: cluster.inspect(h2).get("LoadBalancer"), CONVERGE,
             "h2's agent to make its load balancer for the service made on h1")
    assert cluster.inspect(h2)["VirtualIP"] == vip
    backends = [cluster.backend(h1, "a"), cluster.backend(h1, "b"),
                cluster.backend(h2, "c"), cluster.backend(h2, "d")]
    eids = {b["Endpoint"] for b in cluster.inspect(h1)["Backends"]} | \
        {b["Endpoint"] for b in cluster.inspect(h2)["Backends"]}
    for host in (h1, h2):
        wait_for(lambda host=host: cluster.backends_seen(host) == eids and len(eids) == 4,
                 CONVERGE, f"{host.name} to know all four backends")
    for host, key in ((h1, "x"), (h2, "y")):
        client = f"pcsb-{cluster.sandbox(host, key)}"
        counts = spread(client, vip, 80, 200)
        print(f"from a client on {host.name}: {dict(counts)}")
        assert set(counts) == set(backends), counts
        assert all(abs(n - 50) <= 2 for n in counts.values()), counts
    for host in (h1, h2):
        counts = spread(cluster.outside.name, host.underlay, 8080, 40)
        print(f"from outside through {host.underlay}:8080: {dict(counts)}")
        assert set(counts) == set(backends) and all(n == 10 for n in counts.values()), counts
    # A backend on h2 leaves: h1 stops using it too, once its agent has seen it.
    gone = backends[3]
    lab.pycnm(h2, "detach", "green", gone, "--drain", "0")
    wait_for(lambda: len(cluster.backends_seen(h1)) == 3, CONVERGE, "h1 to drop the backend")
    for host in (h1, h2):
        counts = spread(cluster.outside.name, host.underlay, 8080, 30)
        assert set(counts) == set(backends[:3]), counts
    # Removed on h2: gone on h1 too, with h1's ingress.
    lab.pycnm(h2, "service", "rm", "web")
    wait_for(lambda: not cluster.inspect(h1), CONVERGE, "the service to go on h1")
    wait_for(lambda: spread(cluster.outside.name, h1.underlay, 8080, 1) ==
             collections.Counter({"<refused>": 1}), CONVERGE, "h1's published port to close")


def test_sigkill_of_an_agent_keeps_the_service_and_it_follows_again_once_back(
        cluster: Cluster) -> None:
    lab, h1, h2 = cluster.lab, cluster.h1, cluster.h2
    lab.pycnm(h2, "service", "create", "web", "--network", "green", "--port", "80/tcp")
    vip = cluster.inspect(h2)["VirtualIP"]
    wait_for(lambda: cluster.inspect(h1).get("LoadBalancer"), CONVERGE, "h1's load balancer")
    first = [cluster.backend(h1, "a"), cluster.backend(h2, "b")]
    wait_for(lambda: len(cluster.backends_seen(h1)) == 2, CONVERGE, "h1 to see both backends")
    client = f"pcsb-{cluster.sandbox(h1, 'x')}"
    assert sorted(spread(client, vip, 80, 20).values()) == [10, 10]
    lab.stop_agent(h1, signal.SIGKILL)
    counts = spread(client, vip, 80, 20)  # the rules stay in h1's kernel
    assert set(counts) == set(first), counts
    later = cluster.backend(h2, "c")  # h1 has no agent to hear of it...
    assert later not in spread(client, vip, 80, 12)
    lab.start_agent(h1)  # ...until it is back
    wait_for(lambda: later in spread(client, vip, 80, 3), CONVERGE,
             "h1's new agent to use the backend added on h2 while it was away")
    counts = spread(client, vip, 80, 30)
    assert set(counts) == {*first, later} and all(n == 10 for n in counts.values()), counts
