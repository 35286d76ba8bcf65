"""The driver interface, after libnetwork's ``driverapi``.

Drivers never receive core objects: plain ids, option dicts and the small records below go
in, and records come back. The life cycle is four pairs: create/delete network,
create/delete endpoint, join/leave, program/revoke external connectivity. The same records
are what Docker's remote driver protocol carries, so the Python API and the Docker plugin
share one code path.
"""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from cnm.errors import InvalidOption
from cnm.store.base import Store

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Proto = Literal["tcp", "udp", "sctp"]

# Generic option keys, as Docker names them; the core puts them into a network's options.
OPT_INTERNAL = "com.docker.network.internal"
OPT_ENABLE_IPV6 = "com.docker.network.enable_ipv6"
# Docker 28: False for an IPv6-only network (no IPv4 pool, no IPv4 address anywhere).
OPT_ENABLE_IPV4 = "com.docker.network.enable_ipv4"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_PORTMAP = "com.docker.network.portmap"
OPT_EXPOSED = "com.docker.network.endpoint.exposedports"
OPT_MACADDRESS = "com.docker.network.endpoint.macaddress"
# Set by the core (never by Docker) on join: the final interface name inside the sandbox.
# A driver that can create the interface directly there (skipping a move between
# namespaces, which costs an RCU grace period, ~20 ms) does so and sets JoinInfo.placed.
OPT_JOIN_IFNAME = "pycnm.join.ifname"
# Every key under this prefix is the core's to set: a caller (Docker, the CLI, the Python
# API) may not, as it would steer a driver (OPT_JOIN_IFNAME opens the sandbox's namespace
# and creates an interface there).
INTERNAL_PREFIX = "pycnm."


def refuse_internal_options(options: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A caller's options as a dict, refused if one of its keys is pycnm's own."""
    found = sorted(str(k) for k in (options or {}) if str(k).startswith(INTERNAL_PREFIX))
    if found:
        raise InvalidOption(f"{where}: option {found[0]!r} is set by pycnm itself, never by a "
                            "caller; remove it")
    return dict(options or {})

ROUTE_NEXTHOP = 0
ROUTE_CONNECTED = 1


@dataclass(frozen=True)
class Capability:
    """Scope "local" (state per host) or "global"; connectivity may span hosts."""

    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global"] = "local"


@dataclass(frozen=True)
class IpamData:
    """One address pool of a network as the driver sees it."""

    pool: IPNetwork
    gateway: IPInterface | None = None
    aux_addresses: dict[str, IPAddress] = field(default_factory=dict)
    # Addresses come from pycnm's cluster-wide IPAM: no two hosts are handed the same one.
    cluster_wide: bool = False


@dataclass
class InterfaceInfo:
    """Addresses and MAC of an endpoint; the driver fills what the core left empty."""

    address: ipaddress.IPv4Interface | None = None
    address_v6: ipaddress.IPv6Interface | None = None
    mac: str | None = None


@dataclass(frozen=True)
class StaticRoute:
    destination: IPNetwork
    route_type: int = ROUTE_NEXTHOP
    next_hop: IPAddress | None = None


@dataclass(frozen=True)
class GatewayPlace:
    """Where a network's gateway address lives on this host: in namespace ``netns`` (a
    path), or in the host's own namespace when ``netns`` is None."""

    netns: str | None


@dataclass
class JoinInfo:
    """What the sandbox must do to plug the endpoint in (Docker's Join response)."""

    src_name: str  # host-side name of the interface to move into the sandbox
    dst_prefix: str = "eth"  # inside, it becomes dst_prefix + N
    gateway: ipaddress.IPv4Address | None = None
    gateway_v6: ipaddress.IPv6Address | None = None
    static_routes: list[StaticRoute] = field(default_factory=list)
    disable_gateway_service: bool = False
    # True: the driver already made src_name inside the sandbox (see OPT_JOIN_IFNAME).
    placed: bool = False


@dataclass(frozen=True)
class PortBinding:
    """One published port: host_port (..host_port_end) on host_ip -> endpoint port."""

    proto: Proto
    port: int
    host_port: int
    host_port_end: int = 0
    host_ip: str = ""


@dataclass
class DriverContext:
    """What a driver gets from the core: where it works and where it keeps its state."""

    host_ns: str | None  # namespace acting as this host's root namespace (None: our own)
    store: Store  # the driver's own key space (already prefixed per driver and host)
    host_id: str
    global_store: Store | None = None  # cluster-wide keys, for multi-host drivers
    config: dict[str, Any] = field(default_factory=dict)


