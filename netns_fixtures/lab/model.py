"""A lab's topology as pure data: frozen dataclasses, the kernel names derived from it,
and the error that lists what is wrong with one.

Who does what: this module knows nothing of YAML or of the kernel. ``validate(data)``
(implemented in ``netns_fixtures.lab.validate``) takes plain data (dicts, lists, strings,
as a YAML or JSON parser gives them), checks all of it and returns a frozen ``Topology``,
or raises ``TopologyError`` carrying every problem found, each tied to the path of the
offending field (``("sandboxes", 1, "networks", 0)``, printed ``sandboxes[1].networks[0]``).
The loader maps paths to lines; the realiser builds a ``Topology`` and never has to
second-guess it.

A topology names:

- ``hosts``: namespaces that play machines. ``kind: host`` (the default) is an emulated
  machine running its own pycnm Controller; ``router`` forwards between its links;
  ``switch`` is a Linux bridge whose ports are its links (one L2 segment); ``server`` is an
  ordinary machine (an "outside" or a LAN server). Each may have static ``routes``.
- ``links``: veth pairs between two hosts, ``endpoints: [h1:eth0, r1:eth1]``, with optional
  ``addresses``, ``mtu`` (one for both ends, or one per end) and ``netem`` (delay, jitter,
  loss, rate, corrupt, duplicate, reorder on both ends); on a link to a switch, ``vlan: N``
  makes the switch's port an access port of VLAN N and ``trunk: [N, M]`` a trunk
  carrying those VLANs tagged.
- ``networks``: pycnm networks (``driver`` bridge, macvlan, ipvlan or overlay, ``subnet``,
  ``gateway``, ``ip_range``, ``internal``, driver ``options``) on one ``host`` or several
  ``hosts``.
- ``sandboxes``: pycnm sandboxes on a host, joining ``networks`` in order (eth0, eth1,
  ...), optionally at a static ``ip``, publishing ``ports``, forwarding (``ip_forward``)
  and with extra ``routes``; or, with ``mode``, using the host's namespace (``host``),
  loopback only (``none``) or another sandbox's namespace (``container:OTHER``).
- ``services``: load-balanced services (``name``, ``network``, ``ports``, ``mode``,
  ``balance``, ``vip``, ``publish``); a sandbox's attachment backs some with ``services``.
- ``expect``: the reachability matrix, ``{from, to, proto, port, expect, listen, seen_as,
  size}`` (``size``: an ICMP payload sent with "don't fragment", to check a path's MTU);
  ``to: SERVICE`` with ``spread: [backends]`` and ``count`` opens that many connections to
  the service's virtual IP and counts which backend answered each (``sticky: true``: all
  of them must reach one backend of the list, as source hashing does).

Names of lab nodes are lower-case letters and digits only: the kernel names derived from
them (``pclab-<lab>-<node>``) then parse back unambiguously, so removing a lab never
touches another lab's objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cnm import names
from netns_fixtures.lab.netem import Netem

Path = tuple[str | int, ...]

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,19}$")
KINDS = ("host", "router", "switch", "server")
DRIVERS = ("bridge", "macvlan", "ipvlan", "overlay")
PARENT_DRIVERS = ("macvlan", "ipvlan")  # endpoints are children of a host interface
PROTOS = ("icmp", "tcp")
OUTCOMES = ("reach", "blocked")
DNS_OUTCOMES = ("resolves", "nxdomain", "servfail")  # of a "resolve:" check
DNS_TYPES = ("A", "AAAA")
SWITCH_BRIDGE = "br0"  # the bridge inside a switch namespace


def host_netns(lab: str, node: str) -> str:
    """Namespace of a host, router, switch or server: ``pclab-<lab>-<node>``."""
    return f"{names.LAB_NETNS_PREFIX}{lab}-{node}"


def lab_netns_prefix(lab: str) -> str:
    """The prefix every namespace of this lab's hosts starts with (ours alone)."""
    return f"{names.LAB_NETNS_PREFIX}{lab}-"


def sandbox_name(lab: str, sandbox: str) -> str:
    """The pycnm sandbox name of a lab sandbox (its namespace is ``pcsb-<this>``)."""
    return f"{lab}-{sandbox}"


def format_path(path: Path) -> str:
    """``("sandboxes", 1, "networks", 0)`` -> ``sandboxes[1].networks[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{format_path(self.path)}: {self.message}"


class TopologyError(ValueError):
    """A topology that cannot be built; ``problems`` lists every reason, each with its
    field's path."""

    def __init__(self, problems: list[Problem], where: str = "topology") -> None:
        self.problems = problems
        self.where = where
        super().__init__("\n".join(f"{where}: {p}" for p in problems))


# --- the data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    to: str  # "default" or a prefix
    via: str


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class LinkEnd:
    node: str
    iface: str
    address: str | None  # with prefix length
    mtu: int | None = None  # this end's own MTU (``mtu: [1500, 1400]``), if it differs


@dataclass(frozen=True)
class Link:
    a: LinkEnd
    b: LinkEnd
    mtu: int | None = None
    netem: Netem | None = None  # on both ends: each direction is impaired once
    # On a link to a switch, the switch's port: an access port of one VLAN (untagged), or
    # a trunk carrying VLANs tagged (802.1q). Neither: an ordinary port.
    vlan: int | None = None
    trunk: tuple[int, ...] = ()

    def key(self) -> str:
        """``h1:eth0-r1:eth1``: how ``apply`` and the live picture tell links apart."""
        return f"{self.a.node}:{self.a.iface}-{self.b.node}:{self.b.iface}"


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    driver: str
    hosts: tuple[str, ...]
    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    internal: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attachment:
    network: str
    ip: str | None = None
    aliases: tuple[str, ...] = ()  # more DNS names of the endpoint on that network
    services: tuple[str, ...] = ()  # load-balanced services of the network it backs


