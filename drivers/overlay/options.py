"""Overlay network options: Docker's names where Docker has the knob, short names otherwise.

    overlay=NAME        ties the per-host networks into one overlay (required; see below)
    vni=N               the VXLAN network identifier (also Docker's
                        com.docker.network.driver.overlay.vxlanid_list); default: allocated
                        cluster-wide, the lowest free one from 4096 up
    vtep=ADDR|IFACE     this host's underlay (VTEP) address, or the interface holding it;
                        default: see ``drivers.overlay.dataplane.choose_vtep``
    mtu=N               com.docker.network.driver.mtu; default: the underlay MTU minus 50

Why ``overlay`` is required: Docker 20.10 has no cluster store, so every host creates the
network itself under a NetworkID of its own and never tells the driver the network's name.
The one thing the user types on every host is an option, so that option is the overlay's
identity, on the Python API and the CLI as much as through Docker: the same command works
everywhere, and two unrelated networks that merely share a name are never joined.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from cnm import names
from cnm.driverapi import OPT_ENABLE_IPV4, OPT_ENABLE_IPV6, OPT_INTERNAL, OPT_MTU
from cnm.errors import InvalidOption
from drivers.options import canonical, parse_bool, parse_int, parse_mtu, require_ipv4

OVERLAY = "overlay"
VNI = "vni"
VTEP = "vtep"
DOCKER_VXLANID_LIST = "com.docker.network.driver.overlay.vxlanid_list"

VNI_MIN = 1
VNI_MAX = (1 << 24) - 1
VNI_AUTO_START = 4096  # as Docker's overlay allocator; lower ones are left for explicit use

ALIASES = {
    DOCKER_VXLANID_LIST: VNI,
    "vxlanid": VNI,
    "mtu": OPT_MTU,
    "underlay": VTEP,
    "internal": OPT_INTERNAL,
    "ipv6": OPT_ENABLE_IPV6,
    "ipv4": OPT_ENABLE_IPV4,
}
KNOWN = {OVERLAY, VNI, VTEP, OPT_MTU, OPT_INTERNAL, OPT_ENABLE_IPV6,
         OPT_ENABLE_IPV4}


@dataclass(frozen=True)
class OverlayOptions:
    overlay: str
    vni: int | None
    vtep: str | None  # an address, or an interface name in the host namespace
    mtu: int | None
    internal: bool
    ipv6: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_vni(key: str, value: Any) -> int:
    """One VNI; Docker's vxlanid_list may list one per subnet, and pycnm has one per
    overlay, so a list must name a single value."""
    items = {v.strip() for v in str(value).split(",") if v.strip()}
    if len(items) != 1:
        raise InvalidOption(
            f"option {key} must name one VXLAN id (an overlay has one VNI), not {value!r}"
        )
    return parse_int(key, items.pop(), VNI_MIN, VNI_MAX)


def parse(options: dict[str, Any]) -> OverlayOptions:
    """Validate every option at once, before anything is created."""
    opts = canonical(options, ALIASES, KNOWN)
    require_ipv4("overlay", opts)
    overlay = str(opts.get(OVERLAY) or "")
    if not overlay:
        raise InvalidOption(
            "an overlay network needs -o overlay=NAME: the same NAME on every host ties "
            "the hosts' networks into one overlay"
        )
    if not names.is_valid_object_name(overlay):
        raise InvalidOption(
            f"option overlay: {overlay!r} is not a valid name (letters, digits, '_', '.', '-', "
            "at most 63, starting with a letter or digit)"
        )
    vtep = opts.get(VTEP)
    vtep = str(vtep).strip() if vtep not in (None, "") else None
    if vtep is not None:
        try:
            vtep = str(ipaddress.IPv4Address(vtep))
        except ValueError:
            if not names.is_valid_ifname(vtep):
                raise InvalidOption(
                    f"option vtep must be an IPv4 address or an interface name, not {vtep!r}"
                ) from None
    mtu = opts.get(OPT_MTU)
    return OverlayOptions(
        overlay=overlay,
        vni=parse_vni(VNI, opts[VNI]) if opts.get(VNI) not in (None, "") else None,
        vtep=vtep,
        mtu=parse_mtu(OPT_MTU, mtu) if mtu not in (None, "", 0, "0") else None,
        internal=parse_bool(OPT_INTERNAL, opts.get(OPT_INTERNAL, False)),
        ipv6=parse_bool(OPT_ENABLE_IPV6, opts.get(OPT_ENABLE_IPV6, False)),
    )
