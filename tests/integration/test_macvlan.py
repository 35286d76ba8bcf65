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
        host_addresses(lan),
        lan.host.run(["ip", "route"]).stdout,
        records,
        held,
    )


def host_addresses(lan: Lan) -> list[str]:
    """The host's addresses, without the kernel's own IPv6 link-local ones: those come
    and change state (tentative, then not) on their own schedule after a link comes up,
    so they tell nothing about what a failed call left behind."""
    lines = lan.host.run(["ip", "-o", "addr"]).stdout.splitlines()
    return [line for line in lines if " inet6 fe80:" not in line]


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


# --- 802.1q (Debian's kernel has it; this machine's does not: these run in the VM) --------

VLAN = f"{PARENT}.7"
OTHER_LAN = "198.51.100.0/24"  # a second subnet on the same VLAN parent
SERVER_20 = "198.51.100.10"  # VLAN 20's server ...
SERVER_20_IN_10 = "203.0.113.20"  # ... also holds an address in VLAN 10's subnet


def vlan_of(node: Namespace, name: str) -> str | None:
    """The 802.1q id of link ``name`` in ``node`` (and that it is a VLAN at all)."""
    out = node.run(["ip", "-d", "-o", "link", "show", name], check=False).stdout
    match = re.search(r"vlan protocol 802\.1Q id (\d+)", out)
    return match.group(1) if match else None


@pytest.mark.kernel("8021q")
def test_vlan_parent_is_made_on_first_use_shared_and_removed_with_the_last(lan: Lan) -> None:
    first = lan.network(options={"parent": VLAN})
    assert vlan_of(lan.host, VLAN) == "7"
    assert f"{VLAN}@{PARENT}" in lan.host.run(["ip", "-o", "link", "show", VLAN]).stdout
    second = lan.network(subnet=OTHER_LAN, gateway="198.51.100.1", options={"parent": VLAN})
    assert host_links(lan).count(VLAN) == 1  # shared, not made twice
    a = lan.sandbox()
    ep = lan.attach(second, a)
    index = lan.host.run(["ip", "-o", "link", "show", VLAN]).stdout.split(":")[0]
    assert f"eth0@if{index}:" in a.run(["ip", "-o", "link", "show", "eth0"]).stdout
    first.delete()
    assert VLAN in host_links(lan)  # the second network still uses it
    ep.leave()
    ep.delete()
    second.delete()
    assert VLAN not in host_links(lan)
    assert lan.ctl.driver("macvlan").ctx.store.list("parents/") == []


@pytest.mark.kernel("8021q")
def test_a_vlan_sub_interface_the_user_made_is_used_and_kept(lan: Lan) -> None:
    lan.host.run(["ip", "link", "add", "link", PARENT, "name", VLAN, "type", "vlan", "id",
                  "7"], check=True)
    net = lan.network(options={"parent": VLAN})
    net.delete()
    assert vlan_of(lan.host, VLAN) == "7"  # not ours to delete
    lan.host.run(["ip", "link", "del", VLAN], check=True)


@pytest.mark.kernel("8021q")
def test_a_vlan_parent_on_a_missing_interface_is_refused_and_leaves_nothing(lan: Lan) -> None:
    before = snapshot(lan)
    with pytest.raises(NotFound) as caught:
        lan.network(options={"parent": "nosuch0.7"})
    one_sentence(str(caught.value))
    assert "nosuch0" in str(caught.value) and "VLAN 7" in str(caught.value)
    assert snapshot(lan) == before


@pytest.mark.kernel(absent="8021q")
def test_a_vlan_parent_without_8021q_is_refused_in_one_sentence(lan: Lan) -> None:
    before = snapshot(lan)
    with pytest.raises(KernelFeatureMissing) as caught:
        lan.network(options={"parent": VLAN})
    message = str(caught.value)
    one_sentence(message)
    assert "8021q" in message and "802.1q" in message
    assert snapshot(lan) == before  # no sub-interface, no network, no claim


@dataclass
class Trunk:
    """host --lan0 (trunk)-- [switch: lan0 port; .10 -> br10 -- srv10; .20 -> br20 -- srv20]"""

    lan: Lan
    srv10: Namespace
    srv20: Namespace


