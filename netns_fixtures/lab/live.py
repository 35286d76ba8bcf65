"""A running lab as plain data, read from the kernel now: what ``pycnm lab inspect`` prints
and what the live picture (``lab graph --serve``) draws.

Who does what: ``snapshot`` joins the lab file's names (nodes, links, networks) to what
``graph.scan`` reads from every namespace (interfaces with state, carrier, MTU, addresses,
peers, VXLAN details), the netem qdiscs (``tc``) and, for ``networks``, pycnm's own store
(the ids, bridges and endpoints each host's Controller knows). Everything in it is
JSON-ready. ``fingerprint`` tells two snapshots apart, so the live page redraws only when
something changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from cnm.osl.netns import named_netns_path
from netns_fixtures.lab import graph, tc
from netns_fixtures.lab.model import host_netns

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab


def _iface(iface: graph.Iface, peers: dict[tuple[str, int], str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": iface.name, "kind": iface.kind or "link",
        "state": "up" if iface.up else "down", "carrier": iface.carrier,
        "mtu": iface.mtu, "mac": iface.mac, "addresses": iface.addresses,
        "master": iface.master, "peer": peers.get(iface.peer) if iface.peer else None,
        "netem": iface.netem.to_dict() if iface.netem else None,
    }
    if iface.kind == "vxlan":
        item.update(vni=iface.vni, local=iface.local, port=iface.port,
                    remotes=iface.remotes, neighbours=iface.peers)
    if iface.kind == "macvlan":
        item["mode"] = iface.mode
    return item


def snapshot(lab: Lab, views: list[graph.NsView] | None = None, *,
             networks: bool = True) -> dict[str, Any]:
    """The lab as the kernel (and pycnm's store, with ``networks``) has it now."""
    topo = lab.topology
    views = scan(lab) if views is None else views
    by_ns = {v.name: v for v in views}
    # graph's labels name the sandboxes sharing a namespace ("app +side"): the node's own
    # name is the first part.
    label = {v.name: v.label.split(" +")[0] for v in views}
    peers = {(i.ns, i.ifindex): f"{label[i.ns]}:{i.name}" for v in views for i in v.ifaces}
    nodes = []
    for view in views:
        nodes.append({
            "name": label[view.name], "kind": view.role, "namespace": view.name,
            "host": view.owner, "forwarding": view.forwarding, "routes": view.routes,
            "rules": view.rules, "shared_by": view.label.split(" +")[1:],
            "interfaces": [_iface(i, peers) for i in view.ifaces],
        })
    for spec in topo.sandboxes:
        if not spec.own_namespace:  # the host's or another sandbox's namespace
            nodes.append({"name": spec.name, "kind": "sandbox", "mode": spec.mode,
                          "namespace": topo.netns(spec.name), "host": spec.host,
                          "uses": spec.shares or spec.host, "forwarding": False,
                          "routes": [], "rules": [], "shared_by": [], "interfaces": []})
    present = {v.name for v in views}
    missing = [{"name": n, "kind": "missing", "namespace": topo.netns(n)}
               for n in topo.node_names() if topo.netns(n) not in present]
    links = []
    for link in topo.links:
        ends = []
        for end in (link.a, link.b):
            seen = by_ns.get(topo.netns(end.node))
            iface = next((i for i in seen.ifaces if i.name == end.iface), None) if seen else None
            ends.append(iface)
        if None in ends:
            state = "missing"
        elif all(i.up and i.carrier for i in ends if i is not None):
            state = "up"
        else:
            state = "down"
        links.append({
            "key": link.key(), "a": f"{link.a.node}:{link.a.iface}",
            "b": f"{link.b.node}:{link.b.iface}", "state": state,
            "netem": {f"{e.node}:{e.iface}": i.netem.describe()
                      for e, i in zip((link.a, link.b), ends, strict=True)
                      if i is not None and i.netem is not None},
        })
    return {
        "name": lab.name, "description": topo.description, "status": lab.state.status,
        "source": lab.state.source, "store": lab.state.store,
        "nodes": nodes, "missing": missing, "links": links,
        "networks": _networks(lab) if networks else [],
    }


def with_netem(views: list[graph.NsView]) -> list[graph.NsView]:
    """Fill in each interface's netem (one tc dump per namespace)."""
    for view in views:
        try:
            impaired = tc.read_all(named_netns_path(view.name))
        except Exception:  # noqa: BLE001 - a namespace that went meanwhile has none
            impaired = {}
        for iface in view.ifaces:
            iface.netem = impaired.get(iface.name)
    return views


def _networks(lab: Lab) -> list[dict[str, Any]]:
    """Each lab network on each of its hosts, as that host's pycnm knows it."""
    result = []
    for spec in lab.topology.networks:
        for host in spec.hosts:
            item: dict[str, Any] = {"name": spec.name, "driver": spec.driver, "host": host,
                                    "subnet": spec.subnet, "namespace": host_netns(lab.name,
                                                                                   host)}
            try:
                with lab.controller(host) as ctl:
                    info = ctl.network(spec.name).inspect()
                item.update(id=info["Id"], gateway=next(
                    (c.get("Gateway") for c in info["IPAM"]["Config"]), None),
                    options={k: v for k, v in info["Options"].items()
                             if isinstance(v, str | int | bool)},
                    endpoints=sorted(
                        ({"name": e["Name"], "address": e["IPv4Address"],
                          "mac": e["MacAddress"]} for e in info["Endpoints"].values()),
                        key=lambda e: e["name"]))
            except Exception as exc:  # noqa: BLE001 - say why instead of failing inspect
                item["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.append(item)
    return result


def fingerprint(data: Any) -> str:
    """A short digest of a snapshot: equal for equal states."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scan(lab: Lab) -> list[graph.NsView]:
    """``graph.scan`` plus netem: everything the live picture shows."""
    return with_netem(graph.scan(lab))
