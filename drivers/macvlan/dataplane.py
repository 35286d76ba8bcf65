"""Kernel work of the macvlan driver: parent checks, 802.1q sub-interfaces, macvlan links.

Every helper takes an open netlink handle on the host namespace (``cnm.osl.iproute``), so
one driver call pays for one socket. The kernel answers most macvlan mistakes with a bare
EINVAL or EBUSY; these helpers check first where they can and otherwise turn the errno into
a sentence that says which rule was broken.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import Conflict, InvalidOption, KernelError, KernelFeatureMissing, NotFound
from cnm.osl import links as osl_links
from cnm.osl.netns import NetlinkHandle

VLAN_FEATURE = (
    "this kernel has no 802.1q VLAN support (the 8021q module is not built in or loadable), "
    "so the VLAN sub-interface {name} cannot be created"
)


def master_of(ipr: NetlinkHandle, info: dict[str, Any]) -> tuple[str, str] | None:
    """(name, kind) of the device ``info``'s link is enslaved to, or None."""
    if not info.get("master"):
        return None
    try:
        msg = ipr.link("get", index=info["master"])[0]
    except NetlinkError:
        return ("?", "device")
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    return msg.get_attr("IFLA_IFNAME"), kind or "device"


def check_parent(ipr: NetlinkHandle, name: str, mtu: int | None) -> dict[str, Any]:
    """Facts about the parent ``name``, or an error saying why it cannot carry macvlans.

    An enslaved interface already hands every frame to its master (bridge, bond, team):
    the kernel allows one receive handler per device and answers a bare EBUSY.
    """
    info = osl_links.link_info(ipr, name)
    if info is None:
        raise NotFound(f"parent interface {name} does not exist in the host namespace")
    if info["index"] == 1 or name == "lo":
        raise InvalidOption("the loopback interface cannot be a macvlan parent")
    master = master_of(ipr, info)
    if master is not None:
        raise Conflict(
            f"parent interface {name} is enslaved to {master[1]} {master[0]}: a macvlan "
            f"parent must be free (use the {master[1]} itself, or release {name} first)"
        )
    if mtu is not None and info["mtu"] and mtu > info["mtu"]:
        raise InvalidOption(
            f"MTU {mtu} is larger than the MTU {info['mtu']} of parent interface {name}; "
            "a macvlan interface cannot exceed its parent's MTU"
        )
    return info


def create_vlan(ipr: NetlinkHandle, base: str, vid: int, name: str) -> int:
    """Create the 802.1q sub-interface ``name`` (VLAN ``vid`` on ``base``), up.

    Raises KernelFeatureMissing, in one sentence naming 8021q, when the kernel lacks it;
    the kernel made nothing in that case, so there is nothing to undo.
    """
    base_index = osl_links.require_index(ipr, base)
    try:
        ipr.link("add", ifname=name, kind="vlan", link=base_index, vlan_id=vid)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EPROTONOSUPPORT):
            raise KernelFeatureMissing(VLAN_FEATURE.format(name=name)) from exc
        if exc.code == errno.EEXIST:
            raise Conflict(f"interface {name} already exists") from exc
        raise osl_links.kernel_error(exc, f"create VLAN sub-interface {name}") from exc
    index = osl_links.require_index(ipr, name)
    try:
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        osl_links.delete_link(ipr, name)
        raise osl_links.kernel_error(exc, f"bring up {name}") from exc
    return index


def create_macvlan(
    ipr: NetlinkHandle,
    name: str,
    parent: str,
    parent_index: int,
    mode: str,
    *,
    mac: str | None = None,
    mtu: int | None = None,
    netns_fd: int | None = None,
    up: bool = False,
) -> None:
    """Create the macvlan child ``name`` of ``parent`` (in the namespace open on
    ``netns_fd`` if given: the kernel places it there directly, no later move).

    In passthru mode the kernel gives the child the parent's MAC whatever we ask, so no
    MAC is passed.
    """
    spec: dict[str, Any] = {
        "ifname": name, "kind": "macvlan", "link": parent_index, "macvlan_mode": mode,
    }
    if mac and mode != "passthru":
        spec["address"] = mac
    if mtu:
        spec["mtu"] = mtu
    if netns_fd is not None:
        spec["net_ns_fd"] = netns_fd
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        raise _macvlan_error(exc, name, parent, mode, mtu) from exc
    if up:
        index = osl_links.require_index(ipr, name)
        ipr.link("set", index=index, state="up")


def _macvlan_error(
    exc: NetlinkError, name: str, parent: str, mode: str, mtu: int | None
) -> Exception:
    if exc.code == errno.EEXIST:
        return Conflict(f"interface {name} already exists")
    if exc.code == errno.EBUSY:
        return Conflict(
            f"parent interface {parent} is busy: it is enslaved (bridge, bond, team) or "
            "used by another kind of virtual interface"
        )
    if exc.code == errno.EOPNOTSUPP:
        return KernelFeatureMissing("this kernel has no macvlan support (module macvlan)")
    if exc.code == errno.EINVAL:
        if mode == "passthru":
            return Conflict(
                f"passthru mode needs parent interface {parent} to itself, but it already "
                "has macvlan interfaces"
            )
        if mtu:
            return InvalidOption(
                f"the kernel refused macvlan {name} on {parent} with MTU {mtu} (larger than "
                "the parent's?)"
            )
        return Conflict(
            f"the kernel refused a {mode} macvlan on {parent}: it already has a passthru "
            "macvlan interface"
        )
    return KernelError(f"create macvlan {name} on {parent}: {exc.args[-1]}")


def is_macvlan_with_mac(ipr: NetlinkHandle, name: str, mac: str | None) -> bool:
    """Whether ``name`` is a macvlan (with MAC ``mac``, if given): ours, not something
    that later took the same name."""
    info = osl_links.link_info(ipr, name)
    if info is None or info["kind"] != "macvlan":
        return False
    return mac is None or str(info["mac"]).lower() == mac.lower()
