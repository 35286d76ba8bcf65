"""Docker's port bindings (``com.docker.network.portmap``), parsed and checked.

Every front end hands port bindings over in Docker's shape (the plugin as Docker sent
them, the CLI's ``-p`` and the Python API as dicts or ``PortBinding`` objects); they are
checked here, once, before anything is made: ports are integers (never ``80.9`` or
``true``), ``HostIP`` is an address (of the binding's ``IP``'s family when both are
given) or empty, and nothing else gets through.
"""

from __future__ import annotations

from typing import Any

from cnm import inputs
from cnm.driverapi import OPT_PORTMAP, PortBinding, Proto
from cnm.errors import InvalidOption
from cnm.inputs import shown

PROTO_NAMES: dict[int, Proto] = {6: "tcp", 17: "udp", 132: "sctp"}
_PROTOS: dict[object, Proto] = {6: "tcp", 17: "udp", 132: "sctp",
                               "tcp": "tcp", "udp": "udp", "sctp": "sctp"}


def _binding(item: Any, n: int) -> PortBinding:
    if isinstance(item, PortBinding):  # from the Python API: checked all the same
        item = {"Proto": item.proto, "Port": item.port, "HostPort": item.host_port,
                "HostPortEnd": item.host_port_end, "HostIP": item.host_ip}
    if not isinstance(item, dict):
        raise InvalidOption(f"port binding {n} must be an object with Proto, Port, HostIP, "
                            f"HostPort and HostPortEnd, not {shown(item)}")
    raw_proto = item.get("Proto", 6)
    proto = _PROTOS.get(raw_proto) if isinstance(raw_proto, int | str) and \
        not isinstance(raw_proto, bool) else None
    if proto is None:
        raise InvalidOption(f"Proto of port binding {n} must be 6 (tcp), 17 (udp) or 132 "
                            f"(sctp), not {shown(raw_proto)}: unknown protocol")
    port = inputs.port(item.get("Port"), f"Port of port binding {n}")
    host_port = _host_port(item.get("HostPort"), f"HostPort of port binding {n}")
    host_end = _host_port(item.get("HostPortEnd"), f"HostPortEnd of port binding {n}")
    if host_end and host_end < host_port:
        raise InvalidOption(f"host port range {host_port}-{host_end} of port binding {n} "
                            "ends before it starts")
    host_ip = _optional_address(item.get("HostIP"), f"HostIP of port binding {n}")
    container_ip = _optional_address(item.get("IP"), f"IP of port binding {n}")
    if host_ip and container_ip and host_ip.version != container_ip.version:
        raise InvalidOption(f"HostIP {host_ip} of port binding {n} must be an IPv"
                            f"{container_ip.version} address, as its IP {container_ip} is")
    # "0.0.0.0" and "::" stay apart: every IPv4 or every IPv6 address of the host, as
    # Docker reads them (`-p 0.0.0.0:80:80 -p [::]:80:80` is one port on both families).
    text = "" if host_ip is None else str(host_ip)
    return PortBinding(proto, port, host_port, host_end, text)


def _host_port(value: Any, what: str) -> int:
    if value is None:
        return 0
    try:
        return inputs.port(value, what, allow_zero=True)
    except InvalidOption:  # say what 0 means
        raise InvalidOption(f"{what} must be a whole number between 1 and 65535 (or 0: any "
                            f"free port), not {shown(value)}") from None


def _optional_address(value: Any, what: str) -> inputs.IPAddress | None:
    if value is None or value == "":
        return None
    return inputs.address(value, what)


def parse_portmap(raw: Any) -> list[PortBinding]:
    """Docker's ``com.docker.network.portmap`` (or PortBinding objects) -> PortBinding,
    every field checked: ports are integers, addresses are addresses, nothing else."""
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise InvalidOption(f"option {OPT_PORTMAP} must be a list of port bindings, not "
                            f"{shown(raw)}")
    return [_binding(item, n) for n, item in enumerate(raw, 1)]
