"""Changing a running lab in place to match an edited topology file (containerlab's
re-``deploy``, done as a diff): ``pycnm lab apply FILE [--dry-run]``.

Who does what: ``plan`` compares the topology the lab was built from (its state) with the
new one and lists the changes, each a small named step with its action: what is gone or
different is removed (sandboxes, then networks, routes, links, hosts), then what is new or
different is made with the realiser's own steps (hosts, links, netem, routes, agents,
networks, sandboxes). An object counts as different when its own entry changed or
something it stands on is remade (a sandbox on a remade network, a link of a remade
host); everything else is left exactly as it is: its namespace, interfaces and addresses
are never touched. A netem change alone is made in place. ``run`` carries out a plan and
records the new topology in the lab's state, namespace by namespace as it goes, so that
``lab down`` still removes everything if a step fails half-way.

Refused with one sentence, before anything changes: a first overlay in a lab that was
built without etcd (its store cannot move), and changed ``etcd`` settings (TLS and
authentication stay as the lab's etcd was started): take the lab down and up for those.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from cnm import names
from cnm.errors import Conflict
from cnm.osl.netns import delete_named_netns, list_named_netns
from netns_fixtures.lab import realise, tc
from netns_fixtures.lab.model import (
    Link,
    NetworkSpec,
    Route,
    SandboxSpec,
    Topology,
    host_netns,
    sandbox_name,
)
from netns_fixtures.lab.netem import Netem
from netns_fixtures.lab.state import stop
from netns_fixtures.netns import Namespace, delete_link, delete_route

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab


@dataclass
class Change:
    sign: str  # "-" remove, "+" add, "~" change in place
    text: str
    action: Callable[[], str | None] = field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.sign} {self.text}"


@dataclass
class Plan:
    lab: str
    old: Topology
    new: Topology
    changes: list[Change]
    builder: Any = field(repr=False, default=None)

    def __str__(self) -> str:
        if not self.changes:
            return f"lab {self.lab}: nothing to change"
        lines = [f"lab {self.lab}: {_changes(len(self.changes))}"]
        return "\n".join(lines + [f"  {c}" for c in self.changes])


def _network_key(spec: NetworkSpec) -> tuple[Any, ...]:
    return (spec.driver, spec.subnet, spec.gateway, spec.ip_range, spec.internal,
            tuple(sorted((str(k), str(v)) for k, v in spec.options.items())))


def _link_shape(link: Link) -> tuple[Any, ...]:
    return (link.a, link.b, link.mtu)


def plan(lab: Lab, new: Topology, *, detach: bool = True) -> Plan:
    """The changes that turn ``lab`` into ``new`` (nothing is done yet)."""
    old = lab.topology
    if new.name != old.name:
        new = new.with_name(old.name)
    if new.needs_etcd() and not old.needs_etcd():
        raise Conflict(f"lab {old.name} was built without an overlay, so its store is a "
                       "local SQLite file that other hosts cannot share: take it down and "
                       "up again to add one")
    if new.etcd != old.etcd and old.needs_etcd():
        raise Conflict(f"lab {old.name}'s etcd runs as it was built (tls and auth cannot "
                       "change under running agents): take it down and up again to change "
                       "its 'etcd' settings")
    if new.services != old.services:
        raise Conflict(f"lab {old.name}'s services cannot change in place yet: take it down "
                       "and up again (or change them with pycnm service create/rm)")
    if any(link.netem for link in new.links):
        tc.require()
    builder = realise._Builder(new, lab.state, detach)
    changes: list[Change] = []
    remove: list[Change] = []

    # Hosts: gone, or of another kind (remade).
    old_hosts = {h.name: h for h in old.hosts}
    new_hosts = {h.name: h for h in new.hosts}
    remade_hosts = {n for n, h in old_hosts.items()
                    if n not in new_hosts or new_hosts[n].kind != h.kind}
    added_hosts = [h for h in new.hosts if h.name not in old_hosts or h.name in remade_hosts]

    # Links: keyed by their ends; remade when a host of theirs is.
    old_links = {lk.key(): lk for lk in old.links}
    new_links = {lk.key(): lk for lk in new.links}

    def link_kept(key: str) -> bool:
        a, b = old_links[key], new_links.get(key)
        return (b is not None and _link_shape(a) == _link_shape(b)
                and not {a.a.node, a.b.node} & remade_hosts)

    kept_links = {k for k in old_links if link_kept(k)}
    # Networks: per host; remade when their settings change or their host is remade; a
    # macvlan network also when its parent link is remade.
    old_nets = {(n.name, h): n for n in old.networks for h in n.hosts}
    new_nets = {(n.name, h): n for n in new.networks for h in n.hosts}

    def net_kept(key: tuple[str, str]) -> bool:
        a, b = old_nets[key], new_nets.get(key)
        if b is None or _network_key(a) != _network_key(b) or key[1] in remade_hosts:
            return False
        if a.driver == "macvlan":
            parent = str(a.options.get("parent", ""))
            return all(k in kept_links for k, lk in old_links.items()
                       if any(e.node == key[1] and e.iface == parent for e in (lk.a, lk.b)))
        return True

    kept_nets = {k for k in old_nets if net_kept(k)}
    old_sbs = {s.name: s for s in old.sandboxes}
    new_sbs = {s.name: s for s in new.sandboxes}

    def sandbox_kept(name: str) -> bool:
        a, b = old_sbs[name], new_sbs.get(name)
        return (b is not None and a == b and a.host not in remade_hosts
                and all((att.network, a.host) in kept_nets for att in a.networks))

    kept_sbs = {n for n in old_sbs if sandbox_kept(n)}
    while True:  # a sandbox sharing a remade one's namespace is remade with it
        lost = {n for n in kept_sbs if old_sbs[n].shares not in (None, *kept_sbs)}
        if not lost:
            break
        kept_sbs -= lost

    # --- removals, top down ---
    # Sharers go before the sandboxes whose namespace they use (pycnm refuses otherwise).
    for name in sorted(old_sbs, key=lambda n: -_sharing_depth(old, old_sbs[n])):
        if name not in kept_sbs:
            remove.append(Change("-", f"sandbox {name} on {old_sbs[name].host}",
                                 partial(_remove_sandbox, lab, old_sbs[name])))
    for net, host in old_nets:
        if (net, host) not in kept_nets and host not in remade_hosts:
            remove.append(Change("-", f"network {net} on {host}",
                                 partial(_remove_network, lab, net, host)))
    for old_node in old.hosts:
        if old_node.name in remade_hosts:
            continue
        keep_routes = set(new_hosts[old_node.name].routes)
        for route in old_node.routes:
            if route not in keep_routes:
                remove.append(Change("-", f"route on {old_node.name}: {route.to} via "
                                     f"{route.via}", partial(_remove_route, lab,
                                                             old_node.name, route)))
    for key, link in old_links.items():
        if key not in kept_links and not {link.a.node, link.b.node} & remade_hosts:
            remove.append(Change("-", f"link {key}", partial(_remove_link, lab, link)))
    for name in sorted(remade_hosts):
        remove.append(Change("-", f"{old_hosts[name].kind} {name}",
                             partial(_remove_host, lab, name)))
    changes += remove

    # --- additions, bottom up (the realiser's own steps) ---
    for node in added_hosts:
        changes.append(Change("+", f"{node.kind} {node.name}",
                              partial(builder.make_node, node.name, node.kind)))
    for key, link in new_links.items():
        if key not in kept_links:
            changes.append(Change("+", f"link {key}", partial(builder.make_link, link)))
            if link.netem:
                changes.append(Change("+", f"netem on {key}: {link.netem.describe()}",
                                      partial(tc.impair, new, link)))
        elif link.netem != old_links[key].netem:
            wanted = link.netem or Netem()
            changes.append(Change("~", f"netem on {key}: {wanted.describe()}",
                                  partial(tc.impair, new, link, wanted)))
    # A remade link takes the routes through it along with its interface: they come back.
    rewired = {e.node for k, lk in new_links.items() if k not in kept_links
               for e in (lk.a, lk.b)}
    for node in new.hosts:
        had: set[Route] = set() if node.name in remade_hosts | rewired \
            or node.name not in old_hosts else set(old_hosts[node.name].routes)
        for route in node.routes:
            if route not in had:
                changes.append(Change("+", f"route on {node.name}: {route.to} via {route.via}",
                                      partial(builder.make_route, node.name, route.to,
                                              route.via)))
    running = {p.role.split(" ", 1)[1] for p in lab.state.processes
               if p.role.startswith("agent ")} - remade_hosts
    for name in new.agent_hosts():
        if name not in running:
            changes.append(Change("+", f"agent on {name}", partial(builder.start_agent, name)))
    for (net, host), net_spec in new_nets.items():
        if (net, host) not in kept_nets:
            changes.append(Change("+", f"network {net} on {host}",
                                  partial(builder.make_network, net_spec, host)))
    added_sbs = sorted((s for s in new.sandboxes if s.name not in kept_sbs),
                       key=lambda s: _sharing_depth(new, s))
    for sb_spec in added_sbs:
        changes.append(Change("+", f"sandbox {sb_spec.name} on {sb_spec.host}",
                              partial(builder.make_sandbox, sb_spec)))
    if any(new.network(a.network).driver == "overlay"  # type: ignore[union-attr]
           for s in added_sbs for a in s.networks):
        changes.append(Change("+", "overlay peers",
                              partial(_wait_for_peers, lab, builder, new, kept_sbs)))
    return Plan(old.name, old, new, changes, builder)


def run(lab: Lab, the_plan: Plan, progress: Callable[[str], None] = print) -> None:
    """Carry out ``the_plan``; the lab's state then holds the new topology."""
    builder = the_plan.builder
    started = time.monotonic()
    try:
        for index, change in enumerate(the_plan.changes, 1):
            detail = change.action()
            progress(f"[{index:>2}/{len(the_plan.changes)}] {change}"
                     + (f": {detail}" if detail else ""))
    finally:
        if builder is not None:
            builder.close()
        # What was made is noted as it was made; the file is the new target either way,
        # so a rerun of apply continues from here and lab down removes everything.
        lab.state.data = dict(the_plan.new.data)
        lab.state.save()
    lab.topology = the_plan.new
    progress(f"lab {lab.name}: {_changes(len(the_plan.changes))} in "
             f"{time.monotonic() - started:.1f} s")


