"""The kernel side of an overlay network on one host.

Who does what: ``build``/``teardown`` make and remove the overlay namespace with its bridge
and VTEP; ``plug_veth``/``unplug_veth`` add and remove an endpoint's veth; a ``Forwarder``
holds one netlink socket inside the overlay namespace and programs the VTEP's forwarding
database (FDB) and neighbour table from a set of ``Remote`` endpoints. Nothing here knows
about the store.

Namespaces: the VXLAN device is created by a netlink socket that lives in the *host*
namespace with IFLA_NET_NS_FD pointing at the overlay namespace, so the device is born
inside the overlay namespace while its UDP socket (port 4789, bound to the VTEP address)
stays in the host namespace, on the underlay: no namespace move, and the host's routing
table carries the encapsulated packets.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections import Counter
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm import names
from cnm.errors import Conflict, InvalidOption, KernelError, KernelFeatureMissing
from cnm.osl import iproute, nlpack, reaper, rtnl
from cnm.osl import links as osl_links
from cnm.osl.netns import (
    NetlinkHandle,
    create_named_netns,
    delete_named_netns,
    named_netns_path,
    netns_exists,
    netns_fd,
    write_sysctl,
)

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
ZERO_MAC = "00:00:00:00:00:00"


def netns_name(vni: int, host_id: str, emulated: bool) -> str:
    """``pcov-<vni>``; on an emulated host (a host namespace shared with other emulated
    hosts on one machine, where /run/netns is common to all) ``pcov-<vni>-<host>``."""
    base = f"{names.OVERLAY_NETNS_PREFIX}{vni}"
    return f"{base}-{host_id}" if emulated else base


def vxlan_name(vni: int) -> str:
    return f"{names.VXLAN_PREFIX}{vni}"  # at most 13 characters: VNI < 2**24


# --- the underlay ------------------------------------------------------------------


@dataclass(frozen=True)
class Underlay:
    vtep: str  # this host's VTEP address
    ifname: str
    mtu: int


def _first_v4(ipr: NetlinkHandle, index: int) -> str | None:
    for msg in ipr.get_addr(family=socket.AF_INET, index=index):
        address = msg.get_attr("IFA_ADDRESS")
        if address and not ipaddress.ip_address(address).is_loopback:
            return str(address)
    return None


def _link(ipr: NetlinkHandle, index: int) -> tuple[str, int]:
    msg = ipr.link("get", index=index)[0]
    return msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_MTU")


def _owner_of(ipr: NetlinkHandle, address: str) -> int | None:
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg.get_attr("IFA_ADDRESS") == address:
            return msg["index"]
    return None


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def choose_vtep(host_ns: str | None, wanted: str | None, peers: Iterable[str] = ()) -> Underlay:
    """This host's VTEP address and the underlay interface and MTU behind it.

    ``wanted`` (the ``vtep`` option) is an address of this host or an interface holding
    one. Without it: the source address the host would use toward a known peer VTEP (a
    route lookup, nothing is sent); with no peer known yet, the address of the interface
    the default route leaves by; failing that, the host's only non-loopback IPv4 address.
    """
    with iproute(host_ns) as ipr:
        if wanted is not None:
            if not _is_ipv4(wanted):
                index = osl_links.link_index(ipr, wanted)
                if index is None:
                    raise InvalidOption(f"option vtep: this host has no interface {wanted}")
                address = _first_v4(ipr, index)
                if address is None:
                    raise InvalidOption(f"option vtep: interface {wanted} has no IPv4 address")
                return Underlay(address, *_link(ipr, index))
            index = _owner_of(ipr, wanted)
            if index is None:
                raise InvalidOption(f"option vtep: {wanted} is not an address of this host")
            return Underlay(wanted, *_link(ipr, index))
        for peer in peers:
            try:
                route = ipr.route("get", dst=peer)[0]
            except NetlinkError:
                continue  # no route to that peer: try the next one
            source, index = route.get_attr("RTA_PREFSRC"), route.get_attr("RTA_OIF")
            if source and index:
                return Underlay(source, *_link(ipr, index))
        for route in ipr.get_default_routes(family=socket.AF_INET, table=254):
            index = route.get_attr("RTA_OIF")
            source = route.get_attr("RTA_PREFSRC") or (_first_v4(ipr, index) if index else None)
            if source and index:
                return Underlay(source, *_link(ipr, index))
        candidates = {
            msg.get_attr("IFA_ADDRESS"): msg["index"]
            for msg in ipr.get_addr(family=socket.AF_INET)
            if not ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")).is_loopback
        }
        if len(candidates) == 1:
            address, index = candidates.popitem()
            return Underlay(address, *_link(ipr, index))
    raise InvalidOption(
        "cannot tell which address is this host's underlay (no default route and "
        f"{len(candidates)} candidate addresses): give -o vtep=ADDRESS or -o vtep=INTERFACE"
    )


# --- the overlay namespace, bridge and VTEP -----------------------------------------


def _vxlan_matches(msg: Any, vni: int, vtep: str) -> bool:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return False
    data = info.get_attr("IFLA_INFO_DATA")
    return (
        data is not None
        and data.get_attr("IFLA_VXLAN_ID") == vni
        and data.get_attr("IFLA_VXLAN_LOCAL") == vtep
        and data.get_attr("IFLA_VXLAN_PORT") == VXLAN_PORT
        and not data.get_attr("IFLA_VXLAN_LEARNING")
        and bool(data.get_attr("IFLA_VXLAN_PROXY"))
        and not data.get_attr("IFLA_VXLAN_UDP_CSUM")
    )


def _ensure_vxlan(host_ns: str | None, ns_path: str, vni: int, vtep: str, mtu: int) -> None:
    """Make the VTEP, or reuse one that matches (flannel's ensure_link on EEXIST): a device
    of that name with other settings is deleted and made again."""
    name = vxlan_name(vni)
    with iproute(ns_path) as ovl:
        try:
            existing = ovl.link("get", ifname=name)[0]
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise osl_links.kernel_error(exc, f"look up {name}") from exc
            existing = None
        if existing is not None:
            if _vxlan_matches(existing, vni, vtep):
                return
            osl_links.delete_link(ovl, name)
    spec = {
        "ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_local": vtep,
        "vxlan_port": VXLAN_PORT, "vxlan_learning": 0, "vxlan_proxy": 1, "mtu": mtu,
        # Outer UDP checksum zero, as RFC 7348 recommends for IPv4 and Docker does: the
        # inner frame carries its own checksums.
        "vxlan_udp_csum": 0,
    }
    with iproute(host_ns) as host, netns_fd(ns_path) as target:
        try:
            host.link("add", net_ns_fd=target, **spec)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise Conflict(
                    f"VXLAN id {vni} on UDP {VXLAN_PORT} is already in use on this host by "
                    "a device pycnm did not make for this network; remove it or choose "
                    "another -o vni="
                ) from exc
            if exc.code == errno.EOPNOTSUPP:
                raise KernelFeatureMissing("this kernel does not support VXLAN devices") \
                    from exc
            raise osl_links.kernel_error(exc, f"create VXLAN device {name}") from exc


def build(
    host_ns: str | None,
    ns_name: str,
    vni: int,
    vtep: str,
    mtu: int,
    gateways: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
) -> bool:
    """Make (or repair) the overlay namespace, br0 with the gateways, and the VTEP plugged
    into br0. Return whether the namespace was made now. On failure nothing new remains."""
    path = named_netns_path(ns_name)
    created = not netns_exists(path)
    if created:
        delete_named_netns(ns_name)  # a stale file left by a crash, if any
        create_named_netns(ns_name)
    gateways = list(gateways)
    # Whatever br0 and the VTEP send themselves, head-end replication carries to every
    # peer host. On an IPv4-only overlay br0 has no IPv6 to do, and the VTEP, a bridge
    # port, never has: without link-local addresses they send no DAD, MLD or router
    # solicitations. br0 does not snoop multicast (every multicast frame is replicated to
    # every peer anyway), so it joins no multicast-router-discovery groups and sends no
    # IGMP/MLD reports for them when its first port comes up.
    ipv6 = any(g.version == 6 for g in gateways)
    try:
        _bridge_skips_netfilter(path)
        with iproute(path) as ovl:
            ovl.link("set", index=1, state="up")
            bridge = osl_links.ensure_bridge(ovl, names.OVERLAY_BRIDGE, mtu, link_local=ipv6,
                                             mcast_snooping=False)
            osl_links.configure(ovl, bridge, addresses=gateways, mtu=mtu)
        _ensure_vxlan(host_ns, path, vni, vtep, mtu)
        with iproute(path) as ovl:
            index = osl_links.require_index(ovl, vxlan_name(vni))
            if not _is_up(ovl, index):
                osl_links.configure(ovl, index, up=False, link_local=False)
            ovl.link("set", index=index, master=bridge, mtu=mtu, state="up")
    except BaseException:
        if created:
            teardown(ns_name, vni)
        raise
    return created


def _is_up(ipr: NetlinkHandle, index: int) -> bool:
    return bool(ipr.link("get", index=index)[0]["flags"] & 1)  # IFF_UP


def _bridge_skips_netfilter(path: str) -> None:
    """No firewall lives in the overlay namespace, so frames crossing br0 need not visit
    the IP hooks (br_netfilter, when loaded, sends them there by default: a cost per
    packet for nothing)."""
    for table in ("iptables", "ip6tables", "arptables"):
        with contextlib.suppress(KernelError):  # br_netfilter not loaded: nothing to skip
            write_sysctl(path, f"net/bridge/bridge-nf-call-{table}", "0")


def teardown(ns_name: str, vni: int) -> None:
    """Remove the overlay namespace. Its links are deleted first, synchronously, so that
    the VNI's UDP socket is released at once (the kernel frees a namespace's devices
    lazily, and a VTEP made again right away would find the VNI still taken)."""
    path = named_netns_path(ns_name)
    if netns_exists(path):
        with iproute(path) as ovl:
            for msg in ovl.get_links():
                name = msg.get_attr("IFLA_IFNAME")
                if name != "lo":
                    osl_links.delete_link(ovl, name)
    delete_named_netns(ns_name)


def exists(ns_name: str, vni: int) -> bool:
    path = named_netns_path(ns_name)
    if not netns_exists(path):
        return False
    with iproute(path) as ovl:
        return osl_links.link_index(ovl, vxlan_name(vni)) is not None and \
            osl_links.link_index(ovl, names.OVERLAY_BRIDGE) is not None


def plug_veth(ovl: NetlinkHandle, host_veth: str, peer: str, peer_ns: str | None, mac: str,
              mtu: int) -> None:
    """A veth whose first end is a port of br0 in the overlay namespace (``ovl`` is a
    handle there) and whose peer is born in ``peer_ns`` (a sandbox, or the host namespace
    for Docker to move)."""
    with netns_fd(peer_ns) as target:
        bridge = osl_links.require_index(ovl, names.OVERLAY_BRIDGE)
        osl_links.delete_link(ovl, host_veth)  # a half-made pair from a retry
        osl_links.create_veth(
            ovl, host_veth, peer, mtu=mtu, master=bridge, peer_mac=mac, peer_netns_fd=target
        )


def unplug_veth(ns_name: str, host_veth: str) -> None:
    """Delete the endpoint's veth (its peer goes with it, wherever it is), off the
    caller's path: a veth's deletion costs the kernel an RCU grace period (see
    cnm.osl.reaper)."""
    path = named_netns_path(ns_name)
    if netns_exists(path):
        reaper.delete_later(path, host_veth)


def veth_present(ns_name: str, host_veth: str) -> bool:
    path = named_netns_path(ns_name)
    if not netns_exists(path):
        return False
    with iproute(path) as ovl:
        return osl_links.link_index(ovl, host_veth) is not None


# --- forwarding entries ----------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """An endpoint on another host, as far as this host's VTEP is concerned."""

    mac: str
    vtep: str
    ip: str | None = None
    ip6: str | None = None


