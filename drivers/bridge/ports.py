"""Port bindings: parsing Docker's portmap and choosing host ports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cnm.driverapi import PortBinding, Proto
from cnm.errors import Conflict, InvalidOption, PoolExhausted

EPHEMERAL = range(49153, 65536)  # where Docker picks a host port when none is given
PROTO_NAMES: dict[int, Proto] = {6: "tcp", 17: "udp", 132: "sctp"}
_PROTOS: dict[object, Proto] = {6: "tcp", 17: "udp", 132: "sctp",
                               "tcp": "tcp", "udp": "udp", "sctp": "sctp"}


def _port(value: Any, what: str, allow_zero: bool) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidOption(f"{what} must be a port number, not {value!r}") from None
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise InvalidOption(f"{what} must be between 1 and 65535, not {number}")
    return number


def parse_portmap(raw: Iterable[Any] | None) -> list[PortBinding]:
    """Docker's ``com.docker.network.portmap`` (or PortBinding objects) -> PortBinding."""
    bindings: list[PortBinding] = []
    for item in raw or []:
        if isinstance(item, PortBinding):
            bindings.append(item)
            continue
        if not isinstance(item, dict):
            raise InvalidOption(f"a port binding must be an object, not {item!r}")
        proto = _PROTOS.get(item.get("Proto", 6))
        if proto is None:
            raise InvalidOption(f"unknown protocol {item.get('Proto')!r} in a port binding")
        port = _port(item.get("Port"), "the container port", allow_zero=False)
        host_port = _port(item.get("HostPort", 0), "the host port", allow_zero=True)
        host_end = _port(item.get("HostPortEnd", 0) or 0, "the host port range end", True)
        if host_end and host_end < host_port:
            raise InvalidOption(f"host port range {host_port}-{host_end} ends before it starts")
        host_ip = str(item.get("HostIP") or "")
        if host_ip in ("0.0.0.0", "::"):
            host_ip = ""
        bindings.append(PortBinding(proto, port, host_port, host_end, host_ip))
    return bindings


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
            clash: set[tuple[str, str, int]] = {(binding.proto, binding.host_ip, port),
                                                (binding.proto, "", port)}
            if binding.host_ip == "":
                clash |= {key for key in used if key[0] == binding.proto and key[2] == port}
            if not clash & used:
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


def to_docker(bindings: list[PortBinding]) -> list[dict[str, Any]]:
    numbers = {"tcp": 6, "udp": 17, "sctp": 132}
    return [
        {"Proto": numbers[b.proto], "Port": b.port, "HostIP": b.host_ip or "0.0.0.0",
         "HostPort": b.host_port, "HostPortEnd": b.host_port}
        for b in bindings
    ]