@dataclass(frozen=True)
class ServiceSpec:
    """A load-balanced service on a network (``pycnm service create``)."""

    name: str
    network: str
    ports: tuple[str, ...]
    mode: str = "vip"
    balance: str | None = None
    vip: str | None = None
    publish: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxSpec:
    name: str
    host: str
    networks: tuple[Attachment, ...]
    ports: tuple[str, ...] = ()
    ip_forward: bool = False
    routes: tuple[Route, ...] = ()
    mode: str = "default"  # default | host | none | container:OTHER (a lab sandbox)

    @property
    def shares(self) -> str | None:
        """The lab sandbox whose namespace a ``container:OTHER`` sandbox uses."""
        kind, _, other = self.mode.partition(":")
        return other if kind == "container" else None

    @property
    def own_namespace(self) -> bool:
        return self.mode in ("default", "none")


@dataclass(frozen=True)
class Target:
    """Where a check goes: a node (optionally one interface of it), or a bare address."""

    node: str | None
    iface: str | None = None
    address: str | None = None
    service: str | None = None  # a service's virtual IP, looked up live

    def __str__(self) -> str:
        if self.service is not None:
            return f"service {self.service}"
        if self.node is None:
            return str(self.address)
        return f"{self.node}:{self.iface}" if self.iface else self.node


@dataclass(frozen=True)
class Expectation:
    src: str
    dst: Target
    proto: str = "icmp"
    port: int | None = None
    expect: str = "reach"
    listen: tuple[str, int] | None = None  # (node, port) that serves a TCP check
    seen_as: Target | None = None  # the client's address as the server must see it
    size: int | None = None  # ICMP payload bytes, sent with "don't fragment" (MTU checks)
    # DNS checks (proto "dns"; ``dst.address`` holds the name asked): what it must resolve
    # to, and whether each of several answers must come first at least once (round robin)
    answer: tuple[Target, ...] = ()
    rotates: bool = False
    rdtype: str = "A"
    spread: tuple[str, ...] = ()  # backends a service's connections must be spread over
    count: int | None = None  # connections a spread check opens
    sticky: bool = False  # a spread check: every connection to one (any) of ``spread``


@dataclass(frozen=True)
class EtcdSpec:
    """How an overlay lab's etcd runs: ``tls``, over TLS with client certificates (a CA
    the lab makes); ``auth``, with user/password authentication (user ``pycnm``)."""

    tls: bool = False
    auth: bool = False


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    hosts: tuple[Node, ...]
    links: tuple[Link, ...]
    networks: tuple[NetworkSpec, ...]
    sandboxes: tuple[SandboxSpec, ...]
    expect: tuple[Expectation, ...]
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    etcd: EtcdSpec = EtcdSpec()
    services: tuple[ServiceSpec, ...] = ()

    def service(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.name == name), None)

    def node_names(self) -> list[str]:
        return [h.name for h in self.hosts] + [s.name for s in self.sandboxes]

    def host(self, name: str) -> Node | None:
        return next((h for h in self.hosts if h.name == name), None)

    def sandbox(self, name: str) -> SandboxSpec | None:
        return next((s for s in self.sandboxes if s.name == name), None)

    def network(self, name: str) -> NetworkSpec | None:
        return next((n for n in self.networks if n.name == name), None)

    def netns(self, node: str) -> str:
        """The namespace a node lives in (a host-mode sandbox's is its host's, a sharer's
        its owner's)."""
        spec = self.sandbox(node)
        if spec is not None:
            if spec.mode == "host":
                return host_netns(self.name, spec.host)
            if spec.shares is not None:
                return self.netns(spec.shares)
            return names.sandbox_netns(sandbox_name(self.name, node))
        if self.host(node) is not None:
            return host_netns(self.name, node)
        raise KeyError(f"lab {self.name} has no node {node!r} "
                       f"(nodes: {', '.join(self.node_names())})")

    def ends_of(self, node: str) -> list[LinkEnd]:
        """The link ends on ``node``, in file order."""
        return [end for link in self.links for end in (link.a, link.b) if end.node == node]

    def pycnm_hosts(self) -> list[Node]:
        return [h for h in self.hosts if h.kind == "host"]

    def needs_etcd(self) -> bool:
        """An overlay spans hosts, so its hosts share a cluster store (etcd)."""
        return any(n.driver == "overlay" for n in self.networks)

    def uses_dns(self) -> bool:
        """The lab checks names or gives aliases: its hosts run pycnm's resolver."""
        return any(e.proto == "dns" for e in self.expect) or any(
            a.aliases for s in self.sandboxes for a in s.networks)

    def agent_hosts(self) -> list[str]:
        """The hosts that run a ``pycnm agent``: those on an overlay (its lease and
        VTEP entries) and, when the lab uses names, every pycnm host (its resolver)."""
        if self.uses_dns():
            return [h.name for h in self.pycnm_hosts()]
        return sorted({h for n in self.networks if n.driver == "overlay" for h in n.hosts})

    def with_name(self, name: str) -> Topology:
        """The same topology under another lab name (tests run copies side by side)."""
        return validate({**self.data, "name": name})


def validate(data: Any) -> Topology:
    """Check a whole parsed topology; return it as a ``Topology`` or raise
    ``TopologyError`` listing every problem (see ``netns_fixtures.lab.validate``)."""
    from netns_fixtures.lab.validate import validate as check_all

    return check_all(data)