@dataclass(frozen=True)
class Entries:
    """What the VTEP should hold: unicast FDB (MAC -> VTEP), flood list (peer VTEPs for the
    all-zero MAC: head-end replication) and neighbours (IP -> MAC)."""

    fdb: frozenset[tuple[str, str]]
    flood: frozenset[str]
    neigh: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, remotes: Iterable[Remote]) -> Entries:
        fdb, flood, neigh = set(), set(), set()
        for r in remotes:
            fdb.add((r.mac, r.vtep))
            flood.add(r.vtep)
            for ip in (r.ip, r.ip6):
                if ip:
                    neigh.add((ip, r.mac))
        return cls(frozenset(fdb), frozenset(flood), frozenset(neigh))


class Tally:
    """The entries of a set of remotes with how many of them give each, changed remote
    by remote: one endpoint event costs in proportion to itself, not to the overlay's
    size (a VTEP stays in the flood list while any remote endpoint is behind it; a MAC or
    an IP given by two remotes, as while one moves, stays while either does)."""

    def __init__(self) -> None:
        self.fdb: Counter[tuple[str, str]] = Counter()
        self.flood: Counter[str] = Counter()
        self.neigh: Counter[tuple[str, str]] = Counter()
        self.macs: Counter[str] = Counter()
        self.ips: Counter[str] = Counter()

    @classmethod
    def of(cls, remotes: Iterable[Remote]) -> Tally:
        tally = cls()
        for remote in remotes:
            tally.change(None, remote)
        return tally

    def entries(self) -> Entries:
        return Entries(frozenset(self.fdb), frozenset(self.flood), frozenset(self.neigh))

    def change(self, old: Remote | None, new: Remote | None) -> tuple[Entries, Entries]:
        """One remote replaced (None: none); the entries gone and the entries new."""
        before, after = _items(old), _items(new)
        fdb = _count(self.fdb, before[0], after[0])
        flood = _count(self.flood, before[1], after[1])
        neigh = _count(self.neigh, before[2], after[2])
        _count(self.macs, {mac for mac, _ in fdb[0]}, {mac for mac, _ in fdb[1]})
        _count(self.ips, {ip for ip, _ in neigh[0]}, {ip for ip, _ in neigh[1]})
        return (Entries(fdb[0], flood[0], neigh[0]), Entries(fdb[1], flood[1], neigh[1]))


