"""Bridge network options: Docker's names first, short aliases for people typing them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from cnm.driverapi import OPT_ENABLE_IPV4, OPT_ENABLE_IPV6, OPT_INTERNAL, OPT_MTU
from cnm.errors import InvalidOption
from drivers.options import canonical, parse_bool, parse_ifname, parse_mtu

NAME = "com.docker.network.bridge.name"
ICC = "com.docker.network.bridge.enable_icc"
MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
HOST_BINDING_IPV4 = "com.docker.network.bridge.host_binding_ipv4"
DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"

ALIASES = {
    "bridge_name": NAME,
    "mtu": OPT_MTU,
    "icc": ICC,
    "masquerade": MASQUERADE,
    "host_ip": HOST_BINDING_IPV4,
    "internal": OPT_INTERNAL,
    "ipv6": OPT_ENABLE_IPV6,
    "ipv4": OPT_ENABLE_IPV4,
}
KNOWN = {NAME, OPT_MTU, ICC, MASQUERADE, HOST_BINDING_IPV4, DEFAULT_BRIDGE, OPT_INTERNAL,
         OPT_ENABLE_IPV6, OPT_ENABLE_IPV4}


@dataclass(frozen=True)
class BridgeOptions:
    bridge_name: str | None
    mtu: int | None
    icc: bool
    masquerade: bool
    internal: bool
    ipv6: bool
    host_ip: str | None
    ipv4: bool = True  # False: IPv6 only (Docker 28's --ipv4=false)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse(options: dict[str, Any]) -> BridgeOptions:
    """Validate every option at once, before anything is created."""
    opts = canonical(options, ALIASES, KNOWN)
    host_ip = opts.get(HOST_BINDING_IPV4)
    if host_ip not in (None, ""):
        try:
            host_ip = str(ipaddress.IPv4Address(str(host_ip)))
        except ValueError:
            raise InvalidOption(
                f"option {HOST_BINDING_IPV4} must be an IPv4 address, not {host_ip!r}"
            ) from None
    else:
        host_ip = None
    return BridgeOptions(
        bridge_name=parse_ifname(NAME, opts[NAME]) if opts.get(NAME) else None,
        mtu=parse_mtu(OPT_MTU, opts[OPT_MTU]) if opts.get(OPT_MTU) not in (None, "", 0) else None,
        icc=parse_bool(ICC, opts.get(ICC, True)),
        masquerade=parse_bool(MASQUERADE, opts.get(MASQUERADE, True)),
        internal=parse_bool(OPT_INTERNAL, opts.get(OPT_INTERNAL, False)),
        ipv6=parse_bool(OPT_ENABLE_IPV6, opts.get(OPT_ENABLE_IPV6, False)),
        host_ip=host_ip,
        ipv4=parse_bool(OPT_ENABLE_IPV4, opts.get(OPT_ENABLE_IPV4, True)),
    )
