"""Remove every kernel object pycnm made, by its name prefix only (never a guess)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable

from cnm import names
from cnm.osl import iproute, nft
from cnm.osl.links import delete_link
from cnm.osl.netns import delete_named_netns, list_named_netns
from cnm.osl.nftjson import Family


def remove_kernel_objects(host_ns: str | None = None, host_id: str | None = None) -> list[str]:
    """Delete pycnm's links, namespaces and nft tables; return what was removed.

    With ``host_ns`` (an emulated host, whose /run/netns is every host's) only the
    namespaces that name the host are its own: its overlays' ``pcov-<vni>-<host>``, the
    host id defaulting as the Controller's does (the host namespace's name).
    """
    removed: list[str] = []
    own = _own_namespace if host_ns is None else _overlay_namespace_of(
        host_id or host_ns.rstrip("/").rsplit("/", 1)[-1])
    for ns_name in list_named_netns():
        if own(ns_name):
            delete_named_netns(ns_name)
            removed.append(f"namespace {ns_name}")
    with iproute(host_ns) as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name and names.is_pycnm_kernel_name(name):
                delete_link(ipr, name)
                removed.append(f"link {name}")
    with contextlib.suppress(Exception):  # best effort, as for the links above
        tables = nft.list_tables(host_ns)
        ours: list[tuple[Family, str]] = [("inet", names.NFT_TABLE),
                                          ("ip", names.NFT_INGRESS_TABLE),
                                          ("ip", names.NFT_SERVICES_TABLE)]
        for family, table in ours:
            if (family, table) in tables:
                nft.delete_table(host_ns, family, table)
                removed.append(f"nft table {family} {table}")
    nft.release_table(host_ns)
    if host_ns is None and os.path.isdir("/etc/netns"):
        for entry in os.listdir("/etc/netns"):
            if names.is_pycnm_kernel_name(entry):
                delete_named_netns(entry)
    return removed


def _own_namespace(name: str) -> bool:
    return names.is_pycnm_kernel_name(name)


def _overlay_namespace_of(host_id: str) -> Callable[[str], bool]:
    """An emulated host's own namespaces: its overlays' and its load balancers'."""
    pattern = re.compile(rf"(?:{re.escape(names.OVERLAY_NETNS_PREFIX)}[0-9]+|"
                         rf"{re.escape(names.LB_NETNS_PREFIX)}[0-9A-Za-z]+)-"
                         rf"{re.escape(host_id)}")
    return lambda name: bool(pattern.fullmatch(name))


def forget_host(controller: object) -> None:
    """Delete this host's records from the store (after which nothing is rebuilt)."""
    ctl = controller  # a cnm.controller.Controller
    for entry in ctl.local.list(""):  # type: ignore[attr-defined]
        ctl.local.delete(entry.key)  # type: ignore[attr-defined]
