"""The ipvlan driver with real namespaces and real packets.

This machine's kernel has no ipvlan: the refusal runs here, everything else under
Debian's kernel in the VM (``@pytest.mark.kernel("ipvlan")``). The LAN is the macvlan
tests' emulated one: a "switch" namespace with a bridge, a "host" namespace whose veth
``lan0`` is the parent and holds the host's LAN address, and a "server" namespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from cnm.controller import Controller
from cnm.errors import CNMError, Conflict, InvalidOption, KernelFeatureMissing
from netns_fixtures.netns import Namespace, unique_name, veth
from tests.integration import test_macvlan
from tests.integration.bridge_helpers import ping, ping_eventually, unique
from tests.integration.test_macvlan import (
    HOST_IP,
    LAN,
    PARENT,
    RANGE,
    ROUTER,
    SERVER,
    Lan,
    Trunk,
    ip_of,
    mac_inside,
    neighbour_mac,
    one_sentence,
    refused_cleanly,
    snapshot,
    vlan_of,
)

pytestmark = pytest.mark.root
lan = test_macvlan.lan  # the emulated LAN (a fixture)
trunk = test_macvlan.trunk  # the same with an 802.1q trunk (a fixture)


def ipvlan_network(lan: Lan, mode: str = "l2", flag: str = "bridge", ctl: Any = None,
                   **kwargs: Any) -> Any:
    options = {"parent": PARENT, "ipvlan_mode": mode, "ipvlan_flag": flag,
               **kwargs.pop("options", {})}
    if "subnet" not in kwargs:
        kwargs.update(subnet=LAN, gateway=ROUTER, ip_range=RANGE)
    return (ctl or lan.ctl).new_network(unique("iv"), "ipvlan", options=options, **kwargs)


def attach(net: Any, sb: Any, **kwargs: Any) -> Any:
    ep = net.create_endpoint(sb.name, **kwargs)
    ep.join(sb)
    return ep


@pytest.mark.kernel(absent="ipvlan")
def test_ipvlan_on_a_kernel_without_it_is_refused_in_one_sentence(lan: Lan) -> None:
    before = snapshot(lan)
    with pytest.raises(KernelFeatureMissing) as caught:
        ipvlan_network(lan)
    one_sentence(str(caught.value))
    assert "ipvlan module" in str(caught.value)
    assert snapshot(lan) == before  # no network, no claim, no probe interface left


@pytest.mark.kernel("ipvlan")
def test_l2_sandboxes_are_on_the_lan_with_the_parents_mac(lan: Lan) -> None:
    net = ipvlan_network(lan)
    a, b = lan.sandbox(), lan.sandbox()
    ep_a, ep_b = attach(net, a), attach(net, b)
    parent_mac = mac_inside(lan.host, PARENT)
    for sb, ep in ((a, ep_a), (b, ep_b)):
        assert ping_eventually(sb.netns_name, SERVER)
        assert mac_inside(sb) == parent_mac
        # The LAN's server sees one machine per address, all behind the parent's MAC.
        assert neighbour_mac(lan.server, ip_of(ep)) == parent_mac
    assert ping_eventually(a.netns_name, ip_of(ep_b))  # bridge flag: siblings talk
    assert f"default via {ROUTER} dev eth0" in a.run(["ip", "route"]).stdout
    assert "ipvlan  mode l2 bridge" in a.run(["ip", "-d", "link", "show", "eth0"]).stdout
    assert ep_a.operational_info()["IpvlanMode"] == "l2"
    # The switch learnt the parent's MAC and no MAC of the sandboxes' own (as macvlan's).
    learnt = lan.switch.run(["bridge", "fdb", "show", "br", "br0"]).stdout.lower()
    assert parent_mac in learnt and "02:42:" not in learnt


@pytest.mark.kernel("ipvlan")
def test_l2_private_flag_keeps_siblings_apart(lan: Lan) -> None:
    net = ipvlan_network(lan, flag="private")
    a, b = lan.sandbox(), lan.sandbox()
    attach(net, a)
    ep_b = attach(net, b)
    assert ping_eventually(a.netns_name, SERVER)
    assert not ping(a.netns_name, ip_of(ep_b), count=2)


@pytest.mark.kernel("ipvlan")
def test_l3_routes_between_two_hosts_subnets(lan: Lan, netns: Callable[..., Namespace]
                                             ) -> None:
    """Two hosts on one LAN, each with an l3 network of its own subnet (not the LAN's):
    the parents route, each host has a route to the other's subnet via its LAN address,
    the sandboxes have no gateway, and nothing answers ARP for them on the LAN."""
    host_b = netns("hostb")
    port = unique_name()
    veth(host_b, PARENT, lan.switch, port, "203.0.113.3/24")
    lan.switch.run(["ip", "link", "set", port, "master", "br0"], check=True)
    ctl_b = Controller(lan.store_url.replace("state.db", "state-b.db"), host_ns=host_b.path)
    try:
        net_a = ipvlan_network(lan, "l3", subnet="10.31.1.0/24")
        net_b = ipvlan_network(lan, "l3", ctl=ctl_b, subnet="10.31.2.0/24")
        a, b = lan.sandbox(), ctl_b.new_sandbox(unique("sb"))
        ep_a, ep_b = attach(net_a, a), attach(net_b, b)
        default = a.run(["ip", "route", "show", "default"]).stdout
        assert default.startswith("default dev eth0 ") and "via" not in default, default
        lan.host.run(["ip", "route", "add", "10.31.2.0/24", "via", "203.0.113.3"], check=True)
        host_b.run(["ip", "route", "add", "10.31.1.0/24", "via", HOST_IP], check=True)
        assert ping_eventually(a.netns_name, ip_of(ep_b))
        assert ping_eventually(b.netns_name, ip_of(ep_a))
        # No ARP, no broadcast for l3 children: a LAN machine that takes a's subnet as
        # on-link gets no answer; one with a host route to a via the parent's host does.
        lan.server.run(["ip", "route", "add", "10.31.1.0/24", "dev", "eth0"], check=True)
        assert not ping(lan.server.name, ip_of(ep_a), count=2)
        lan.server.run(["ip", "route", "add", f"{ip_of(ep_a)}/32", "via", HOST_IP],
                       check=True)
        assert ping_eventually(lan.server.name, ip_of(ep_a))
        for sb, ep in ((a, ep_a), (b, ep_b)):
            ep.leave()
            ep.delete()
            sb.delete()
    finally:
        ctl_b.cleanup_all()
        ctl_b.close()


@pytest.mark.kernel("ipvlan", "8021q")
def test_vlan_parent_is_made_used_and_removed(trunk: Trunk) -> None:
    lan = trunk.lan
    net = ipvlan_network(lan, options={"parent": "trunk0.10"})
    assert vlan_of(lan.host, "trunk0.10") == "10"
    a = lan.sandbox()
    ep = attach(net, a)
    assert ping_eventually(a.netns_name, SERVER)
    assert neighbour_mac(trunk.srv10, ip_of(ep)) == mac_inside(lan.host, "trunk0")
    ep.leave()
    ep.delete()
    net.delete()
    assert "trunk0.10" not in lan.host.links()


def _macvlan_child_on_the_parent(lan: Lan) -> Any:
    mv = lan.ctl.new_network(unique("mv"), "macvlan", subnet="198.51.100.0/24",
                             options={"parent": PARENT})
    attach(mv, lan.sandbox())
    return mv


BadCase = tuple[str, Callable[[Lan], Any], Callable[[Lan, Any], Any], type[CNMError], str]
BAD: list[BadCase] = [
    ("a MAC address asked for", lambda lan: ipvlan_network(lan),
     lambda lan, net: net.create_endpoint(unique("e"), mac="02:42:c0:00:02:63"),
     InvalidOption, "MAC address of their parent"),
    ("same parent, another mode", lambda lan: ipvlan_network(lan),
     lambda lan, _: ipvlan_network(lan, "l3", subnet="10.31.9.0/24"), Conflict, "l2 bridge"),
    ("same parent, another flag", lambda lan: ipvlan_network(lan),
     lambda lan, _: ipvlan_network(lan, flag="private", subnet="10.31.9.0/24"), Conflict,
     "same mode"),
    ("a parent that carries macvlan interfaces", _macvlan_child_on_the_parent,
     lambda lan, _: ipvlan_network(lan), Conflict, "cannot share a parent"),
    ("endpoint on the host's own address", lambda lan: ipvlan_network(lan),
     lambda lan, net: net.create_endpoint(unique("e"), ip=HOST_IP), Conflict,
     "belongs to the host"),
]


@pytest.mark.kernel("ipvlan")
@pytest.mark.parametrize(("what", "setup", "action", "error", "mentions"), BAD,
                         ids=[case[0] for case in BAD])
def test_bad_input_is_refused_clearly_and_leaves_nothing(
    lan: Lan, what: str, setup: Callable[[Lan], Any], action: Callable[[Lan, Any], Any],
    error: type[CNMError], mentions: str,
) -> None:
    refused_cleanly(lan, setup, action, error, mentions)


def test_options_are_refused_before_the_kernel_is_asked(lan: Lan) -> None:
    """Syntax needs no ipvlan in the kernel: refused here, with nothing made."""
    before = snapshot(lan)
    for options, mentions in (({"ipvlan_mode": "l4"}, "l2, l3, l3s"),
                              ({"ipvlan_flag": "open"}, "bridge, private, vepa"),
                              ({"parent": ""}, "-o parent=IFACE"),
                              ({"colour": "blue"}, "colour")):
        with pytest.raises(InvalidOption) as caught:
            ipvlan_network(lan, options=options)
        one_sentence(str(caught.value))
        assert mentions in str(caught.value)
    assert snapshot(lan) == before


def _lladdr(out: str, address: str) -> str | None:
    match = re.search(rf"^{re.escape(address)} .*lladdr ([0-9a-f:]{{17}})", out, re.M)
    return match.group(1) if match else None


@pytest.mark.kernel("ipvlan", "8021q")
def test_lab_07_macvlan_and_ipvlan_side_by_side(lab: Callable[..., Any]) -> None:
    handle = lab("labs/07-ipvlan/lab.yaml", name=unique_name())
    failed = [str(o) for o in handle.check() if not o.passed]
    assert not failed, failed
    host_mac = re.search(r"link/ether (\S+)",
                         handle.exec("host1", ["ip", "-o", "link", "show", "eth0"]).stdout)
    assert host_mac is not None
    seen10 = handle.exec("srv10", ["ip", "neigh"]).stdout
    seen20 = handle.exec("srv20", ["ip", "neigh"]).stdout
    # What the LAN sees: macvlan sandboxes with MACs of their own, ipvlan ones behind the
    # host's MAC (the checks above made both servers learn both of each).
    m1, m2 = _lladdr(seen10, "192.168.10.21"), _lladdr(seen10, "192.168.10.22")
    i1, i2 = _lladdr(seen20, "192.168.20.21"), _lladdr(seen20, "192.168.20.22")
    assert m1 and m2 and len({m1, m2, host_mac.group(1)}) == 3, seen10
    assert i1 == i2 == host_mac.group(1), seen20


def test_lab_vlan_ports_are_checked_before_anything_is_built() -> None:
    from netns_fixtures.lab.loader import LabFileError, load_text

    text = """
name: vlans
hosts: [{name: sw, kind: switch}, {name: a}, {name: b}]
links:
  - {endpoints: [a:eth0, sw:p1], vlan: 5000}
  - {endpoints: [a:eth1, b:eth0], trunk: [10]}
  - {endpoints: [b:eth1, sw:p2], vlan: 10, trunk: [10]}
"""
    with pytest.raises(LabFileError) as caught:
        load_text(text)
    message = str(caught.value)
    assert "<topology>:5: links[0].vlan: a VLAN id is a number between 1 and 4094" in message
    assert "<topology>:6: links[1].trunk: VLANs are set on a switch's port" in message
    assert "<topology>:7: links[2].trunk: a port is either an access port" in message


VLAN_SWITCH_LAB = """
name: LABNAME
hosts: [{name: sw, kind: switch}, {name: a, kind: server}, {name: b, kind: server}]
links:
  - {endpoints: [a:eth0, sw:p1], addresses: [10.77.0.1/24, null], vlan: 10}
  - {endpoints: [b:eth0, sw:p2], addresses: [10.77.0.2/24, null], vlan: 10}
expect:
  - {from: a, to: b}
"""


def _kernel_has_bridge_vlan_filtering() -> bool:
    ns = Namespace(unique_name())
    try:
        return ns.run(["ip", "link", "add", "pr0", "type", "bridge", "vlan_filtering", "1"],
                      check=False).returncode == 0
    finally:
        ns.delete()


def test_lab_switch_vlans_need_bridge_vlan_filtering(lab: Callable[..., Any],
                                                     tmp_path: Any) -> None:
    """A lab whose switch has VLAN ports comes up where the kernel has bridge VLAN
    filtering; elsewhere (this project's machines) it is refused in one sentence naming
    the feature, leaving nothing, rather than with a failed ``ip`` command line."""
    from tests.integration.test_labs import lab_objects, pycnm, unique_lab

    name = unique_lab()
    path = tmp_path / "lab.yaml"
    path.write_text(VLAN_SWITCH_LAB.replace("LABNAME", name))
    if _kernel_has_bridge_vlan_filtering():
        handle = lab(path, name=name)
        assert all(o.passed for o in handle.check())
        return
    result = pycnm("lab", "up", str(path), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING" \
        in result.stderr, result.stderr
    assert "sw:p1" in result.stderr and "Command" not in result.stderr, result.stderr
    assert lab_objects(name) == []