def _changes(count: int) -> str:
    return f"{count} change" + ("" if count == 1 else "s")


def _sharing_depth(topo: Topology, spec: SandboxSpec | None) -> int:
    """How many sandboxes stand between ``spec`` and a namespace of its own."""
    depth = 0
    while spec is not None and spec.shares is not None and depth <= len(topo.sandboxes):
        depth, spec = depth + 1, topo.sandbox(spec.shares)
    return depth


# --- removing ------------------------------------------------------------------------------


def _forget_namespace(lab: Lab, ns: str) -> None:
    if ns in lab.state.namespaces:
        lab.state.namespaces.remove(ns)
        lab.state.save()


def _remove_sandbox(lab: Lab, spec: SandboxSpec) -> str:
    from cnm.errors import NotFound

    name = sandbox_name(lab.name, spec.name)
    with lab.controller(spec.host) as ctl, contextlib.suppress(NotFound):
        ctl.sandbox(name).delete()
    if not spec.own_namespace:  # the host's or another sandbox's: never ours to delete
        return f"mode {spec.mode}: pycnm's record removed"
    delete_named_netns(names.sandbox_netns(name))  # already gone: success
    _forget_namespace(lab, names.sandbox_netns(name))
    return f"namespace {names.sandbox_netns(name)} removed"


