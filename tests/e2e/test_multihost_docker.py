"""Two Docker engines, each on its own emulated host with its own pycnm plugin, on one
pycnm overlay: what a user of the overlay runs. Docker 20.10 on h1, Docker 26.1 on h2;
the picture and what is shared with the machine are in ``tests.e2e.multihost``.

Every test makes its own overlay (and containers) on the module's two hosts and removes
them; the failure tests restart what they kill.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from netns_fixtures.docker import start_daemon, stop_daemon
from tests.e2e.multihost import (
    DockerHost,
    MultiHostDocker,
    container_ip,
    exec_ok,
    multihost_docker,
)
from tests.integration.bridge_helpers import TcpServer, in_ns
from tests.integration.overlay_lab import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.docker]

LEASE_TTL = 3.0


@pytest.fixture(scope="module")
def mh() -> Iterator[MultiHostDocker]:
    with multihost_docker(versions=("20.10", "26.1"), lease_ttl=LEASE_TTL) as setup:
        yield setup


class Overlay:
    """One overlay network made on every host through its own engine."""

    def __init__(self, mh: MultiHostDocker, subnet: str, internal: bool) -> None:
        self.mh = mh
        self.tag = uuid.uuid4().hex[:6]
        self.name = f"ov{self.tag}"  # the overlay (-o overlay=) and every host's network
        self.subnet = subnet
        self.containers: list[tuple[DockerHost, str]] = []
        for host in mh.hosts:
            host.docker("network", "create", "-d", "pycnm", "--ipam-driver", "pycnm",
                        "--ipam-opt", "scope=global", "--subnet", subnet,
                        *(["--internal"] if internal else []),
                        "-o", "driver=overlay", "-o", f"overlay={self.name}", self.name)
        self.vni = mh.vni_of(self.name)

    def run(self, host: DockerHost, key: str, *extra: str, command: tuple[str, ...] = (
            "sleep", "3600")) -> tuple[str, str]:
        """A container on ``host``; (its name, its overlay address)."""
        name = f"{key}{self.tag}"
        assert host.engine is not None
        host.docker("run", "-d", "--name", name, "--network", self.name, *extra,
                    host.engine.image, *command)
        self.containers.append((host, name))
        address = container_ip(host, name, self.name)
        assert ipaddress.ip_address(address) in ipaddress.ip_network(self.subnet)
        return name, address

    def close(self) -> None:
        for host, name in self.containers:
            host.docker("rm", "-f", name, check=False, timeout=60)
        for host in self.mh.hosts:
            deadline = time.monotonic() + 30
            while host.docker("network", "rm", self.name, check=False).returncode != 0 \
                    and time.monotonic() < deadline:
                time.sleep(0.5)  # dockerd may still be releasing an endpoint


@pytest.fixture
def internal(mh: MultiHostDocker) -> Iterator[Overlay]:
    overlay = Overlay(mh, "10.20.0.0/24", internal=True)
    try:
        yield overlay
    finally:
        overlay.close()


def learnt(mh: MultiHostDocker, host: DockerHost, vni: int, *addresses: str) -> bool:
    return set(addresses) <= mh.remote_ips(host, vni)


# --- two engines, one overlay ---------------------------------------------------------------


def test_containers_on_two_engines_ping_and_talk_tcp_by_address(
        mh: MultiHostDocker, internal: Overlay) -> None:
    h1, h2 = mh.hosts
    c1, ip1 = internal.run(h1, "c1")
    c2, ip2 = internal.run(h2, "c2", command=("sh", "-c",
                                              "while true; do echo from-c2 | nc -l -p 7000; "
                                              "done"))
    assert ip1 != ip2
    wait_for(lambda: learnt(mh, h1, internal.vni, ip2) and learnt(mh, h2, internal.vni, ip1),
             20, what="each host to learn the other's container")
    assert exec_ok(h1, c1, "ping", "-c", "1", "-W", "2", ip2)
    assert exec_ok(h2, c2, "ping", "-c", "1", "-W", "2", ip1)
    reply = h1.docker("exec", c1, "sh", "-c", f"nc {ip2} 7000 </dev/null", check=False,
                      timeout=30)
    assert reply.stdout.strip() == "from-c2", reply


def test_the_vni_on_the_wire_is_the_networks(mh: MultiHostDocker, internal: Overlay) -> None:
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN

    from tests.integration.test_overlay import capture

    h1, h2 = mh.hosts
    c1, ip1 = internal.run(h1, "c1")
    _, ip2 = internal.run(h2, "c2")
    wait_for(lambda: learnt(mh, h1, internal.vni, ip2), 20, what="h1 to learn c2")
    packets = capture(mh.lab, h2.host.router_if,
                      lambda: exec_ok(h1, c1, "ping", "-c", "3", "-W", "2", ip2), count=0,
                      timeout=2.0)
    inner = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].haslayer(ICMP)]
    assert inner, f"no VXLAN-wrapped ICMP in {[p.summary() for p in packets]}"
    assert {p[VXLAN].vni for p in inner} == {internal.vni}
    request = next(p for p in inner if p[VXLAN][ICMP].type == 8)
    assert (request[IP].src, request[IP].dst) == (h1.address, h2.address)
    assert request[UDP].dport == 4789
    assert (request[VXLAN][IP].src, request[VXLAN][IP].dst) == (ip1, ip2)


def test_no_address_is_handed_out_twice_across_the_engines(
        mh: MultiHostDocker, internal: Overlay) -> None:
    """Containers started at once on both engines: every address different."""
    addresses: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(host: DockerHost, key: str) -> None:
        try:
            _, address = internal.run(host, key)
            with lock:
                addresses.append(address)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(host, f"n{i}h{n}"))
               for n, host in enumerate(mh.hosts) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(addresses) == 4 * len(mh.hosts)
    assert len(set(addresses)) == len(addresses), f"an address was handed out twice: " \
        f"{sorted(addresses)}"


# --- the way out: docker_gwbridge -----------------------------------------------------------


def test_a_non_internal_overlay_goes_out_through_its_own_hosts_gateway_bridge(
        mh: MultiHostDocker) -> None:
    """Docker gives a container on a non-internal pycnm overlay a second interface on
    docker_gwbridge, as for its own overlay (pycnm's Join names no gateway): it reaches
    an outside machine masqueraded as its own host, and its published ports answer on its
    own host's address."""
    h1, h2 = mh.hosts
    overlay = Overlay(mh, "10.21.0.0/24", internal=False)
    try:
        g1, ip1 = overlay.run(h1, "g1", "-p", "8080:7000", command=(
            "sh", "-c", "while true; do echo from-g1 | nc -l -p 7000; done"))
        g2, ip2 = overlay.run(h2, "g2")
        # Two interfaces: eth0 on the overlay, eth1 on docker_gwbridge with the default route.
        routes = h1.docker("exec", g1, "ip", "route").stdout
        default = next(line for line in routes.splitlines() if line.startswith("default"))
        assert "dev eth1" in default, routes
        assert in_ns(h1.name, ["ip", "link", "show", "docker_gwbridge"]).returncode == 0
        # The overlay still carries container to container.
        wait_for(lambda: learnt(mh, h1, overlay.vni, ip2), 20, what="h1 to learn g2")
        assert exec_ok(h1, g1, "ping", "-c", "1", "-W", "2", ip2)
        # Out, masqueraded: the outside machine sees each host's own underlay address.
        outside = mh.outside
        with TcpServer(outside.name, outside.underlay, 7100, connections=2):
            for host, container in ((h1, g1), (h2, g2)):
                seen = host.docker("exec", container, "sh", "-c",
                                   f"nc {outside.underlay} 7100 </dev/null", check=False,
                                   timeout=30).stdout.strip()
                assert seen == f"from {host.address}", (host.name, seen)
        # In: a published port answers on the container's own host.
        got = in_ns(outside.name, ["python3", "-c", _READ_LINE, h1.address, "8080"])
        assert got.stdout.strip() == "from-g1", got
    finally:
        overlay.close()


_READ_LINE = """
import socket, sys, time
deadline = time.monotonic() + 20
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
            data = s.makefile().readline()
        if data:
            print(data.strip())
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("no answer")
    time.sleep(0.2)
"""


# --- failures ---------------------------------------------------------------------------------


def test_a_killed_plugin_leaves_peers_at_lease_expiry_and_comes_back(
        mh: MultiHostDocker, internal: Overlay) -> None:
    h1, h2 = mh.hosts
    c1, ip1 = internal.run(h1, "c1")
    c2, ip2 = internal.run(h2, "c2")
    c3, ip3 = internal.run(h2, "c3")
    wait_for(lambda: learnt(mh, h2, internal.vni, ip1), 20, what="h2 to learn c1")
    mh.kill_plugin(h1)  # SIGKILL: no goodbye, the lease runs out
    killed = time.monotonic()
    # h2's containers keep talking among themselves, and the data plane h1 had stays.
    assert exec_ok(h2, c2, "ping", "-c", "1", "-W", "2", ip3)
    wait_for(lambda: not learnt(mh, h2, internal.vni, ip1), LEASE_TTL + 15,
             what="h1's entries to leave h2 when its lease expires")
    gone_after = time.monotonic() - killed
    assert gone_after >= LEASE_TTL * 0.5, f"gone after {gone_after:.1f} s: before the lease"
    assert exec_ok(h2, c2, "ping", "-c", "1", "-W", "2", ip3)
    mh.start_plugin(h1)  # the plugin comes back: h1 publishes its endpoints again
    wait_for(lambda: learnt(mh, h2, internal.vni, ip1), 20, what="h1's entries to come back")
    assert exec_ok(h2, c3, "ping", "-c", "1", "-W", "2", ip1)
    assert exec_ok(h1, c1, "ping", "-c", "1", "-W", "2", ip2)


def test_a_killed_dockerd_leaves_the_other_host_talking_and_comes_back(
        mh: MultiHostDocker, internal: Overlay) -> None:
    h1, h2 = mh.hosts
    assert h2.engine is not None
    c1, ip1 = internal.run(h1, "c1")
    c4, ip4 = internal.run(h1, "c4")
    c2, ip2 = internal.run(h2, "c2", "--restart", "always")
    wait_for(lambda: learnt(mh, h1, internal.vni, ip2), 20, what="h1 to learn c2")
    stop_daemon(h2.engine, signal.SIGKILL, stop_containerd=True)  # a crash, containers too
    try:
        # h1's containers keep talking. h2's plugin is alive and holds h2's lease, and
        # nobody told it c2 died: c2's entries stay on h1 until dockerd is back.
        assert exec_ok(h1, c1, "ping", "-c", "1", "-W", "2", ip4)
        assert learnt(mh, h1, internal.vni, ip2)
    finally:
        start_daemon(h2.engine)
    # dockerd releases c2's old endpoint and restarts it (--restart always) on a new one;
    # the plugin publishes it, h1 learns it, and the old address leaves h1.
    wait_for(lambda: h2.docker("inspect", "-f", "{{.State.Running}}", c2,
                               check=False).stdout.strip() == "true", 60,
             what="c2 to run again")
    ip2_again = container_ip(h2, c2, internal.name)
    wait_for(lambda: learnt(mh, h1, internal.vni, ip2_again), 30,
             what="h1 to learn c2 again")
    if ip2_again != ip2:
        wait_for(lambda: not learnt(mh, h1, internal.vni, ip2), 30,
                 what="c2's old address to leave h1")
    assert exec_ok(h1, c1, "ping", "-c", "1", "-W", "2", ip2_again)
    assert exec_ok(h2, c2, "ping", "-c", "1", "-W", "2", ip1)

