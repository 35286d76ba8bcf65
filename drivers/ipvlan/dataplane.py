"""Kernel work of the ipvlan driver: ipvlan links (parents and 802.1q sub-interfaces are
``drivers.parent``'s, shared with macvlan).

pyroute2 0.9 knows IFLA_IPVLAN_MODE but not IFLA_IPVLAN_FLAGS (the kernel's attribute 2,
a u16: 0 bridge, 1 private, 2 vepa), so the attribute is added to its ipvlan attribute
map once, here; everything else goes through pyroute2 as usual.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg.plugins import ipvlan as _ipvlan_nla

from cnm.errors import KernelError, KernelFeatureMissing
from cnm.osl.netns import NetlinkHandle
from drivers.parent import child_error

MODES = {"l2": 0, "l3": 1, "l3s": 2}
FLAGS = {"bridge": 0, "private": 1, "vepa": 2}
FEATURE = ("this kernel has no ipvlan support (the ipvlan module is not built in or "
           "loadable), so ipvlan networks cannot work here; use macvlan, or a kernel "
           "with ipvlan")

if not any(name == "IFLA_IPVLAN_FLAGS" for name, _ in _ipvlan_nla.ipvlan.nla_map):
    _ipvlan_nla.ipvlan.nla_map = (*_ipvlan_nla.ipvlan.nla_map, ("IFLA_IPVLAN_FLAGS", "uint16"))


def create_ipvlan(
    ipr: NetlinkHandle,
    name: str,
    parent: str,
    parent_index: int,
    mode: str,
    flag: str,
    *,
    mtu: int | None = None,
    netns_fd: int | None = None,
) -> None:
    """Create the ipvlan child ``name`` of ``parent`` (in the namespace open on
    ``netns_fd`` if given). It has the parent's MAC address: no MAC can be set."""
    spec: dict[str, Any] = {"ifname": name, "kind": "ipvlan", "link": parent_index,
                            "ipvlan_mode": MODES[mode], "ipvlan_flags": FLAGS[flag]}
    if mtu:
        spec["mtu"] = mtu
    if netns_fd is not None:
        spec["net_ns_fd"] = netns_fd
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise KernelFeatureMissing(FEATURE) from exc
        shared = child_error(exc, "ipvlan", name, parent)
        if shared is not None:
            raise shared from exc
        raise KernelError(
            f"the kernel refused an ipvlan {mode} {flag} interface on {parent}: "
            f"{exc.args[-1]}"
        ) from exc

