"""Load-balanced services: their records, their backends, and this host's load balancer
kept in line with them.

Where a service's records live (a ``Space``): a service on a network that only this host
has (bridge, macvlan) is this host's, ``services/<nid>/<name>`` in its key space; a
service on a network with a cluster scope (an overlay) is the cluster's,
``services/<scope>/<name>`` in the global key space, so every host that has the overlay
serves it, and each host publishes its own backends there
(``service-backends/<scope>/<host>/<endpoint>``, under the host's lease when its agent
runs). A backend is an endpoint joined with the service named (``EndpointRecord.services``).

``apply(nid)`` is the one way this host's kernel follows the records, declaratively, and
whoever changed something calls it (the CLI, the Python API), as does the agent when the
store changes under it (another host's backend, a service made elsewhere): under the
host's ruleset lock it reads the records, makes or repairs the network's load-balancer
namespace (``cnm.osl.lbns``), loads its table in one nft transaction when the plan
changed, keeps the host's ingress table in line, and records what it serves at
``lb/networks/<nid>`` (the names the resolver gives, ``inspect``, and what to tear down).
Why a load-balancer namespace per network and not rules in every client: docs/services.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cnm import inputs, names
from cnm.driverapi import OPT_JOIN_IFNAME
from cnm.errors import CNMError, Conflict, InvalidOption, NotFound, StoreUnavailable
from cnm.osl import lbns, nft, plumbing
from cnm.osl import nftjson as j
from cnm.osl.netns import netns_exists
from cnm.records import EndpointRecord, NetworkRecord
from cnm.services import model, rules
from cnm.services.model import ServiceRecord
from cnm.store.base import Store
from cnm.store.prefixed import PrefixedStore

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger(__name__)

LB_KEY = "lb/networks/"  # this host's load balancer per network (watched by the resolver)
INGRESS_KEY = "lb/ingress"
FAST_KEY = "lb/fast"  # what the host's fast-path table holds (its plan's fingerprint)
AGENT_KEY = "lb/agent"
DEFAULT_DRAIN = 10.0  # seconds a leaving backend's open TCP connections may take
DRAIN_POLL = 0.05

IPv4 = ipaddress.IPv4Address


@dataclass(frozen=True)
class Space:
    """Where the services of one network live (see the module's notes)."""

    network_id: str
    scope: str | None
    store: Store

    @property
    def prefix(self) -> str:
        return f"services/{self.scope or self.network_id}/"

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def backends_prefix(self) -> str:
        return f"service-backends/{self.scope}/"

    def services(self) -> list[ServiceRecord]:
        found = []
        for entry in self.store.list(self.prefix):
            if "/" not in entry.key[len(self.prefix):]:
                found.append(ServiceRecord.from_dict(entry.value))
        return sorted(found, key=lambda s: s.name)

    def get(self, name: str) -> ServiceRecord | None:
        entry = self.store.get(self.key(name))
        return None if entry is None else ServiceRecord.from_dict(entry.value)


class Service:
    """Handle on a service of one network (as seen from this host)."""

    def __init__(self, controller: Controller, network_id: str, name: str) -> None:
        self.controller = controller
        self.network_id = network_id
        self.name = name

    def __repr__(self) -> str:
        return f"<Service {self.name} on {self.network_id[:12]}>"

    @property
    def manager(self) -> Services:
        return Services(self.controller)

    @property
    def record(self) -> ServiceRecord:
        found = self.manager.space(self.network_id).get(self.name)
        if found is None:
            raise NotFound(f"no service named {self.name!r}")
        return found

    @property
    def vip(self) -> IPv4 | None:
        vip = self.record.vip
        return IPv4(vip) if vip else None

    def backends(self) -> list[dict[str, str]]:
        """Every backend the service has (on this host, and published by other hosts)."""
        return [{"Endpoint": eid, "Address": str(address), "Host": host}
                for eid, address, host in self.manager.backends(self.network_id)[self.name]]

    def inspect(self) -> dict[str, Any]:
        rec = self.record
        mgr = self.manager
        net = self.controller._network_record(self.network_id)
        lb = mgr.lb_state(self.network_id)
        return {
            "Name": rec.name, "ID": rec.id, "Network": net.name, "NetworkID": net.id,
            "Scope": mgr.space(self.network_id).scope or "local", "Mode": rec.mode,
            "Balance": rec.balance if rec.mode == "vip" else "",
            "VirtualIP": rec.vip or "", "Ports": [str(p) for p in rec.port_list()],
            "Publish": [str(p) for p in rec.published()], "Created": rec.created,
            "Backends": self.backends(),
            "LoadBalancer": ({"Namespace": lb.get("netns", ""), "Address": lb.get("address", ""),
                              "Ingress": lb.get("ingress_link", "")}
                             if lb and lb.get("netns") else {}),
        }

    def delete(self) -> None:
        self.manager.remove(self.network_id, self.name)


class Services:
    """The services this host sees, and its load balancers (a thin object: state is in
    the store)."""

    def __init__(self, controller: Controller) -> None:
        self.ctl = controller

    # --- where things are -------------------------------------------------------------

    def space(self, nid: str, net: NetworkRecord | None = None) -> Space:
        net = net or self.ctl._network_record(nid)
        try:
            scope = self.ctl.driver(net.driver).dns_scope(nid)
        except CNMError:
            scope = None
        if scope is None:
            return Space(nid, None, self.ctl.local)
        return Space(nid, scope, PrefixedStore(self.ctl.store, "global/"))

    def all(self) -> list[Service]:
        found = []
        for entry in self.ctl.local.list("networks/"):
            nid = entry.value["id"]
            found += [Service(self.ctl, nid, s.name) for s in self.space(nid).services()]
        return sorted(found, key=lambda s: s.name)

    def find(self, name: str, network: str | None = None) -> Service:
        if network is not None:
            nid = self.ctl.network(network).id
            if self.space(nid).get(name) is None:
                raise NotFound(f"network {network} has no service named {name!r}")
            return Service(self.ctl, nid, name)
        matches = [s for s in self.all() if s.name == name]
        if not matches:
            raise NotFound(f"no service named {name!r}")
        if len(matches) > 1:
            raise Conflict(f"service name {name!r} is on several networks: name the network")
        return matches[0]

    def lb_state(self, nid: str) -> dict[str, Any]:
        entry = self.ctl.local.get(LB_KEY + nid)
        return dict(entry.value) if entry is not None else {}

    # --- services ---------------------------------------------------------------------

    def create(self, name: str, network: str, ports: object, *, vip: str | None = None,
               mode: str = "vip", balance: str | None = None,
               publish: object = None) -> Service:
        """Create a service (see ``Controller.new_service``); nothing is left on failure."""
        model.check_name(name)
        model.check_choice(mode, "mode", model.MODES)
        if balance is not None:
            model.check_choice(balance, "balance", model.BALANCES)
        port_list = model.check_ports(ports)
        published = model.check_publish(publish, port_list)
        if mode == "dnsrr":
            given = [what for what, value in (("a virtual IP", vip), ("a balancing method",
                                              balance), ("published ports", published))
                     if value]
            if given:
                raise InvalidOption(f"{', '.join(given)} cannot be given with mode dnsrr: the "
                                    "service has no virtual IP, its name resolves to its "
                                    "backends (use --mode vip)")
        net_handle = self.ctl.network(network)
        net = net_handle.record
        if published and net.internal:
            raise InvalidOption(f"network {net.name} is internal: its services cannot publish "
                                "ports on the host")
        if self.ctl.driver(net.driver).endpoints_isolated(net.id):
            raise InvalidOption(f"the sandboxes of network {net.name} cannot reach each other "
                                "(icc=false), so they could not reach a service on it either")
        space = self.space(net.id, net)
        for other in self.all():
            if other.name == name:
                raise Conflict(f"a service named {name!r} already exists (on network "
                               f"{self.ctl._network_record(other.network_id).name})")
            for item in other.record.published():
                if any((p.proto, p.host_port) == (item.proto, item.host_port) for p in published):
                    raise Conflict(f"host port {item.host_port}/{item.proto} is already "
                                   f"published by service {other.name}")
        record = ServiceRecord(
            id=names.new_id()[:12], name=name, mode=mode, balance=balance or "rr",
            ports=[asdict(p) for p in port_list], publish=[asdict(p) for p in published],
            ipam_scope=net.ipam_scope,
        )
        with contextlib.ExitStack() as undo:
            if mode == "vip":
                address, pool = self._allocate_vip(net, vip)
                record.vip, record.vip_pool = str(address), pool
                undo.callback(self._release_vip, record)
            undo.callback(self._apply_quietly, net.id)
            if not space.store.create(space.key(name), record.to_dict()):
                raise Conflict(f"a service named {name!r} already exists on network {net.name}")
            undo.callback(space.store.delete, space.key(name))
            revision = self.apply(net.id)
            undo.pop_all()
        log.info("service %s: created on network %s (mode %s, VIP %s)", name, net.name, mode,
                 record.vip or "none")
        self.ctl.settle_dns(revision)
        return Service(self.ctl, net.id, name)

    def _allocate_vip(self, net: NetworkRecord, wanted: str | None) -> tuple[IPv4, str]:
        pools = net.pools(4)
        if not pools:
            raise InvalidOption(f"network {net.name} has no IPv4 subnet: a virtual IP needs one "
                                "(or use --mode dnsrr)")
        if net.ipam != "pycnm":
            raise InvalidOption(f"network {net.name}'s addresses are not pycnm's to hand out "
                                "(Docker's IPAM): use --mode dnsrr")
        ipam = self.ctl.ipam_for(net.ipam_scope)
        if wanted is not None:
            address = inputs.address(wanted, "the virtual IP (--vip)", 4)
            for pool in pools:
                if address in ipaddress.ip_network(pool.subnet):
                    got = ipam.request_address(pool.pool_id, address)
                    return IPv4(str(got)), pool.pool_id
            raise InvalidOption(f"the virtual IP {address} is not in network {net.name}'s "
                                f"subnet(s) {', '.join(p.subnet for p in pools)}")
        got = ipam.request_address(pools[0].pool_id)
        return IPv4(str(got)), pools[0].pool_id

    def _release_vip(self, record: ServiceRecord) -> None:
        if record.vip and record.vip_pool:
            self.ctl.ipam_for(record.ipam_scope).release_address(record.vip_pool, record.vip)

    def remove(self, nid: str, name: str) -> None:
        """Remove a service (its backends stay attached as plain endpoints)."""
        space = self.space(nid)
        record = space.get(name)
        if record is None:
            raise NotFound(f"no service named {name!r}")
        space.store.delete(space.key(name))
        try:
            revision = self.apply(nid)
        finally:
            self._release_vip(record)
        log.info("service %s: removed", name)
        self.ctl.settle_dns(revision)

    def check_membership(self, nid: str, services: Iterable[str]) -> list[str]:
        """The services an endpoint of network ``nid`` may join (validated, in order)."""
        result: list[str] = []
        space = self.space(nid)
        for name in services:
            model.check_name(name)
            if space.get(name) is None:
                net = self.ctl._network_record(nid)
                raise NotFound(f"network {net.name} has no service named {name!r}: create it "
                               f"first (pycnm service create {name} --network {net.name} ...)")
            if name not in result:
                result.append(name)
        return result

    # --- backends ---------------------------------------------------------------------

    def local_backends(self, nid: str) -> list[EndpointRecord]:
        """This host's endpoints of ``nid`` that serve some service now."""
        found = []
        for entry in self.ctl.local.list(f"endpoints/{nid}/"):
            ep = EndpointRecord.from_dict(entry.value)
            if ep.services and ep.sandbox_id and not ep.draining and ep.address:
                found.append(ep)
        return found

    def backends(self, nid: str) -> dict[str, list[tuple[str, IPv4, str]]]:
        """Service name -> (endpoint id, address, host) of every backend, sorted."""
        space = self.space(nid)
        result: dict[str, list[tuple[str, IPv4, str]]] = {s.name: [] for s in space.services()}
        for ep in self.local_backends(nid):
            for name in ep.services:
                if name in result:
                    result[name].append((ep.id, ipaddress.IPv4Interface(ep.address).ip,
                                         self.ctl.host_id))
        if space.scope is not None:
            for entry in space.store.list(space.backends_prefix):
                parts = entry.key[len(space.backends_prefix):].split("/")
                if len(parts) != 2 or parts[0] == self.ctl.host_id:
                    continue
                try:
                    address = IPv4(entry.value["address"])
                    serves = [str(n) for n in entry.value.get("services", ())]
                except (KeyError, TypeError, ValueError):
                    continue  # not a record pycnm wrote
                for name in serves:
                    if name in result:
                        result[name].append((parts[1], address, parts[0]))
        for items in result.values():
            items.sort(key=lambda item: (item[1], item[0]))
        return result

    def begin_drain(self, ep_handle: Any, drain: float | None) -> None:
        """A backend leaves: out of the rules at once (one transaction), then its open TCP
        connections to the service's ports may finish, for at most ``drain`` seconds."""
        ctl = self.ctl
        ep: EndpointRecord = ep_handle.record
        ctl.local.update(f"endpoints/{ep.network_id}/{ep.id}",
                         lambda value: {**(value or {}), "draining": True})
        revision = self.apply(ep.network_id)
        ctl.settle_dns(revision)
        wait = DEFAULT_DRAIN if drain is None else max(0.0, float(drain))
        ports = set()
        space = self.space(ep.network_id)
        for name in ep.services:
            record = space.get(name)
            if record is not None:
                ports |= {p.port for p in record.port_list() if p.proto == "tcp"}
        if not ports or not wait or not ep.sandbox_key:
            return
        deadline = time.monotonic() + wait
        while lbns.busy_connections(ep.sandbox_key, ports) and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL)

    # --- the kernel -------------------------------------------------------------------

    def _apply_quietly(self, nid: str) -> None:
        try:
            self.apply(nid)
        except CNMError as exc:
            log.warning("load balancer of network %s: %s", nid[:12], exc)

    def apply(self, nid: str, force: bool = False) -> int:
        """Bring this host's load balancer of network ``nid`` in line with the store; the
        store revision of the record it leaves (0: nothing written)."""
        with lbns.lock(self.ctl.host_ns):
            return self._apply(nid, force)

    def _apply(self, nid: str, force: bool) -> int:
        ctl = self.ctl
        state = self.lb_state(nid)
        entry = ctl.local.get(f"networks/{nid}")
        if entry is None:
            self._teardown(nid, state)
            revision = self._write_state(nid, None)
            self._apply_fast(False)
            return revision
        net = NetworkRecord.from_dict(entry.value)
        space = self.space(nid, net)
        services = space.services()
        if not services and not state and space.scope is None:
            return 0  # nothing to serve, nothing made
        backends = self.backends(nid)
        vip_services = [s for s in services if s.mode == "vip" and s.vip]
        new_state: dict[str, Any] = {
            "network": nid, "names": [
                {"service": s.name, "mode": s.mode, "vip": s.vip,
                 "backends": [str(a) for _, a, _ in backends[s.name]]} for s in services],
        }
        if vip_services:
            new_state.update(self._ensure_lb(net, state, force))
            if new_state.get("made"):  # recorded at once: a failure below can undo it
                self._write_state(nid, {**new_state, "made": None, "rules": None})
            plan = rules.LbPlan(IPv4(new_state["address"]), tuple(
                rules.ServicePlan(s.id, IPv4(s.vip or ""), tuple(s.port_list()), s.balance,
                                  tuple(a for _, a, _ in backends[s.name]), _seed(s.id))
                for s in vip_services))
            fingerprint = _fingerprint(plan)
            path = new_state["netns_path"]
            # Kernel work only for what changed (a backend change is one nft transaction),
            # everything when forced (a restart, a full resync).
            made = force or bool(new_state.get("made"))
            bridge = self._services_bridge(net)
            if bridge is not None:
                new_state["fast"] = {"bridge": bridge, "services": [
                    _plan_record(s) for s in plan.services]}
            jobs: list[tuple[str | None, list[j.Command], str]] = []
            if made or fingerprint != state.get("rules"):
                chains, sets = rules.lb_ruleset(plan)
                jobs.append((path, j.replace_table(rules.FAMILY, rules.LB_TABLE, chains, sets),
                             f"load balancer of network {net.name}"))
            # The host's fast path changes with the balancer's: both transactions at once.
            fast_jobs, fast_done = self._fast_change(self._fast_plan(nid, new_state), False)
            nft.load_many(jobs + fast_jobs)
            fast_done()
            new_state["vips"] = [str(v) for v in plan.vips()]
            if made or new_state["vips"] != state.get("vips"):
                lbns.set_vips(path, plan.vips())
            new_state["rules"] = fingerprint
            new_state.pop("made", None)
            published = [(p, IPv4(s.vip or "")) for s in vip_services for p in s.published()]
            if published:
                link = lbns.ingress_name(nid)
                new_state["ingress_link"] = link
                new_state["ingress"] = [
                    {"proto": p.proto, "host_port": p.host_port, "vip": str(v), "port": p.port}
                    for p, v in published]
                new_state["subnets"] = [pool.subnet for pool in net.pools(4)]
                if made or state.get("ingress_link") != link or \
                        {i["vip"] for i in state.get("ingress", ())} != \
                        {i["vip"] for i in new_state["ingress"]}:
                    lbns.ensure_ingress(ctl.host_ns, path, link, {v for _, v in published})
                    lbns.enable_forwarding(ctl.host_ns)
            elif state.get("ingress_link"):
                lbns.remove_ingress(ctl.host_ns, state["ingress_link"])
        else:
            self._teardown(nid, state)
        if space.scope is not None:
            self._publish(space, nid)
        revision = self._write_state(nid, new_state)
        if not vip_services and state.get("fast"):
            self._apply_fast(False)
        self._apply_ingress(False)
        return revision

    def _services_bridge(self, net: NetworkRecord) -> str | None:
        try:
            return self.ctl.driver(net.driver).services_bridge(net.id)
        except CNMError:
            return None  # a driver that is away: its network keeps the balancer's path

    def _fast_plan(self, nid: str | None = None,
                   state: dict[str, Any] | None = None) -> rules.FastPlan:
        """The host's fast path, from every network's state (``state``: network ``nid``'s
        new one, not yet written)."""
        states = {e.key[len(LB_KEY):]: e.value for e in self.ctl.local.list(LB_KEY)}
        if nid is not None:
            states[nid] = state or {}
        return rules.FastPlan(tuple(
            _fast_network(key, states[key]["fast"]) for key in sorted(states)
            if states[key].get("fast")))

    def _fast_change(self, plan: rules.FastPlan, force: bool
                     ) -> tuple[list[tuple[str | None, list[j.Command], str]], Any]:
        """The transaction that loads ``plan`` into the host's table (none when it holds
        it already), and what to call once it is loaded."""
        previous = self.ctl.local.get(FAST_KEY)
        have = previous.value.get("rules") if previous is not None else None
        want = _fingerprint(plan) if plan.networks else None
        if not force and have == want:
            return [], lambda: None
        if want is None:
            commands = j.delete_table(rules.FAMILY, rules.SERVICES_TABLE)
        else:
            chains, sets = rules.fast_ruleset(plan)
            commands = j.replace_table(rules.FAMILY, rules.SERVICES_TABLE, chains, sets)

        def done() -> None:
            if want is None:
                self.ctl.local.delete(FAST_KEY)
            else:
                self.ctl.local.put(FAST_KEY, {"rules": want})

        return [(self.ctl.host_ns, commands, "the load balancers' fast path")], done

    def _apply_fast(self, force: bool) -> None:
        """The host's fast-path table, from every network's state as written."""
        jobs, done = self._fast_change(self._fast_plan(), force)
        nft.load_many(jobs)
        done()

    def _write_state(self, nid: str, state: dict[str, Any] | None) -> int:
        key = LB_KEY + nid
        if state is None or (not state.get("names") and not state.get("netns")):
            self.ctl.local.delete(key)
            return 0
        current = self.ctl.local.get(key)
        if current is not None and current.value == state:
            return 0
        return self.ctl.local.put(key, state)

    def _ensure_lb(self, net: NetworkRecord, state: dict[str, Any],
                   force: bool) -> dict[str, Any]:
        """The namespace and its leg, made or repaired; what the state records of them."""
        ctl = self.ctl
        name = lbns.netns_name(net.id, ctl.host_id, ctl.host_ns is not None)
        path = state.get("netns_path") or ""
        eid = state.get("endpoint")
        leg = ctl.local.get(f"endpoints/{net.id}/{eid}") if eid else None
        # Looking inside costs a netlink socket in the namespace: only when forced (a
        # restart, a resync); otherwise the namespace's file is proof enough.
        present = lbns.leg_present(path) if force else netns_exists(path) if path else False
        if leg is not None and path and present:
            return {k: state[k] for k in ("netns", "netns_path", "endpoint", "address")}
        self._teardown(net.id, state)  # a half or lost one: start again
        with contextlib.ExitStack() as undo:
            path = lbns.create(name, ctl.host_ns)
            undo.callback(lbns.remove, name)
            from cnm.network import Network

            ep = Network(ctl, net.id).create_endpoint(f"lb-{net.id[:12]}")
            undo.callback(ep.delete, True)
            rec = ep.record
            drv = ctl.driver(net.driver)
            info = drv.join(net.id, ep.id, path, {OPT_JOIN_IFNAME: lbns.LEG})
            undo.callback(drv.leave, net.id, ep.id)
            if not info.placed:
                plumbing.move_into(ctl.host_ns, path, info.src_name, lbns.LEG)
            plumbing.configure_inside(
                path, lbns.LEG,
                addresses=[ipaddress.ip_interface(rec.address)] if rec.address else [],
                mac=None if info.placed else rec.mac)
            rec.sandbox_key, rec.ifname = path, lbns.LEG
            rec.src_name = None if info.placed else info.src_name
            ctl.local.put(f"endpoints/{net.id}/{ep.id}", rec.to_dict())
            undo.pop_all()
        drv.joined(net.id, ep.id)
        if rec.address is None:
            raise InvalidOption(f"network {net.name} gave the load balancer no IPv4 address")
        log.info("load balancer of network %s: namespace %s, address %s", net.name, name,
                 rec.address)
        return {"netns": name, "netns_path": path, "endpoint": ep.id,
                "address": str(ipaddress.ip_interface(rec.address).ip), "made": True}

    def _teardown(self, nid: str, state: dict[str, Any]) -> None:
        """Remove the load balancer (leg, ingress link, namespace); gone parts are success."""
        ctl = self.ctl
        if state.get("ingress_link"):
            lbns.remove_ingress(ctl.host_ns, state["ingress_link"])
        eid = state.get("endpoint")
        if eid:
            from cnm.endpoint import Endpoint

            entry = ctl.local.get(f"endpoints/{nid}/{eid}")
            if entry is not None:
                rec = EndpointRecord.from_dict(entry.value)
                net = ctl.local.get(f"networks/{nid}")
                if net is not None:
                    drv = ctl.driver(net.value["driver"])
                    if rec.sandbox_key and rec.src_name:
                        plumbing.unplug(rec.sandbox_key, lbns.LEG, ctl.host_ns, rec.src_name)
                    drv.leave(nid, eid)
                    Endpoint(ctl, nid, eid).delete(force=True)
                else:
                    ctl.local.delete(f"endpoints/{nid}/{eid}")
        if state.get("netns"):
            lbns.remove(state["netns"])

    def _apply_ingress(self, force: bool) -> None:
        """The host's published service ports, from every network's state."""
        ctl = self.ctl
        ports: list[rules.IngressPort] = []
        link_list: list[tuple[str, tuple[ipaddress.IPv4Network, ...]]] = []
        for entry in ctl.local.list(LB_KEY):
            state = entry.value
            if not state.get("ingress_link"):
                continue
            ports += [rules.IngressPort(p["proto"], int(p["host_port"]), IPv4(p["vip"]),
                                        int(p["port"])) for p in state.get("ingress", ())]
            link_list.append((state["ingress_link"], tuple(
                ipaddress.IPv4Network(s) for s in state.get("subnets", ()))))
        plan = rules.IngressPlan(tuple(sorted(ports, key=lambda p: (p.proto, p.host_port))),
                                 tuple(sorted(link_list)))
        fingerprint = _fingerprint(plan)
        previous = ctl.local.get(INGRESS_KEY)
        if not force and previous is not None and previous.value.get("rules") == fingerprint:
            return
        if not plan.ports:
            if previous is not None or force:
                nft.delete_table(ctl.host_ns, rules.FAMILY, rules.INGRESS_TABLE)
                ctl.local.delete(INGRESS_KEY)
            return
        nft.replace_table(ctl.host_ns, rules.FAMILY, rules.INGRESS_TABLE,
                          rules.ingress_ruleset(plan), what="published service ports")
        ctl.local.put(INGRESS_KEY, {"rules": fingerprint})

    # --- the cluster ------------------------------------------------------------------

    def _publish(self, space: Space, nid: str, lease: Any = None) -> None:
        """This host's backends on a cluster-wide network, for the other hosts."""
        store = space.store
        mine_prefix = f"{space.backends_prefix}{self.ctl.host_id}/"
        if lease is None:
            agent = self.ctl.local.get(AGENT_KEY)
            lease = agent.value.get("lease") if agent is not None else None
        wanted = {
            mine_prefix + ep.id: {"services": list(ep.services), "network": nid,
                                  "host": self.ctl.host_id,
                                  "address": str(ipaddress.ip_interface(ep.address or "").ip)}
            for ep in self.local_backends(nid)
        }
        have = {e.key: e.value for e in store.list(mine_prefix)
                if e.value.get("network") == nid}
        lease_id = getattr(lease, "id", lease)
        for key, value in wanted.items():
            value = {**value, "lease": lease_id}
            if have.get(key) == value:
                continue
            if lease is None or not hasattr(store, "put_with_lease"):
                store.put(key, value)
                continue
            try:
                store.put_with_lease(key, value, lease)
            except StoreUnavailable as exc:
                log.warning("backend %s published without a lease: %s", key, exc)
                store.put(key, {**value, "lease": None})
        for key in have.keys() - wanted.keys():
            store.delete(key)

    def publish_all(self, lease: Any) -> None:
        self.publish_some([e.value["id"] for e in self.ctl.local.list("networks/")], lease)

    def publish_some(self, nids: Iterable[str], lease: Any) -> None:
        """Publish this host's backends on those of ``nids`` that are this host's
        cluster-wide networks."""
        for nid in nids:
            if self.ctl.local.get(f"networks/{nid}") is None:
                continue  # gone: network_removed withdrew its backends
            space = self.space(nid)
            if space.scope is not None:
                self._publish(space, nid, lease)

    # --- life cycle -------------------------------------------------------------------

    def reconcile(self, force: bool = True) -> list[str]:
        """Apply every network that has services or a load balancer; one sentence per
        network that could not be."""
        problems = []
        nids = {e.value["id"] for e in self.ctl.local.list("networks/")}
        nids |= {e.key[len(LB_KEY):] for e in self.ctl.local.list(LB_KEY)}
        for nid in sorted(nids):
            try:
                if force or self._needs_repair(nid):
                    self.apply(nid, force=force)
            except StoreUnavailable:
                raise
            except CNMError as exc:
                problems.append(f"load balancer of network {nid[:12]}: {exc}")
        if force:
            with lbns.lock(self.ctl.host_ns):
                self._apply_ingress(True)
                self._apply_fast(True)
        return problems

    def _needs_repair(self, nid: str) -> bool:
        state = self.lb_state(nid)
        if not state.get("netns_path"):
            return False
        return not lbns.leg_present(state["netns_path"])

    def network_removed(self, nid: str, force: bool) -> None:
        """Before network ``nid`` goes: refuse if this host's services are on it (unless
        ``force``: then they go too); this host's load balancer goes."""
        space = self.space(nid)
        services = space.services()
        if services and space.scope is None:
            if not force:
                raise Conflict(f"network {self.ctl._network_record(nid).name} has services "
                               f"({', '.join(s.name for s in services)}): remove them first")
            for service in services:
                space.store.delete(space.key(service.name))
                self._release_vip(service)
        with lbns.lock(self.ctl.host_ns):
            self._teardown(nid, self.lb_state(nid))
            self.ctl.local.delete(LB_KEY + nid)
            if space.scope is not None:
                for entry in space.store.list(f"{space.backends_prefix}{self.ctl.host_id}/"):
                    if entry.value.get("network") == nid:
                        space.store.delete(entry.key)
            self._apply_ingress(False)
            self._apply_fast(False)


def _seed(service_id: str) -> int:
    """A fixed hash seed per service: a restart keeps every client on its backend."""
    return int(hashlib.sha256(service_id.encode()).hexdigest()[:8], 16)


def _plan_record(service: rules.ServicePlan) -> dict[str, Any]:
    """A service's plan as the store keeps it (the fast path's, in the network's state)."""
    return {"id": service.id, "vip": str(service.vip), "balance": service.balance,
            "ports": [[p.proto, p.port] for p in service.ports], "seed": service.seed,
            "backends": [str(b) for b in service.backends]}


def _fast_network(nid: str, fast: dict[str, Any]) -> rules.FastNetwork:
    return rules.FastNetwork(nid, str(fast["bridge"]), tuple(
        rules.ServicePlan(str(s["id"]), IPv4(s["vip"]),
                          tuple(model.Port(proto, int(port)) for proto, port in s["ports"]),
                          str(s["balance"]), tuple(IPv4(b) for b in s["backends"]),
                          int(s["seed"]))
        for s in fast["services"]))


def _fingerprint(plan: Any) -> str:
    return hashlib.sha256(json.dumps(asdict(plan), default=str, sort_keys=True)
                          .encode()).hexdigest()[:16]
