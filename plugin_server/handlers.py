"""One function per call of Docker's remote network and IPAM driver protocols.

Each reads its fields through ``protocol.Body`` and makes one or two Controller calls; no
networking happens here. The protocol: libnetwork's docs/remote.md and docs/ipam.md
(summarised in shared/docs/docker-plugin-api.md).

Idempotence, because Docker retries: creating what exists succeeds (the Controller treats a
known id as a retry), and every teardown call (DeleteNetwork, DeleteEndpoint, Leave,
RevokeExternalConnectivity, ReleasePool, ReleaseAddress) of an unknown object succeeds.

How networks are recorded: a network Docker creates is a pycnm network named
``docker-<first 12 digits of its id>`` with Docker's id as its own, created with
``preallocated`` pools, so its IPAM is "external": Docker asks for every address (from its
own IPAM, or from pycnm's through the IpamDriver calls) and releases it, and the network
never releases addresses itself. When the pools came from pycnm's IPAM
(``--ipam-driver pycnm``) each pool record keeps pycnm's pool id and the network's label
``docker.ipam`` says ``pycnm`` (else ``docker``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnm.driverapi import (
    OPT_ENABLE_IPV4,
    OPT_ENABLE_IPV6,
    OPT_INTERNAL,
    OPT_MACADDRESS,
    OPT_PORTMAP,
)
from cnm.endpoint import Endpoint
from cnm.errors import NotFound
from cnm.inputs import shown
from cnm.network import Network
from cnm.records import PoolRecord
from plugin_server.docker_ipam import GLOBAL_SPACE, LOCAL_SPACE, DockerIpam
from plugin_server.protocol import BadRequest, Body

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger(__name__)

OPT_GENERIC = "com.docker.network.generic"
DRIVER_OPTION = "driver"  # -o driver=bridge|macvlan|ipvlan|overlay
# Docker 28: the name the user asked for the interface inside the container (docker run
# --network name=N,driver-opt=com.docker.network.endpoint.ifname=NAME). The remote driver
# passes Docker no destination name (SetNames(src, prefix, "")), so no plugin can honour it.
OPT_IFNAME = "com.docker.network.endpoint.ifname"
# Docker 27: per-interface sysctls ("net.ipv4.conf.IFNAME.forwarding=1,..."); dockerd sets
# them itself inside the container once the interface is there, so the driver only lets
# them through.
OPT_SYSCTLS = "com.docker.network.endpoint.sysctls"
DEFAULT_DRIVER = "bridge"
NAME_PREFIX = "docker-"

Answer = dict[str, Any]


def network_name(network_id: str) -> str:
    """Docker never sends the network's name; ours is derived from its id."""
    return NAME_PREFIX + network_id[:12]


class KeyedLocks:
    """One lock per object id, so a retried call waits for the first instead of racing
    it (Docker may send the same CreateNetwork again while the first is still running)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class PluginContext:
    """What every handler gets: the Controller, the Docker IPAM layer, per-id locks."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.ipam = DockerIpam(controller)
        self.locks = KeyedLocks()

    def network(self, nid: str) -> Network:
        """The network with Docker's id ``nid``; NotFound if pycnm has none."""
        net = Network(self.controller, nid)
        net.record  # noqa: B018 - raises NotFound with the id in the message
        return net

    def endpoint(self, nid: str, eid: str) -> Endpoint:
        self.network(nid)
        ep = Endpoint(self.controller, nid, eid)
        ep.record  # noqa: B018
        return ep

    def existing_endpoint(self, nid: str, eid: str) -> Endpoint | None:
        """For teardown calls: None when there is nothing to tear down."""
        try:
            return self.endpoint(nid, eid)
        except NotFound:
            return None


Handler = Callable[[PluginContext, Body], Answer]


# --- handshake ----------------------------------------------------------------------------


def activate(ctx: PluginContext, body: Body) -> Answer:
    """``Plugin.Activate``: {} -> {"Implements": ["NetworkDriver", "IpamDriver"]}"""
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


