"""A Network: a group of endpoints that can talk directly, like a switch."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cnm import inputs, names
from cnm.dns.names import check_aliases
from cnm.driverapi import (
    OPT_MACADDRESS,
    OPT_PORTMAP,
    InterfaceInfo,
    IpamData,
    refuse_internal_options,
)
from cnm.endpoint import Endpoint
from cnm.errors import Busy, CNMError, InvalidOption, NotFound, PoolExhausted
from cnm.inputs import address_text, shown
from cnm.portmap import parse_portmap
from cnm.records import EndpointRecord, NetworkRecord, PoolRecord

if TYPE_CHECKING:
    from cnm.controller import Controller

# Where cnm.services.manager keeps its state in a host's key space: every load-balancer
# record under the first, a bridge network's services under the second + its id
# (tests/unit/test_services.py keeps them equal to the manager's).
SERVICES_LB_PREFIX = "lb/"
SERVICES_PREFIX = "services/"


class Network:
    """Handle on a stored network; every property reads the store afresh."""

    def __init__(self, controller: Controller, network_id: str) -> None:
        self.controller = controller
        self.id = network_id

    def __repr__(self) -> str:
        return f"<Network {self.id[:12]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> NetworkRecord:
        return self.controller._network_record(self.id)

    @property
    def name(self) -> str:
        return self.record.name

    @staticmethod
    def ipam_data(pools: list[PoolRecord]) -> list[IpamData]:
        return [
            IpamData(
                pool=ipaddress.ip_network(p.subnet),
                gateway=ipaddress.ip_interface(p.gateway) if p.gateway else None,
                aux_addresses={k: ipaddress.ip_address(v.split("/")[0])
                               for k, v in p.aux_addresses.items()},
                cluster_wide=p.pool_id.startswith("global/"),
            )
            for p in pools
        ]

    # --- endpoints --------------------------------------------------------------------

    def create_endpoint(
        self,
        name: str | None = None,
        *,
        ip: str | None = None,
        ipv6_address: str | None = None,
        mac: str | None = None,
        options: Mapping[str, Any] | None = None,
        endpoint_id: str | None = None,
        aliases: Iterable[str] | None = None,
        services: Iterable[str] | None = None,
    ) -> Endpoint:
        """Create an endpoint (an interface not yet in any sandbox) with its addresses.

        ``ip``/``ipv6_address`` ask for static addresses; networks whose addressing is
        owned by the caller (Docker) must be given them. ``aliases``: more names the
        endpoint's addresses answer to on this network, besides the sandbox's and the
        endpoint's (RFC 1123 host names; Docker's ``--network-alias``). ``services``: the
        load-balanced services of this network it is a backend of once joined.
        """
        ctl = self.controller
        net = self.record
        if endpoint_id is not None and not names.is_valid_id(endpoint_id):
            raise InvalidOption(f"endpoint id {shown(endpoint_id)} must be 12 to 64 letters "
                                "and digits")
        eid = endpoint_id or names.new_id()
        if endpoint_id is not None and ctl.local.get(f"endpoints/{self.id}/{eid}") is not None:
            return Endpoint(ctl, self.id, eid)  # a retried create
        name = name or eid[:12]
        if not names.is_valid_object_name(name):
            raise InvalidOption(f"endpoint name {name!r} is invalid")
        alias_list = check_aliases(list(aliases) if aliases is not None else None)
        if isinstance(services, str):
            services = [services]
        service_list = []
        if services:
            from cnm.services.manager import Services  # only networks with services pay for it

            service_list = Services(ctl).check_membership(self.id, services)
        mac = inputs.mac(mac, "the MAC address") if mac else None
        opts = refuse_internal_options(options, f"endpoint {name}")
        parse_portmap(opts.get(OPT_PORTMAP))  # refused now rather than at join
        inputs.mac_option(opts.get(OPT_MACADDRESS), f"option {OPT_MACADDRESS}")
        drv = ctl.driver(net.driver)
        # Its writes wake the host's watchers once, at the end (none of them is a name).
        with ctl.local.wakeups_batched(), contextlib.ExitStack() as undo:
            ctl._claim_names(f"names/endpoints/{self.id}/{name}", "endpoints", eid, undo,
                             f"network {net.name} already has an endpoint named {name!r}")
            address = self._address(net, 4, ip, undo)
            address_v6 = self._address(net, 6, ipv6_address, undo) if net.ipv6 else None
            if ipv6_address and not net.ipv6:
                raise InvalidOption(f"network {net.name} has no IPv6: cannot use {ipv6_address}")
            record = EndpointRecord(
                id=eid, name=name, network_id=self.id,
                address=str(address) if address else None,
                address_v6=str(address_v6) if address_v6 else None,
                mac=mac, options=opts, aliases=alias_list, services=service_list,
            )
            iface = InterfaceInfo(
                ipaddress.IPv4Interface(record.address) if record.address else None,
                ipaddress.IPv6Interface(record.address_v6) if record.address_v6 else None,
                mac,
            )
            if mac:
                opts.setdefault(OPT_MACADDRESS, mac)
            filled = drv.create_endpoint(self.id, eid, iface, opts)
            undo.callback(drv.delete_endpoint, self.id, eid)
            record.mac = mac or filled.mac
            ctl.local.put(f"endpoints/{self.id}/{eid}", record.to_dict())
            undo.pop_all()
        return Endpoint(ctl, self.id, eid)

    def _address(
        self, net: NetworkRecord, version: int, wanted: str | None, undo: contextlib.ExitStack
    ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        pools = net.pools(version)
        if not pools:
            if wanted:
                raise InvalidOption(f"network {net.name} has no IPv{version} subnet for {wanted}")
            return None
        if net.ipam == "external":
            if not wanted:
                return None
            iface = _interface(wanted, pools)
            return iface
        ipam = self.controller.ipam_for(net.ipam_scope)
        if wanted:
            iface = _interface(wanted, pools)
            pool = next(p for p in pools if iface.ip in ipaddress.ip_network(p.subnet))
            got = ipam.request_address(pool.pool_id, str(iface.ip))
            undo.callback(ipam.release_address, pool.pool_id, got)
            return ipaddress.ip_interface(f"{got}/{iface.network.prefixlen}")
        for pool in pools:
            try:
                got = ipam.request_address(pool.pool_id)
            except PoolExhausted:
                continue
            undo.callback(ipam.release_address, pool.pool_id, got)
            return ipaddress.ip_interface(f"{got}/{ipaddress.ip_network(pool.subnet).prefixlen}")
        raise PoolExhausted(
            f"network {net.name} has no free IPv{version} address left "
            f"({', '.join(p.subnet for p in pools)})"
        )

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.controller, self.id, e.value["id"])
            for e in self.controller.local.list(f"endpoints/{self.id}/")
        ]

    def endpoint(self, name_or_id: str) -> Endpoint:
        ctl = self.controller
        by_name = ctl.local.get(f"names/endpoints/{self.id}/{name_or_id}")
        if by_name is not None:
            return Endpoint(ctl, self.id, by_name.value["id"])
        for ep in self.endpoints():
            if ep.id == name_or_id or (len(name_or_id) >= 3 and ep.id.startswith(name_or_id)):
                return ep
        raise NotFound(f"network {self.name} has no endpoint {name_or_id!r}")

    # --- life cycle ---------------------------------------------------------------------

    def delete(self, force: bool = False) -> None:
        """Delete the network; it must have no endpoints unless ``force``."""
        ctl = self.controller
        net = self.record
        services = None
        balancer = None
        if _has_services_state(ctl, net):
            from cnm.services.manager import Services

            services = Services(ctl)
            balancer = services.lb_state(self.id).get("endpoint")  # the network's own
        eps = [ep for ep in self.endpoints() if ep.id != balancer]
        if eps and not force:
            raise Busy(
                f"network {net.name} still has {len(eps)} endpoint(s) "
                f"({', '.join(sorted(e.record.name for e in eps)[:5])}): detach them first"
            )
        if services is not None:
            services.network_removed(self.id, force)
        for ep in eps:
            ep.delete(force=True)
        ctl.driver(net.driver).delete_network(self.id)
        if net.ipam == "pycnm":
            ipam = ctl.ipam_for(net.ipam_scope)
            for pool in net.pools(4) + net.pools(6):
                ipam.release_pool(pool.pool_id)
        ctl.local.delete(f"networks/{self.id}")
        ctl.local.delete(f"names/networks/{net.name}")
        ctl._release_kernel_names("networks", self.id)

    def _driver_info(self) -> dict[str, str]:
        try:
            return self.controller.driver(self.record.driver).network_info(self.id)
        except NotFound:
            return {}  # the driver's record is gone (reconcile reports it)

    def inspect(self) -> dict[str, Any]:
        """A description shaped like ``docker network inspect``."""
        net = self.record
        config = []
        for pool in net.pools(4) + net.pools(6):
            item: dict[str, Any] = {"Subnet": pool.subnet}
            if pool.gateway:
                item["Gateway"] = str(ipaddress.ip_interface(pool.gateway).ip)
            if pool.ip_range:
                item["IPRange"] = pool.ip_range
            if pool.aux_addresses:
                item["AuxiliaryAddresses"] = pool.aux_addresses
            config.append(item)
        return {
            "Name": net.name,
            "Id": net.id,
            "Created": net.created,
            "Scope": net.scope,
            "Driver": net.driver,
            "EnableIPv4": net.ipv4,
            "EnableIPv6": net.ipv6,
            "Internal": net.internal,
            "IPAM": {"Driver": net.ipam, "Config": config},
            "Options": {**net.options, **self._driver_info()},
            "Labels": net.labels,
            "Endpoints": {ep.id: ep.inspect() for ep in self.endpoints()},
        }


def _has_services_state(ctl: Any, net: NetworkRecord) -> bool:
    """Whether removing ``net`` may have service work to do (what
    ``Services.network_removed`` looks at): this host's load-balancer records (``lb/``),
    services of the network, or a cluster-wide network (its services live in the cluster
    store). Without any, the services package is not imported (~10 ms of a CLI call)."""
    if ctl.local.list(SERVICES_LB_PREFIX) or ctl.local.list(f"{SERVICES_PREFIX}{net.id}/"):
        return True
    try:
        return ctl.driver(net.driver).dns_scope(net.id) is not None
    except CNMError:
        return True  # as Services.space would: let it decide


def _interface(
    wanted: str, pools: list[PoolRecord]
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A user's address (with or without /len) placed in the pool that holds it."""
    text = address_text(wanted)
    try:
        if text is None:
            raise ValueError
        ip = ipaddress.ip_address(text.split("/")[0])
    except ValueError:
        raise InvalidOption(f"{shown(wanted)} is not a valid IP address") from None
    for pool in pools:
        subnet = ipaddress.ip_network(pool.subnet)
        if ip in subnet:
            return ipaddress.ip_interface(f"{ip}/{subnet.prefixlen}")
    raise InvalidOption(
        f"address {ip} is not in the network's subnet(s) {', '.join(p.subnet for p in pools)}"
    )

