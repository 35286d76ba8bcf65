"""Links, addresses and routes inside one namespace, through one netlink handle.

Callers open a handle with ``cnm.osl.iproute(ns)`` and pass it to these helpers, so an
operation that does several steps pays for one socket. Teardown helpers treat "already
gone" as success, as CNI's DEL does, so rollback and retries are safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import Conflict, KernelError, KernelFeatureMissing, NotFound
from cnm.osl import nlpack
from cnm.osl.netns import NetlinkHandle
from cnm.osl.rtnl import (
    CREATE,
    REPLACE,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    SET,
    Request,
    RequestFailed,
)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_FAMILY = {4: 2, 6: 10}  # AF_INET, AF_INET6


def kernel_error(exc: NetlinkError, what: str) -> KernelError:
    """Turn a netlink errno into a sentence naming what we tried."""
    return KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


_SIOCGIFINDEX = 0x8933


def link_index(ipr: NetlinkHandle, name: str) -> int | None:
    """Index of the link called ``name``, or None. One ioctl in the handle's namespace,
    else (an alternative name) one kernel-side netlink lookup, never a dump."""
    if len(name.encode()) < 16:
        try:
            reply = fcntl.ioctl(ipr.ioctl, _SIOCGIFINDEX, struct.pack("16si", name.encode(), 0))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise KernelError(f"look up link {name}: {exc.strerror}") from exc
        return int(struct.unpack("16si", reply)[1])
    try:
        reply = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(exc, f"look up link {name}") from exc
    return reply[0]["index"] if reply else None


def require_index(ipr: NetlinkHandle, name: str) -> int:
    index = link_index(ipr, name)
    if index is None:
        raise NotFound(f"interface {name} does not exist")
    return index


def link_info(ipr: NetlinkHandle, name: str) -> dict[str, Any] | None:
    """A few facts about a link (kind, master, mtu, mac, state), or None if absent."""
    try:
        if len(name.encode()) < 16:  # one lookup on the handle's own socket
            raw = ipr.rtnl.get_link(name)
            # pyroute2's decoder, only for a link that is there (a CLI that makes a new
            # bridge or deletes links never loads it: ~8 ms of imports)
            from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

            msg = ifinfmsg(raw)
            msg.decode()
        else:  # an alternative name: pyroute2 knows how to ask for one
            msg = ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(exc, f"look up link {name}") from exc
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    return {
        "index": msg["index"],
        "kind": linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None,
        "master": msg.get_attr("IFLA_MASTER"),
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "up": bool(msg["flags"] & 1),
        "link": msg.get_attr("IFLA_LINK"),
    }


def _link_error(exc: NetlinkError, what: str, ifname: str, kind: str | None) -> Exception:
    if exc.code == errno.EEXIST:
        return Conflict(f"{what}: interface {ifname} already exists")
    if exc.code == errno.EOPNOTSUPP:
        return KernelFeatureMissing(f"{what}: this kernel does not support {kind} interfaces")
    return kernel_error(exc, what)


def _add_link(ipr: NetlinkHandle, what: str, **spec: Any) -> None:
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        raise _link_error(exc, what, spec["ifname"], spec.get("kind")) from exc


_IFF_UP = 0x1
_ADDR_GEN_MODE_NONE = ("IFLA_AF_SPEC", {"attrs": [
    ("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]}),  # IN6_ADDR_GEN_MODE_NONE
]})


def _link_request(
    what: str, index: int = 0, attrs: Iterable[tuple[str, Any]] = (), up: bool | None = None
) -> Request:
    attrs = list(attrs)
    flags, change = ((_IFF_UP if up else 0), _IFF_UP) if up is not None else (0, 0)
    with contextlib.suppress(nlpack.NotPacked):  # packed by hand: ~20x cheaper
        return Request(nlpack.link(index, flags, change, attrs), RTM_NEWLINK, SET, what)
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"] = index
    if up is not None:
        msg["flags"], msg["change"] = flags, change
    msg["attrs"] = attrs
    return Request(msg, RTM_NEWLINK, SET, what)


def no_link_local_request(index: int) -> Request:
    """No IPv6 link-local address for this link, asked before it goes up: an interface
    coming up with one sends DAD, MLD and router solicitations, which a bridge floods to
    every port, so each attach would cost every other sandbox work (O(N) per attach)."""
    return _link_request(f"turn off IPv6 link-local on link {index}", index,
                         [_ADDR_GEN_MODE_NONE])


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    raw = bytearray(os.urandom(6))  # (as secrets.token_bytes, without importing hashlib)
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def ensure_bridge(ipr: NetlinkHandle, name: str, mtu: int | None = None,
                  link_local: bool = True, mcast_snooping: bool = True) -> int:
    """Create (or reuse) the bridge ``name``, up; return its index. ``link_local=False``: a
    new bridge gets no IPv6 link-local address (see no_link_local_request);
    ``mcast_snooping=False``: a new bridge floods multicast to every port and, not
    snooping, joins no multicast-router-discovery groups (so sends no IGMP/MLD reports).

    An existing link of the same name is reused only if it is a bridge (as flannel's
    ensure_link does); anything else is a conflict the user must resolve. A new bridge gets
    a MAC of its own, as Docker's do: otherwise the kernel gives it the lowest of its ports'
    MACs, which changes as ports come and go, and the sandboxes' ARP entries for their
    gateway go stale.
    """
    info = link_info(ipr, name)
    if info is not None and info["kind"] != "bridge":
        raise Conflict(f"interface {name} exists and is not a bridge ({info['kind'] or 'device'})")
    if info is None:
        # One request on the handle's own socket, as create_veth's.
        what = f"create bridge {name}"
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_ADDRESS", random_mac())]
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        kind: list[tuple[str, Any]] = [("IFLA_INFO_KIND", "bridge")]
        if not mcast_snooping:
            kind.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]}))
        attrs.append(("IFLA_LINKINFO", {"attrs": kind}))
        create = _link_request(what, attrs=attrs)
        create.flags = CREATE
        try:
            ipr.rtnl.run([create])
        except NetlinkError as exc:
            raise _link_error(exc, what, name, "bridge") from exc
    index = require_index(ipr, name)
    if info is None and not link_local:
        _run(ipr, [no_link_local_request(index)])
    _run(ipr, [_link_request(f"set {name} up", index, up=True)])
    return index


def create_veth(
    ipr: NetlinkHandle,
    host_name: str,
    peer_name: str,
    *,
    mtu: int | None = None,
    master: int | None = None,
    peer_mac: str | None = None,
    peer_netns_fd: int | None = None,
) -> int:
    """Create a veth pair, host end here, up (and enslaved); return its index.

    With ``peer_netns_fd`` the peer is born inside that namespace: no later move. The peer
    is born down (the kernel cannot bring up a veth whose pair is not made yet). The host
    end is a bridge port and needs no IPv6 address, so it gets none (see no_link_local_request).
    """
    what = f"create veth {host_name}"
    peer: list[tuple[str, Any]] = [("IFLA_IFNAME", peer_name)]
    attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", host_name)]
    if peer_netns_fd is not None:
        peer.append(("IFLA_NET_NS_FD", peer_netns_fd))
    if peer_mac:
        peer.append(("IFLA_ADDRESS", peer_mac))
    if mtu:
        peer.append(("IFLA_MTU", mtu))
        attrs.append(("IFLA_MTU", mtu))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    attrs.append(("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}),
    ]}))
    create = _link_request(what, attrs=attrs)
    create.flags = CREATE
    try:
        ipr.rtnl.run([create])
    except NetlinkError as exc:
        raise _link_error(exc, what, host_name, "veth") from exc
    try:
        index = require_index(ipr, host_name)
        _run(ipr, [no_link_local_request(index),
                   _link_request(f"set {host_name} up", index, up=True)])
    except BaseException:
        delete_link(ipr, host_name)  # never leave a half-made pair behind
        raise
    return index


def delete_link(ipr: NetlinkHandle, name: str) -> None:
    """Delete ``name``; already gone is success (found out with one ioctl, so that a
    retry's "remove any leftover" costs next to nothing)."""
    index = link_index(ipr, name)
    if index is None:
        return
    _run(ipr, [delete_request(index, name)])


def delete_request(index: int, name: str) -> Request:
    """A request deleting the link ``index`` (called ``name``); already gone is success."""
    return Request(nlpack.link(index, 0, 0, []), RTM_DELLINK, SET, f"delete {name}",
                   frozenset({errno.ENODEV, errno.ENOENT, errno.EINVAL}))


def move_link(ipr: NetlinkHandle, name: str, target_fd: int, new_name: str | None = None) -> None:
    """Move ``name`` into the namespace open on ``target_fd``, renaming it on the way."""
    index = require_index(ipr, name)
    spec: dict[str, Any] = {"index": index, "net_ns_fd": target_fd}
    if new_name:
        spec["ifname"] = new_name
    try:
        ipr.link("set", **spec)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise Conflict(f"an interface named {new_name or name} already exists there") from exc
        raise kernel_error(exc, f"move {name}") from exc


def configure(
    ipr: NetlinkHandle,
    index: int,
    *,
    addresses: Iterable[IPInterface] = (),
    mac: str | None = None,
    mtu: int | None = None,
    up: bool = True,
    link_local: bool = True,
    routes: Iterable[Request] = (),
) -> None:
    """Give a link its MAC, MTU and addresses, bring it up, then add ``routes``
    (``route_request``), all in one round trip. ``link_local=False``: no IPv6 link-local
    address (for an interface with no IPv6 to do; see no_link_local_request)."""
    requests: list[Request] = []
    settings: list[tuple[str, Any]] = []
    if mac:
        settings.append(("IFLA_ADDRESS", mac))
    if mtu:
        settings.append(("IFLA_MTU", mtu))
    if settings:
        requests.append(_link_request(f"set MAC/MTU of link {index}", index, settings))
    if not link_local:
        requests.append(no_link_local_request(index))
    requests.extend(address_request(index, iface) for iface in addresses)
    if up:
        requests.append(_link_request(f"set link {index} up", index, up=True))
    requests.extend(routes)
    _run(ipr, requests)


def address_request(index: int, iface: IPInterface, *, nodad: bool = True) -> Request:
    """A request adding ``iface`` to a link; the same address already there is success."""
    attrs: list[tuple[str, Any]] = [("IFA_ADDRESS", str(iface.ip))]
    if iface.version == 4:
        attrs.append(("IFA_LOCAL", str(iface.ip)))
    elif nodad:
        attrs.append(("IFA_FLAGS", 0x02))  # IFA_F_NODAD: usable now, not in 1-2 s
    body = nlpack.addr(_FAMILY[iface.version], iface.network.prefixlen, index, attrs)
    return Request(body, RTM_NEWADDR, CREATE, f"add address {iface}",
                   frozenset({errno.EEXIST}))


def add_address(ipr: NetlinkHandle, index: int, iface: IPInterface, *, nodad: bool = True) -> None:
    """Add ``iface`` to a link; the same address already there is success."""
    _run(ipr, [address_request(index, iface, nodad=nodad)])


def addresses(ipr: NetlinkHandle, index: int | None = None) -> list[IPInterface]:
    """Addresses on one link (or on every link)."""
    found: list[IPInterface] = []
    query: dict[str, Any] = {} if index is None else {"index": index}
    for msg in ipr.get_addr(**query):
        found.append(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return found


_RT_TABLE_MAIN, _RTPROT_STATIC, _RTN_UNICAST = 254, 4, 1


def route_request(
    destination: IPNetwork,
    *,
    gateway: IPAddress | None = None,
    oif: int | None = None,
    replace: bool = False,
) -> Request:
    """Add a route (an identical one already present is success), or with ``replace``
    add it or replace the one to the same destination."""
    attrs: list[tuple[str, Any]] = []
    if destination.prefixlen:
        attrs.append(("RTA_DST", str(destination.network_address)))
    if gateway is not None:
        attrs.append(("RTA_GATEWAY", str(gateway)))
    if oif is not None:
        attrs.append(("RTA_OIF", oif))
    body = nlpack.route(_FAMILY[destination.version], destination.prefixlen, _RT_TABLE_MAIN,
                        _RTPROT_STATIC, _RTN_UNICAST, attrs)
    via = f" via {gateway}" if gateway else ""
    if replace:
        return Request(body, RTM_NEWROUTE, REPLACE, f"set route {destination}{via}")
    return Request(body, RTM_NEWROUTE, CREATE, f"add route {destination}{via}",
                   frozenset({errno.EEXIST}))


def add_route(
    ipr: NetlinkHandle,
    destination: IPNetwork,
    *,
    gateway: IPAddress | None = None,
    oif: int | None = None,
) -> None:
    """Add a route; an identical route already present is success."""
    _run(ipr, [route_request(destination, gateway=gateway, oif=oif)])


def replace_route(
    ipr: NetlinkHandle, destination: IPNetwork, *, gateway: IPAddress | None = None,
    oif: int | None = None,
) -> None:
    """Add a route or replace the one to the same destination, in one request."""
    _run(ipr, [route_request(destination, gateway=gateway, oif=oif, replace=True)])


def _run(ipr: NetlinkHandle, requests: list[Request]) -> None:
    try:
        ipr.rtnl.run(requests)
    except RequestFailed as exc:
        raise kernel_error(exc, exc.request.what) from exc


def delete_route(
    ipr: NetlinkHandle, destination: IPNetwork, *, gateway: IPAddress | None = None
) -> None:
    spec: dict[str, Any] = {"dst": str(destination), "family": _FAMILY[destination.version]}
    if gateway is not None:
        spec["gateway"] = str(gateway)
    try:
        ipr.route("del", **spec)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise kernel_error(exc, f"delete route {destination}") from exc


def routed_prefixes(ipr: NetlinkHandle) -> list[IPNetwork]:
    """Every prefix this namespace routes or holds an address in (for IPAM's overlap check).

    Default routes are left out: they overlap everything and say nothing.
    """
    prefixes: list[IPNetwork] = []
    for family in (2, 10):
        for msg in ipr.get_routes(family=family, table=254):
            dst = msg.get_attr("RTA_DST")
            if dst is None or msg["dst_len"] == 0:
                continue
            prefixes.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
    for iface in addresses(ipr):
        if not iface.ip.is_loopback and not iface.ip.is_link_local:
            prefixes.append(iface.network)
    return prefixes
