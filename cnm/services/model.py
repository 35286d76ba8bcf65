"""What a load-balanced service is, and the checks on every value a user gives for one.

A service lives on one network: a name (a DNS label: ``NAME`` and ``tasks.NAME`` resolve
on the network), its ports (``80/tcp``), a mode (``vip``: one virtual IP spread over the
backends; ``dnsrr``: no virtual IP, ``NAME`` resolves to the backends), a balancing
method for the VIP (``rr``, ``random``, ``source-hash``) and ports published on the hosts
(``8080:80/tcp``: ingress, as Docker's routing mesh). Backends are endpoints that joined
with the service named (``pycnm attach NET SB --service NAME``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cnm.errors import InvalidOption
from cnm.inputs import shown
from cnm.records import SCHEMA, Record, now

Proto = Literal["tcp", "udp"]
MODES = ("vip", "dnsrr")
BALANCES = ("rr", "random", "source-hash")
PROTOS: tuple[Proto, ...] = ("tcp", "udp")
MAX_PORTS = 64

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/([a-z]+))?")
_PUBLISH_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})(?:/([a-z]+))?")


@dataclass(frozen=True, order=True)
class Port:
    proto: Proto
    port: int

    def __str__(self) -> str:
        return f"{self.port}/{self.proto}"


@dataclass(frozen=True, order=True)
class Published:
    proto: Proto
    host_port: int
    port: int

    def __str__(self) -> str:
        return f"{self.host_port}:{self.port}/{self.proto}"


@dataclass
class ServiceRecord(Record):
    id: str
    name: str
    mode: str = "vip"
    balance: str = "rr"
    ports: list[dict[str, Any]] = field(default_factory=list)  # {"proto", "port"}
    publish: list[dict[str, Any]] = field(default_factory=list)  # {"proto", "host_port", "port"}
    vip: str | None = None  # the virtual IP (vip mode)
    vip_pool: str = ""  # the IPAM pool it came from (released with the service)
    ipam_scope: str = "local"
    created: str = field(default_factory=now)
    version: int = SCHEMA

    def port_list(self) -> list[Port]:
        return [Port(p["proto"], int(p["port"])) for p in self.ports]

    def published(self) -> list[Published]:
        return [Published(p["proto"], int(p["host_port"]), int(p["port"]))
                for p in self.publish]


def check_name(name: object) -> str:
    """A service name: one DNS label (``NAME`` and ``tasks.NAME`` must resolve)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidOption(
            f"service name {shown(name)} is invalid: use letters, digits and '-' (one DNS "
            "label of at most 63 characters, not starting or ending with '-')")
    return name


def _number(text: str, what: str, spec: object) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise InvalidOption(f"{what} in {shown(spec)} must be from 1 to 65535")
    return value


def _proto(text: str | None, spec: object) -> Proto:
    proto = text or "tcp"
    if proto not in PROTOS:
        raise InvalidOption(f"protocol in {shown(spec)} must be tcp or udp")
    return proto


def parse_port(spec: object) -> Port:
    """``80``, ``80/tcp`` or ``53/udp`` (an int is a TCP port); also ``{"port": 80,
    "proto": "tcp"}`` as the API and lab files may give it."""
    if isinstance(spec, dict):
        port, proto = spec.get("port"), spec.get("proto", "tcp")
        if isinstance(port, bool) or not isinstance(port, int) or not isinstance(proto, str):
            raise InvalidOption(f"port {shown(spec)} must be {{'port': 1-65535, 'proto': "
                                "'tcp' or 'udp'}")
        spec = f"{port}/{proto}"
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    match = _PORT_RE.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise InvalidOption(f"port {shown(spec)} must be PORT or PORT/PROTO, as 80/tcp or "
                            "53/udp")
    return Port(_proto(match.group(2), spec), _number(match.group(1), "the port", spec))


def parse_publish(spec: object) -> Published:
    """``HOSTPORT:PORT[/PROTO]``, as ``8080:80/tcp``."""
    match = _PUBLISH_RE.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise InvalidOption(f"published port {shown(spec)} must be HOSTPORT:PORT[/PROTO], as "
                            "8080:80/tcp")
    return Published(_proto(match.group(3), spec),
                     _number(match.group(1), "the host port", spec),
                     _number(match.group(2), "the port", spec))


def check_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidOption(f"{what} {shown(value)} is not one of {', '.join(choices)}")
    return value


def check_ports(ports: object) -> list[Port]:
    if isinstance(ports, str | int | dict) or ports is None:
        ports = [ports] if ports is not None else []
    if not isinstance(ports, list | tuple):
        raise InvalidOption(f"ports must be a list such as ['80/tcp'], not {shown(ports)}")
    parsed = sorted(set(parse_port(p) for p in ports))
    if not parsed:
        raise InvalidOption("a service needs at least one port (--port 80/tcp)")
    if len(parsed) > MAX_PORTS:
        raise InvalidOption(f"a service has at most {MAX_PORTS} ports")
    return parsed


def check_publish(publish: object, ports: list[Port]) -> list[Published]:
    if publish is None:
        return []
    if isinstance(publish, str):
        publish = [publish]
    if not isinstance(publish, list | tuple):
        raise InvalidOption(f"published ports must be a list such as ['8080:80/tcp'], not "
                            f"{shown(publish)}")
    parsed = sorted(set(parse_publish(p) for p in publish))
    seen: set[tuple[str, int]] = set()
    for item in parsed:
        if Port(item.proto, item.port) not in ports:
            raise InvalidOption(f"published port {item} names port {item.port}/{item.proto}, "
                                "which is not one of the service's ports")
        if (item.proto, item.host_port) in seen:
            raise InvalidOption(f"host port {item.host_port}/{item.proto} is published twice")
        seen.add((item.proto, item.host_port))
    return parsed
