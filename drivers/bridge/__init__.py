"""The bridge driver: one Linux bridge per network, a veth per endpoint.

Who does what: the driver makes the bridge (with the gateway addresses), the veth pairs
and the firewall; the core's Sandbox moves the container end into the namespace and
configures it from the JoinInfo we return, exactly as dockerd does with a remote driver.
State lives in the driver's store space so a new process can rebuild the kernel side.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
from typing import Any

from cnm import names
from cnm.driverapi import (
    OPT_JOIN_IFNAME,
    OPT_MACADDRESS,
    OPT_PORTMAP,
    Capability,
    Driver,
    DriverContext,
    GatewayPlace,
    InterfaceInfo,
    IpamData,
    JoinInfo,
)
from cnm.errors import Conflict, InvalidOption, NotFound
from cnm.osl import iproute, reaper
from cnm.osl import links as osl_links
from cnm.osl.netns import NetlinkPool, netns_fd, read_sysctl, write_sysctl
from cnm.osl.nft import ruleset_lock
from drivers.bridge import firewall, options, ports
from drivers.common import ipam_record, mac_from_ip, mac_option, refuse_overlap

log = logging.getLogger(__name__)


class BridgeDriver(Driver):
    name = "bridge"

    # --- network -------------------------------------------------------------------

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self._host = NetlinkPool(ctx.host_ns)  # joins are hot: keep host handles open

    def close(self) -> None:
        self._host.close()

    def capabilities(self) -> Capability:
        return Capability("local", "local")

    def validate_network_options(self, opts: dict[str, Any]) -> None:
        options.parse(opts)

    def _network(self, nid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"networks/{nid}")
        if entry is None:
            raise NotFound(f"bridge network {nid[:12]} not found")
        return entry.value

    def create_network(
        self, nid: str, opts: dict[str, Any], ipv4: list[IpamData], ipv6: list[IpamData]
    ) -> None:
        if self.ctx.store.get(f"networks/{nid}") is not None:
            return  # a retried call: the first one finished
        parsed = options.parse(opts)
        if parsed.ipv4 and not ipv4:
            raise InvalidOption("a bridge network needs an IPv4 subnet")
        if not parsed.ipv4 and (ipv4 or not ipv6):
            raise InvalidOption("an IPv6-only bridge network needs an IPv6 subnet and no "
                                "IPv4 one")
        bridge = parsed.bridge_name or names.bridge_name(nid)
        for entry in self.ctx.store.list("networks/"):
            if entry.value["bridge"] == bridge:
                raise Conflict(f"bridge {bridge} is already used by network {entry.key[9:21]}")
            refuse_overlap([d.pool for d in (*ipv4, *ipv6)], entry.value,
                           "bridge networks on one host")
        record = {
            "id": nid,
            "bridge": bridge,
            "options": parsed.to_dict(),
            "ipv4": [ipam_record(d) for d in ipv4],
            "ipv6": [ipam_record(d) for d in ipv6],
            "created_bridge": False,
        }
        with iproute(self.ctx.host_ns) as ipr, contextlib.ExitStack() as undo:
            existed = osl_links.link_index(ipr, bridge) is not None
            record["created_bridge"] = not existed
            osl_links.ensure_bridge(ipr, bridge, parsed.mtu)
            if not existed:
                undo.callback(osl_links.delete_link, ipr, bridge)
            self._configure_bridge(ipr, record)
            self._enable_forwarding(bool(ipv6))
            self.ctx.store.put(f"networks/{nid}", record)
            undo.callback(self.ctx.store.delete, f"networks/{nid}")
            self._apply_firewall()
            undo.pop_all()
        log.info("network %s: bridge %s up", nid[:12], bridge)

    def _configure_bridge(self, ipr: Any, record: dict[str, Any]) -> None:
        index = osl_links.require_index(ipr, record["bridge"])
        mtu = record["options"].get("mtu")
        gateways = [
            ipaddress.ip_interface(d["gateway"]) for d in record["ipv4"] + record["ipv6"]
            if d.get("gateway")
        ]
        osl_links.configure(ipr, index, addresses=gateways, mtu=mtu)

    def _enable_forwarding(self, ipv6: bool) -> None:
        ns = self.ctx.host_ns
        if read_sysctl(ns, "net/ipv4/ip_forward") != "1":
            write_sysctl(ns, "net/ipv4/ip_forward", "1")
        if ipv6 and read_sysctl(ns, "net/ipv6/conf/all/forwarding") != "1":
            write_sysctl(ns, "net/ipv6/conf/all/forwarding", "1")

    def delete_network(self, nid: str) -> None:
        entry = self.ctx.store.get(f"networks/{nid}")
        if entry is None:
            return
        record = entry.value
        for ep in self.ctx.store.list(f"endpoints/{nid}/"):
            self.delete_endpoint(nid, ep.value["id"])
        with iproute(self.ctx.host_ns) as ipr:
            if record["created_bridge"]:
                osl_links.delete_link(ipr, record["bridge"])
            else:  # a bridge the user made: give it back as we found it
                index = osl_links.link_index(ipr, record["bridge"])
                for d in record["ipv4"] + record["ipv6"]:
                    if index is not None and d.get("gateway"):
                        iface = ipaddress.ip_interface(d["gateway"])
                        with contextlib.suppress(Exception):
                            ipr.addr("del", index=index, address=str(iface.ip),
                                     prefixlen=iface.network.prefixlen)
        self.ctx.store.delete(f"networks/{nid}")
        self._apply_firewall()
        log.info("network %s: removed", nid[:12])

    # --- endpoints -----------------------------------------------------------------

    def create_endpoint(
        self, nid: str, eid: str, iface: InterfaceInfo, opts: dict[str, Any]
    ) -> InterfaceInfo:
        # The veth pair itself is made at join, when the sandbox is known: the core can
        # then have its end created directly inside the sandbox (no move between
        # namespaces, see OPT_JOIN_IFNAME), and Docker finds it in the host as it expects.
        key = f"endpoints/{nid}/{eid}"
        existing = self.ctx.store.get(key)
        if existing is not None:
            return InterfaceInfo(mac=existing.value["mac"])
        self._network(nid)
        mac = iface.mac or mac_option(opts.get(OPT_MACADDRESS)) or mac_from_ip(
            iface.address.ip if iface.address else None
        )
        record: dict[str, Any] = {
            "id": eid,
            "network": nid,
            "host_veth": names.host_veth_name(eid),
            "peer": names.peer_veth_name(eid),
            "mac": mac,
            "address": str(iface.address) if iface.address else None,
            "address_v6": str(iface.address_v6) if iface.address_v6 else None,
            "ports": [],
        }
        self.ctx.store.put(key, record)
        return InterfaceInfo(mac=None if iface.mac else mac)

    def _endpoint(self, nid: str, eid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"endpoints/{nid}/{eid}")
        if entry is None:
            raise NotFound(f"endpoint {eid[:12]} not found on bridge network {nid[:12]}")
        return entry.value

    def delete_endpoint(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        entry = self.ctx.store.get(key)
        if entry is None:
            return
        if entry.value["ports"]:
            self.revoke_external_connectivity(nid, eid)
        with self._host.handle() as ipr:
            reaper.delete_later(self.ctx.host_ns, entry.value["host_veth"], handle=ipr)
        self.ctx.store.delete(key)

    def gateway_place(self, nid: str) -> GatewayPlace | None:
        # The gateway addresses are the bridge's, in the host's namespace.
        return GatewayPlace(self.ctx.host_ns) if self._exists(nid) else None

    def _exists(self, nid: str) -> bool:
        return self.ctx.store.get(f"networks/{nid}") is not None

    def services_bridge(self, nid: str) -> str | None:
        network = self._network(nid)
        return network["bridge"] if any(d.get("gateway") for d in network["ipv4"]) else None

    def endpoints_isolated(self, nid: str) -> bool:
        return not self._network(nid)["options"]["icc"]

    def network_info(self, nid: str) -> dict[str, str]:
        return {"com.docker.network.bridge.name": self._network(nid)["bridge"]}

    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self._endpoint(nid, eid)
        info: dict[str, Any] = {"HostInterface": ep["host_veth"], "MacAddress": ep["mac"]}
        if ep["ports"]:
            info[OPT_PORTMAP] = ep["ports"]
        return info

    def join(self, nid: str, eid: str, sandbox_key: str, opts: dict[str, Any]) -> JoinInfo:
        network = self._network(nid)
        ep = self._endpoint(nid, eid)
        direct = opts.get(OPT_JOIN_IFNAME)
        with self._host.handle() as ipr, contextlib.ExitStack() as opened:
            bridge_index = osl_links.require_index(ipr, network["bridge"])
            fd = opened.enter_context(netns_fd(sandbox_key)) if direct else None
            make = functools.partial(
                osl_links.create_veth, ipr, ep["host_veth"], direct or ep["peer"],
                mtu=network["options"].get("mtu"), master=bridge_index,
                peer_mac=ep["mac"], peer_netns_fd=fd,
            )
            try:
                make()
            except Conflict:
                # A half-made pair from an interrupted try, or a name still held by a
                # link whose deletion is queued: finish those, then start again. The core
                # gives each endpoint its names alone (names.kernel_claim); a link of that
                # name on another bridge is still not ours to delete.
                reaper.flush()
                held = osl_links.link_info(ipr, ep["host_veth"])
                if held is not None and held["master"] not in (None, 0, bridge_index):
                    raise Conflict(
                        f"interface {ep['host_veth']} of endpoint {eid[:12]} already exists "
                        "on another bridge; remove it, or give the endpoint another id"
                    ) from None
                osl_links.delete_link(ipr, ep["host_veth"])
                make()
            if not network["options"]["icc"]:
                self._isolate(ipr, ep["host_veth"])
        internal = network["options"]["internal"]
        gw4 = next((d["gateway"] for d in network["ipv4"] if d.get("gateway")), None)
        gw6 = next((d["gateway"] for d in network["ipv6"] if d.get("gateway")), None)
        return JoinInfo(
            src_name=direct or ep["peer"],
            gateway=None if internal or gw4 is None else ipaddress.IPv4Interface(gw4).ip,
            gateway_v6=None if internal or gw6 is None else ipaddress.IPv6Interface(gw6).ip,
            disable_gateway_service=internal,
            placed=bool(direct),
        )

    def leave(self, nid: str, eid: str) -> None:
        entry = self.ctx.store.get(f"endpoints/{nid}/{eid}")
        if entry is None:
            return
        # Deleting our end removes the peer too, wherever it is by now; in the background,
        # as it costs the kernel an RCU grace period (see cnm.osl.reaper).
        with self._host.handle() as ipr:
            reaper.delete_later(self.ctx.host_ns, entry.value["host_veth"], handle=ipr)

    # --- published ports -----------------------------------------------------------

    def program_external_connectivity(self, nid: str, eid: str, opts: dict[str, Any]) -> None:
        wanted = ports.parse_portmap(opts.get(OPT_PORTMAP))
        if not wanted:
            self._endpoint(nid, eid)  # an unknown endpoint is an error even so
            return
        network = self._network(nid)
        if network["options"]["internal"]:
            raise InvalidOption("ports cannot be published on an internal network")
        key = f"endpoints/{nid}/{eid}"
        with ruleset_lock(self.ctx.host_ns):
            ep = self._endpoint(nid, eid)
            if ep["ports"]:
                return  # a retried call
            if not ep["address"] and not ep.get("address_v6"):
                raise InvalidOption("ports can only be published for an endpoint with an "
                                    "address")
            wanted = [b for b in wanted if not _half_without_address(b, wanted, ep)]
            for b in wanted:
                if ":" in b.host_ip and not ep.get("address_v6"):
                    raise InvalidOption(f"HostIP {b.host_ip} is IPv6 but endpoint {eid[:12]} "
                                        "has no IPv6 address to forward port "
                                        f"{b.port}/{b.proto} to")
                if b.host_ip and ":" not in b.host_ip and not ep["address"]:
                    raise InvalidOption(f"HostIP {b.host_ip} is IPv4 but endpoint {eid[:12]} "
                                        "has no IPv4 address to forward port "
                                        f"{b.port}/{b.proto} to")
            # No HostIP: the network's default, else every address of the endpoint's
            # first family (its IPv4 one; IPv6 on an IPv6-only network), stored as such.
            host_ip_default = (network["options"].get("host_ip")
                               or (ports.ANY_V4 if ep["address"] else ports.ANY_V6))
            wanted = [
                b if b.host_ip else ports.PortBinding(b.proto, b.port, b.host_port,
                                                       b.host_port_end, host_ip_default)
                for b in wanted
            ]
            chosen = ports.choose_host_ports(wanted, self._taken_ports())
            ep["ports"] = ports.to_docker(chosen)
            self.ctx.store.put(key, ep)
            try:
                self._apply_firewall(locked=True)
                with self._host.handle() as ipr:
                    self._hairpin(ipr, ep["host_veth"])
            except Exception:
                ep["ports"] = []
                self.ctx.store.put(key, ep)
                raise

    def revoke_external_connectivity(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        with ruleset_lock(self.ctx.host_ns):
            entry = self.ctx.store.get(key)
            if entry is None or not entry.value["ports"]:
                return
            record = entry.value
            record["ports"] = []
            self.ctx.store.put(key, record)
            self._apply_firewall(locked=True)

    def _taken_ports(self) -> set[tuple[str, str, int]]:
        taken: set[tuple[str, str, int]] = set()
        for entry in self.ctx.store.list("endpoints/"):
            for b in entry.value["ports"]:
                proto = ports.PROTO_NAMES[b["Proto"]]
                taken.add((proto, b["HostIP"], b["HostPort"]))
        return taken

    # --- firewall and restart ------------------------------------------------------

    def _ruleset(self) -> firewall.Ruleset:
        rules = firewall.Ruleset()
        for entry in self.ctx.store.list("networks/"):
            net = entry.value
            o = net["options"]
            rules.networks.append(
                firewall.NetworkRules(
                    bridge=net["bridge"],
                    subnets_v4=[ipaddress.IPv4Network(d["pool"]) for d in net["ipv4"]],
                    subnets_v6=[ipaddress.IPv6Network(d["pool"]) for d in net["ipv6"]],
                    icc=o["icc"], masquerade=o["masquerade"], internal=o["internal"],
                )
            )
        for entry in self.ctx.store.list("endpoints/"):
            ep = entry.value
            for b in ep["ports"]:
                host_ip = (None if b["HostIP"] in ("", "0.0.0.0", "::")
                           else ipaddress.ip_address(b["HostIP"]))
                # Every local IPv6 address ("::") maps to the endpoint's IPv6 address; every
                # local IPv4 one to its IPv4 address (older records: "" or "0.0.0.0" on an
                # IPv6-only network, to its IPv6 one).
                if host_ip is None and b["HostIP"] == ports.ANY_V6:
                    target = ep.get("address_v6")
                elif host_ip is None:
                    target = ep["address"] or ep.get("address_v6")
                else:
                    target = ep["address"] if host_ip.version == 4 else ep.get("address_v6")
                if not target:
                    continue  # refused at parse time; an old record is not re-published
                rules.ports.append(
                    firewall.PortRule(
                        proto=ports.PROTO_NAMES[b["Proto"]],
                        host_ip=host_ip,
                        host_port=int(b["HostPort"]),
                        address=ipaddress.ip_interface(target).ip,
                        port=int(b["Port"]),
                    )
                )
        return rules

    def _apply_firewall(self, locked: bool = False) -> None:
        owner = f"{self.ctx.store.url} host {self.ctx.host_id}"
        if locked:
            firewall.apply(self.ctx.host_ns, self._ruleset(), owner)
            return
        with ruleset_lock(self.ctx.host_ns):
            firewall.apply(self.ctx.host_ns, self._ruleset(), owner)

    def restore(self) -> list[str]:
        problems: list[str] = []
        with iproute(self.ctx.host_ns) as ipr:
            for entry in self.ctx.store.list("networks/"):
                net = entry.value
                try:
                    osl_links.ensure_bridge(ipr, net["bridge"], net["options"].get("mtu"))
                    self._configure_bridge(ipr, net)
                    self._enable_forwarding(bool(net["ipv6"]))
                    self._reattach_ports(ipr, net)
                except Exception as exc:  # report and go on with the others
                    problems.append(f"network {net['id'][:12]}: cannot rebuild bridge: {exc}")
        try:
            self._apply_firewall()
        except Exception as exc:
            problems.append(f"bridge firewall: {exc}")
        return problems

    def _reattach_ports(self, ipr: Any, net: dict[str, Any]) -> None:
        """A recreated bridge has no ports: plug back the veths that are still there."""
        bridge_index = osl_links.require_index(ipr, net["bridge"])
        for entry in self.ctx.store.list(f"endpoints/{net['id']}/"):
            info = osl_links.link_info(ipr, entry.value["host_veth"])
            if info is not None and info["master"] != bridge_index:
                ipr.link("set", index=info["index"], master=bridge_index, state="up")
                if not net["options"]["icc"]:
                    self._isolate(ipr, entry.value["host_veth"])
                if entry.value["ports"]:
                    self._hairpin(ipr, entry.value["host_veth"])

    @staticmethod
    def _hairpin(ipr: Any, port: str) -> None:
        """A sandbox that reaches its own published port (through a host address) gets its
        packets back out of the port they came in by: the bridge must allow that (hairpin
        mode), as Docker does without its userland proxy. Only ports that publish pay for
        it; the firewall masquerades such packets so the replies come back the same way."""
        ipr.brport("set", index=osl_links.require_index(ipr, port), mode=1)

    @staticmethod
    def _isolate(ipr: Any, port: str) -> None:
        """ICC off: an isolated bridge port reaches the bridge (the gateway) but no other
        isolated port, in the kernel's forwarding path itself."""
        ipr.brport("set", index=osl_links.require_index(ipr, port), isolated=1)


def _half_without_address(binding: ports.PortBinding, wanted: list[ports.PortBinding],
                          ep: dict) -> bool:
    """Whether ``binding`` is the half of a dual-stack pair (`-p 0.0.0.0:80:80 -p
    [::]:80:80`, as Docker writes "every address") for a family the endpoint has no address
    of, while the other half serves the one it has: then it is left out, as a port on
    "every address" of a single-stack endpoint only gets its own family."""
    if binding.host_ip == ports.ANY_V6 and not ep.get("address_v6"):
        others = ("", ports.ANY_V4)
    elif binding.host_ip == ports.ANY_V4 and not ep["address"]:
        others = ("", ports.ANY_V6)
    else:
        return False
    return any(b.host_ip in others and (b.proto, b.port, b.host_port, b.host_port_end)
               == (binding.proto, binding.port, binding.host_port, binding.host_port_end)
               for b in wanted)
