"""The kernel side of a sandbox's resolver: sockets opened inside namespaces, and the
nftables table that sends 127.0.0.11:53 to them.

A socket belongs to the namespace it was created in for its whole life, so the resolver
opens its listening sockets (and, for servers given with ``--dns``, its upstream sockets)
from a thread that entered the sandbox's namespace; the process itself never moves.
As Docker does, the sockets listen on 127.0.0.11 at ports of their own and a NAT table
in the sandbox maps port 53 to them, so port 53 stays free for the sandbox's own use:

    table ip pycnm-dns
      chain dns-dnat  (nat, output, dstnat):  ip daddr 127.0.0.11 udp dport 53 dnat to :UDP
                                              ip daddr 127.0.0.11 tcp dport 53 dnat to :TCP
      chain dns-snat  (nat, postrouting):     ip saddr 127.0.0.11 udp sport UDP snat to :53
                                              ip saddr 127.0.0.11 tcp sport TCP snat to :53

The table is built with ``cnm.osl.nftjson`` from typed values only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from cnm.errors import KernelError, NotFound
from cnm.osl import nft
from cnm.osl import nftjson as j
from cnm.osl.netns import in_netns

TABLE = "pycnm-dns"
FAMILY: j.Family = "ip"
RECEIVE_BUFFER = 4 << 20  # bytes: a burst of queries waits here rather than being dropped


def _bind_first(kind: int, address: str, ports: list[int]) -> socket.socket:
    last: OSError | None = None
    for port in ports:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise KernelError(f"cannot listen on {address}: {last}")


def open_listeners(ns: str | None, address: ipaddress.IPv4Address, udp_port: int = 0,
                   tcp_port: int = 0, exact: bool = False
                   ) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on ``address`` inside ``ns`` (None: this
    process's namespace), at the ports given if they are free (a restarted resolver keeps
    its ports, so the NAT rules in place stay right), else, unless ``exact``, at ports the
    kernel picks. Both non-blocking."""

    def ports(wanted: int) -> list[int]:
        return [wanted] if exact else ([wanted, 0] if wanted else [0])

    def make() -> tuple[socket.socket, socket.socket]:
        text = str(address)
        udp = _bind_first(socket.SOCK_DGRAM, text, ports(udp_port))
        try:
            with contextlib.suppress(OSError):  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
                udp.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
            tcp = _bind_first(socket.SOCK_STREAM, text, ports(tcp_port))
            tcp.listen(64)
        except BaseException:
            udp.close()
            raise
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp

    return in_netns(ns, make)


def open_socket(ns: str | None, family: int, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """An unbound socket inside ``ns`` (None: this process's namespace)."""
    return in_netns(ns, lambda: socket.socket(family, kind))


def install(ns: str, address: ipaddress.IPv4Address, udp_port: int, tcp_port: int,
            fresh: bool = False) -> None:
    """Point ``address``:53 at the listeners inside ``ns`` (one atomic nft transaction);
    ``fresh``: the table is most likely not there yet (a sandbox never taken over)."""
    protocols: tuple[tuple[j.L4Proto, int], ...] = (("udp", udp_port), ("tcp", tcp_port))
    dnat_rules = [
        j.rule(j.match_addr("daddr", address), j.match_port(proto, "dport", 53),
               j.dnat(address, port))
        for proto, port in protocols
    ]
    snat_rules = [
        j.rule(j.match_addr("saddr", address), j.match_port(proto, "sport", port),
               j.snat(port=53, family="ip"))
        for proto, port in protocols
    ]
    chains = [j.Chain("dns-dnat", j.nat_hook("output"), dnat_rules),
              j.Chain("dns-snat", j.nat_hook("postrouting"), snat_rules)]
    # A sandbox taken over for the first time has no table yet: made without the
    # replace's delete (~4 ms instead of ~15-18 ms of the resolver's time per new sandbox).
    nft.replace_table(ns, FAMILY, TABLE, chains, what="the resolver's NAT rules", fresh=fresh)


def remove(ns: str) -> None:
    """Remove the table; a table or namespace already gone is success."""
    with contextlib.suppress(KernelError, NotFound, FileNotFoundError):
        nft.delete_table(ns, FAMILY, TABLE)
