"""The overlay driver: one flat L2 network across hosts, VXLAN over the hosts' IP network,
etcd as the shared memory (where Docker uses gossip).

Design notes (how the data plane is programmed)
-----------------------------------------------

Per network and host, a namespace ``pcov-<vni>`` (``pcov-<vni>-<host>`` on an emulated
host, see ``dataplane.netns_name``) holds:

- ``br0``, a Linux bridge with the overlay's gateway address(es), if it has any. Every
  host's br0 carries the same gateway address; that is harmless because ARP never crosses
  the overlay (below), so each container resolves its own host's br0.
- ``pcvx-<vni>``, the VTEP: a VXLAN device with the network's VNI, UDP port 4789,
  ``local`` = this host's underlay address, ``learning`` off and ``proxy`` on, plugged into
  br0. Its UDP socket lives in the host namespace (see ``dataplane``).
- one veth per endpoint: ``pcv-<eid>`` is a port of br0, its peer is born inside the
  sandbox under its final name (pycnm's own sandboxes) or in the host namespace as
  ``pcp-<eid>`` for Docker to move.

Nothing is learnt from the wire. For every endpoint on another host the VTEP gets:

- a static FDB entry ``<mac> dst <remote VTEP>`` (``bridge fdb replace ... self
  permanent``): frames for that MAC are wrapped in VXLAN and sent to that host;
- a permanent neighbour entry ``<ip> lladdr <mac>`` on the VXLAN device. With ``proxy``
  on, the VXLAN device answers an ARP request (or IPv6 neighbour solicitation) for that IP
  itself, from this table, and never sends the request out: ARP is answered locally.
  Requests for unknown IPs are dropped there too, so ARP never crosses the overlay.

Broadcast, multicast and unknown unicast: head-end replication. The VTEP gets one
all-zero-MAC FDB entry per peer VTEP that holds at least one endpoint of the overlay, and
the kernel sends one unicast copy of such a frame to each. We chose it over suppression so
the overlay stays a real L2 segment (DHCP, mDNS, gratuitous ARP, IPv6 multicast other than
neighbour discovery, a MAC pycnm has not been told about all keep working), while the cost
stays small: ARP, the bulk of broadcast traffic, is already answered locally and never
replicated. The underlay needs no multicast.

MTU: the underlay interface's MTU minus 50 (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8),
unless ``com.docker.network.driver.mtu`` (alias ``mtu``) says otherwise; br0, the VTEP
and every veth use it.

The control plane: cluster-wide records in etcd (``cluster``); the process that creates
or joins an endpoint publishes it at once; each host's long-running process (``agent``)
watches the records and keeps the VTEPs in line, and holds the host's lease so that a
host that dies takes its records with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
from typing import Any

from cnm import names
from cnm.driverapi import (
    OPT_JOIN_IFNAME,
    OPT_MACADDRESS,
    Capability,
    Driver,
    DriverContext,
    GatewayPlace,
    InterfaceInfo,
    IpamData,
    JoinInfo,
)
from cnm.errors import Conflict, InvalidOption, NotFound, StoreUnavailable
from cnm.osl import reaper
from cnm.osl.netns import NetlinkPool, named_netns_path
from cnm.store.base import Store
from drivers.common import ipam_record, mac_from_ip, mac_option
from drivers.overlay import cluster, dataplane, options
from drivers.overlay.cluster import Cluster, OverlaySpec
from drivers.overlay.publisher import Publisher

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 15.0  # seconds; a dead host's entries go after at most this long
DEFAULT_RESYNC_INTERVAL = 30.0
ENV_LEASE_TTL = "PYCNM_OVERLAY_LEASE_TTL"
LEASE_CACHE = 5.0  # seconds a process without an agent trusts the host lease it read


class OverlayDriver(Driver):
    name = "overlay"

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self._agent: Any = None
        self._host_lease: Any = None
        self._host_lease_until = 0.0  # time.monotonic() until which _host_lease is trusted
        # Joins are hot: netlink handles in each overlay namespace stay open between them.
        self._pools: dict[str, NetlinkPool] = {}
        self._pools_lock = threading.Lock()
        # Joins publish their endpoint once complete (``joined``), after they return;
        # withdrawals wait for it.
        self._publisher = Publisher(f"pycnm-overlay-publish-{ctx.host_id}")
        self._unpublished: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _ovl(self, ns_name: str) -> NetlinkPool:
        with self._pools_lock:
            pool = self._pools.get(ns_name)
            if pool is None:
                pool = self._pools[ns_name] = NetlinkPool(named_netns_path(ns_name))
            return pool

    def _drop_pool(self, ns_name: str) -> None:
        """Close the handles into ``ns_name`` (an open socket would keep it alive)."""
        with self._pools_lock:
            pool = self._pools.pop(ns_name, None)
        if pool is not None:
            pool.close()

    @property
    def global_store(self) -> Store:
        if self.ctx.global_store is None:
            raise InvalidOption("the overlay driver needs a cluster-wide store "
                                "(e.g. --store etcd://HOST:PORT)")
        return self.ctx.global_store

    @property
    def cluster(self) -> Cluster:
        return Cluster(self.global_store, self.ctx.host_id)

    def capabilities(self) -> Capability:
        # State is per host (each host creates the network itself: Docker 20.10 has no
        # cluster store), connectivity spans hosts: the core uses the cluster-wide IPAM.
        return Capability("local", "global")

    def validate_network_options(self, opts: dict[str, Any]) -> None:
        options.parse(opts)

    # --- records -----------------------------------------------------------------------

    def local_networks(self) -> list[dict[str, Any]]:
        return [e.value for e in self.ctx.store.list("networks/")]

    def local_network(self, nid: str) -> dict[str, Any] | None:
        entry = self.ctx.store.get(f"networks/{nid}")
        return None if entry is None else entry.value

    def _network(self, nid: str) -> dict[str, Any]:
        rec = self.local_network(nid)
        if rec is None:
            raise NotFound(f"overlay network {nid[:12]} not found on host {self.ctx.host_id}")
        return rec

    def _endpoint(self, nid: str, eid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"endpoints/{nid}/{eid}")
        if entry is None:
            raise NotFound(f"endpoint {eid[:12]} not found on overlay network {nid[:12]}")
        return entry.value

    # --- networks ------------------------------------------------------------------------

    def create_network(
        self, nid: str, opts: dict[str, Any], ipv4: list[IpamData], ipv6: list[IpamData]
    ) -> None:
        if self.local_network(nid) is not None:
            return  # a retried call: the first one finished
        parsed = options.parse(opts)
        if not ipv4:
            raise InvalidOption("an overlay network needs an IPv4 subnet (--subnet)")
        for rec in self.local_networks():
            if rec["overlay"] == parsed.overlay:
                raise Conflict(f"overlay {parsed.overlay} already has network {rec['id'][:12]} "
                               f"on host {self.ctx.host_id}")
        ovl = self.cluster
        peers = [h["vtep"] for name, h in ovl.hosts().items()
                 if name != self.ctx.host_id and h.get("vtep")]
        underlay = dataplane.choose_vtep(self.ctx.host_ns, parsed.vtep, peers)
        mtu = parsed.mtu or underlay.mtu - dataplane.VXLAN_OVERHEAD
        if mtu > underlay.mtu - dataplane.VXLAN_OVERHEAD:
            log.warning("overlay %s: MTU %d exceeds %s's %d minus the VXLAN overhead: large "
                        "packets will be dropped", parsed.overlay, mtu, underlay.ifname,
                        underlay.mtu)
        gateways = [d.gateway for d in ipv4 + ipv6 if d.gateway is not None]
        spec = OverlaySpec(
            name=parsed.overlay, vni=parsed.vni,
            subnets=tuple(sorted(str(d.pool) for d in ipv4 + ipv6)),
            gateways=tuple(sorted(str(g) for g in gateways)),
        )
        with contextlib.ExitStack() as undo:
            vni = ovl.join_overlay(spec)
            undo.callback(ovl.leave_overlay, parsed.overlay)
            ns_name = dataplane.netns_name(vni, self.ctx.host_id, self.ctx.host_ns is not None)
            if dataplane.build(self.ctx.host_ns, ns_name, vni, underlay.vtep, mtu, gateways):
                undo.callback(dataplane.teardown, ns_name, vni)
                undo.callback(self._drop_pool, ns_name)
            record = {
                "id": nid, "overlay": parsed.overlay, "vni": vni, "netns": ns_name,
                "vtep": underlay.vtep, "underlay": underlay.ifname, "mtu": mtu,
                "options": parsed.to_dict(),
                # From the cluster-wide IPAM no two hosts get the same address, so joins
                # need not look through every endpoint of the overlay for a clash.
                "unique_addresses": all(d.cluster_wide for d in ipv4 + ipv6),
                "ipv4": [ipam_record(d) for d in ipv4],
                "ipv6": [ipam_record(d) for d in ipv6],
            }
            self.ctx.store.put(f"networks/{nid}", record)
            undo.pop_all()
        log.info("network %s: overlay %s, VNI %d, VTEP %s, MTU %d", nid[:12], parsed.overlay,
                 vni, underlay.vtep, mtu)
        self._learn_peers(record)

    def _learn_peers(self, record: dict[str, Any]) -> None:
        """Program what the cluster already knows, at once: the agent does it too (it sees
        the new network), but a process without one (a bare Python API user) needs it."""
        if self._agent is not None:
            self._agent.notify_network(record["id"])
            return
        remotes = [
            r for e in self.cluster.endpoints(record["overlay"])
            if e.value.get("host") != self.ctx.host_id
            and (r := cluster.remote_of(e.value)) is not None
        ]
        with dataplane.Forwarder(record["netns"], record["vni"]) as fwd:
            fwd.sync(remotes)

    def delete_network(self, nid: str) -> None:
        rec = self.local_network(nid)
        if rec is None:
            return
        for entry in self.ctx.store.list(f"endpoints/{nid}/"):
            self.delete_endpoint(nid, entry.value["id"])
        self.cluster.leave_overlay(rec["overlay"])
        self._drop_pool(rec["netns"])
        reaper.flush()  # the endpoints' veths first, then the namespace
        dataplane.teardown(rec["netns"], rec["vni"])
        self.ctx.store.delete(f"networks/{nid}")
        if self._agent is not None:
            self._agent.notify_network(nid)
        log.info("network %s: overlay %s left, %s removed", nid[:12], rec["overlay"],
                 rec["netns"])

    # --- endpoints -------------------------------------------------------------------------

    def create_endpoint(
        self, nid: str, eid: str, iface: InterfaceInfo, opts: dict[str, Any]
    ) -> InterfaceInfo:
        key = f"endpoints/{nid}/{eid}"
        existing = self.ctx.store.get(key)
        if existing is not None:
            return InterfaceInfo(mac=existing.value["mac"])
        net = self._network(nid)
        mac = iface.mac or mac_option(opts.get(OPT_MACADDRESS)) or mac_from_ip(
            iface.address.ip if iface.address else None
        )
        ip = str(iface.address.ip) if iface.address else None
        ip6 = str(iface.address_v6.ip) if iface.address_v6 else None
        others = [] if net.get("unique_addresses") else self.cluster.endpoints(net["overlay"])
        for entry in others:
            other = entry.value
            clash = (ip and other.get("ip") == ip) or (ip6 and other.get("ip6") == ip6)
            if clash and entry.key.rsplit("/", 1)[1] != eid:
                raise Conflict(
                    f"address {ip if other.get('ip') == ip else ip6} is already used on overlay "
                    f"{net['overlay']} by an endpoint on host {other.get('host')}: addresses "
                    "must come from the cluster-wide IPAM (with Docker: --ipam-driver pycnm "
                    "on every host)"
                )
        record = {
            "id": eid, "network": nid,
            "host_veth": names.host_veth_name(eid), "peer": names.peer_veth_name(eid),
            "mac": mac, "ip": ip, "ip6": ip6, "joined": False,
        }
        self.ctx.store.put(key, record)
        return InterfaceInfo(mac=None if iface.mac else mac)

    def delete_endpoint(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        entry = self.ctx.store.get(key)
        if entry is None:
            return
        rec = self.local_network(nid)
        if rec is not None:
            self._publisher.flush()  # its put, if still queued, goes out before the delete
            self.cluster.withdraw(rec["overlay"], eid)
            dataplane.unplug_veth(rec["netns"], entry.value["host_veth"])
        self.ctx.store.delete(key)

    def gateway_place(self, nid: str) -> GatewayPlace | None:
        # The gateway addresses are br0's, inside the overlay's namespace on every host.
        rec = self.local_network(nid)
        return GatewayPlace(os.path.join("/run/netns", rec["netns"])) if rec else None

    def dns_scope(self, nid: str) -> str | None:
        rec = self.local_network(nid)
        return f"overlay:{rec['overlay']}" if rec is not None else None

    def network_info(self, nid: str) -> dict[str, str]:
        net = self._network(nid)
        # Docker's key for a swarm overlay's VNI, so habits carry over.
        return {"com.docker.network.driver.overlay.vxlanid_list": str(net["vni"]),
                "pycnm.overlay.namespace": net["netns"]}

    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        net, ep = self._network(nid), self._endpoint(nid, eid)
        return {"HostInterface": ep["host_veth"], "MacAddress": ep["mac"],
                "Overlay": net["overlay"], "VNI": net["vni"], "VTEP": net["vtep"],
                "Namespace": net["netns"]}

    def join(self, nid: str, eid: str, sandbox_key: str, opts: dict[str, Any]) -> JoinInfo:
        net, ep = self._network(nid), self._endpoint(nid, eid)
        direct = opts.get(OPT_JOIN_IFNAME)
        peer = direct or ep["peer"]
        with contextlib.ExitStack() as undo:
            with self._ovl(net["netns"]).handle() as ovl:
                dataplane.plug_veth(ovl, ep["host_veth"], peer,
                                    sandbox_key if direct else self.ctx.host_ns, ep["mac"],
                                    net["mtu"])
            undo.callback(dataplane.unplug_veth, net["netns"], ep["host_veth"])
            ep["joined"] = True  # first: the agent republishes what the local store says
            self.ctx.store.put(f"endpoints/{nid}/{eid}", ep)
            undo.pop_all()
        with self._lock:
            self._unpublished[eid] = (net, ep)  # by ``joined``
        internal = bool(net["options"].get("internal"))
        return JoinInfo(src_name=peer, disable_gateway_service=internal, placed=bool(direct))

    def joined(self, nid: str, eid: str) -> None:
        # Off the join's path (``publisher``), once the join is done: peers learn of it a
        # round trip later. Not before the veth: on 2 CPUs the put (and the peers' work it
        # sets off) beside the kernel's slowed the attach by 3-5 ms and made convergence no
        # faster; nor beside the rest of the join (its gRPC call took 0.6-0.9 ms of the
        # join's CPU, bench_overlay).
        with self._lock:
            pending = self._unpublished.pop(eid, None)
        if pending is None:
            return
        net, ep = pending
        self._publisher.submit(f"endpoint {eid[:12]} of overlay {net['overlay']}",
                               lambda: self._publish(net, ep, self._lease()))

    def leave(self, nid: str, eid: str) -> None:
        with self._lock:
            self._unpublished.pop(eid, None)  # a join undone before it was complete
        entry = self.ctx.store.get(f"endpoints/{nid}/{eid}")
        rec = self.local_network(nid)
        if entry is None or rec is None:
            return
        self._publisher.flush()  # its put, if still queued, goes out before the delete
        self.cluster.withdraw(rec["overlay"], eid)
        dataplane.unplug_veth(rec["netns"], entry.value["host_veth"])
        if entry.value.get("joined"):
            self.ctx.store.put(f"endpoints/{nid}/{eid}", {**entry.value, "joined": False})

    # --- publishing ---------------------------------------------------------------------------

    def _lease(self, fresh: bool = False) -> Any:
        """The lease to write this host's records under: the agent's, if it runs in this
        process, else the one the host's agent registered (None if no agent runs), read
        from the cluster at most every LEASE_CACHE seconds (a join then costs the cluster
        one write, not a read and a write)."""
        if self._agent is not None and self._agent.lease is not None:
            return self._agent.lease
        now = time.monotonic()
        if fresh or now >= self._host_lease_until:
            host = self.cluster.host(self.ctx.host_id)
            self._host_lease = host.get("lease") if host else None
            self._host_lease_until = now + LEASE_CACHE
        return self._host_lease

    def _publish(self, net: dict[str, Any], ep: dict[str, Any], lease: Any) -> None:
        record = {"id": ep["id"], "network": net["id"], "vtep": net["vtep"], "mac": ep["mac"],
                  "ip": ep.get("ip"), "ip6": ep.get("ip6")}
        try:
            self.cluster.publish(net["overlay"], ep["id"], record, lease)
            return
        except StoreUnavailable:
            if lease is None or self._agent is not None:
                raise
        # The lease is gone: the host's agent restarted with a new one (take it), or died
        # (publish without one and let the agent adopt the record when it comes back).
        current = self._lease(fresh=True)
        if current is not None and current != lease:
            with contextlib.suppress(StoreUnavailable):
                self.cluster.publish(net["overlay"], ep["id"], record, current)
                return
        log.warning("endpoint %s: host lease %s is gone; published without a lease",
                    ep["id"][:12], lease)
        self.cluster.publish(net["overlay"], ep["id"], record, None)

    def republish(self, lease: Any) -> None:
        """Make the cluster's records of this host match its joined endpoints, under
        ``lease`` (the agent calls this on every connect and resync)."""
        ovl = self.cluster
        for net in self.local_networks():
            mine = {e.value["id"]: e.value for e in self.ctx.store.list(f"endpoints/{net['id']}/")
                    if e.value.get("joined")}
            published = {e.key.rsplit("/", 1)[1]: e.value for e in ovl.endpoints(net["overlay"])
                         if e.value.get("host") == self.ctx.host_id}
            for eid, ep in mine.items():
                have = published.get(eid)
                if have is None or have.get("lease") != cluster._lease_id(lease) or \
                        have.get("vtep") != net["vtep"] or have.get("mac") != ep["mac"]:
                    self._publish(net, ep, lease)
            for eid in published.keys() - mine.keys():
                ovl.withdraw(net["overlay"], eid)

    # --- background work and restart ----------------------------------------------------------

    def start(self) -> bool:
        if self._agent is not None:
            return True
        if self.ctx.global_store is None:
            return False
        from drivers.overlay.agent import Agent

        ttl = float(self.ctx.config.get("lease_ttl")
                    or os.environ.get(ENV_LEASE_TTL) or DEFAULT_LEASE_TTL)
        resync = float(self.ctx.config.get("resync_interval") or DEFAULT_RESYNC_INTERVAL)
        self._agent = Agent(self, ttl, resync)
        self._agent.start()
        return True

    @property
    def agent(self) -> Any:
        return self._agent

    def flush(self) -> None:
        """Return once every endpoint joined so far has been published (or failed to)."""
        self._publisher.flush()

    def close(self) -> None:
        self._publisher.close()  # a CLI that attached has published before it exits
        if self._agent is not None:
            self._agent.stop()
            self._agent = None
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def restore(self) -> list[str]:
        """Rebuild missing overlay namespaces, bridges and VTEPs; plug back surviving veths;
        resync the VTEP entries from the cluster (skipped, and said, if etcd is down)."""
        problems: list[str] = []
        for net in self.local_networks():
            gateways = [ipaddress.ip_interface(d["gateway"]) for d in net["ipv4"] + net["ipv6"]
                        if d.get("gateway")]
            try:
                dataplane.build(self.ctx.host_ns, net["netns"], net["vni"], net["vtep"],
                                net["mtu"], gateways)
            except Exception as exc:  # report and go on with the others
                problems.append(f"overlay network {net['id'][:12]}: cannot rebuild "
                                f"{net['netns']}: {exc}")
                continue
            try:
                self._learn_peers(net)
            except StoreUnavailable as exc:
                problems.append(f"overlay network {net['id'][:12]}: peers not resynced: {exc}")
        return problems
