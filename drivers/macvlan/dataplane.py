"""Kernel work of the macvlan driver: macvlan links (parents and 802.1q sub-interfaces are
``drivers.parent``'s, shared with ipvlan).

Every helper takes an open netlink handle on the host namespace (``cnm.osl.iproute``), so
one driver call pays for one socket. The kernel answers most macvlan mistakes with a bare
EINVAL or EBUSY; these helpers check first where they can and otherwise turn the errno into
a sentence that says which rule was broken.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import Conflict, InvalidOption, KernelError
from cnm.osl import links as osl_links
from cnm.osl.netns import NetlinkHandle
from drivers.parent import child_error, is_child


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
    shared = child_error(exc, "macvlan", name, parent)
    if shared is not None:
        return shared
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
    return is_child(ipr, name, "macvlan", mac)