@pytest.fixture
def trunk(lan: Lan, netns: Callable[..., Namespace]) -> Trunk:
    """An emulated 802.1q trunk: the host's parent ``lan0`` is a veth into a "switch"
    namespace, where VLAN sub-interfaces 10 and 20 of its end each feed a bridge with a
    server on it (access ports). VLAN 20's server also holds an address in VLAN 10's
    subnet: only the VLAN keeps VLAN 10's machines from reaching it."""
    switch = lan.switch
    port = unique_name()
    veth(lan.host, "trunk0", switch, port)  # a second veth from the host: the trunk
    servers = []
    for vid, address in ((10, SERVER), (20, f"{SERVER_20}/24")):
        bridge_name, sub = f"br{vid}", f"{port}.{vid}"
        switch.run(["ip", "link", "add", "link", port, "name", sub, "type", "vlan", "id",
                    str(vid)], check=True)
        switch.run(["ip", "link", "add", bridge_name, "type", "bridge"], check=True)
        server = netns(f"srv{vid}")
        access = unique_name()
        veth(server, "eth0", switch, access, address if "/" in address else f"{address}/24")
        for link in (sub, access):
            switch.run(["ip", "link", "set", link, "master", bridge_name, "up"], check=True)
        switch.run(["ip", "link", "set", bridge_name, "up"], check=True)
        servers.append(server)
    servers[1].run(["ip", "addr", "add", f"{SERVER_20_IN_10}/24", "dev", "eth0"], check=True)
    return Trunk(lan, *servers)


def _learnt_on(switch: Namespace, bridge_name: str) -> str:
    return switch.run(["bridge", "fdb", "show", "br", bridge_name]).stdout.lower()


@pytest.mark.kernel("8021q")
def test_vlan_traffic_reaches_its_own_vlan_only(trunk: Trunk) -> None:
    lan = trunk.lan
    v10 = lan.network(options={"parent": "trunk0.10"})
    v20 = lan.network(subnet=OTHER_LAN, gateway="198.51.100.1",
                      options={"parent": "trunk0.20"})
    a, b = lan.sandbox(), lan.sandbox()
    ep_a, ep_b = lan.attach(v10, a), lan.attach(v20, b)
    assert ping_eventually(a.netns_name, SERVER)
    assert ping_eventually(b.netns_name, SERVER_20)
    # The frames crossed the trunk tagged: each switch VLAN learnt only its own sandbox.
    assert ep_a.record.mac in _learnt_on(lan.switch, "br10")
    assert ep_a.record.mac not in _learnt_on(lan.switch, "br20")
    assert ep_b.record.mac in _learnt_on(lan.switch, "br20")
    assert neighbour_mac(trunk.srv10, ip_of(ep_a)) == ep_a.record.mac
    # An address of a's own subnet, but on VLAN 20: unreachable (ARP stays in VLAN 10).
    assert not ping(a.netns_name, SERVER_20_IN_10, count=2)
    assert neighbour_mac(trunk.srv20, ip_of(ep_a), deadline=0.5) is None


@pytest.mark.kernel("8021q")
def test_reconcile_restores_a_vanished_vlan_sub_interface(trunk: Trunk) -> None:
    lan = trunk.lan
    net = lan.network(options={"parent": "trunk0.10"})
    a = lan.sandbox()
    ep = lan.attach(net, a)
    assert ping_eventually(a.netns_name, SERVER)
    # Someone deletes the sub-interface: the kernel takes its macvlan children with it.
    lan.host.run(["ip", "link", "del", "trunk0.10"], check=True)
    assert a.run(["ip", "link", "show", "eth0"], check=False).returncode != 0
    with Controller(lan.store_url, host_ns=lan.host.path) as restarted:
        assert restarted.last_reconcile == []
    assert vlan_of(lan.host, "trunk0.10") == "10"
    assert ping_eventually(a.netns_name, SERVER)
    assert mac_inside(a) == ep.record.mac
    net_id = net.id
    ep.leave()
    ep.delete()
    net.delete()
    assert "trunk0.10" not in host_links(lan), net_id


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
    refused_cleanly(lan, setup, action, error, mentions)


def refused_cleanly(lan: Lan, setup: Callable[[Lan], Any], action: Callable[[Lan, Any], Any],
                    error: type[CNMError], mentions: str) -> None:
    """After ``setup``, ``action`` fails with ``error`` in one sentence that mentions
    ``mentions``, and leaves the host and the store as they were."""
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
