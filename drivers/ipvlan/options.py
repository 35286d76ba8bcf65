"""Ipvlan network options, Docker's names first:

    parent=IFACE          the host interface on the LAN (required); IFACE.VID asks for an
                          802.1q sub-interface, made on first use (as macvlan's)
    ipvlan_mode=MODE      l2 (default), l3 or l3s (alias ``mode``)
    ipvlan_flag=FLAG      bridge (default), private or vepa (alias ``flag``)
    com.docker.network.driver.mtu=N
                          MTU of the endpoints (alias ``mtu``); default: the parent's
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cnm.driverapi import OPT_ENABLE_IPV4, OPT_ENABLE_IPV6, OPT_INTERNAL, OPT_MTU
from cnm.errors import InvalidOption
from drivers.options import canonical, parse_bool, parse_mtu, require_ipv4
from drivers.parent import parse_parent

PARENT = "parent"
MODE = "ipvlan_mode"
FLAG = "ipvlan_flag"
MODES = ("l2", "l3", "l3s")
FLAGS = ("bridge", "private", "vepa")
ALIASES = {"mode": MODE, "flag": FLAG, "mtu": OPT_MTU, "internal": OPT_INTERNAL,
           "ipv6": OPT_ENABLE_IPV6, "ipv4": OPT_ENABLE_IPV4}
KNOWN = {PARENT, MODE, FLAG, OPT_MTU, OPT_INTERNAL, OPT_ENABLE_IPV6, OPT_ENABLE_IPV4}


@dataclass(frozen=True)
class IpvlanOptions:
    parent: str
    mode: str
    flag: str
    mtu: int | None
    internal: bool
    ipv6: bool

    @property
    def mode_key(self) -> str:
        """The kernel keeps one mode and one flag per parent: sharing needs both equal."""
        return f"{self.mode} {self.flag}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(opts: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = str(opts.get(key) or allowed[0]).strip().lower()
    if value not in allowed:
        raise InvalidOption(
            f"option {key} must be one of {', '.join(allowed)}, not {opts.get(key)!r}"
        )
    return value


def parse(options: dict[str, Any]) -> IpvlanOptions:
    """Validate every option at once, before anything is created."""
    opts = canonical(options, ALIASES, KNOWN)
    require_ipv4("ipvlan", opts)
    parent = parse_parent(opts.get(PARENT), "ipvlan")
    mtu_value = opts.get(OPT_MTU)
    return IpvlanOptions(
        parent=parent,
        mode=_choice(opts, MODE, MODES),
        flag=_choice(opts, FLAG, FLAGS),
        mtu=parse_mtu(OPT_MTU, mtu_value) if mtu_value not in (None, "", 0, "0") else None,
        internal=parse_bool(OPT_INTERNAL, opts.get(OPT_INTERNAL, False)),
        ipv6=parse_bool(OPT_ENABLE_IPV6, opts.get(OPT_ENABLE_IPV6, False)),
    )
