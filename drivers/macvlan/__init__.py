"""The macvlan driver: sandboxes as first-class hosts on an existing LAN.

Design notes
------------
Every endpoint is a macvlan child of the network's *parent* (a host interface on the LAN)
with a MAC address of its own, so the LAN's switch, router and DHCP-less neighbours see the
sandbox as one more machine. The user's ``--subnet``/``--gateway`` describe the LAN: the
gateway is the LAN's router, returned by Join as the sandbox's default route and never
configured on the host by us (nothing is routed or NATed by the host; there is no bridge
and no firewall). Internal networks get no gateway.

Who does what: ``drivers.parent`` (shared with ipvlan) checks and claims the parent, makes
an 802.1q sub-interface when the parent is written ``IFACE.VID``, and runs the endpoint
life cycle (each child made at join, directly inside the sandbox when the core asks with
OPT_JOIN_IFNAME; in the host as ``pcmv-<eid:10>`` for dockerd to move otherwise). This
module adds what is macvlan's own: the modes, MAC addresses, passthru and the host shim.
The core's Sandbox (or dockerd) addresses the child and adds the default route.

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
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm import names
from cnm.driverapi import OPT_MACADDRESS, InterfaceInfo, IpamData
from cnm.errors import Conflict, InvalidOption, NotFound
from cnm.osl import iproute
from cnm.osl import links as osl_links
from cnm.osl.netns import NetlinkHandle
from drivers.common import mac_from_ip, mac_option
from drivers.macvlan import dataplane, options
from drivers.parent import ParentDriver, ParentOptions

log = logging.getLogger(__name__)

_FAMILY = {4: 2, 6: 10}


def macvlan_name(endpoint_id: str) -> str:
    """Host-side name of an endpoint's child while it is in the host (Docker's path)."""
    return names.MACVLAN_PREFIX + names.short(endpoint_id, 10)


def shim_name(network_id: str) -> str:
    return names.SHIM_PREFIX + names.short(network_id, 10)


class MacvlanDriver(ParentDriver):
    name = "macvlan"
    kind = "macvlan"
    child_prefix = names.MACVLAN_PREFIX

    def parse(self, opts: dict[str, Any]) -> ParentOptions:
        return options.parse(opts)

    def check_claim(self, parsed: ParentOptions, other: str, claim: dict[str, Any]) -> None:
        """Passthru gives the parent to one network; other modes must match."""
        if parsed.mode_key == "passthru":
            raise Conflict(
                f"cannot use macvlan mode passthru: network {other} already uses parent "
                f"interface {parsed.parent}, and passthru needs it alone"
            )
        if claim["mode"] == "passthru":
            raise Conflict(
                f"network {other} uses parent interface {parsed.parent} in passthru mode, "
                "which gives the parent to that network alone"
            )
        super().check_claim(parsed, other, claim)

    # --- the host shim (see the module notes) --------------------------------------

    def network_extras(self, nid: str, parsed: ParentOptions, ipv4: list[IpamData],
                       ipv6: list[IpamData]) -> dict[str, Any]:
        assert isinstance(parsed, options.MacvlanOptions)
        if parsed.host_shim is None:
            return {"shim": None}
        aux = {k: v for d in ipv4 + ipv6 for k, v in d.aux_addresses.items()}
        address = options.resolve_shim_address(parsed.host_shim, aux,
                                               [d.pool for d in ipv4 + ipv6])
        host_prefix = 32 if address.version == 4 else 128
        return {"shim": {"name": shim_name(nid), "address": f"{address}/{host_prefix}"}}

    def build_extras(self, ipr: NetlinkHandle, record: dict[str, Any],
                     undo: contextlib.ExitStack) -> None:
        if record["shim"] is not None:
            undo.callback(osl_links.delete_link, ipr, record["shim"]["name"])
            self._ensure_shim(ipr, record)
            log.info("network %s: host shim %s", record["id"][:12], record["shim"]["name"])

    def remove_extras(self, ipr: NetlinkHandle, record: dict[str, Any]) -> None:
        if record["shim"]:
            osl_links.delete_link(ipr, record["shim"]["name"])

    def restore_extras(self, ipr: NetlinkHandle, record: dict[str, Any]) -> None:
        if record["shim"]:
            self._ensure_shim(ipr, record)

    def _ensure_shim(self, ipr: NetlinkHandle, record: dict[str, Any]) -> None:
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
                self.endpoint_joined(ipr, record, entry.value, True)

    def endpoint_joined(self, ipr: NetlinkHandle, network: dict[str, Any],
                        ep: dict[str, Any], joined: bool) -> None:
        """Host routes to the endpoint's addresses through the shim (see module notes)."""
        shim = network.get("shim")
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
            if joined:
                osl_links.add_route(ipr, host, oif=index)
                continue
            try:
                ipr.route("del", dst=str(host), oif=index, family=_FAMILY[ip.version])
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise osl_links.kernel_error(exc, f"delete route {host}") from exc

    # --- endpoints -----------------------------------------------------------------

    def endpoint_mac(self, nid: str, eid: str, network: dict[str, Any],
                     iface: InterfaceInfo, opts: dict[str, Any]) -> str:
        wanted = iface.mac or mac_option(opts.get(OPT_MACADDRESS))
        if network["options"]["mode"] != "passthru":
            return wanted or mac_from_ip(iface.address.ip if iface.address else None)
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
        return str(info["mac"]).lower()

    def endpoint_deleted(self, nid: str, eid: str) -> None:
        holder = self.ctx.store.get(f"passthru/{nid}")
        if holder is not None and holder.value["endpoint"] == eid:
            self.ctx.store.delete(f"passthru/{nid}")

    def child_mac(self, ep: dict[str, Any]) -> str | None:
        return str(ep["mac"])

    def info_extras(self, network: dict[str, Any]) -> dict[str, Any]:
        return {"MacvlanMode": network["options"]["mode"]}

    def make_child(self, ipr: NetlinkHandle, name: str, network: dict[str, Any],
                   ep: dict[str, Any], parent_index: int, fd: int | None) -> None:
        o = network["options"]
        dataplane.create_macvlan(ipr, name, network["parent"], parent_index, o["mode"],
                                 mac=ep["mac"], mtu=o.get("mtu"), netns_fd=fd)
