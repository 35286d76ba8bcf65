"""The macvlan driver: sandboxes as first-class hosts on an existing LAN.

Design notes
------------
Every endpoint is a macvlan child of the network's *parent* (a host interface on the LAN)
with a MAC address of its own, so the LAN's switch, router and DHCP-less neighbours see the
sandbox as one more machine. The user's ``--subnet``/``--gateway`` describe the LAN: the
gateway is the LAN's router, returned by Join as the sandbox's default route and never
configured on the host by us (nothing is routed or NATed by the host; there is no bridge
and no firewall). Internal networks get no gateway.

Who does what: the driver checks and claims the parent, makes an 802.1q sub-interface when
the parent is written ``IFACE.VID``, makes each child at join (directly inside the sandbox
when the core asks with OPT_JOIN_IFNAME, which saves a move between namespaces; in the
host as ``pcmv-<eid:10>`` for dockerd to move otherwise) and, if asked, the host shim. The
core's Sandbox (or dockerd) addresses the child and adds the default route.

Sharing a parent: several networks may use one parent in the same mode (each has its own
subnet, IPAM refuses overlaps). Different modes on one parent are refused: a bridge-mode
child and a vepa-mode child of one parent cannot reach each other locally, which nobody
asks for on purpose. Passthru gives the parent's whole identity (its MAC) to exactly one
child, so a passthru network never shares its parent and holds one endpoint. The claims
live in the driver's store under ``parents/<name>``, which is also the reference count of
an 802.1q sub-interface we created: it is deleted with the last network that used it, as
Docker does. A sub-interface the user made is used and never deleted.

The known limit, and the host shim
----------------------------------
The host cannot reach its own macvlan children through the parent: the kernel hands
frames that the host sends out of the parent to the wire, and frames from the children
(bridge mode) to sibling macvlans or the wire, never up the parent's own stack, and a
switch does not send a frame back out of the port it came in on. Sandboxes reach the LAN
and each other; the host and they do not reach each other.

``-o host_shim=ADDR`` (opt in) fixes it the usual way: a macvlan interface of the host's
own, ``pcsh-<nid:10>``, in bridge mode on the same parent, holding ADDR (which must be
one of the network's ``--aux-address`` values, so IPAM never hands it to an endpoint) as a
host address (/32 or /128, so it adds no route of its own), and one host route per joined
endpoint address through it. Host routes, not a route to the whole subnet, because the
usual host already has an address of its own on the parent in that very subnet (its LAN
address): a second route to the same prefix is refused by the kernel, and taking over
the host's route to the whole LAN is not ours to do. The shim works in bridge mode, and in
vepa mode when the LAN switch reflects frames back out of the port (hairpin); private and
passthru modes cannot have one. It is removed with the network.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import threading
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm import names
from cnm.driverapi import (
    OPT_JOIN_IFNAME,
    OPT_MACADDRESS,
    Capability,
    Driver,
    DriverContext,
    InterfaceInfo,
    IpamData,
    JoinInfo,
)
from cnm.errors import CNMError, Conflict, InvalidOption, NotFound
from cnm.osl import iproute, netns_exists
from cnm.osl import links as osl_links
from cnm.osl.netns import netns_fd
from drivers.common import ipam_record, mac_from_ip, mac_option, refuse_overlap
from drivers.macvlan import dataplane, options

log = logging.getLogger(__name__)

_FAMILY = {4: 2, 6: 10}


def macvlan_name(endpoint_id: str) -> str:
    """Host-side name of an endpoint's child while it is in the host (Docker's path)."""
    return names.MACVLAN_PREFIX + names.short(endpoint_id, 10)


def shim_name(network_id: str) -> str:
    return names.SHIM_PREFIX + names.short(network_id, 10)


class MacvlanDriver(Driver):
    name = "macvlan"

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        # Serialises this process's network create/delete (parent claims and the 802.1q
        # sub-interface); other processes are kept consistent by the store's CAS.
        self._lock = threading.Lock()

    # --- network -------------------------------------------------------------------

    def capabilities(self) -> Capability:
        return Capability("local", "local")

    def validate_network_options(self, opts: dict[str, Any]) -> None:
        """Syntax, then the parent as it is now, then other networks' claims: every
        refusal we can give before the core allocates addresses."""
        parsed = options.parse(opts)
        with iproute(self.ctx.host_ns) as ipr:
            self._check_parent(ipr, parsed)
        claim = self.ctx.store.get(f"parents/{parsed.parent}")
        self._check_claim(parsed, None, claim.value if claim else None)

    def _check_parent(self, ipr: Any, parsed: options.MacvlanOptions) -> dict[str, Any] | None:
        """Check the parent (or, for a VLAN parent yet to be made, its base interface);
        return the parent's facts, or None if it is a sub-interface still to create."""
        if osl_links.link_index(ipr, parsed.parent) is not None:
            return dataplane.check_parent(ipr, parsed.parent, parsed.mtu)
        vlan = options.split_vlan(parsed.parent)
        if vlan is None:
            raise NotFound(
                f"parent interface {parsed.parent} does not exist in the host namespace"
            )
        base = vlan[0]
        if osl_links.link_index(ipr, base) is None:
            raise NotFound(
                f"parent interface {base} (for VLAN {vlan[1]} as {parsed.parent}) does not "
                "exist in the host namespace"
            )
        dataplane.check_parent(ipr, base, parsed.mtu)
        return None

    @staticmethod
    def _check_claim(
        parsed: options.MacvlanOptions, nid: str | None, claim: dict[str, Any] | None
    ) -> None:
        """Refuse to share a parent in a conflicting way (see the module notes)."""
        if claim is None:
            return
        others = [n for n in claim["networks"] if n != nid]
        if not others:
            return
        other = others[0][:12]
        if parsed.mode == "passthru":
            raise Conflict(
                f"cannot use macvlan mode passthru: network {other} already uses parent "
                f"interface {parsed.parent}, and passthru needs it alone"
            )
        if claim["mode"] == "passthru":
            raise Conflict(
                f"network {other} uses parent interface {parsed.parent} in passthru mode, "
                "which gives the parent to that network alone"
            )
        if claim["mode"] != parsed.mode:
            raise Conflict(
                f"network {other} already uses parent interface {parsed.parent} in "
                f"{claim['mode']} mode; networks sharing a parent must use the same mode "
                f"(asked for {parsed.mode})"
            )

    def _network(self, nid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"networks/{nid}")
        if entry is None:
            raise NotFound(f"macvlan network {nid[:12]} not found")
        return entry.value

    def create_network(
        self, nid: str, opts: dict[str, Any], ipv4: list[IpamData], ipv6: list[IpamData]
    ) -> None:
        if self.ctx.store.get(f"networks/{nid}") is not None:
            return  # a retried call: the first one finished
        parsed = options.parse(opts)
        shim_address = None
        if parsed.host_shim is not None:
            aux = {k: v for d in ipv4 + ipv6 for k, v in d.aux_addresses.items()}
            shim_address = options.resolve_shim_address(
                parsed.host_shim, aux, [d.pool for d in ipv4 + ipv6]
            )
        record: dict[str, Any] = {
            "id": nid,
            "parent": parsed.parent,
            "options": parsed.to_dict(),
            "ipv4": [ipam_record(d) for d in ipv4],
            "ipv6": [ipam_record(d) for d in ipv6],
            "shim": None,
        }
        if shim_address is not None:
            host_prefix = 32 if shim_address.version == 4 else 128
            record["shim"] = {"name": shim_name(nid), "address": f"{shim_address}/{host_prefix}"}
        with self._lock, iproute(self.ctx.host_ns) as ipr, contextlib.ExitStack() as undo:
            for entry in self.ctx.store.list("networks/"):
                if entry.value["parent"] == parsed.parent:
                    refuse_overlap([d.pool for d in ipv4 + ipv6], entry.value,
                                   f"macvlan networks on parent {parsed.parent}")
            self._claim_parent(nid, parsed)
            undo.callback(self._release_parent, ipr, nid, parsed.parent)
            facts = self._check_parent(ipr, parsed)
            if facts is None:
                self._make_vlan(ipr, parsed.parent)
            self.ctx.store.put(f"networks/{nid}", record)
            undo.callback(self.ctx.store.delete, f"networks/{nid}")
            if record["shim"] is not None:
                undo.callback(osl_links.delete_link, ipr, record["shim"]["name"])
                self._ensure_shim(ipr, record)
            undo.pop_all()
        log.info("network %s: macvlan on %s (%s mode)%s", nid[:12], parsed.parent,
                 parsed.mode, " with host shim" if record["shim"] else "")

    def _claim_parent(self, nid: str, parsed: options.MacvlanOptions) -> None:
        def claim(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                return {"parent": parsed.parent, "mode": parsed.mode, "networks": [nid],
                        "created_vlan": False}
            self._check_claim(parsed, nid, current)
            if nid not in current["networks"]:
                current["networks"].append(nid)
            return current

        self.ctx.store.update(f"parents/{parsed.parent}", claim)

    def _release_parent(self, ipr: Any, nid: str, parent: str) -> None:
        """Drop ``nid``'s claim; the last network out deletes a sub-interface we made."""
        removed: dict[str, Any] = {}

        def release(current: dict[str, Any] | None) -> dict[str, Any] | None:
            removed.clear()
            if current is None:
                return None
            current["networks"] = [n for n in current["networks"] if n != nid]
            if current["networks"]:
                return current
            removed.update(current)
            return None

        self.ctx.store.update(f"parents/{parent}", release)
        if removed.get("created_vlan"):
            osl_links.delete_link(ipr, parent)
            log.info("parent %s: VLAN sub-interface removed with its last network", parent)

    def _make_vlan(self, ipr: Any, parent: str) -> None:
        """Create the 802.1q sub-interface ``parent`` (IFACE.VID) and record that we own
        it; the caller's claim on ``parent`` is already in the store."""
        base, vid = options.split_vlan(parent) or ("", 0)
        dataplane.create_vlan(ipr, base, vid, parent)

        def mark(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is not None:
                current["created_vlan"] = True
            return current

        try:
            self.ctx.store.update(f"parents/{parent}", mark)
        except Exception:
            osl_links.delete_link(ipr, parent)
            raise
        log.info("parent %s: VLAN %d sub-interface of %s created", parent, vid, base)

    def _ensure_shim(self, ipr: Any, record: dict[str, Any]) -> None:
        """Make (or complete) the host shim: the macvlan, its address, and a host route
        to every joined endpoint through it."""
        shim = record["shim"]
        o = record["options"]
        if not dataplane.is_macvlan_with_mac(ipr, shim["name"], None):
            osl_links.delete_link(ipr, shim["name"])
            parent_index = osl_links.require_index(ipr, record["parent"])
            dataplane.create_macvlan(ipr, shim["name"], record["parent"], parent_index,
                                     "bridge", mtu=o.get("mtu"))
        index = osl_links.require_index(ipr, shim["name"])
        osl_links.configure(ipr, index, addresses=[ipaddress.ip_interface(shim["address"])])
        for entry in self.ctx.store.list(f"endpoints/{record['id']}/"):
            if entry.value.get("joined"):
                self._shim_routes(ipr, record, entry.value, add=True)

    def _shim_routes(
        self, ipr: Any, record: dict[str, Any], ep: dict[str, Any], *, add: bool
    ) -> None:
        """Host routes to the endpoint's addresses through the shim (see module notes)."""
        shim = record.get("shim")
        if not shim:
            return
        index = osl_links.link_index(ipr, shim["name"])
        if index is None:
            return
        for cidr in (ep.get("address"), ep.get("address_v6")):
            if not cidr:
                continue
            ip = ipaddress.ip_interface(cidr).ip
            host = ipaddress.ip_network(ip)
            if add:
                osl_links.add_route(ipr, host, oif=index)
                continue
            try:
                ipr.route("del", dst=str(host), oif=index, family=_FAMILY[ip.version])
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise osl_links.kernel_error(exc, f"delete route {host}") from exc

    def delete_network(self, nid: str) -> None:
        entry = self.ctx.store.get(f"networks/{nid}")
        if entry is None:
            return
        record = entry.value
        for ep in self.ctx.store.list(f"endpoints/{nid}/"):
            self.delete_endpoint(nid, ep.value["id"])
        with self._lock, iproute(self.ctx.host_ns) as ipr:
            if record["shim"]:
                osl_links.delete_link(ipr, record["shim"]["name"])
            self.ctx.store.delete(f"networks/{nid}")
            self._release_parent(ipr, nid, record["parent"])
        log.info("network %s: removed", nid[:12])

    # --- endpoints -----------------------------------------------------------------

    def create_endpoint(
        self, nid: str, eid: str, iface: InterfaceInfo, opts: dict[str, Any]
    ) -> InterfaceInfo:
        # The child itself is made at join, when the sandbox is known (see module notes).
        key = f"endpoints/{nid}/{eid}"
        existing = self.ctx.store.get(key)
        if existing is not None:
            return InterfaceInfo(mac=None if iface.mac else existing.value["mac"])
        network = self._network(nid)
        self._refuse_host_address(network, iface)
        mode = network["options"]["mode"]
        wanted = iface.mac or mac_option(opts.get(OPT_MACADDRESS))
        if mode == "passthru":
            if wanted:
                raise InvalidOption(
                    "in passthru mode the endpoint takes the MAC address of parent interface "
                    f"{network['parent']}; a MAC address cannot be chosen"
                )
            if not self.ctx.store.create(f"passthru/{nid}", {"endpoint": eid}):
                holder = self.ctx.store.get(f"passthru/{nid}")
                if holder is None or holder.value["endpoint"] != eid:
                    raise Conflict(
                        f"macvlan network {nid[:12]} is in passthru mode and already has its "
                        "one endpoint: passthru gives the parent interface to a single "
                        "endpoint"
                    )
            try:
                with iproute(self.ctx.host_ns) as ipr:
                    info = osl_links.link_info(ipr, network["parent"])
                if info is None:
                    raise NotFound(f"parent interface {network['parent']} does not exist")
            except Exception:
                self.ctx.store.delete(f"passthru/{nid}")
                raise
            mac = str(info["mac"]).lower()
        else:
            mac = wanted or mac_from_ip(iface.address.ip if iface.address else None)
        record = {
            "id": eid,
            "network": nid,
            "host_name": macvlan_name(eid),
            "mac": mac,
            "address": str(iface.address) if iface.address else None,
            "address_v6": str(iface.address_v6) if iface.address_v6 else None,
            "joined": False,
            "sandbox_key": None,
            "ifname": None,
        }
        self.ctx.store.put(key, record)
        return InterfaceInfo(mac=None if iface.mac else mac)

    def _refuse_host_address(self, network: dict[str, Any], iface: InterfaceInfo) -> None:
        """An endpoint must not take the host's own LAN address: both would answer ARP on
        the same wire. IPAM cannot know the LAN's machines; this is the one we can see."""
        wanted = {a.ip for a in (iface.address, iface.address_v6) if a is not None}
        if not wanted:
            return
        with iproute(self.ctx.host_ns) as ipr:
            taken = {a.ip for a in osl_links.addresses(ipr)} & wanted
        if taken:
            raise Conflict(
                f"address {min(taken)} belongs to the host itself; keep endpoints off the "
                "LAN's machines with --ip-range or --aux-address (parent "
                f"{network['parent']})"
            )

    def _endpoint(self, nid: str, eid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"endpoints/{nid}/{eid}")
        if entry is None:
            raise NotFound(f"endpoint {eid[:12]} not found on macvlan network {nid[:12]}")
        return entry.value

    def delete_endpoint(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        entry = self.ctx.store.get(key)
        if entry is None:
            return
        self._unplug(nid, entry.value)
        self.ctx.store.delete(key)
        holder = self.ctx.store.get(f"passthru/{nid}")
        if holder is not None and holder.value["endpoint"] == eid:
            self.ctx.store.delete(f"passthru/{nid}")

    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self._endpoint(nid, eid)
        network = self._network(nid)
        return {
            "MacAddress": ep["mac"],
            "Parent": network["parent"],
            "MacvlanMode": network["options"]["mode"],
            "HostInterface": ep["host_name"],
        }

    def join(self, nid: str, eid: str, sandbox_key: str, opts: dict[str, Any]) -> JoinInfo:
        network = self._network(nid)
        key = f"endpoints/{nid}/{eid}"
        ep = self._endpoint(nid, eid)
        o = network["options"]
        direct = opts.get(OPT_JOIN_IFNAME)
        with iproute(self.ctx.host_ns) as ipr:
            parent_index = osl_links.link_index(ipr, network["parent"])
            if parent_index is None:
                raise NotFound(
                    f"parent interface {network['parent']} of macvlan network {nid[:12]} "
                    "is gone from the host namespace"
                )
            osl_links.delete_link(ipr, ep["host_name"])  # a half-made child from a retry
            if direct:
                with netns_fd(sandbox_key) as fd:
                    dataplane.create_macvlan(
                        ipr, direct, network["parent"], parent_index, o["mode"],
                        mac=ep["mac"], mtu=o.get("mtu"), netns_fd=fd,
                    )
            else:
                dataplane.create_macvlan(
                    ipr, ep["host_name"], network["parent"], parent_index, o["mode"],
                    mac=ep["mac"], mtu=o.get("mtu"),
                )
            ep.update(joined=True, sandbox_key=sandbox_key, ifname=direct or None)
            try:
                self._shim_routes(ipr, network, ep, add=True)
                self.ctx.store.put(key, ep)
            except Exception:
                self._remove_child(ipr, ep)
                raise
        internal = o["internal"]
        gw4 = next((d["gateway"] for d in network["ipv4"] if d.get("gateway")), None)
        gw6 = next((d["gateway"] for d in network["ipv6"] if d.get("gateway")), None)
        return JoinInfo(
            src_name=direct or ep["host_name"],
            gateway=None if internal or gw4 is None else ipaddress.IPv4Interface(gw4).ip,
            gateway_v6=None if internal or gw6 is None else ipaddress.IPv6Interface(gw6).ip,
            disable_gateway_service=internal,
            placed=bool(direct),
        )

    def leave(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        entry = self.ctx.store.get(key)
        if entry is None:
            return
        ep = entry.value
        self._unplug(nid, ep)
        ep.update(joined=False, sandbox_key=None, ifname=None)
        self.ctx.store.put(key, ep)

    def _unplug(self, nid: str, ep: dict[str, Any]) -> None:
        """Delete the endpoint's child wherever it is and its shim routes."""
        entry = self.ctx.store.get(f"networks/{nid}")
        with iproute(self.ctx.host_ns) as ipr:
            if entry is not None:
                self._shim_routes(ipr, entry.value, ep, add=False)
            self._remove_child(ipr, ep)

    @staticmethod
    def _remove_child(ipr: Any, ep: dict[str, Any]) -> None:
        # Docker moves the child back to the host under its host name before Leave.
        osl_links.delete_link(ipr, ep["host_name"])
        # A child we placed in a sandbox: delete it there, but only if it is still ours
        # (a macvlan with our MAC), not an interface that took the name since.
        sandbox_key, ifname = ep.get("sandbox_key"), ep.get("ifname")
        if sandbox_key and ifname and netns_exists(sandbox_key):
            with iproute(sandbox_key) as inside:
                if dataplane.is_macvlan_with_mac(inside, ifname, ep["mac"]):
                    osl_links.delete_link(inside, ifname)

    def endpoint_missing(self, nid: str, eid: str) -> bool:
        """Whether the endpoint's child is gone (used by reconcile)."""
        ep = self._endpoint(nid, eid)
        if ep.get("ifname") and ep.get("sandbox_key"):
            if not netns_exists(ep["sandbox_key"]):
                return True
            with iproute(ep["sandbox_key"]) as inside:
                return not dataplane.is_macvlan_with_mac(inside, ep["ifname"], ep["mac"])
        with iproute(self.ctx.host_ns) as ipr:
            return osl_links.link_index(ipr, ep["host_name"]) is None

    # --- restart -------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Recreate missing 802.1q sub-interfaces and shims (with their routes); report a
        missing parent, which is the user's interface and not ours to invent. Endpoint
        children are rebuilt by the core's sandbox reconcile (through join)."""
        problems: list[str] = []
        with self._lock, iproute(self.ctx.host_ns) as ipr:
            for entry in self.ctx.store.list("parents/"):
                claim = entry.value
                if not claim.get("created_vlan"):
                    continue
                if osl_links.link_index(ipr, claim["parent"]) is not None:
                    continue
                base, vid = options.split_vlan(claim["parent"]) or ("", 0)
                try:
                    dataplane.create_vlan(ipr, base, vid, claim["parent"])
                    log.info("restore: VLAN sub-interface %s recreated", claim["parent"])
                except CNMError as exc:
                    problems.append(f"macvlan parent {claim['parent']}: cannot recreate: {exc}")
            for entry in self.ctx.store.list("networks/"):
                net = entry.value
                nid = net["id"][:12]
                if osl_links.link_index(ipr, net["parent"]) is None:
                    problems.append(
                        f"macvlan network {nid}: parent interface {net['parent']} is gone; "
                        "its endpoints have no connectivity until it is back"
                    )
                    continue
                if not net["shim"]:
                    continue
                try:
                    self._ensure_shim(ipr, net)
                except CNMError as exc:
                    problems.append(f"macvlan network {nid}: cannot rebuild host shim: {exc}")
        return problems
