"""The macvlan driver with real namespaces and real packets.

The LAN is emulated (never the machine's eth0): a "switch" namespace holds a Linux bridge;
a "host" namespace, which the Controller treats as its host (``host_ns``), has a veth
``lan0`` into the switch that is the macvlan parent and carries the host's own LAN address;
a "server" namespace is another machine on the same LAN. Sandboxes join as macvlan
children of ``lan0``. Every address below is inside these namespaces.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cnm.controller import Controller
from cnm.errors import CNMError, Conflict, InvalidOption, KernelFeatureMissing, NotFound
from netns_fixtures.netns import Namespace, unique_name, veth
from tests.integration.bridge_helpers import ping, ping_eventually, unique

pytestmark = pytest.mark.root

LAN = "203.0.113.0/24"  # TEST-NET-3: lives only in this test's namespaces
# Endpoints get addresses from here only, away from the LAN's own machines (as Docker's
# documentation advises for macvlan: IPAM cannot know who else is on the wire).
RANGE = "203.0.113.64/26"
ROUTER = "203.0.113.1"  # the LAN's router as the user declares it; nobody here holds it
HOST_IP = "203.0.113.2"  # the host's own address on the LAN, on the parent
SERVER = "203.0.113.10"  # the "external server" on the LAN
SHIM_IP = "203.0.113.250"
PARENT = "lan0"


@dataclass
class Lan:
    ctl: Controller
    store_url: str
    host: Namespace
    switch: Namespace
    server: Namespace

    def network(self, mode: str = "bridge", **kwargs: Any) -> Any:
        options = {"parent": PARENT, "macvlan_mode": mode, **kwargs.pop("options", {})}
        kwargs.setdefault("subnet", LAN)
        kwargs.setdefault("gateway", ROUTER)
        if kwargs["subnet"] == LAN:
            kwargs.setdefault("ip_range", RANGE)
        return self.ctl.new_network(unique("mv"), "macvlan", options=options, **kwargs)

    def sandbox(self) -> Any:
        return self.ctl.new_sandbox(unique("sb"))

    def attach(self, net: Any, sb: Any, **kwargs: Any) -> Any:
        ep = net.create_endpoint(sb.name, **kwargs)
        ep.join(sb)
        return ep


@pytest.fixture
def lan(netns: Callable[..., Namespace], store_url: str) -> Iterator[Lan]:
    """host --lan0-- [switch: br0] --eth0-- server; the host's lan0 is the parent."""
    host, switch, server = netns("host"), netns("switch"), netns("server")
    switch.run(["ip", "link", "add", "br0", "type", "bridge"], check=True)
    switch.run(["ip", "link", "set", "br0", "up"], check=True)
    for node, inside, address in ((host, PARENT, HOST_IP), (server, "eth0", SERVER)):
        port = unique_name()
        veth(node, inside, switch, port, f"{address}/24")
        switch.run(["ip", "link", "set", port, "master", "br0"], check=True)
    ctl = Controller(store_url, host_ns=host.path)
    try:
        yield Lan(ctl, store_url, host, switch, server)
    finally:
        ctl.cleanup_all()
        ctl.close()


# --- small observations -----------------------------------------------------------------

def ip_of(ep: Any) -> str:
    return str(ipaddress.ip_interface(ep.record.address).ip)


def mac_inside(ns: Any, ifname: str = "eth0") -> str:
    """The MAC of ``ifname`` in a sandbox or namespace (anything with ``run``)."""
    out = ns.run(["ip", "-o", "link", "show", ifname]).stdout
    match = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert match, out
    return match.group(1)


def neighbour_mac(node: Namespace, address: str, deadline: float = 5.0) -> str | None:
    """The MAC ``node`` has learnt for ``address`` (polled, bounded)."""
    end = time.monotonic() + deadline
    while True:
        mac = node.neighbours().get(address)
        if mac or time.monotonic() > end:
            return mac
        time.sleep(0.05)


def host_links(lan: Lan) -> list[str]:
    return sorted(lan.host.links())


