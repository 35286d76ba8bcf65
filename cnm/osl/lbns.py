"""The kernel side of a network's load balancer on one host (libnetwork's ``lb-NETWORK``).

A load-balancer namespace ``pclb-<nid:10>`` (``pclb-<nid:10>-<host>`` on an emulated
host, whose /run/netns every emulated host shares) forwards (``ip_forward=1``) and holds:

- ``eth0``: its leg on the network, an ordinary endpoint the network's driver made (so
  every driver works, and on an overlay other hosts learn its address and MAC), with
  the leg's own address and each virtual IP as a /32: clients on the network ARP for a
  VIP and reach this namespace, where nftables spreads the connections;
- ``ig0`` (only while a service of the network publishes ports): a veth to the host
  (``pcig-<nid:10>`` there). The host's end has ``169.254.0.1/32`` and a /32 route to
  each VIP; the namespace's end ``169.254.0.2/32`` and its default route back through
  it, for the replies to clients outside (Docker's ingress_sbox on docker_gwbridge).

Also here: how many TCP connections a backend still serves (for draining on detach).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from pyroute2.netlink.exceptions import NetlinkError

from cnm import names
from cnm.osl import links, nft
from cnm.osl.netns import (
    create_named_netns,
    delete_named_netns,
    in_netns,
    iproute,
    named_netns_path,
    netns_exists,
    netns_fd,
    write_sysctl,
)

LB_NETNS_PREFIX = names.LB_NETNS_PREFIX
INGRESS_PREFIX = names.INGRESS_PREFIX
LEG = "eth0"
INGRESS_INSIDE = "ig0"
HOST_LINK_ADDRESS = ipaddress.IPv4Interface("169.254.0.1/32")
LB_LINK_ADDRESS = ipaddress.IPv4Interface("169.254.0.2/32")
_SCOPE_LINK = 253
# TCP states in which a connection may still carry the service's data (see tcp_states.h):
# ESTABLISHED, SYN_RECV, FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING.
_BUSY_STATES = {"01", "03", "04", "08", "09", "0B"}

IPv4 = ipaddress.IPv4Address


@contextmanager
def lock(host_ns: str | None) -> Iterator[None]:
    """Serialise read-the-store-then-load for one host's load balancers across processes
    and threads: the host namespace's rules lock (``nft.ruleset_lock``, taken on the
    namespace itself, so no lock file is left behind per emulated host ever used)."""
    with nft.ruleset_lock(host_ns):
        yield


def netns_name(network_id: str, host_id: str, emulated: bool) -> str:
    base = LB_NETNS_PREFIX + names.short(network_id, names.KERNEL_ID_CHARS)
    return f"{base}-{host_id}" if emulated else base


def ingress_name(network_id: str) -> str:
    return INGRESS_PREFIX + names.short(network_id, names.KERNEL_ID_CHARS)


def create(name: str, parent: str | None) -> str:
    """Make the namespace (loopback up, forwarding on, no ICMP redirects) unless it
    exists; its path."""
    path = named_netns_path(name)
    if netns_exists(path):
        write_sysctl(path, "net/ipv4/ip_forward", "1")
    else:
        create_named_netns(name, parent, loopback_up=True, forwarding=True)
    # It forwards back out the leg a packet came in by (one-armed, as an LVS director in
    # NAT mode): the kernel would tell each client, by ICMP redirect, to skip it. "all"
    # and the leg's own setting are ORed; the leg takes "default" when it moves in.
    for scope in ("all", "default", *([LEG] if leg_present(path) else [])):
        write_sysctl(path, f"net/ipv4/conf/{scope}/send_redirects", "0")
    return path


def remove(name: str) -> None:
    delete_named_netns(name)


def leg_present(path: str) -> bool:
    if not netns_exists(path):
        return False
    with iproute(path) as ipr:
        return links.link_index(ipr, LEG) is not None


def set_vips(path: str, vips: Iterable[IPv4]) -> None:
    """Make the leg's /32 addresses exactly ``vips`` (the leg's own address stays)."""
    wanted = {ipaddress.IPv4Interface(f"{v}/32") for v in vips}
    with iproute(path) as ipr:
        index = links.require_index(ipr, LEG)
        have = {a for a in links.addresses(ipr, index)
                if a.version == 4 and a.network.prefixlen == 32}
        for extra in have - wanted:
            with contextlib.suppress(NetlinkError):
                ipr.addr("del", index=index, address=str(extra.ip), prefixlen=32)
        for vip in sorted(wanted - have):
            links.add_address(ipr, index, vip)


def ensure_ingress(host_ns: str | None, path: str, host_ifname: str,
                   vips: Iterable[IPv4]) -> None:
    """The veth between the host and the namespace, addressed and routed; the host's /32
    routes to the VIPs through it made exactly ``vips``."""
    with iproute(host_ns) as host:
        if links.link_index(host, host_ifname) is None:
            with netns_fd(path) as fd:
                links.create_veth(host, host_ifname, INGRESS_INSIDE, peer_netns_fd=fd)
            with iproute(path) as inside:
                index = links.require_index(inside, INGRESS_INSIDE)
                links.configure(inside, index, addresses=[LB_LINK_ADDRESS], link_local=False)
                inside.route("replace", dst=f"{HOST_LINK_ADDRESS.ip}/32", oif=index,
                             scope=_SCOPE_LINK)
                inside.route("replace", dst="0.0.0.0/0", gateway=str(HOST_LINK_ADDRESS.ip),
                             oif=index)
        index = links.require_index(host, host_ifname)
        links.add_address(host, index, HOST_LINK_ADDRESS)
        wanted = {f"{v}/32" for v in vips}
        have = set()
        for msg in host.get_routes(family=2, table=254, oif=index):
            dst = msg.get_attr("RTA_DST")
            if dst and msg["dst_len"] == 32:
                have.add(f"{dst}/32")
        for extra in have - wanted:
            with contextlib.suppress(NetlinkError):
                host.route("del", dst=extra, oif=index)
        for route in sorted(wanted - have):
            try:
                host.route("add", dst=route, oif=index, scope=_SCOPE_LINK)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise links.kernel_error(exc, f"route {route} to {host_ifname}") from exc


def remove_ingress(host_ns: str | None, host_ifname: str) -> None:
    with iproute(host_ns) as host:
        links.delete_link(host, host_ifname)


def enable_forwarding(host_ns: str | None) -> None:
    """The host routes published connections to the namespace (Docker sets it too)."""
    write_sysctl(host_ns, "net/ipv4/ip_forward", "1")


def busy_connections(path: str, ports: Iterable[int]) -> int:
    """TCP connections in the namespace whose local port is one of ``ports`` and that
    may still carry data (a draining backend waits for them)."""
    wanted = {f"{p:04X}" for p in ports}
    if not wanted or not os.path.exists(path):
        return 0

    def count() -> int:
        total = 0
        for table in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] in _BUSY_STATES and \
                            fields[1].rsplit(":", 1)[-1] in wanted:
                        total += 1
        return total

    return in_netns(path, count)
