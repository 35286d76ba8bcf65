"""The requests pycnm packs by hand (cnm.osl.nlpack) are byte for byte what pyroute2's
message classes encode for the same fields and attributes; what it does not know goes
to pyroute2 as before. (The kernel's answer to them is exercised by the integration
tests: test_osl_links, test_bridge.)"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cnm.osl import links, nlpack
from cnm.osl.rtnl import Request


def _pyroute2(msg: Any) -> bytes:
    """What pyroute2 encodes after the 16-byte netlink header."""
    header = msg["header"]
    header["type"], header["flags"], header["sequence_number"], header["pid"] = 16, 5, 1, 0
    msg.encode()
    return bytes(msg.data[16:])


def _link(index: int, attrs: list[tuple[str, Any]], up: bool | None = None) -> bytes:
    msg = ifinfmsg()
    msg["index"] = index
    if up is not None:
        msg["flags"], msg["change"] = int(up), 1
    msg["attrs"] = copy.deepcopy(attrs)  # (pyroute2 adds headers to the nests it encodes)
    return _pyroute2(msg)


VETH = ("IFLA_LINKINFO", {"attrs": [
    ("IFLA_INFO_KIND", "veth"),
    ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
        ("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", 7), ("IFLA_ADDRESS", "02:42:0a:00:00:02"),
        ("IFLA_MTU", 1450)]})]}),
]})
LINKS = {
    "veth with a peer born inside": (0, [("IFLA_IFNAME", "pcv-0123456789a"), ("IFLA_MTU", 1450),
                                         ("IFLA_MASTER", 5), VETH]),
    "veth, nothing optional": (0, [("IFLA_IFNAME", "pcv-b"), ("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [
            ("VETH_INFO_PEER", {"attrs": [("IFLA_IFNAME", "pcp-b")]})]})]})]),
    "bridge with a MAC": (0, [("IFLA_IFNAME", "pcbr-0123456789"),
                              ("IFLA_ADDRESS", "02:ab:cd:ef:01:23"),
                              ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]),
    "no IPv6 link-local": (9, [("IFLA_AF_SPEC", {"attrs": [
        ("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})]),
    "MAC and MTU": (12, [("IFLA_ADDRESS", "02:42:0a:00:00:09"), ("IFLA_MTU", 9000)]),
    "a link group": (4, [("IFLA_GROUP", 0x7FFF1234)]),
    "nothing": (3, []),
}


@pytest.mark.parametrize("case", sorted(LINKS))
@pytest.mark.parametrize("up", [None, True, False])
def test_link_requests_pack_as_pyroute2_encodes_them(case: str, up: bool | None) -> None:
    index, attrs = LINKS[case]
    request = links._link_request("test", index, attrs, up=up)
    assert isinstance(request.msg, bytes)
    assert request.msg == _link(index, attrs, up)
    # a nest pyroute2 has encoded once (it adds its header) packs the same
    encoded = copy.deepcopy(attrs)
    msg = ifinfmsg()
    msg["index"], msg["attrs"] = index, encoded
    _pyroute2(msg)
    assert links._link_request("test", index, encoded, up=up).msg == request.msg


@pytest.mark.parametrize("iface", ["10.0.0.2/16", "192.0.2.1/32", "fd00::5/64", "2001:db8::1/128"])
@pytest.mark.parametrize("nodad", [True, False])
def test_address_requests_pack_as_pyroute2_encodes_them(iface: str, nodad: bool) -> None:
    parsed = ipaddress.ip_interface(iface)
    request = links.address_request(9, parsed, nodad=nodad)
    msg = ifaddrmsg()
    msg["family"] = 2 if parsed.version == 4 else 10
    msg["prefixlen"], msg["index"] = parsed.network.prefixlen, 9
    msg["attrs"] = [("IFA_ADDRESS", str(parsed.ip))]
    if parsed.version == 4:
        msg["attrs"].append(("IFA_LOCAL", str(parsed.ip)))
    elif nodad:
        msg["attrs"].append(("IFA_FLAGS", 2))
    assert request.msg == _pyroute2(msg)


@pytest.mark.parametrize(("destination", "gateway", "oif"), [
    ("0.0.0.0/0", "10.0.0.1", 9), ("::/0", "fd00::1", 9), ("10.5.0.0/16", "10.0.0.9", None),
    ("192.168.7.0/24", None, 4), ("2001:db8:1::/48", None, 4),
])
@pytest.mark.parametrize("replace", [False, True])
def test_route_requests_pack_as_pyroute2_encodes_them(destination: str, gateway: str | None,
                                                      oif: int | None, replace: bool) -> None:
    net = ipaddress.ip_network(destination)
    via = ipaddress.ip_address(gateway) if gateway else None
    request = links.route_request(net, gateway=via, oif=oif, replace=replace)
    msg = rtmsg()
    msg["family"], msg["dst_len"] = (2 if net.version == 4 else 10), net.prefixlen
    msg["table"], msg["proto"], msg["type"] = 254, 4, 1
    msg["attrs"] = ([("RTA_DST", str(net.network_address))] if net.prefixlen else []) + (
        [("RTA_GATEWAY", gateway)] if gateway else []) + ([("RTA_OIF", oif)] if oif else [])
    assert request.msg == _pyroute2(msg)


@pytest.mark.parametrize("attrs", [
    [("IFLA_IFNAME", "br0"), ("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "bridge"),
        ("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]})]})],
    [("IFLA_IFNAME", "vx0"), ("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": [
            ("VETH_INFO_PEER", {"attrs": []})]})]})],
    [("IFLA_TXQLEN", 100)],
    [("IFLA_MTU", -1)],
], ids=["bridge-data", "data-of-another-kind", "unknown-attribute", "bad-value"])
def test_what_it_does_not_pack_goes_to_pyroute2(attrs: list[tuple[str, Any]]) -> None:
    with pytest.raises(nlpack.NotPacked):
        nlpack.link(0, 0, 0, attrs)
    request = links._link_request("test", 0, attrs)
    assert isinstance(request, Request) and not isinstance(request.msg, bytes)


@pytest.mark.parametrize(("family", "state", "flags", "attrs"), [
    (2, 0x80, 0, [("NDA_DST", "10.0.0.2"), ("NDA_LLADDR", "02:42:0a:00:00:02")]),
    (10, 0x80, 0, [("NDA_DST", "fd00::2"), ("NDA_LLADDR", "02:42:0a:00:00:02")]),
    (2, 0x80, 0, [("NDA_DST", "10.0.0.2")]),  # a neighbour to delete
    (7, 0x80, 2, [("NDA_LLADDR", "00:00:00:00:00:00"), ("NDA_DST", "192.168.1.2")]),  # FDB
])
def test_neighbours_and_forwarding_entries_pack_as_pyroute2_encodes_them(
        family: int, state: int, flags: int, attrs: list[tuple[str, Any]]) -> None:
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"], msg["flags"] = family, 9, state, flags
    msg["attrs"] = list(attrs)
    assert nlpack.neigh(family, 9, state, flags, attrs) == _pyroute2(msg)


def test_deletes_and_link_groups_pack_as_pyroute2_encodes_them() -> None:
    """The link reaper's requests (its group for a batch, the group's deletion) and a
    link's deletion: packed by hand, so a CLI never imports pyroute2's ifinfmsg for them."""
    assert links.delete_request(7, "pcv-x").msg == _link(7, [])
    assert nlpack.link(7, 0, 0, [("IFLA_GROUP", 0x40000005)]) == _link(
        7, [("IFLA_GROUP", 0x40000005)])
    assert nlpack.link(0, 0, 0, [("IFLA_GROUP", 0x7FFFFFFF)]) == _link(
        0, [("IFLA_GROUP", 0x7FFFFFFF)])
