"""An Endpoint: a virtual interface that joins a sandbox to a network.

Join follows what dockerd does with a driver's answer: the driver prepares the interface
and says how to plug it (JoinInfo); the core moves it into the sandbox, names it eth<N>,
gives it its addresses and, if it is the sandbox's first way out, the default route and
the published ports (program external connectivity).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from cnm.driverapi import OPT_JOIN_IFNAME, OPT_PORTMAP, JoinInfo, refuse_internal_options
from cnm.errors import Busy, Conflict, InvalidOption, NotFound
from cnm.inputs import shown
from cnm.osl import plumbing
from cnm.portmap import parse_portmap
from cnm.records import EndpointRecord, SandboxRecord

if TYPE_CHECKING:
    from cnm.controller import Controller
    from cnm.sandbox import Sandbox

log = logging.getLogger(__name__)


class Endpoint:
    def __init__(self, controller: Controller, network_id: str, endpoint_id: str) -> None:
        self.controller = controller
        self.network_id = network_id
        self.id = endpoint_id

    def __repr__(self) -> str:
        return f"<Endpoint {self.id[:12]} on {self.network_id[:12]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> EndpointRecord:
        return self.controller._endpoint_record(self.network_id, self.id)

    @property
    def network(self) -> Any:
        from cnm.network import Network

        return Network(self.controller, self.network_id)

    def _driver(self) -> Any:
        """The driver of this endpoint's network."""
        return self.controller.driver(self.controller._network_record(self.network_id).driver)

    def _key(self) -> str:
        return f"endpoints/{self.network_id}/{self.id}"

    def _save(self, record: EndpointRecord) -> int:
        return self.controller.local.put(self._key(), record.to_dict())

    # --- join / leave ---------------------------------------------------------------

    def join(self, sandbox: Sandbox, options: dict[str, Any] | None = None) -> str:
        """Plug this endpoint into ``sandbox``; return its interface name there."""
        ctl = self.controller
        ep = self.record
        sb = sandbox.record
        if ep.sandbox_id == sb.id:
            return ep.ifname or ""
        sandbox.refuse_attach(sb)
        if ep.sandbox_id:
            raise Conflict(f"endpoint {ep.name} is already attached to another sandbox")
        for joined in sb.interfaces.values():
            if joined.partition("/")[0] == self.network_id:
                raise Conflict(
                    f"sandbox {sb.name} is already attached to network {self.network.name}"
                )
        opts = {**ep.options, **refuse_internal_options(options, f"join of {ep.name}")}
        parse_portmap(opts.get(OPT_PORTMAP))
        net = ctl._network_record(self.network_id)
        drv = ctl.driver(net.driver)
        slot = f"{self.network_id}/{self.id}"
        # Its writes wake the host's watchers (the resolver, agents) once, when the names
        # are complete, not once per write; the later ones (the driver's own records, a
        # gateway) nobody waits for: they go with the next ring, or the watchers' poll.
        with ctl.local.wakeups_batched(ring=False), contextlib.ExitStack() as undo:
            # What the names depend on first (the sandbox it joins), written with the
            # interface name's reservation in the sandbox: the host's resolver builds them
            # while the driver and the kernel work, so the wait for it below is short. A
            # backend of services is recorded only once plugged: the load balancer sends it
            # connections as soon as it is.
            def with_names(name: str) -> dict[str, dict[str, Any]]:
                ep.sandbox_id, ep.sandbox_key, ep.ifname = sb.id, sb.netns_path, name
                return {self._key(): ep.to_dict()}

            ifname = sandbox._reserve_ifname("eth", slot,
                                             also=None if ep.services else with_names)
            undo.callback(sandbox._release_ifname, ifname, slot)
            names_at, first = 0, None
            if not ep.services:
                undo.callback(self._clear_join)
                ctl.local.wake_watchers()
                first = ep.to_dict()
                written = ctl.local.get(self._key())
                names_at = written.revision if written is not None else 0
            info = drv.join(self.network_id, self.id, sb.netns_path,
                            {**opts, OPT_JOIN_IFNAME: ifname})
            undo.callback(drv.leave, self.network_id, self.id)
            if not info.placed and info.dst_prefix != "eth":
                sandbox._release_ifname(ifname, slot)
                ifname = sandbox._reserve_ifname(info.dst_prefix, slot)
            gateway = bool(info.gateway or info.gateway_v6) and sandbox._claim_gateway(self.id)
            if gateway:
                undo.callback(sandbox._drop_gateway, self.id)
            self._plug(sb, info, ifname, ep, gateway)
            if not info.placed:
                undo.callback(plumbing.unplug, sb.netns_path, ifname, ctl.host_ns, info.src_name)
            ep.sandbox_id, ep.sandbox_key, ep.ifname = sb.id, sb.netns_path, ifname
            ep.src_name = None if info.placed else info.src_name
            ep.draining = False
            ep.gateway = str(info.gateway) if info.gateway else None
            ep.gateway_v6 = str(info.gateway_v6) if info.gateway_v6 else None
            ep.static_routes = [
                {"destination": str(r.destination), "type": r.route_type,
                 "next_hop": str(r.next_hop) if r.next_hop else None}
                for r in info.static_routes
            ]
            # Saved again only if the driver's answer added something (a gateway, routes,
            # an interface to move): an overlay's usually adds nothing.
            unchanged = first is not None and ep.to_dict() == first
            revision = names_at if unchanged else self._save(ep)
            if not names_at:
                undo.callback(self._clear_join)
            if gateway:
                drv.program_external_connectivity(self.network_id, self.id, opts)
                undo.callback(drv.revoke_external_connectivity, self.network_id, self.id)
            sandbox._write_files(joined=ep)
            if ep.services:  # a backend: the load balancer sends it connections from now on
                from cnm.services.manager import Services

                ctl.local.wake_watchers()  # its record, before the balancer is told
                revision = max(revision, Services(ctl).apply(self.network_id))
            undo.pop_all()
        log.info("endpoint %s: joined sandbox %s as %s", self.id[:12], sb.name, ifname)
        # Its names answer once join returns: they were complete at the first write (the
        # later one changes no name), unless the load balancer's came after.
        ctl.settle_dns(names_at or revision)
        drv.joined(self.network_id, self.id)
        return ifname

    def _plug(
        self, sb: SandboxRecord, info: JoinInfo, ifname: str, ep: EndpointRecord, gateway: bool
    ) -> None:
        """Move (unless the driver placed it) and configure the interface, with one netlink
        handle inside the sandbox for addresses, static routes and default routes."""
        if not info.placed:
            plumbing.move_into(self.controller.host_ns, sb.netns_path, info.src_name, ifname)
        plumbing.configure_inside(
            sb.netns_path, ifname,
            addresses=[ipaddress.ip_interface(a) for a in (ep.address, ep.address_v6) if a],
            mac=None if info.placed else ep.mac,
            routes=[(str(r.destination), r.route_type, str(r.next_hop) if r.next_hop else None)
                    for r in info.static_routes],
            gateway=info.gateway if gateway else None,
            gateway_v6=info.gateway_v6 if gateway else None,
        )

    def _become_gateway(self, ep: EndpointRecord, sb: SandboxRecord, opts: dict[str, Any]) -> None:
        """Route the sandbox's way out through this endpoint and publish its ports."""
        plumbing.set_default_routes(
            sb.netns_path, ep.ifname or "",
            ipaddress.IPv4Address(ep.gateway) if ep.gateway else None,
            ipaddress.IPv6Address(ep.gateway_v6) if ep.gateway_v6 else None,
        )
        drv = self._driver()
        drv.program_external_connectivity(self.network_id, self.id, opts)

    def _clear_join(self) -> int:
        ep = self.record
        ep.sandbox_id = ep.sandbox_key = ep.ifname = ep.src_name = None
        ep.gateway = ep.gateway_v6 = None
        ep.static_routes = []
        return self._save(ep)

    def leave(self, drain: float | None = None) -> None:
        """Unplug this endpoint from its sandbox; an endpoint in no sandbox is success.

        A backend of load-balanced services first leaves their rules (no new connection
        reaches it), then its open TCP connections on the services' ports may finish, for
        at most ``drain`` seconds (default 10)."""
        ctl = self.controller
        ep = self.record
        if not ep.sandbox_id:
            return
        if ep.services:
            from cnm.services.manager import Services

            Services(ctl).begin_drain(self, drain)
        with ctl.local.wakeups_batched():
            revision, sb = self._unplug(ep)
        log.info("endpoint %s: left sandbox %s", self.id[:12], sb.name if sb else ep.sandbox_id)
        ctl.settle_dns(revision)  # its names no longer answer once leave returns

    def _unplug(self, ep: EndpointRecord) -> tuple[int, SandboxRecord | None]:
        """Leave's work once the services let go: the store's revision of the endpoint's
        cleared record, and the sandbox's record (None if it is gone)."""
        from cnm.sandbox import Sandbox

        ctl = self.controller
        sandbox = Sandbox(ctl, ep.sandbox_id or "")
        try:
            sb: SandboxRecord | None = sandbox.record
        except NotFound:
            sb = None
        drv = self._driver()
        was_gateway = sb is not None and sb.gateway_endpoint == self.id
        if was_gateway:
            drv.revoke_external_connectivity(self.network_id, self.id)
        if ep.sandbox_key and ep.ifname and ep.src_name:
            plumbing.unplug(ep.sandbox_key, ep.ifname, ctl.host_ns, ep.src_name)
        drv.leave(self.network_id, self.id)
        if sb is not None and ep.ifname:
            sandbox._release_ifname(ep.ifname, f"{self.network_id}/{self.id}")
        revision = self._clear_join()
        if sb is not None:
            if was_gateway:
                sandbox._drop_gateway(self.id)
            if not sb.removing:  # a sandbox being removed needs no new gateway nor files
                if was_gateway:
                    sandbox._elect_gateway()
                sandbox._write_files()
        return revision, sb

    # --- joins where someone else owns the sandbox (dockerd) ------------------------

    def join_external(self, sandbox_key: str, options: dict[str, Any] | None = None) -> JoinInfo:
        """The driver's half of a join whose sandbox another program manages (Docker moves
        and configures the interface itself): return what to plug and record the key."""
        ep = self.record
        opts = {**ep.options, **refuse_internal_options(options, f"join of {ep.name}")}
        # Docker joins before the namespace exists (runc makes it, then dockerd binds it
        # there), so the path need not be a namespace yet; whatever opens it later checks
        # that it is one first (cnm.osl.netns.open_netns).
        if not isinstance(sandbox_key, str) or not sandbox_key.startswith("/") \
                or not sandbox_key.isprintable() or len(sandbox_key) > 4096:
            raise InvalidOption(f"SandboxKey must be the absolute path of a network namespace "
                                f"file (such as /var/run/docker/netns/ID), not "
                                f"{shown(sandbox_key)}")
        drv = self._driver()
        info = drv.join(self.network_id, self.id, sandbox_key, opts)
        ep.sandbox_key, ep.src_name = sandbox_key, info.src_name
        ep.gateway = str(info.gateway) if info.gateway else None
        ep.gateway_v6 = str(info.gateway_v6) if info.gateway_v6 else None
        self._save(ep)
        drv.joined(self.network_id, self.id)
        return info

    def leave_external(self) -> None:
        """Undo ``join_external``; an endpoint not joined is success."""
        ep = self.record
        drv = self._driver()
        drv.leave(self.network_id, self.id)
        ep.sandbox_key = ep.src_name = ep.gateway = ep.gateway_v6 = None
        self._save(ep)

    def program_external_connectivity(self, options: dict[str, Any] | None = None) -> None:
        """Publish ports etc. for an externally managed sandbox's gateway endpoint."""
        opts = refuse_internal_options(options, "program external connectivity")
        drv = self._driver()
        drv.program_external_connectivity(self.network_id, self.id, opts)

    def revoke_external_connectivity(self) -> None:
        drv = self._driver()
        drv.revoke_external_connectivity(self.network_id, self.id)

    def operational_info(self) -> dict[str, Any]:
        """The driver's free-form view (Docker's EndpointOperInfo)."""
        drv = self._driver()
        return drv.endpoint_info(self.network_id, self.id)

    def delete(self, force: bool = False) -> None:
        """Delete the endpoint and release its addresses; it must be detached first
        unless ``force``."""
        ctl = self.controller
        try:
            ep = self.record
        except NotFound:
            return
        if ep.sandbox_id:
            if not force:
                raise Busy(f"endpoint {ep.name} is attached to a sandbox: detach it first")
            self.leave()
        net = ctl._network_record(self.network_id)
        ctl.driver(net.driver).delete_endpoint(self.network_id, self.id)
        if net.ipam == "pycnm":
            ipam = ctl.ipam_for(net.ipam_scope)
            for cidr, pools in ((ep.address, net.pools(4)), (ep.address_v6, net.pools(6))):
                if not cidr:
                    continue
                ip = ipaddress.ip_interface(cidr).ip
                for pool in pools:
                    if ip in ipaddress.ip_network(pool.subnet):
                        ipam.release_address(pool.pool_id, ip)
        ctl.local.delete(self._key())
        ctl.local.delete(f"names/endpoints/{self.network_id}/{ep.name}")
        ctl._release_kernel_names("endpoints", self.id)

    def inspect(self) -> dict[str, Any]:
        ep = self.record
        return {
            "Name": ep.name,
            "EndpointID": ep.id,
            "NetworkID": ep.network_id,
            "MacAddress": ep.mac or "",
            "IPv4Address": ep.address or "",
            "IPv6Address": ep.address_v6 or "",
            "SandboxID": ep.sandbox_id or "",
            "Interface": ep.ifname or "",
            "Aliases": list(ep.aliases),
            "Services": list(ep.services),
        }

    def repair(self, sandbox: Sandbox) -> None:
        """Rebuild a joined endpoint whose interface vanished (reconcile after a crash):
        the driver recreates it with the same addresses and MAC and it is plugged again."""
        from cnm.driverapi import InterfaceInfo

        ctl = self.controller
        ep = self.record
        sb = sandbox.record
        net = ctl._network_record(self.network_id)
        drv = ctl.driver(net.driver)
        drv.delete_endpoint(self.network_id, self.id)
        drv.create_endpoint(
            self.network_id, self.id,
            InterfaceInfo(
                ipaddress.IPv4Interface(ep.address) if ep.address else None,
                ipaddress.IPv6Interface(ep.address_v6) if ep.address_v6 else None,
                ep.mac,
            ),
            ep.options,
        )
        info = drv.join(self.network_id, self.id, sb.netns_path,
                        {**ep.options, OPT_JOIN_IFNAME: ep.ifname})
        self._plug(sb, info, ep.ifname or "", ep, gateway=sb.gateway_endpoint == self.id)
        if sb.gateway_endpoint == self.id:
            drv.program_external_connectivity(self.network_id, self.id, ep.options)
        drv.joined(self.network_id, self.id)
