"""Macvlan network options: Docker's names first, short aliases for people typing them.

    parent=IFACE          the host interface on the LAN (required, Docker's name);
                          IFACE.VID asks for an 802.1q sub-interface, made on first use
    macvlan_mode=MODE     bridge (default), private, vepa or passthru (alias ``mode``)
    com.docker.network.driver.mtu=N
                          MTU of the endpoints (alias ``mtu``); default: the parent's
    host_shim=ADDR|NAME   opt in to a host shim (see ``drivers.macvlan``): an address, or
                          the name of an ``--aux-address``; either way it must be one of
                          the network's auxiliary addresses, so IPAM never hands it out

Why the shim address must be an aux-address: the driver never allocates addresses (the
core's IPAM, or Docker's, does), and an auxiliary address is exactly "reserved for
something outside the network". That holds on the Python API, the CLI and Docker alike,
with no new call between the driver and the core.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from cnm.driverapi import OPT_ENABLE_IPV4, OPT_ENABLE_IPV6, OPT_INTERNAL, OPT_MTU
from cnm.errors import InvalidOption
from drivers.options import canonical, parse_bool, parse_mtu, require_ipv4
from drivers.parent import (
    parse_parent,
    split_vlan,  # noqa: F401 - Docker's IFACE.VID, shared with ipvlan
)

PARENT = "parent"
MODE = "macvlan_mode"
HOST_SHIM = "host_shim"

MODES = ("bridge", "private", "vepa", "passthru")
DEFAULT_MODE = "bridge"
# Modes in which a bridge-mode shim on the same parent can reach the children: bridge
# directly, vepa through a switch port in hairpin (reflective relay) mode.
SHIM_MODES = ("bridge", "vepa")

ALIASES = {
    "mode": MODE,
    "mtu": OPT_MTU,
    "internal": OPT_INTERNAL,
    "ipv6": OPT_ENABLE_IPV6,
    "ipv4": OPT_ENABLE_IPV4,
}
KNOWN = {PARENT, MODE, HOST_SHIM, OPT_MTU, OPT_INTERNAL, OPT_ENABLE_IPV6,
         OPT_ENABLE_IPV4}



@dataclass(frozen=True)
class MacvlanOptions:
    parent: str
    mode: str
    mtu: int | None
    host_shim: str | None  # an address or an aux-address name, checked at create_network
    internal: bool
    ipv6: bool

    @property
    def mode_key(self) -> str:
        return self.mode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MacvlanOptions:
        return cls(**data)


def parse(options: dict[str, Any]) -> MacvlanOptions:
    """Validate every option at once, before anything is created."""
    opts = canonical(options, ALIASES, KNOWN)
    require_ipv4("macvlan", opts)
    parent = parse_parent(opts.get(PARENT), "macvlan")
    mode = str(opts.get(MODE) or DEFAULT_MODE).strip().lower()
    if mode not in MODES:
        raise InvalidOption(
            f"option {MODE} must be one of {', '.join(MODES)}, not {opts.get(MODE)!r}"
        )
    shim = opts.get(HOST_SHIM)
    shim = str(shim).strip() if shim not in (None, "") else None
    if shim is not None and mode not in SHIM_MODES:
        raise InvalidOption(
            f"option {HOST_SHIM} cannot work in {mode} mode: "
            + ("private mode isolates every macvlan interface on the parent, the shim too"
               if mode == "private" else
               "a passthru interface must be the parent's only macvlan interface")
        )
    mtu_value = opts.get(OPT_MTU)
    return MacvlanOptions(
        parent=parent,
        mode=mode,
        mtu=parse_mtu(OPT_MTU, mtu_value) if mtu_value not in (None, "", 0, "0") else None,
        host_shim=shim,
        internal=parse_bool(OPT_INTERNAL, opts.get(OPT_INTERNAL, False)),
        ipv6=parse_bool(OPT_ENABLE_IPV6, opts.get(OPT_ENABLE_IPV6, False)),
    )


def resolve_shim_address(
    shim: str, aux: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address],
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The shim's address: the aux-address named ``shim``, or ``shim`` itself if it is one
    of the aux-addresses. Anything else could be handed to an endpoint later, so refuse."""
    if shim in aux:
        return aux[shim]
    try:
        address = ipaddress.ip_address(shim)
    except ValueError:
        known = ", ".join(sorted(aux)) or "none"
        raise InvalidOption(
            f"option {HOST_SHIM}={shim}: no aux-address has that name (the network has: "
            f"{known}); reserve one with --aux-address NAME=IP and pass NAME or IP"
        ) from None
    if not any(address in subnet for subnet in subnets):
        raise InvalidOption(
            f"option {HOST_SHIM}={address} is not inside the network's subnet(s) "
            f"{', '.join(str(s) for s in subnets)}"
        )
    if address not in aux.values():
        raise InvalidOption(
            f"option {HOST_SHIM}={address}: reserve that address with --aux-address "
            f"host={address} so it is never given to an endpoint"
        )
    return address