class Driver(abc.ABC):
    """A network driver. Every method is idempotent for repeated calls with the same ids:
    Docker retries, and the core replays calls when it reconciles after a restart."""

    name: ClassVar[str]

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def capabilities(self) -> Capability:
        """The scope of the driver's state and of its connectivity."""

    @abc.abstractmethod
    def validate_network_options(self, options: dict[str, Any]) -> None:
        """Raise InvalidOption for any option this driver does not know or cannot accept,
        before the core allocates anything."""

    @abc.abstractmethod
    def create_network(
        self, nid: str, options: dict[str, Any], ipv4: list[IpamData], ipv6: list[IpamData]
    ) -> None:
        """Build the network's data plane. On failure nothing it made may remain."""

    @abc.abstractmethod
    def delete_network(self, nid: str) -> None:
        """Remove everything ``create_network`` made; unknown ids are success."""

    @abc.abstractmethod
    def create_endpoint(
        self, nid: str, eid: str, iface: InterfaceInfo, options: dict[str, Any]
    ) -> InterfaceInfo:
        """Make the endpoint's interface; return the fields the driver chose (e.g. MAC).
        Never contradict an address the core supplied."""

    @abc.abstractmethod
    def delete_endpoint(self, nid: str, eid: str) -> None:
        """Remove the endpoint's interface; unknown ids are success."""

    @abc.abstractmethod
    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        """Free-form operational data (Docker's EndpointOperInfo)."""

    def network_info(self, nid: str) -> dict[str, str]:
        """What the driver made of the network, as options ``network inspect`` shows
        beside the user's (the bridge's name, an overlay's VNI)."""
        return {}

    @abc.abstractmethod
    def join(self, nid: str, eid: str, sandbox_key: str, options: dict[str, Any]) -> JoinInfo:
        """Prepare the endpoint for the sandbox at ``sandbox_key`` and say how to plug it."""

    def joined(self, nid: str, eid: str) -> None:  # noqa: B027 - optional
        """The join of ``join`` is complete: the endpoint is plugged and configured (for a
        sandbox another program owns, handed over). Work that need not make the join
        wait starts here (an overlay tells its peers): on a busy host, done side by side
        with the rest of the join it took the join's CPU."""

    @abc.abstractmethod
    def leave(self, nid: str, eid: str) -> None:
        """Undo ``join`` on the driver's side."""

    def program_external_connectivity(self, nid: str, eid: str, options: dict[str, Any]) -> None:  # noqa: B027
        """Publish the endpoint's ports (options[OPT_PORTMAP]); called for the endpoint that
        is its sandbox's gateway. Drivers without published ports need not override."""

    def revoke_external_connectivity(self, nid: str, eid: str) -> None:  # noqa: B027
        """Undo ``program_external_connectivity``."""

    def discover_new(self, kind: str, data: dict[str, Any]) -> None:  # noqa: B027
        """A node or datastore appeared (Docker's DiscoverNew)."""

    def discover_delete(self, kind: str, data: dict[str, Any]) -> None:  # noqa: B027
        """A node or datastore went away (Docker's DiscoverDelete)."""

    def dns_scope(self, nid: str) -> str | None:
        """The cluster-wide name of network ``nid`` if its endpoints on every host form one
        network (an overlay): service discovery shares the names of all hosts' endpoints
        under it. None (the default): the network's names stay on this host."""
        return None

    def gateway_place(self, nid: str) -> GatewayPlace | None:
        """Where network ``nid``'s gateway address is on this host (the resolver can then
        answer there, for engines that ask it: docs/dns.md), or None (the default) when no
        namespace of this host holds it (a LAN's router, say)."""
        return None

    def services_bridge(self, nid: str) -> str | None:
        """The bridge in the host's namespace that network ``nid``'s endpoints are ports
        of, when it holds an IPv4 gateway address: bridged frames then pass the host's IP
        hooks (br_netfilter) and a DNAT there is re-bridged to the backend, so the load
        balancer's rules run there too (docs/services.md). None (the default): every
        connection to a VIP goes through the load-balancer namespace."""
        return None

    def endpoints_isolated(self, nid: str) -> bool:
        """Whether the endpoints of network ``nid`` cannot reach each other (a bridge with
        ICC off): then no load balancer on it can be reached either. Default: False."""
        return False

    def restore(self) -> list[str]:
        """Reconcile the kernel with the driver's stored state after a restart: recreate
        what is missing and return a sentence for each thing that could not be fixed."""
        return []

    def start(self) -> bool:
        """Start the driver's long-running work (leases, watches, resyncs) in this process
        and return whether it has any. Only long-running processes call it (``pycnm
        agent``, the plugin server, through ``Controller.start_background``); short-lived
        ones (the CLI) never do. ``ctx.config`` holds the caller's settings."""
        return False

    def close(self) -> None:  # noqa: B027
        """Stop background work (watches, threads)."""
