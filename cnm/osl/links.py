"""Links, addresses and routes inside one namespace, through one netlink handle.

Callers open a handle with ``cnm.osl.iproute(ns)`` and pass it to these helpers, so an
operation that does several steps pays for one socket. Teardown helpers treat "already
gone" as success, as CNI's DEL does, so rollback and retries are safe.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import Conflict, KernelError, KernelFeatureMissing, NotFound

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_FAMILY = {4: 2, 6: 10}  # AF_INET, AF_INET6


def kernel_error(exc: NetlinkError, what: str) -> KernelError:
    """Turn a netlink errno into a sentence naming what we tried."""
    return KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


_SIOCGIFINDEX = 0x8933


def link_index(ipr: IPRoute, name: str) -> int | None:
    """Index of the link called ``name``, or None. One ioctl in the handle's namespace
    (see ``cnm.osl.netns.iproute``), else one kernel-side netlink lookup, never a dump."""
    helper = getattr(ipr, "pycnm_ioctl", None)
    if helper is not None and len(name.encode()) < 16:
        try:
            reply = fcntl.ioctl(helper, _SIOCGIFINDEX, struct.pack("16si", name.encode(), 0))
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


def require_index(ipr: IPRoute, name: str) -> int:
    index = link_index(ipr, name)
    if index is None:
        raise NotFound(f"interface {name} does not exist")
    return index


def link_info(ipr: IPRoute, name: str) -> dict[str, Any] | None:
    """A few facts about a link (kind, master, mtu, mac, state), or None if absent."""
    try:
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


def _add_link(ipr: IPRoute, what: str, **spec: Any) -> None:
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise Conflict(f"{what}: interface {spec['ifname']} already exists") from exc
        if exc.code == errno.EOPNOTSUPP:
            raise KernelFeatureMissing(
                f"{what}: this kernel does not support {spec.get('kind')} interfaces"
            ) from exc
        raise kernel_error(exc, what) from exc


def ensure_bridge(ipr: IPRoute, name: str, mtu: int | None = None) -> int:
    """Create (or reuse) the bridge ``name``, up; return its index.

    An existing link of the same name is reused only if it is a bridge (as flannel's
    ensure_link does); anything else is a conflict the user must resolve.
    """
    info = link_info(ipr, name)
    if info is not None and info["kind"] != "bridge":
        raise Conflict(f"interface {name} exists and is not a bridge ({info['kind'] or 'device'})")
    if info is None:
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu:
            spec["mtu"] = mtu
        _add_link(ipr, f"create bridge {name}", **spec)
    index = require_index(ipr, name)
    ipr.link("set", index=index, state="up")
    return index


def create_veth(
    ipr: IPRoute,
    host_name: str,
    peer_name: str,
    *,
    mtu: int | None = None,
    master: int | None = None,
    peer_mac: str | None = None,
    peer_netns_fd: int | None = None,
) -> int:
    """Create a veth pair, host end here, up (and enslaved); return its index.

    With ``peer_netns_fd`` the peer is born inside that namespace: no later move.
    """
    peer: dict[str, Any] = {"ifname": peer_name}
    if peer_netns_fd is not None:
        peer["net_ns_fd"] = peer_netns_fd
        peer["state"] = "up"  # born up inside the sandbox: one request fewer there
    spec: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer}
    if mtu:
        spec["mtu"] = mtu
        peer["mtu"] = mtu
    if peer_mac:
        peer["address"] = peer_mac
    if master is not None:
        spec["master"] = master  # enslaved and up in the same request: no second round trip
    spec["state"] = "up"
    _add_link(ipr, f"create veth {host_name}", **spec)
    return require_index(ipr, host_name)


def delete_link(ipr: IPRoute, name: str) -> None:
    """Delete ``name``; already gone is success."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            raise kernel_error(exc, f"delete {name}") from exc


def move_link(ipr: IPRoute, name: str, target_fd: int, new_name: str | None = None) -> None:
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
    ipr: IPRoute,
    index: int,
    *,
    addresses: Iterable[IPInterface] = (),
    mac: str | None = None,
    mtu: int | None = None,
    up: bool = True,
) -> None:
    """Give a link its MAC, MTU and addresses, then bring it up."""
    settings: dict[str, Any] = {"index": index}
    if mac:
        settings["address"] = mac
    if mtu:
        settings["mtu"] = mtu
    if len(settings) > 1:
        ipr.link("set", **settings)
    for iface in addresses:
        add_address(ipr, index, iface)
    if up:
        ipr.link("set", index=index, state="up")


def add_address(ipr: IPRoute, index: int, iface: IPInterface, *, nodad: bool = True) -> None:
    """Add ``iface`` to a link; the same address already there is success."""
    spec: dict[str, Any] = {
        "index": index,
        "address": str(iface.ip),
        "prefixlen": iface.network.prefixlen,
    }
    if iface.version == 6 and nodad:
        spec["flags"] = 0x02  # IFA_F_NODAD: usable at once, no 1-2 s tentative period
    try:
        ipr.addr("add", **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise kernel_error(exc, f"add address {iface}") from exc


def addresses(ipr: IPRoute, index: int | None = None) -> list[IPInterface]:
    """Addresses on one link (or on every link)."""
    found: list[IPInterface] = []
    query: dict[str, Any] = {} if index is None else {"index": index}
    for msg in ipr.get_addr(**query):
        found.append(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return found


def _route_spec(
    destination: IPNetwork, gateway: IPAddress | None, oif: int | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"dst": str(destination), "family": _FAMILY[destination.version]}
    if gateway is not None:
        spec["gateway"] = str(gateway)
    if oif is not None:
        spec["oif"] = oif
    return spec


def add_route(
    ipr: IPRoute,
    destination: IPNetwork,
    *,
    gateway: IPAddress | None = None,
    oif: int | None = None,
) -> None:
    """Add a route; an identical route already present is success."""
    try:
        ipr.route("add", **_route_spec(destination, gateway, oif))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            via = f" via {gateway}" if gateway else ""
            raise kernel_error(exc, f"add route {destination}{via}") from exc


def replace_route(
    ipr: IPRoute, destination: IPNetwork, *, gateway: IPAddress | None = None,
    oif: int | None = None,
) -> None:
    """Add a route or replace the one to the same destination, in one request."""
    try:
        ipr.route("replace", **_route_spec(destination, gateway, oif))
    except NetlinkError as exc:
        raise kernel_error(exc, f"set route {destination}") from exc


def delete_route(ipr: IPRoute, destination: IPNetwork, *, gateway: IPAddress | None = None) -> None:
    spec: dict[str, Any] = {"dst": str(destination), "family": _FAMILY[destination.version]}
    if gateway is not None:
        spec["gateway"] = str(gateway)
    try:
        ipr.route("del", **spec)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise kernel_error(exc, f"delete route {destination}") from exc


def routed_prefixes(ipr: IPRoute) -> list[IPNetwork]:
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