def _remove_network(lab: Lab, network: str, host: str) -> str:
    from cnm.errors import NotFound

    with lab.controller(host) as ctl, contextlib.suppress(NotFound):
        ctl.network(network).delete(force=True)
    return "removed through pycnm"


def _remove_route(lab: Lab, host: str, route: Route) -> None:
    delete_route(Namespace(lab.netns(host), create=False), route.to)


def _remove_link(lab: Lab, link: Link) -> str:
    delete_link(Namespace(lab.netns(link.a.node), create=False), link.a.iface)
    return f"veth {link.a.iface} (and its peer {link.b.iface}) deleted"


def _remove_host(lab: Lab, host: str) -> str:
    """Its agent stops, pycnm removes what it made there, then its namespaces go."""
    ns = host_netns(lab.name, host)
    for proc in [p for p in lab.state.processes if p.role == f"agent {host}"]:
        stop(proc.pid, proc.marker)
        lab.state.processes.remove(proc)
        lab.state.save()
    node = lab.topology.host(host)
    if node is not None and node.kind == "host" and ns in list_named_netns():
        with contextlib.suppress(Exception), lab.controller(host) as ctl:
            ctl.cleanup_all()
    overlays = [n for n in list_named_netns()
                if n.startswith(names.OVERLAY_NETNS_PREFIX) and n.endswith(f"-{ns}")]
    for name in [*overlays, ns]:
        delete_named_netns(name)
        _forget_namespace(lab, name)
    return f"namespace {ns} removed"


def _wait_for_peers(lab: Lab, builder: Any, new: Topology, kept: set[str]) -> str:
    """The realiser's wait, told also about the endpoints and VTEPs that were already
    there: old VTEPs must learn the new endpoints, new VTEPs the old ones."""
    for name in sorted(kept):
        spec = new.sandbox(name)
        assert spec is not None
        for att in spec.networks:
            if new.network(att.network).driver != "overlay":  # type: ignore[union-attr]
                continue
            endpoint = builder.controller(spec.host).network(att.network).endpoint(spec.name)
            info = endpoint.operational_info()
            builder.vteps[(att.network, spec.host)] = (info["Namespace"], int(info["VNI"]))
            address = endpoint.record.address
            if address:
                builder.endpoint_ips.setdefault((att.network, spec.host), []).append(
                    address.split("/")[0])
    return builder.wait_for_peers()
