"""What dockerd does with a driver's JoinInfo: move the interface into the sandbox, name
it, address it, route through it; and the reverse on leave."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

from cnm.errors import Conflict
from cnm.osl import links
from cnm.osl.netns import iproute, netns_fd
from cnm.osl.rtnl import Request

IPInterface = links.IPInterface


def move_into(host_ns: str | None, sandbox_ns: str, src_name: str, ifname: str) -> None:
    """Move ``src_name`` from the host into the sandbox, renamed ``ifname``; if that name
    is taken there, Conflict, with the interface back in the host as it was."""
    with iproute(host_ns) as host, netns_fd(sandbox_ns) as target:
        try:
            links.move_link(host, src_name, target, ifname)
        except Conflict:
            # The kernel moves the link first and renames it after: a taken name leaves it
            # inside under its old name. Bring it back, unless it never left.
            if links.link_index(host, src_name) is None:
                with iproute(sandbox_ns) as inside, netns_fd(host_ns) as back:
                    links.move_link(inside, src_name, back)
            raise


def configure_inside(
    sandbox_ns: str,
    ifname: str,
    *,
    addresses: Iterable[IPInterface] = (),
    mac: str | None = None,
    routes: Iterable[tuple[str, int, str | None]] = (),
    gateway: ipaddress.IPv4Address | None = None,
    gateway_v6: ipaddress.IPv6Address | None = None,
    up: bool = True,
) -> None:
    """Address an interface inside the sandbox, bring it up, add its routes: one netlink
    round trip.

    ``routes``: (destination, type 0 via next hop | 1 connected, next hop); ``gateway``:
    make it the sandbox's default route. An interface with no IPv6 address gets no IPv6
    link-local one either (as Docker does for IPv4-only networks): it stays silent.
    """
    addresses = list(addresses)
    with iproute(sandbox_ns) as sandbox:
        index = links.require_index(sandbox, ifname)
        requests = []
        for destination, route_type, next_hop in routes:
            net = ipaddress.ip_network(destination, strict=False)
            via = ipaddress.ip_address(next_hop) if route_type == 0 and next_hop else None
            requests.append(links.route_request(net, gateway=via, oif=index))
        requests.extend(_default_routes(index, gateway, gateway_v6))
        links.configure(
            sandbox, index, addresses=addresses, mac=mac, up=up, routes=requests,
            link_local=any(a.version == 6 for a in addresses),
        )


def _default_routes(index: int, gateway: ipaddress.IPv4Address | None,
                    gateway_v6: ipaddress.IPv6Address | None) -> list[Request]:
    return [
        links.route_request(default, gateway=via, oif=index, replace=True)
        for default, via in ((ipaddress.IPv4Network("0.0.0.0/0"), gateway),
                             (ipaddress.IPv6Network("::/0"), gateway_v6))
        if via is not None
    ]


def unplug(sandbox_ns: str, ifname: str, host_ns: str | None, back_name: str) -> None:
    """Move ``ifname`` back to the host under ``back_name``, down and without addresses.

    A sandbox that is gone, or an interface already gone, is success.
    """
    if not os.path.exists(sandbox_ns):
        return
    with iproute(sandbox_ns) as sandbox:
        index = links.link_index(sandbox, ifname)
        if index is None:
            return
        sandbox.link("set", index=index, state="down")
        sandbox.flush_addr(index=index)
        with netns_fd(host_ns) as target:
            links.move_link(sandbox, ifname, target, back_name)


def set_default_routes(
    sandbox_ns: str,
    ifname: str,
    gateway: ipaddress.IPv4Address | None,
    gateway_v6: ipaddress.IPv6Address | None,
) -> None:
    """Point the sandbox's default routes at this interface's gateways."""
    with iproute(sandbox_ns) as sandbox:
        index = links.require_index(sandbox, ifname)
        links.configure(sandbox, index, up=False,
                        routes=_default_routes(index, gateway, gateway_v6))


def set_forwarding(ns: str, enabled: bool) -> None:
    """Whether the namespace routes between its interfaces. Always set explicitly: a new
    namespace inherits IPv4 forwarding from the host's (devconf_inherit_init_net=0)."""
    from cnm.osl.netns import write_sysctl

    value = "1" if enabled else "0"
    write_sysctl(ns, "net/ipv4/ip_forward", value)
    write_sysctl(ns, "net/ipv6/conf/all/forwarding", value)


def loopback_up(ns: str) -> None:
    with iproute(ns) as ipr:
        ipr.link("set", index=1, state="up")


def interface_exists(ns: str, ifname: str) -> bool:
    with iproute(ns) as ipr:
        return links.link_index(ipr, ifname) is not None
