"""Cluster-wide names on an overlay: two emulated hosts, a real etcd, a ``pycnm agent``
process per host; a name made on one host resolves (dig, inside a sandbox) on the other,
and goes when its endpoint leaves or when its host's agent dies and the lease runs out.

Each host's own DNS server is a dnsmasq on the host namespace's loopback that knows no
name (NXDOMAIN for all): names the resolver does not know are dialled from the host's
namespace, so they reach it, and nothing ever leaves for a real server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.reversename
import pytest

from netns_fixtures.netns import Namespace
from tests.integration.dns_helpers import dig, wait_for
from tests.integration.overlay_lab import Host, OverlayLab, overlay_lab

pytestmark = [pytest.mark.root, pytest.mark.etcd]

LEASE_TTL = 2.0
CONVERGE = 15.0  # seconds: the overlay's own convergence budget in these tests


@dataclass
class Cluster:
    lab: OverlayLab
    h1: Host
    h2: Host
    overlay: str

    def sandbox(self, host: Host, key: str, network: str, *flags: str) -> tuple[str, str]:
        """(netns name, address) of a new sandbox on ``host`` attached to ``network``."""
        name = f"{key}{self.lab.tag}"
        self.lab.pycnm(host, "sandbox", "create", name)
        self.lab.pycnm(host, "attach", network, name, *flags)
        info = self.lab.pycnm_json(host, "sandbox", "inspect", name)[0]
        return f"pcsb-{name}", info["Interfaces"]["eth0"]["IPv4Address"].split("/")[0]


def quiet_upstream(host: Host) -> subprocess.Popen:
    """The host's resolv.conf names a dnsmasq on its own loopback that answers NXDOMAIN."""
    folder = f"/etc/netns/{host.name}"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/resolv.conf", "w") as handle:
        handle.write("nameserver 127.0.0.1\n")
    ns = Namespace(host.name, create=False)
    ns.run(["ip", "link", "set", "lo", "up"])
    return ns.popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                     "--listen-address=127.0.0.1", "--bind-interfaces", "--address=/#/",
                     "--pid-file=", "--user=root"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def cluster(etcd_server) -> Iterator[Cluster]:
    upstreams: list[subprocess.Popen] = []
    with overlay_lab(etcd_server.url, lease_ttl=LEASE_TTL) as lab:
        try:
            h1 = lab.add_host("1", "172.31.1.0/24")
            h2 = lab.add_host("2", "192.168.1.0/24")
            for host in (h1, h2):
                upstreams.append(quiet_upstream(host))
                lab.start_agent(host)
            overlay = f"ov{lab.tag}"
            # Each host names its network differently: NAME.NETWORK uses the local name.
            for host, net in ((h1, "blue"), (h2, "green")):
                lab.pycnm(host, "network", "create", "-d", "overlay", "--subnet",
                          "10.0.0.0/24", "-o", f"overlay={overlay}", net)
            yield Cluster(lab, h1, h2, overlay)
        finally:
            for proc in upstreams:
                proc.terminate()
                proc.wait(timeout=10)


def resolves(netns: str, name: str, want: list[str]) -> bool:
    return sorted(dig(netns, name).addresses) == sorted(want)


def test_a_name_made_on_one_host_resolves_on_the_other_and_goes_on_detach(
        cluster: Cluster) -> None:
    lab, h1, h2 = cluster.lab, cluster.h1, cluster.h2
    near, near_ip = cluster.sandbox(h2, "cli", "green", "--alias", "pool")
    far, far_ip = cluster.sandbox(h1, "web", "blue", "--alias", "pool", "--alias", "front")
    attached = time.monotonic()
    web = far.removeprefix("pcsb-")
    wait_for(lambda: resolves(near, web, [far_ip]), CONVERGE, "h1's name on h2")
    print(f"h1's name resolved on h2 {time.monotonic() - attached:.2f} s after its attach "
          "returned")
    for name in ("front", f"{web}.green", "FRONT.GREEN", f"{web.upper()}"):
        assert dig(near, name).addresses == [far_ip], name
    assert dig(near, f"{web}.blue").status == "NXDOMAIN"  # h1's name for it means nothing
    # Round robin across hosts, both ways.
    wait_for(lambda: resolves(far, "pool", [far_ip, near_ip]), CONVERGE, "h2's alias on h1")
    assert sorted(dig(near, "pool").addresses) == sorted([far_ip, near_ip])
    ptr = dig(near, dns.reversename.from_address(far_ip).to_text(), "PTR")
    assert [a.split()[-1] for a in ptr.answers] == [f"{web}.green."]
    # A bridge network of h1 stays h1's.
    lab.pycnm(h1, "network", "create", "--subnet", "10.77.0.0/24", "local")
    hidden, _ = cluster.sandbox(h1, "loc", "local")
    assert dig(far, "pool").status == "NOERROR"
    assert dig(near, hidden.removeprefix("pcsb-")).status == "NXDOMAIN"
    # Detached on h1: gone on h2.
    lab.pycnm(h1, "detach", "blue", web)
    wait_for(lambda: dig(near, "front").status == "NXDOMAIN", CONVERGE,
             "the name to go on h2 after the detach on h1")
    assert dig(near, "pool").addresses == [near_ip]


def test_names_of_a_host_whose_agent_dies_go_when_its_lease_runs_out(
        cluster: Cluster) -> None:
    lab, h1, h2 = cluster.lab, cluster.h1, cluster.h2
    far, far_ip = cluster.sandbox(h1, "web", "blue", "--alias", "front")
    near, _ = cluster.sandbox(h2, "cli", "green")
    wait_for(lambda: resolves(near, "front", [far_ip]), CONVERGE, "h1's name on h2")
    lab.stop_agent(h1, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: dig(near, "front").status == "NXDOMAIN", CONVERGE,
             "h1's names to go after its agent was killed")
    gone = time.monotonic() - killed
    print(f"h1's names went {gone:.2f} s after its agent was killed (lease {LEASE_TTL} s)")
    assert gone >= LEASE_TTL * 0.5  # the lease, not anything else, removed them
    lab.start_agent(h1)  # back: its names come back from the store
    wait_for(lambda: resolves(near, "front", [far_ip]), CONVERGE, "h1's names to return")