def snapshot(lan: Lan) -> tuple[Any, ...]:
    """Everything a failed call must leave as it found: host links, addresses and routes,
    every store record, every allocated address."""
    # (Namespaces: a failed call here never makes a sandbox, and other runs sharing the
    # machine make theirs, so they are checked through the store's sandbox records.)
    # IPAM's records by what they hold, not raw: its bookkeeping (an empty address space,
    # a cursor) may legitimately change on a failed attempt.
    records = {e.key: e.value for e in lan.ctl.store.list("") if "/ipam/" not in e.key}
    held = sorted((p.id, sorted(map(str, lan.ctl.ipam.allocated(p.id))))
                  for p in lan.ctl.ipam.list_pools())
    return (
        host_links(lan),
        lan.host.run(["ip", "-o", "addr"]).stdout,
        lan.host.run(["ip", "route"]).stdout,
        records,
        held,
    )


def one_sentence(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert len(message) < 300
    assert message.count(". ") == 0, message


# --- traffic -----------------------------------------------------------------------------

def test_sandbox_reaches_the_lan_with_its_own_mac(lan: Lan) -> None:
    net = lan.network()
    a, b = lan.sandbox(), lan.sandbox()
    ep_a = lan.attach(net, a)
    ep_b = lan.attach(net, b, ip="203.0.113.77")  # a static address, through the core
    assert ip_of(ep_b) == "203.0.113.77"
    for sb, ep in ((a, ep_a), (b, ep_b)):
        assert ping_eventually(sb.netns_name, SERVER)
        # The server learnt the sandbox's own MAC (not the host's): it is a LAN machine.
        assert neighbour_mac(lan.server, ip_of(ep)) == ep.record.mac == mac_inside(sb)
    assert ep_a.record.mac != mac_inside(lan.host, PARENT)
    # The gateway is the LAN's router: the sandbox routes through it, the host never has it.
    assert f"default via {ROUTER} dev eth0" in a.run(["ip", "route"]).stdout
    assert ROUTER not in lan.host.run(["ip", "-o", "addr"]).stdout
    # The child was born in the sandbox: nothing of the endpoint is left in the host.
    assert not [n for n in host_links(lan) if n.startswith("pcmv-")]


@pytest.mark.parametrize(("mode", "siblings_talk"), [("bridge", True), ("private", False)])
def test_siblings_talk_in_bridge_mode_and_not_in_private(
    lan: Lan, mode: str, siblings_talk: bool
) -> None:
    net = lan.network(mode)
    a, b = lan.sandbox(), lan.sandbox()
    lan.attach(net, a)
    ep_b = lan.attach(net, b)
    # Both are on the LAN either way ...
    assert ping_eventually(a.netns_name, SERVER)
    assert ping_eventually(b.netns_name, SERVER)
    # ... but only bridge mode lets two children of one parent reach each other.
    if siblings_talk:
        assert ping_eventually(a.netns_name, ip_of(ep_b))
    else:
        assert not ping(a.netns_name, ip_of(ep_b), count=2)


def test_host_reaches_children_only_through_the_shim(lan: Lan) -> None:
    a = lan.sandbox()
    plain = lan.network()
    ep = lan.attach(plain, a)
    assert ping_eventually(a.netns_name, SERVER)
    assert ping_eventually(lan.host.name, SERVER)  # the host itself is on the LAN ...
    assert not ping(lan.host.name, ip_of(ep), count=2)  # ... but not with its children
    ep.leave()
    ep.delete()
    plain.delete()

    shimmed = lan.network(aux_addresses={"host": SHIM_IP}, options={"host_shim": "host"})
    shim = f"pcsh-{shimmed.id[:10]}"
    ep = lan.attach(shimmed, a)
    assert ping_eventually(lan.host.name, ip_of(ep))
    assert ping_eventually(a.netns_name, SHIM_IP)
    route = lan.host.run(["ip", "route", "get", ip_of(ep)]).stdout
    assert f"dev {shim}" in route
    # The host keeps its own route to the rest of the LAN.
    assert f"dev {PARENT}" in lan.host.run(["ip", "route", "get", SERVER]).stdout
    ep.leave()
    assert ip_of(ep) not in lan.host.run(["ip", "route"]).stdout
    ep.delete()
    shimmed.delete()
    assert shim not in host_links(lan)
    assert SHIM_IP not in lan.host.run(["ip", "-o", "addr"]).stdout


def test_mtu_is_the_parents_unless_set(lan: Lan) -> None:
    lan.host.run(["ip", "link", "set", PARENT, "mtu", "1400"], check=True)
    a, b = lan.sandbox(), lan.sandbox()
    lan.attach(lan.network(), a)
    assert "mtu 1400" in a.run(["ip", "link", "show", "eth0"]).stdout
    lan.attach(lan.network(subnet="198.51.100.0/24", gateway="198.51.100.1",
                           options={"mtu": "1300"}), b)
    assert "mtu 1300" in b.run(["ip", "link", "show", "eth0"]).stdout


def test_internal_network_has_no_gateway(lan: Lan) -> None:
    net = lan.network(internal=True)
    a = lan.sandbox()
    lan.attach(net, a)
    assert a.run(["ip", "route", "show", "default"]).stdout.strip() == ""
    assert ping_eventually(a.netns_name, SERVER)  # the LAN itself is still there


def test_docker_path_leaves_the_child_in_the_host(
    lan: Lan, netns: Callable[..., Namespace]
) -> None:
    """Without OPT_JOIN_IFNAME (dockerd's join) the child waits in the host under its
    pcmv- name for dockerd to move, and leave removes it."""
    net = lan.network()
    ep = net.create_endpoint(unique("e"), mac="02:42:c0:00:02:63")
    holder = netns("container")  # stands for a container's namespace that dockerd owns
    try:
        info = ep.join_external(holder.path)
        assert info.src_name == f"pcmv-{ep.id[:10]}" and not info.placed
        assert str(info.gateway) == ROUTER
        out = lan.host.run(["ip", "-o", "link", "show", info.src_name]).stdout
        assert "02:42:c0:00:02:63" in out and f"@{PARENT}" in out
        ep.leave_external()
        assert info.src_name not in host_links(lan)
    finally:
        ep.delete(force=True)


def test_restart_rebuilds_the_shim_and_lost_children(lan: Lan) -> None:
    net = lan.network(aux_addresses={"host": SHIM_IP}, options={"host_shim": SHIM_IP})
    a = lan.sandbox()
    ep = lan.attach(net, a)
    assert ping_eventually(lan.host.name, ip_of(ep))
    lan.host.run(["ip", "link", "del", f"pcsh-{net.id[:10]}"], check=True)
    a.run(["ip", "link", "del", "eth0"], check=True)
    assert not ping(lan.host.name, ip_of(ep), count=1)
    with Controller(lan.store_url, host_ns=lan.host.path) as restarted:
        assert restarted.last_reconcile == []
    assert ping_eventually(lan.host.name, ip_of(ep))
    assert ping_eventually(a.netns_name, SERVER)
    assert mac_inside(a) == ep.record.mac


# --- 802.1q -------------------------------------------------------------------------------

def test_vlan_parent_is_made_and_removed_or_refused_clearly(lan: Lan) -> None:
    vlan = f"{PARENT}.7"
    before = snapshot(lan)
    try:
        first = lan.network(options={"parent": vlan})
    except KernelFeatureMissing as exc:
        message = str(exc)
        one_sentence(message)
        assert "8021q" in message and "802.1q" in message
        assert snapshot(lan) == before  # no sub-interface, no network, no claim
        pytest.skip(message)
    # A kernel with 802.1q: the sub-interface lives exactly as long as its last network.
    assert vlan in host_links(lan)
    second = lan.network(subnet="198.51.100.0/24", gateway="198.51.100.1",
                         options={"parent": vlan})
    first.delete()
    assert vlan in host_links(lan)
    second.delete()
    assert vlan not in host_links(lan)


# --- bad input: a clear error and nothing left behind -----------------------------------

def _enslave_a_spare_veth(lan: Lan) -> None:
    lan.host.run(["ip", "link", "add", "brlan", "type", "bridge"], check=True)
    lan.host.run(["ip", "link", "add", "lan1", "type", "veth", "peer", "name", "lan1p"],
                 check=True)
    lan.host.run(["ip", "link", "set", "lan1", "master", "brlan"], check=True)


def _passthru_with_one_endpoint(lan: Lan) -> Any:
    net = lan.network("passthru")
    net.create_endpoint(unique("e"))
    return net


BadCase = tuple[str, Callable[[Lan], Any], Callable[[Lan, Any], Any], type[CNMError], str]
BAD: list[BadCase] = [
    ("missing parent option", lambda lan: None,
     lambda lan, _: lan.ctl.new_network(unique("mv"), "macvlan", subnet=LAN),
     InvalidOption, "parent"),
    ("parent does not exist", lambda lan: None,
     lambda lan, _: lan.network(options={"parent": "nosuch0"}), NotFound, "nosuch0"),
    ("parent enslaved to a bridge", _enslave_a_spare_veth,
     lambda lan, _: lan.network(options={"parent": "lan1"}), Conflict, "brlan"),
    ("bad mode", lambda lan: None, lambda lan, _: lan.network("sideways"),
     InvalidOption, "sideways"),
    ("mtu above the parent's", lambda lan: None,
     lambda lan, _: lan.network(options={"mtu": "9000"}), InvalidOption, "9000"),
    ("unknown option", lambda lan: None,
     lambda lan, _: lan.network(options={"colour": "blue"}), InvalidOption, "colour"),
    ("shim address not reserved", lambda lan: None,
     lambda lan, _: lan.network(options={"host_shim": "203.0.113.99"}), InvalidOption,
     "--aux-address"),
    ("shim in private mode", lambda lan: None,
     lambda lan, _: lan.network("private", aux_addresses={"host": SHIM_IP},
                                options={"host_shim": "host"}), InvalidOption, "private"),
    ("same parent, another mode", lambda lan: lan.network("bridge"),
     lambda lan, _: lan.network("private", subnet="198.51.100.0/24",
                                gateway="198.51.100.1"), Conflict, "bridge mode"),
    ("passthru on a shared parent", lambda lan: lan.network("bridge"),
     lambda lan, _: lan.network("passthru", subnet="198.51.100.0/24",
                                gateway="198.51.100.1"), Conflict, "passthru"),
    ("parent already given to passthru", lambda lan: lan.network("passthru"),
     lambda lan, _: lan.network("bridge", subnet="198.51.100.0/24",
                                gateway="198.51.100.1"), Conflict, "passthru"),
    ("endpoint on the host's own address", lambda lan: lan.network(),
     lambda lan, net: net.create_endpoint(unique("e"), ip=HOST_IP), Conflict,
     "belongs to the host"),
    ("passthru with a second endpoint", _passthru_with_one_endpoint,
     lambda lan, net: net.create_endpoint(unique("e")), Conflict, "passthru"),
]


@pytest.mark.parametrize(("what", "setup", "action", "error", "mentions"), BAD,
                         ids=[case[0] for case in BAD])
def test_bad_input_is_refused_clearly_and_leaves_nothing(
    lan: Lan, what: str, setup: Callable[[Lan], Any], action: Callable[[Lan, Any], Any],
    error: type[CNMError], mentions: str,
) -> None:
    prepared = setup(lan)
    before = snapshot(lan)
    with pytest.raises(error) as caught:
        action(lan, prepared)
    one_sentence(str(caught.value))
    assert mentions in str(caught.value)
    assert snapshot(lan) == before


def test_a_second_network_on_the_parent_with_an_overlapping_subnet_is_refused(lan: Lan) -> None:
    """Through Docker an IPAM hands the same subnet to every network that asks for it, so
    the driver itself refuses a second one on the same parent, and makes nothing."""
    import ipaddress

    from cnm.driverapi import IpamData
    from cnm.names import new_id

    driver = lan.ctl.driver("macvlan")
    pool = [IpamData(ipaddress.ip_network(LAN), ipaddress.ip_interface(f"{ROUTER}/24"))]
    first = new_id()
    driver.create_network(first, {"parent": PARENT}, pool, [])
    try:
        before = snapshot(lan)
        with pytest.raises(Conflict) as caught:
            driver.create_network(new_id(), {"parent": PARENT}, pool, [])
        one_sentence(str(caught.value))
        assert f"overlaps subnet {LAN} of network {first[:12]}" in str(caught.value)
        assert snapshot(lan) == before
    finally:
        driver.delete_network(first)
