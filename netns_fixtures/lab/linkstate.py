"""Links of a running lab going down and up (Mininet's ``link s1 s2 down``), and which
interfaces are broken right now: down, missing, or without carrier.

Who does what: ``set_state`` flips one interface's administrative state through pyroute2
in the node's namespace; ``problems`` reads every interface the lab file names (link
ends, and each sandbox's ``eth*``) from the live kernel and says, one sentence each,
what is wrong with them (or that a node's namespace is gone), so ``pycnm lab check``
can report what broke next to the matrix that shows the effect. (Subtler faults, such as
two MTUs on one link, are left for the learner to find: lab 11 teaches how.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cnm.errors import NotFound
from cnm.osl.netns import named_netns_path
from netns_fixtures.lab import kernel

if TYPE_CHECKING:
    from netns_fixtures.lab.model import Topology


def set_state(ns_path: str, iface: str, up: bool) -> None:
    """``ip link set IFACE up|down`` in the namespace at ``ns_path``."""
    from cnm.osl.netns import iproute

    with iproute(ns_path) as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise NotFound(f"there is no interface {iface!r} there")
        ipr.link("set", index=found[0], state="up" if up else "down")


def missing_namespace(topo: Topology, node: str) -> str | None:
    """One sentence if ``node``'s namespace is gone (deleted outside the lab), else None."""
    ns = topo.netns(node)
    if os.path.exists(named_netns_path(ns)):
        return None
    return (f"{node}'s namespace {ns} is gone (deleted outside pycnm): 'pycnm lab down "
            f"{topo.name}' and 'lab up' rebuild the lab")


def problems(topo: Topology) -> list[str]:
    """One sentence per broken interface of the lab, as the kernel has it now."""
    found: list[str] = []
    gone: set[str] = set()  # said once per namespace (a sharer's is its owner's)
    for node in topo.node_names():
        why = None if topo.netns(node) in gone else missing_namespace(topo, node)
        if why:
            found.append(why)
            gone.add(topo.netns(node))
    views: dict[str, dict[str, dict[str, object]]] = {}

    def view(node: str) -> dict[str, dict[str, object]]:
        if node not in views:
            views[node] = {str(link["ifname"]): link for link in
                           kernel.ip_json(topo.netns(node), "link", "show")}
        return views[node]

    for link in topo.links:
        if {topo.netns(link.a.node), topo.netns(link.b.node)} & gone:
            continue  # said above, once
        ends = [(end, view(end.node).get(end.iface)) for end in (link.a, link.b)]
        for (end, info), (peer, _) in (ends, ends[::-1]):
            where = f"{end.node}:{end.iface}"
            if info is None:
                found.append(f"{where} is missing (its link to {peer.node}:{peer.iface} is "
                             "gone)")
            elif "UP" not in info.get("flags", []):  # type: ignore[operator]
                found.append(f"{where} is down: 'pycnm lab link {where} up' brings it back")
            elif "NO-CARRIER" in info.get("flags", []):  # type: ignore[operator]
                found.append(f"{where} has no carrier: its peer {peer.node}:{peer.iface} is "
                             "down")
    for sandbox in topo.sandboxes:
        if topo.netns(sandbox.name) in gone:
            continue
        for i, _ in enumerate(sandbox.networks):
            info = view(sandbox.name).get(f"eth{i}")
            if info is not None and "UP" not in info.get("flags", []):  # type: ignore[operator]
                found.append(f"{sandbox.name}:eth{i} is down: 'pycnm lab link "
                             f"{sandbox.name}:eth{i} up' brings it back")
    return found