def capabilities(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.GetCapabilities``: {} -> {"Scope": "local", "ConnectivityScope":
    "local", "GwAllocChecker": true}. Without swarm Docker has no cluster store, so the
    scope must be local; multi-host networks tie their hosts together through pycnm's own
    store. ``GwAllocChecker`` (Docker 28+; older engines ignore it) asks for GwAllocCheck
    before every CreateNetwork."""
    return {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}


# --- networks -----------------------------------------------------------------------------


def _pools(ctx: PluginContext, body: Body, field: str, version: int) -> list[PoolRecord]:
    pools = []
    for item in body.items(field):
        subnet = item.cidr_network("Pool", required=True)
        if ipaddress.ip_network(subnet).version != version:
            raise BadRequest(f"{item.call}: {subnet} is not an IPv{version} subnet")
        gateway = item.cidr_interface("Gateway")
        aux = {}
        for name, value in item.mapping("AuxAddresses").items():
            aux[str(name)] = Body(f"{item.call} (AuxAddresses)", {name: value}).cidr_interface(
                name)
            if not aux[str(name)]:
                raise BadRequest(f"{item.call}: AuxAddresses {shown(name)} must be an address "
                                 "with its prefix length (e.g. 10.1.0.9/24), not empty")
        for what, cidr in [("gateway", gateway), *aux.items()]:
            if cidr and ipaddress.ip_interface(cidr).ip not in ipaddress.ip_network(subnet):
                raise BadRequest(f"{item.call}: {what} {cidr} is not inside subnet {subnet}")
        space = item.string("AddressSpace")
        pools.append(PoolRecord(
            subnet=subnet, gateway=gateway or None, aux_addresses=aux,
            pool_id=ctx.ipam.pool_for(space, subnet),
        ))
    return pools


@dataclass(frozen=True)
class NetworkRequest:
    """What CreateNetwork's (and GwAllocCheck's) ``Options`` ask for."""

    driver: str
    options: dict[str, Any]
    internal: bool
    ipv6: bool
    ipv4: bool


def _network_request(body: Body) -> NetworkRequest:
    """Options: {"com.docker.network.generic": {"driver": "bridge", ...the user's -o},
    "com.docker.network.internal": bool, "com.docker.network.enable_ipv6": bool,
    "com.docker.network.enable_ipv4": bool (Docker 28+; absent means true)}"""
    opts = body.sub("Options")
    generic = opts.mapping(OPT_GENERIC)
    options: dict[str, Any] = {}
    for key, value in generic.items():
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(f"{body.call}: option {shown(key)} must be a string, not a "
                             f"{type(value).__name__}")
        options[str(key)] = value
    driver = str(options.pop(DRIVER_OPTION, DEFAULT_DRIVER) or DEFAULT_DRIVER)
    ipv4 = opts.flag(OPT_ENABLE_IPV4) if OPT_ENABLE_IPV4 in opts.data else True
    return NetworkRequest(driver, options, opts.flag(OPT_INTERNAL), opts.flag(OPT_ENABLE_IPV6),
                          ipv4)


def gw_alloc_check(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.GwAllocCheck`` (Docker 28+, sent before CreateNetwork because
    GetCapabilities said ``GwAllocChecker``): {"Options": {as CreateNetwork's}} ->
    {"SkipIPv4": bool, "SkipIPv6": bool}: may Docker skip reserving gateway addresses?
    Never for pycnm's drivers: the bridge holds its gateway address even on an internal
    network, and a macvlan network's gateway is the LAN's router, which no container may be
    given. The options are checked here too, so a bad one fails before Docker has
    allocated anything."""
    request = _network_request(body)
    ctx.controller.check_network_options(request.driver, request.options,
                                         internal=request.internal, ipv6=request.ipv6,
                                         ipv4=request.ipv4)
    return {"SkipIPv4": False, "SkipIPv6": False}


def create_network(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.CreateNetwork``: {"NetworkID", "Options": {...see _network_request},
    "IPv4Data": [{"AddressSpace", "Pool", "Gateway", "AuxAddresses"}], "IPv6Data": [...]}
    -> {}. With IPv4 disabled (Docker 28's ``--ipv4=false``) IPv4Data is empty: an
    IPv6-only network."""
    nid = body.id("NetworkID")
    request = _network_request(body)
    pools = _pools(ctx, body, "IPv4Data", 4) + _pools(ctx, body, "IPv6Data", 6)
    if any(ipaddress.ip_network(p.subnet).version == 6 for p in pools) and not request.ipv6:
        raise BadRequest(f"{body.call}: IPv6 subnets need --ipv6")
    if not request.ipv4 and any(ipaddress.ip_network(p.subnet).version == 4 for p in pools):
        raise BadRequest(f"{body.call}: {OPT_ENABLE_IPV4} is false but IPv4Data has a pool")
    labels = {"docker.ipam": "pycnm" if any(p.pool_id for p in pools) else "docker"}
    driver = request.driver
    with ctx.locks.hold(nid):
        net = ctx.controller.new_network(
            network_name(nid), driver, ipv6=request.ipv6, internal=request.internal,
            options=request.options, labels=labels, network_id=nid, preallocated=pools,
            ipv4=request.ipv4,
        )
    log.info("network %s: %s (driver %s, %s)", nid[:12], net.name, driver,
             ", ".join(p.subnet for p in pools) or "no subnet")
    return {}


def delete_network(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.DeleteNetwork``: {"NetworkID"} -> {}. Docker deletes a network only
    once it holds no containers, so endpoints we still hold are orphans (a crash between
    two calls) and go with it."""
    nid = body.id("NetworkID")
    with ctx.locks.hold(nid):
        try:
            net = ctx.network(nid)
        except NotFound:
            log.info("network %s: already gone", nid[:12])
            return {}
        orphans = net.endpoints()
        if orphans:
            log.warning("network %s: removing %d orphaned endpoint(s) with it", nid[:12],
                        len(orphans))
        net.delete(force=True)
    return {}


def allocate_network(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.AllocateNetwork`` (swarm managers only, never for a local-scope
    driver): {"NetworkID", "IPv4Data", "IPv6Data", "Options"} -> {"Options": {}}"""
    body.id("NetworkID")
    return {"Options": {}}


def free_network(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.FreeNetwork`` (swarm only): {"NetworkID"} -> {}"""
    body.id("NetworkID")
    return {}


# --- endpoints ----------------------------------------------------------------------------


def create_endpoint(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.CreateEndpoint``: {"NetworkID", "EndpointID", "Interface": {"Address",
    "AddressIPv6", "MacAddress"}, "Options": {...}} -> {"Interface": {only the fields Docker
    left empty, e.g. "MacAddress"}}. Options may carry Docker 27's per-interface sysctls
    (dockerd applies them itself) and Docker 28's interface name, which a remote driver
    cannot honour: refused rather than silently ignored."""
    nid, eid = body.id("NetworkID"), body.id("EndpointID")
    ifname = body.sub("Options").data.get(OPT_IFNAME)
    if ifname not in (None, ""):
        raise BadRequest(
            f"{OPT_IFNAME}={json.dumps(ifname)[:40]} cannot be honoured by a network plugin: "
            "Docker names a plugin's interface in the container itself (eth0, eth1, ...); "
            "drop the option, or use a built-in driver to choose the name")
    iface = body.sub("Interface")
    address, address_v6 = iface.cidr_interface("Address"), iface.cidr_interface("AddressIPv6")
    mac = iface.mac("MacAddress")
    options = body.options("Options")
    option_mac = body.sub("Options").base64_mac(OPT_MACADDRESS)
    if mac and option_mac and mac != option_mac:
        raise BadRequest(f"{body.call}: Interface.MacAddress {mac} and {OPT_MACADDRESS} "
                         f"({option_mac}) disagree")
    net = ctx.network(nid)
    ep = net.create_endpoint(
        ip=address or None, ipv6_address=address_v6 or None, mac=(mac or option_mac) or None,
        options=options, endpoint_id=eid,
    )
    answer: dict[str, str] = {}
    if not mac:  # Docker left it empty (or sent it only as the base64 option)
        answer["MacAddress"] = ep.record.mac or ""
    return {"Interface": answer}


def endpoint_oper_info(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.EndpointOperInfo``: {"NetworkID", "EndpointID"} -> {"Value": {...}}"""
    ep = ctx.endpoint(body.id("NetworkID"), body.id("EndpointID"))
    return {"Value": ep.operational_info()}


def delete_endpoint(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.DeleteEndpoint``: {"NetworkID", "EndpointID"} -> {}"""
    ep = ctx.existing_endpoint(body.id("NetworkID"), body.id("EndpointID"))
    if ep is not None:
        ep.delete(force=True)
    return {}


def join(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.Join``: {"NetworkID", "EndpointID", "SandboxKey", "Options"} ->
    {"InterfaceName": {"SrcName", "DstPrefix"}, "Gateway", "GatewayIPv6", "StaticRoutes":
    [{"Destination", "RouteType", "NextHop"}], "DisableGatewayService"}"""
    nid, eid = body.id("NetworkID"), body.id("EndpointID")
    sandbox_key = body.string("SandboxKey", required=True)
    if not sandbox_key.startswith("/") or not sandbox_key.isprintable():
        raise BadRequest(f"{body.call}: SandboxKey must be the path of a network namespace, "
                         f"not {shown(sandbox_key)}")
    options = body.options("Options")
    info = ctx.endpoint(nid, eid).join_external(sandbox_key, options)
    answer: Answer = {
        "InterfaceName": {"SrcName": info.src_name, "DstPrefix": info.dst_prefix},
        "StaticRoutes": [
            {"Destination": str(r.destination), "RouteType": r.route_type,
             "NextHop": str(r.next_hop) if r.next_hop else ""}
            for r in info.static_routes
        ],
        "DisableGatewayService": info.disable_gateway_service,
    }
    if info.gateway:
        answer["Gateway"] = str(info.gateway)
    if info.gateway_v6:
        answer["GatewayIPv6"] = str(info.gateway_v6)
    return answer


def leave(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.Leave``: {"NetworkID", "EndpointID"} -> {}"""
    ep = ctx.existing_endpoint(body.id("NetworkID"), body.id("EndpointID"))
    if ep is not None:
        ep.leave_external()
    return {}


def program_external(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.ProgramExternalConnectivity``: {"NetworkID", "EndpointID", "Options":
    {"com.docker.network.portmap": [{"Proto", "IP", "Port", "HostIP", "HostPort",
    "HostPortEnd"}], "com.docker.network.endpoint.exposedports": [...]}} -> {}"""
    ep = ctx.endpoint(body.id("NetworkID"), body.id("EndpointID"))
    options = body.options("Options")
    if options.get(OPT_PORTMAP):
        sibling = _publishing_sibling(ctx, ep)
        if sibling is not None:
            # Docker 29 programs the IPv4 gateway and the IPv6 gateway of a container
            # separately when they are two endpoints. pycnm publishes each port once, on
            # the endpoint that got it first; this one takes over when that one leaves.
            log.info("%s: ports of endpoint %s are already published by endpoint %s of the "
                     "same container (its other gateway)", body.call, ep.id[:12],
                     sibling.id[:12])
            return {}
    ep.program_external_connectivity(options)
    return {}


def _publishing_sibling(ctx: PluginContext, ep: Endpoint) -> Endpoint | None:
    """Another endpoint of ``ep``'s sandbox that publishes ports right now."""
    key = ep.record.sandbox_key
    if not key:
        return None
    for other in ctx.controller.endpoints():
        if other.id != ep.id and other.record.sandbox_key == key:
            with contextlib.suppress(NotFound):
                if other.operational_info().get(OPT_PORTMAP):
                    return other
    return None


def revoke_external(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.RevokeExternalConnectivity``: {"NetworkID", "EndpointID"} -> {}"""
    ep = ctx.existing_endpoint(body.id("NetworkID"), body.id("EndpointID"))
    if ep is not None:
        ep.revoke_external_connectivity()
    return {}


def discover(ctx: PluginContext, body: Body) -> Answer:
    """``NetworkDriver.DiscoverNew`` / ``DiscoverDelete``: {"DiscoveryType", "DiscoveryData"}
    -> {}. Only swarm sends them; pycnm's drivers find their peers through pycnm's own
    store, so the notice is checked and logged, nothing more."""
    kind = body.data.get("DiscoveryType")
    if not isinstance(kind, int) or isinstance(kind, bool):
        raise BadRequest(f"{body.call}: DiscoveryType must be a number, not {kind!r}")
    log.info("%s: discovery type %d ignored (pycnm keeps its cluster in its store)",
             body.call, kind)
    return {}


# --- IPAM ---------------------------------------------------------------------------------


def ipam_capabilities(ctx: PluginContext, body: Body) -> Answer:
    """``IpamDriver.GetCapabilities``: {} -> {"RequiresMACAddress": false,
    "RequiresRequestReplay": false} (our allocations live in the store: nothing to replay)"""
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


def address_spaces(ctx: PluginContext, body: Body) -> Answer:
    """``IpamDriver.GetDefaultAddressSpaces``: {} -> {"LocalDefaultAddressSpace",
    "GlobalDefaultAddressSpace"}"""
    return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}


def request_pool(ctx: PluginContext, body: Body) -> Answer:
    """``IpamDriver.RequestPool``: {"AddressSpace", "Pool", "SubPool", "Options", "V6"} ->
    {"PoolID", "Pool", "Data": {}}"""
    pool = body.cidr_network("Pool")
    sub_pool = body.cidr_network("SubPool")
    answer = ctx.ipam.request_pool(body.string("AddressSpace"), pool, sub_pool,
                                   body.mapping("Options"), body.flag("V6"))
    return {"PoolID": answer.pool_id, "Pool": answer.subnet, "Data": {}}


def release_pool(ctx: PluginContext, body: Body) -> Answer:
    """``IpamDriver.ReleasePool``: {"PoolID"} -> {}"""
    ctx.ipam.release_pool(body.string("PoolID", required=True))
    return {}


def request_address(ctx: PluginContext, body: Body) -> Answer:
    """``IpamDriver.RequestAddress``: {"PoolID", "Address", "Options": {"RequestAddressType":
    "com.docker.network.gateway"} | null} -> {"Address": "ip/prefixlen", "Data": {}}"""
    address = ctx.ipam.request_address(body.string("PoolID", required=True),
                                       body.address("Address"), body.mapping("Options"))
    return {"Address": address, "Data": {}}


def release_address(ctx: PluginContext, body: Body) -> Answer:
    """``IpamDriver.ReleaseAddress``: {"PoolID", "Address"} -> {}"""
    address = body.address("Address")
    if not address:
        raise BadRequest(f"{body.call}: the request has no Address")
    ctx.ipam.release_address(body.string("PoolID", required=True), address)
    return {}


# Paths Docker posts to -> handlers: the whole protocol on one screen.
ROUTES: dict[str, Handler] = {
    "Plugin.Activate": activate,
    "NetworkDriver.GetCapabilities": capabilities,
    "NetworkDriver.GwAllocCheck": gw_alloc_check,
    "NetworkDriver.CreateNetwork": create_network,
    "NetworkDriver.DeleteNetwork": delete_network,
    "NetworkDriver.AllocateNetwork": allocate_network,
    "NetworkDriver.FreeNetwork": free_network,
    "NetworkDriver.CreateEndpoint": create_endpoint,
    "NetworkDriver.EndpointOperInfo": endpoint_oper_info,
    "NetworkDriver.DeleteEndpoint": delete_endpoint,
    "NetworkDriver.Join": join,
    "NetworkDriver.Leave": leave,
    "NetworkDriver.ProgramExternalConnectivity": program_external,
    "NetworkDriver.RevokeExternalConnectivity": revoke_external,
    "NetworkDriver.DiscoverNew": discover,
    "NetworkDriver.DiscoverDelete": discover,
    "IpamDriver.GetCapabilities": ipam_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": address_spaces,
    "IpamDriver.RequestPool": request_pool,
    "IpamDriver.ReleasePool": release_pool,
    "IpamDriver.RequestAddress": request_address,
    "IpamDriver.ReleaseAddress": release_address,
}
