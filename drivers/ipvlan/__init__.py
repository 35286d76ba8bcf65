"""The ipvlan driver: sandboxes on an existing LAN that allows one MAC address per port.

Design notes
------------
Like macvlan, every endpoint is a child of a host interface (the *parent*); unlike a
macvlan child, an ipvlan child has the parent's MAC address, and the kernel tells the
children apart by IP address. So the LAN's switch sees one MAC per host port (what cloud
networks, Wi-Fi and port security allow), while the LAN's machines still see one IP
address per sandbox. Everything around the child (the parent's checks and claims, 802.1q
sub-interfaces, the endpoint life cycle, restore) is ``drivers.parent``'s, shared with
macvlan; this module adds the modes:

- ``l2`` (default): the children are on the LAN's L2 segment: they answer ARP (with the
  parent's MAC), receive broadcasts, and route through the LAN's router, the network's
  ``--gateway``, which Join returns as their default route (as macvlan's);
- ``l3`` and ``l3s``: the parent routes: no ARP and no broadcast reach the children, the
  network's subnet need not be the LAN's, there is no gateway on the LAN (Join gives each
  sandbox a default route through its own interface, as Docker does) and the kernel
  routes the children's packets in the host's namespace out of the parent. The LAN, or
  another host, reaches a host's endpoints through a route to their subnet via that
  host's LAN address; ``l3s`` also passes them through the host's netfilter.

``ipvlan_flag``: ``bridge`` (default) lets children of one parent talk inside the host,
``private`` forbids it, ``vepa`` sends it all to the LAN's switch.

The kernel keeps one mode and one flag per parent (a child of another mode would switch
every child of the parent), so networks sharing a parent must share both; macvlan and
ipvlan cannot share a parent at all (the kernel answers EBUSY, turned into a sentence).
On a kernel without ipvlan, network creation makes a throwaway child on the parent to
find out, and refuses with one sentence naming the module, leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

from cnm import names
from cnm.driverapi import (
    OPT_MACADDRESS,
    ROUTE_CONNECTED,
    InterfaceInfo,
    JoinInfo,
    StaticRoute,
)
from cnm.errors import InvalidOption, NotFound
from cnm.osl import iproute
from cnm.osl import links as osl_links
from cnm.osl.netns import NetlinkHandle
from drivers.common import mac_option
from drivers.ipvlan import dataplane, options
from drivers.parent import ParentDriver, ParentOptions

log = logging.getLogger(__name__)

_DEFAULTS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class IpvlanDriver(ParentDriver):
    name = "ipvlan"
    kind = "ipvlan"
    child_prefix = names.IPVLAN_PREFIX
    own_mac = False  # the child has its parent's MAC: nothing for the core to set

    def parse(self, opts: dict[str, Any]) -> ParentOptions:
        return options.parse(opts)

    def build_extras(self, ipr: NetlinkHandle, record: dict[str, Any],
                     undo: contextlib.ExitStack) -> None:
        """Find out, with a throwaway child, that the kernel has ipvlan and that the
        parent takes ipvlan children (not macvlan ones already), before anything joins."""
        probe = names.IPVLAN_PREFIX + names.short(record["id"], 10)
        o = record["options"]
        osl_links.delete_link(ipr, probe)
        index = osl_links.require_index(ipr, record["parent"])
        try:
            dataplane.create_ipvlan(ipr, probe, record["parent"], index, o["mode"], o["flag"])
        finally:
            osl_links.delete_link(ipr, probe)

    def endpoint_mac(self, nid: str, eid: str, network: dict[str, Any],
                     iface: InterfaceInfo, opts: dict[str, Any]) -> str:
        if iface.mac or mac_option(opts.get(OPT_MACADDRESS)):
            raise InvalidOption(
                "ipvlan interfaces have the MAC address of their parent interface "
                f"{network['parent']}; a MAC address cannot be chosen"
            )
        with iproute(self.ctx.host_ns) as ipr:
            info = osl_links.link_info(ipr, network["parent"])
        if info is None:
            raise NotFound(f"parent interface {network['parent']} does not exist")
        return str(info["mac"]).lower()

    def make_child(self, ipr: NetlinkHandle, name: str, network: dict[str, Any],
                   ep: dict[str, Any], parent_index: int, fd: int | None) -> None:
        o = network["options"]
        dataplane.create_ipvlan(ipr, name, network["parent"], parent_index, o["mode"],
                                o["flag"], mtu=o.get("mtu"), netns_fd=fd)

    def join_info(self, network: dict[str, Any], ep: dict[str, Any], src: str,
                  placed: bool) -> JoinInfo:
        o = network["options"]
        if o["mode"] == "l2":
            return super().join_info(network, ep, src, placed)
        # l3, l3s: the parent routes; a default route through the interface itself
        # (an internal network gets none).
        routes = [] if o["internal"] else [
            StaticRoute(default, ROUTE_CONNECTED) for default in _DEFAULTS
            if (default.version == 4 and ep.get("address"))
            or (default.version == 6 and ep.get("address_v6"))
        ]
        return JoinInfo(src_name=src, static_routes=routes, disable_gateway_service=True,
                        placed=placed)

    def info_extras(self, network: dict[str, Any]) -> dict[str, Any]:
        return {"IpvlanMode": network["options"]["mode"],
                "IpvlanFlag": network["options"]["flag"]}