def _count(counter: Counter[Any], before: set[Any], after: set[Any]
           ) -> tuple[frozenset[Any], frozenset[Any]]:
    """Take ``before`` out of ``counter`` and put ``after`` in; the items it no longer
    holds and those it holds now and did not."""
    gone, made = set(), set()
    for item in before - after:
        counter[item] -= 1
        if counter[item] <= 0:
            del counter[item]
            gone.add(item)
    for item in after - before:
        counter[item] += 1
        if counter[item] == 1:
            made.add(item)
    return frozenset(gone), frozenset(made)


class _Requests:
    """The netlink requests of one change of a VTEP's table, in order."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.requests: list[rtnl.Request] = []

    def neigh(self, what: str, kind: int, flags: int, tolerated: frozenset[int], ip: str,
              mac: str | None) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        attrs: list[tuple[str, Any]] = [("NDA_DST", ip)]
        if mac is not None:
            attrs.append(("NDA_LLADDR", mac))
        body = nlpack.neigh(family, self.index, NUD_PERMANENT, 0, attrs)
        self.requests.append(rtnl.Request(body, kind, flags, what, tolerated))

    def fdb(self, what: str, kind: int, flags: int, tolerated: frozenset[int], mac: str,
            vtep: str) -> None:
        body = nlpack.neigh(AF_BRIDGE, self.index, NUD_PERMANENT, NTF_SELF,
                            [("NDA_LLADDR", mac), ("NDA_DST", vtep)])
        self.requests.append(rtnl.Request(body, kind, flags, what, tolerated))


def _items(remote: Remote | None) -> tuple[set[Any], set[Any], set[Any]]:
    if remote is None:
        return set(), set(), set()
    return ({(remote.mac, remote.vtep)}, {remote.vtep},
            {(ip, remote.mac) for ip in (remote.ip, remote.ip6) if ip})


class Forwarder:
    """One overlay namespace's VTEP table writer, on one netlink socket."""

    def __init__(self, ns_name: str, vni: int) -> None:
        self.ns_name = ns_name
        self.vni = vni
        self._cm = iproute(named_netns_path(ns_name))
        self.ipr = self._cm.__enter__()
        try:
            self.index = osl_links.require_index(self.ipr, vxlan_name(vni))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def current(self) -> Entries:
        """What the VTEP holds now (permanent entries only: learning is off, so every
        entry on the device is one we wrote)."""
        fdb, flood, neigh = set(), set(), set()
        for msg in self.ipr.fdb("dump", ifindex=self.index):
            if msg["ifindex"] != self.index or not msg["flags"] & NTF_SELF:
                continue
            mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
            if not dst:
                continue
            if mac == ZERO_MAC:
                flood.add(dst)
            else:
                fdb.add((mac, dst))
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ipr.get_neighbours(family=family, ifindex=self.index):
                if msg["state"] & NUD_PERMANENT and msg.get_attr("NDA_LLADDR"):
                    neigh.add((msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")))
        return Entries(frozenset(fdb), frozenset(flood), frozenset(neigh))

    def apply(self, old: Entries, new: Entries) -> None:
        """Move the VTEP from ``old`` to ``new``: removals first, then additions, so that
        a MAC or IP that moved ends up pointing at its new place."""
        gone = Entries(old.fdb - new.fdb, old.flood - new.flood, old.neigh - new.neigh)
        made = Entries(new.fdb - old.fdb, new.flood - old.flood, new.neigh - old.neigh)
        self.change(gone, made, {ip for ip, _ in new.neigh}, {mac for mac, _ in new.fdb})

    def change(self, gone: Entries, made: Entries, kept_ips: Container[str],
               kept_macs: Container[str]) -> None:
        """Remove the entries ``gone`` and add those ``made``; a neighbour or a MAC that
        the VTEP still holds for another entry (``kept_ips``, ``kept_macs``: those of
        every entry it holds afterwards) is replaced, not deleted. The requests go to
        the kernel in one datagram, packed by hand (``cnm.osl.nlpack``): through
        pyroute2's IPRoute each cost ~0.3-0.5 ms of Python, per endpoint event, on
        every host."""
        tolerate = frozenset((errno.ENOENT, errno.ESRCH, errno.EINVAL))
        batch = _Requests(self.index)
        for ip, _mac in gone.neigh:
            if ip not in kept_ips:
                batch.neigh(f"delete neighbour {ip}", rtnl.RTM_DELNEIGH, rtnl.SET, tolerate,
                          ip, None)
        for mac, vtep in gone.fdb:
            if mac not in kept_macs:
                batch.fdb(f"delete FDB {mac}", rtnl.RTM_DELNEIGH, rtnl.SET, tolerate, mac, vtep)
        for vtep in gone.flood:
            batch.fdb(f"delete flood entry {vtep}", rtnl.RTM_DELNEIGH, rtnl.SET, tolerate,
                    ZERO_MAC, vtep)
        for mac, vtep in made.fdb:
            batch.fdb(f"add FDB {mac} -> {vtep}", rtnl.RTM_NEWNEIGH, rtnl.REPLACE, frozenset(),
                    mac, vtep)
        for vtep in made.flood:
            batch.fdb(f"add flood entry {vtep}", rtnl.RTM_NEWNEIGH, rtnl.APPEND,
                    frozenset((errno.EEXIST,)), ZERO_MAC, vtep)
        for ip, mac in made.neigh:
            batch.neigh(f"add neighbour {ip} -> {mac}", rtnl.RTM_NEWNEIGH, rtnl.REPLACE,
                      frozenset(), ip, mac)
        try:
            self.ipr.rtnl.run(batch.requests)
        except rtnl.RequestFailed as exc:
            raise KernelError(f"{exc.request.what} on {vxlan_name(self.vni)}: "
                              f"{os.strerror(exc.code)}") from exc

    def sync(self, remotes: Iterable[Remote]) -> Entries:
        """Make the VTEP hold exactly the entries for ``remotes``; return them."""
        wanted = Entries.of(remotes)
        self.apply(self.current(), wanted)
        return wanted
