"""Load-balanced services on one emulated host, with real servers (busybox httpd, a UDP
responder) and real connections from client sandboxes; the pycnm command line and a real
``pycnm agent`` process (for names, and for the SIGKILL test). See lb_helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cnm.osl import nft
from cnm.osl.netns import list_named_netns, named_netns_path
from tests.integration.bridge_helpers import unique
from tests.integration.dns_helpers import dig
from tests.integration.lb_helpers import SLOW_SECONDS, Backends, LbHost, busy_on, spread, wait_for

pytestmark = pytest.mark.root


@dataclass
class Setup:
    lab: LbHost
    servers: Backends
    network: str
    backends: dict[str, str]  # sandbox name -> namespace

    def service(self, name: str, *flags: str) -> dict:
        self.lab.pycnm("service", "create", name, "--network", self.network, *flags)
        return self.inspect(name)

    def inspect(self, name: str) -> dict:
        return self.lab.json("service", "inspect", name)[0]  # type: ignore[index]


@pytest.fixture
def lab(host, store_url, tmp_path) -> Iterator[LbHost]:
    machine = host("lbhost")
    lab = LbHost(machine.name, store_url, str(tmp_path))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def servers(tmp_path) -> Iterator[Backends]:
    backends = Backends(str(tmp_path))
    try:
        yield backends
    finally:
        backends.close()


def three_backends(lab: LbHost, servers: Backends, subnet: str, *service_flags: str,
                   services: tuple[str, ...] = ("web",)) -> Setup:
    """A network, services on it, three backends of all of them serving their names."""
    network = unique("net")
    lab.pycnm("network", "create", network, "--subnet", subnet)
    setup = Setup(lab, servers, network, {})
    for name in services:
        setup.service(name, "--port", "80/tcp", "--port", "53/udp", *service_flags)
    for _ in range(3):
        name = unique("be")
        setup.backends[name] = lab.sandbox(name, network, *services)
        servers.serve(setup.backends[name], name, udp_port=53)
    return setup


def vip_of(setup: Setup, name: str = "web") -> str:
    return setup.inspect(name)["VirtualIP"]


def icmp_redirects_sent(netns: str) -> int:
    """The ICMP redirects the kernel in ``netns`` has sent (/proc/net/snmp)."""
    snmp = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                          capture_output=True, text=True, check=True).stdout
    names, values = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Icmp:")]
    return int(values[names.index("OutRedirects")])


def ip_packets_received(netns: str) -> int:
    """The IPv4 packets namespace ``netns`` has received (/proc/net/snmp Ip InReceives:
    ARP is not counted)."""
    snmp = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                          capture_output=True, text=True, check=True).stdout
    names, values = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Ip:")]
    return int(values[names.index("InReceives")])


def fast_path_translations(host_ns: str) -> int:
    """The connections the host's fast path has translated (its rules' counters)."""
    listed = subprocess.run(["ip", "netns", "exec", host_ns, "nft", "-j", "list", "table",
                             "ip", "pycnm-services"], capture_output=True, text=True, check=True)
    return sum(expr["counter"]["packets"] for item in json.loads(listed.stdout)["nftables"]
               for expr in item.get("rule", {}).get("expr", ()) if "counter" in expr)


# --- balancing -------------------------------------------------------------------------


def test_round_robin_spreads_300_connections_evenly_and_names_resolve(lab, servers) -> None:
    lab.start_agent()
    setup = three_backends(lab, servers, "10.71.0.0/24")
    vip = vip_of(setup)
    client = lab.sandbox(unique("cli"), setup.network)
    counts = spread(client, vip, 80, 300)
    print(f"round robin over 300 connections: {dict(counts)}")
    assert set(counts) == set(setup.backends)
    assert all(abs(n - 100) <= 2 for n in counts.values()), counts
    # The balancer sends packets back out the leg they came in by: it tells no client or
    # backend by ICMP redirect to go around it.
    assert icmp_redirects_sent(setup.inspect("web")["LoadBalancer"]["Namespace"]) == 0
    # Names: the service's name is its VIP, tasks.NAME its backends (as in Docker).
    assert dig(client, "web").addresses == [vip]
    addresses = sorted(lab.address(b) for b in setup.backends)
    assert sorted(dig(client, "tasks.web").addresses) == addresses
    assert sorted(spread(client, "web", 80, 3)) == sorted(setup.backends)  # by name too
    rules = subprocess.run(["ip", "netns", "exec", setup.inspect("web")["LoadBalancer"][
        "Namespace"], "nft", "list", "table", "ip", "pycnm-lb"], capture_output=True,
        text=True, check=True).stdout
    assert "numgen inc mod 3" in rules and f"{vip} . tcp . 80" in rules


def test_random_and_source_hash(lab, servers) -> None:
    setup = three_backends(lab, servers, "10.72.0.0/24", services=())
    setup.service("rnd", "--port", "80/tcp", "--balance", "random")
    setup.service("sticky", "--port", "80/tcp", "--balance", "source-hash")
    for name in setup.backends:  # join both services
        lab.pycnm("detach", setup.network, name)
        lab.pycnm("attach", setup.network, name, "--service", "rnd", "--service", "sticky")
    client = lab.sandbox(unique("cli"), setup.network)
    other = lab.sandbox(unique("cli"), setup.network)
    counts = spread(client, vip_of(setup, "rnd"), 80, 300)
    print(f"random over 300 connections: {dict(counts)}")
    assert set(counts) == set(setup.backends) and min(counts.values()) >= 70, counts
    sticky = vip_of(setup, "sticky")
    for who in (client, other):
        counts = spread(who, sticky, 80, 60)
        assert len(counts) == 1 and next(iter(counts)) in setup.backends, counts


def test_a_backend_detached_mid_run_gets_no_new_connection_and_its_open_ones_finish(
        lab, servers) -> None:
    setup = three_backends(lab, servers, "10.73.0.0/24")
    vip = vip_of(setup)
    client = lab.sandbox(unique("cli"), setup.network)
    slow = subprocess.Popen(["ip", "netns", "exec", client, "curl", "-s", "-m", "20",
                             f"http://{vip}/cgi-bin/slow"], stdout=subprocess.PIPE, text=True)
    try:
        leaving = wait_for(lambda: next((name for name, ns in setup.backends.items()
                                         if busy_on(ns, 80)), None), 10,
                           "the slow request to reach a backend")
        detached: dict[str, float] = {}

        def detach() -> None:
            started = time.monotonic()
            lab.pycnm("detach", setup.network, leaving, "--drain", "15")
            detached["took"] = time.monotonic() - started

        thread = threading.Thread(target=detach)
        thread.start()
        wait_for(lambda: len(setup.inspect("web")["Backends"]) == 2, 10,
                 "the backend to leave the service's rules")
        during = spread(client, vip, 80, 60)  # while it drains
        thread.join(60)
        output, _ = slow.communicate(timeout=30)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    print(f"while {leaving} drained: {dict(during)}; detach took {detached.get('took'):.2f} s")
    assert leaving not in during and sum(during.values()) == 60, during
    assert set(during) == set(setup.backends) - {leaving}
    assert output.split() == ["begun", leaving]  # the open connection completed
    assert detached["took"] >= SLOW_SECONDS / 2  # detach waited for it
    after = spread(client, vip, 80, 30)
    assert leaving not in after and sum(after.values()) == 30


def test_udp_service_through_the_vip(lab, servers) -> None:
    setup = three_backends(lab, servers, "10.74.0.0/24")
    client = lab.sandbox(unique("cli"), setup.network)
    counts = spread(client, vip_of(setup), 53, 60, proto="udp")
    print(f"UDP round robin over 60 requests: {dict(counts)}")
    assert set(counts) == set(setup.backends) and all(n == 20 for n in counts.values()), counts


def test_no_backend_is_refused_quickly_never_dropped(lab) -> None:
    network = unique("net")
    lab.pycnm("network", "create", network, "--subnet", "10.75.0.0/24")
    lab.pycnm("service", "create", "empty", "--network", network, "--port", "80/tcp",
              "--port", "53/udp")
    vip = lab.json("service", "inspect", "empty")[0]["VirtualIP"]  # type: ignore[index]
    client = lab.sandbox(unique("cli"), network)
    started = time.monotonic()
    assert spread(client, vip, 80, 5) == {"<refused>": 5}  # TCP reset
    assert spread(client, vip, 53, 5, proto="udp") == {"<refused>": 5}  # ICMP unreachable
    assert spread(client, vip, 8080, 2) == {"<refused>": 2}  # a port it does not have
    took = time.monotonic() - started
    print(f"12 refusals took {took:.2f} s")
    assert took < 5  # no timeout was waited for


def test_hairpin_a_backend_reaches_its_own_vip(lab, servers) -> None:
    setup = three_backends(lab, servers, "10.76.0.0/24")
    first = next(iter(setup.backends))
    counts = spread(setup.backends[first], vip_of(setup), 80, 30)
    assert set(counts) == set(setup.backends) and all(n == 10 for n in counts.values()), counts


def test_a_sandbox_on_another_network_cannot_reach_the_vip(lab, servers) -> None:
    setup = three_backends(lab, servers, "10.77.0.0/24")
    lab.pycnm("service", "create", "pub", "--network", setup.network, "--port", "80/tcp",
              "--publish", "8081:80/tcp")  # the host then routes to its VIP: not for all
    for name in setup.backends:
        lab.pycnm("detach", setup.network, name, "--drain", "0")
        lab.pycnm("attach", setup.network, name, "--service", "web", "--service", "pub")
    other = unique("net")
    lab.pycnm("network", "create", other, "--subnet", "10.78.0.0/24")
    stranger = lab.sandbox(unique("far"), other)
    client = lab.sandbox(unique("cli"), setup.network)
    for service in ("web", "pub"):
        assert sum(spread(client, vip_of(setup, service), 80, 3).values()) == 3
        counts = spread(stranger, vip_of(setup, service), 80, 2)
        assert not set(counts) & set(setup.backends), (service, counts)
    # The published port itself is for everyone, also through the stranger's gateway.
    gateway = lab.json("network", "inspect", other)[0]["IPAM"]["Config"][0]["Gateway"]
    assert set(spread(stranger, gateway, 8081, 3)) == set(setup.backends)


def test_dnsrr_names_the_backends_shuffled_and_makes_no_balancer(lab, servers) -> None:
    lab.start_agent()
    setup = three_backends(lab, servers, "10.79.0.0/24", services=())
    info = setup.service("rr", "--port", "80/tcp", "--mode", "dnsrr")
    assert info["VirtualIP"] == "" and info["LoadBalancer"] == {}
    for name in setup.backends:
        lab.pycnm("detach", setup.network, name)
        lab.pycnm("attach", setup.network, name, "--service", "rr")
    client = lab.sandbox(unique("cli"), setup.network)
    expected = sorted(lab.address(b) for b in setup.backends)
    orders = {tuple(dig(client, "rr").addresses) for _ in range(20)}
    assert all(sorted(order) == expected for order in orders) and len(orders) > 1
    assert not [n for n in list_named_netns() if n.startswith("pclb-")
                and n.endswith(lab.name)]


# --- the fast path on a bridge ----------------------------------------------------------


def test_a_client_on_the_bridge_skips_the_balancer_and_a_backend_does_not(
        lab, servers) -> None:
    setup = three_backends(lab, servers, "10.82.0.0/24")
    vip = vip_of(setup)
    balancer = setup.inspect("web")["LoadBalancer"]["Namespace"]
    client = lab.sandbox(unique("cli"), setup.network)
    assert spread(client, vip, 80, 1)  # the client has the VIP's neighbour entry now
    received, translated = ip_packets_received(balancer), fast_path_translations(lab.name)
    counts = spread(client, vip, 80, 60)
    udp = spread(client, vip, 53, 30, proto="udp")
    assert set(counts) == set(setup.backends) and sorted(counts.values()) == [20, 20, 20]
    assert set(udp) == set(setup.backends) and sorted(udp.values()) == [10, 10, 10]
    # Not one IPv4 packet of those 90 connections entered the balancer's namespace: the
    # host translated each one (its counters) and the bridge took it to the backend.
    assert ip_packets_received(balancer) == received
    assert fast_path_translations(lab.name) - translated == 90
    # A backend reaching its own VIP is left to the balancer (hairpin: SNAT there).
    first = setup.backends[next(iter(setup.backends))]
    counts = spread(first, vip, 80, 30)
    assert set(counts) == set(setup.backends) and sorted(counts.values()) == [10, 10, 10]
    assert ip_packets_received(balancer) > received
    assert fast_path_translations(lab.name) - translated == 90
    # Leaving: at once out of the fast path too; the service's last backend gone, the
    # connections are refused (by the balancer), and nothing is left in the host's table.
    for name in list(setup.backends)[:2]:
        lab.pycnm("detach", setup.network, name, "--drain", "0")
    last = list(setup.backends)[2]
    assert spread(client, vip, 80, 12) == {last: 12}
    lab.pycnm("detach", setup.network, last, "--drain", "0")
    assert spread(client, vip, 80, 3) == {"<refused>": 3}
    lab.pycnm("service", "rm", "web")
    assert ("ip", "pycnm-services") not in nft.list_tables(named_netns_path(lab.name))


# --- ingress ----------------------------------------------------------------------------


def test_published_port_reaches_every_backend_from_outside(lab, servers, outside) -> None:
    from netns_fixtures.netns import Namespace

    setup = three_backends(lab, servers, "10.80.0.0/24", "--publish", "8080:80/tcp",
                           "--publish", "5353:53/udp")
    far = outside(Namespace(lab.name, create=False))
    counts = spread(far.name, far.host_address, 8080, 30)
    print(f"from outside through {far.host_address}:8080: {dict(counts)}")
    assert set(counts) == set(setup.backends) and all(n == 10 for n in counts.values())
    udp = spread(far.name, far.host_address, 5353, 6, proto="udp")
    assert set(udp) == set(setup.backends)
    lab.pycnm("service", "rm", "web")
    assert spread(far.name, far.host_address, 8080, 2) == {"<refused>": 2}
    assert ("ip", "pycnm-ingress") not in nft.list_tables(named_netns_path(lab.name))


# --- restarts -----------------------------------------------------------------------------


def test_agent_sigkill_keeps_the_service_and_its_successor_repairs_and_updates(
        lab, servers) -> None:
    lab.start_agent()
    setup = three_backends(lab, servers, "10.81.0.0/24")
    vip = vip_of(setup)
    client = lab.sandbox(unique("cli"), setup.network)
    lab.stop_agent(signal.SIGKILL)
    assert sorted(spread(client, vip, 80, 30).values()) == [10, 10, 10]  # still served
    balancer = setup.inspect("web")["LoadBalancer"]["Namespace"]
    # Lost while it was away: the balancer's table and the host's fast path.
    nft.delete_table(named_netns_path(balancer), "ip", "pycnm-lb")
    nft.delete_table(named_netns_path(lab.name), "ip", "pycnm-services")
    assert spread(client, vip, 80, 2) == {"<refused>": 2}
    lab.start_agent()  # returns once its first sync (every table loaded again) is done
    counts = spread(client, vip, 80, 30)
    assert set(counts) == set(setup.backends) and sorted(counts.values()) == [10, 10, 10]
    fourth = unique("be")
    servers.serve(lab.sandbox(fourth, setup.network, "web"), fourth)
    assert sorted(spread(client, vip, 80, 40)) == sorted([*setup.backends, fourth])


# --- bad input ----------------------------------------------------------------------------


def test_every_bad_value_is_one_sentence_and_nothing_is_made(lab) -> None:
    network = unique("net")
    lab.pycnm("network", "create", network, "--subnet", "10.82.0.0/24")
    lab.pycnm("sandbox", "create", unique("sb"))
    cases = [
        (["web\n"], "service name"),
        (["bad-"], "service name"),
        (["tasks.web"], "service name"),
        (["web", "--port", "80/icmp"], "protocol"),
        (["web", "--port", "0"], "from 1 to 65535"),
        (["web", "--port", "99999/tcp"], "from 1 to 65535"),
        (["web", "--port", "eighty"], "PORT or PORT/PROTO"),
        (["web"], "at least one port"),
        (["web", "--port", "80", "--vip", "10.9.9.9"], "not in network"),
        (["web", "--port", "80", "--vip", "10.82.0.1"], "already in use"),
        (["web", "--port", "80", "--vip", "10.82.0.255"], "broadcast"),
        (["web", "--port", "80", "--vip", "nonsense"], "must be an IP"),
        (["web", "--port", "80", "--mode", "magic"], "mode"),
        (["web", "--port", "80", "--balance", "weighted"], "balance"),
        (["web", "--port", "80", "--mode", "dnsrr", "--vip", "10.82.0.9"], "dnsrr"),
        (["web", "--port", "80", "--publish", "8080:81/tcp"], "not one of the service"),
        (["web", "--port", "80", "--publish", "8080"], "HOSTPORT:PORT"),
        (["web", "--port", "80", "--network", "nosuch"], "no network"),
    ]
    for args, words in cases:
        argv = ["service", "create", *args]
        if "--network" not in args:
            argv += ["--network", network]
        result = lab.pycnm(*argv, check=False)
        message = result.stderr.strip()
        assert result.returncode != 0 and message.startswith("Error: "), (args, message)
        assert words in message and len(message.splitlines()) == 1, (args, message)
        assert "internal error" not in message
    assert lab.json("service", "ls") == []
    assert not [n for n in list_named_netns() if n.startswith("pclb-") and
                n.endswith(lab.name)]
    # Nothing half-made: the address asked for above is still free.
    info = json.loads(lab.pycnm("--json", "service", "create", "web", "--network", network,
                                "--port", "80", "--vip", "10.82.0.9").stdout)
    assert info["VirtualIP"] == "10.82.0.9"
    closed = unique("net")
    lab.pycnm("network", "create", closed, "--subnet", "10.83.0.0/24", "-o", "icc=false")
    for args, words in [
        (["service", "create", "web", "--network", network, "--port", "81"], "already exists"),
        (["service", "create", "w2", "--network", closed, "--port", "81"], "icc=false"),
        (["attach", network, "nosb"], "no sandbox"),
        (["network", "rm", network], "has services"),
        (["detach", network, "x", "--drain", "-1"], "--drain"),
    ]:
        result = lab.pycnm(*args, check=False)
        assert result.returncode != 0 and words in result.stderr, (args, result.stderr)
    sandbox = lab.json("sandbox", "ls")[0]["Name"]  # type: ignore[index]
    result = lab.pycnm("attach", network, sandbox, "--service", "nope", check=False)
    assert result.returncode != 0 and "no service named 'nope'" in result.stderr
    assert lab.json("endpoint", "ls", "--network", network) != []  # only the balancer's
    assert [e["Name"] for e in lab.json("endpoint", "ls", "--network", network)] == [
        f"lb-{lab.json('network', 'inspect', network)[0]['Id'][:12]}"]  # type: ignore[index]
    lab.pycnm("service", "rm", "web")
    assert not [n for n in os.listdir("/run/netns") if n.startswith("pclb-") and
                n.endswith(lab.name)]
