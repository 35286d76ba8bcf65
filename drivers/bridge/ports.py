"""Port bindings: choosing host ports (the portmap itself is parsed by ``cnm.portmap``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cnm.driverapi import PortBinding
from cnm.errors import Conflict, PoolExhausted
from cnm.portmap import PROTO_NAMES, parse_portmap

__all__ = ["EPHEMERAL", "PROTO_NAMES", "PortBinding", "choose_host_ports", "parse_portmap",
           "to_docker"]

EPHEMERAL = range(49153, 65536)  # where Docker picks a host port when none is given


def choose_host_ports(
    wanted: list[PortBinding], taken: set[tuple[str, str, int]]
) -> list[PortBinding]:
    """Give every binding one concrete host port; ``taken`` holds (proto, host_ip, port)."""
    chosen: list[PortBinding] = []
    used = set(taken)
    for binding in wanted:
        if binding.host_port and not binding.host_port_end:
            candidates: Iterable[int] = (binding.host_port,)
        elif binding.host_port:
            candidates = range(binding.host_port, binding.host_port_end + 1)
        else:
            candidates = EPHEMERAL
        for port in candidates:
            if not any(proto == binding.proto and other == port
                       and overlaps(host_ip, binding.host_ip) for proto, host_ip, other in used):
                break
        else:
            if binding.host_port and not binding.host_port_end:
                raise Conflict(
                    f"host port {binding.host_port}/{binding.proto} is already published"
                )
            raise PoolExhausted(f"no free host port for {binding.port}/{binding.proto}")
        used.add((binding.proto, binding.host_ip, port))
        chosen.append(PortBinding(binding.proto, binding.port, port, 0, binding.host_ip))
    return chosen


ANY_V4, ANY_V6 = "0.0.0.0", "::"


def overlaps(one: str, other: str) -> bool:
    """Whether two bindings' host addresses share an address: "" is every address of the
    host, "0.0.0.0" every IPv4 one, "::" every IPv6 one, anything else itself."""
    if one == other or "" in (one, other):
        return True
    if (":" in one) != (":" in other):
        return False  # IPv4 and IPv6 never overlap
    return bool({one, other} & {ANY_V4, ANY_V6})


def to_docker(bindings: list[PortBinding]) -> list[dict[str, Any]]:
    numbers = {"tcp": 6, "udp": 17, "sctp": 132}
    return [
        {"Proto": numbers[b.proto], "Port": b.port, "HostIP": b.host_ip or "0.0.0.0",
         "HostPort": b.host_port, "HostPortEnd": b.host_port}
        for b in bindings
    ]
