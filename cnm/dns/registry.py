"""The names a resolver answers, as an immutable snapshot built from the store.

Every name is a ``NameEntry``: on one network, some names, their addresses, and (for
endpoints) the name an address maps back to (PTR). Sources of entries:

- this host's endpoints joined to sandboxes (``local_entries``): the sandbox's name, the
  endpoint's name, its aliases, and the names of the sandboxes that share the sandbox's
  namespace (``container:`` mode); the PTR name is the sandbox's, as Docker's is the
  container's;
- other hosts' endpoints on a cluster-wide network, from their published records
  (``cluster_entries``, see ``publish_records``);
- anything else that names addresses on a network (a load-balanced service's virtual IP,
  ``tasks.NAME``): callers pass more entries to ``build``; nothing here needs to change.

A ``Snapshot`` maps each served sandbox to its ``SandboxView``: the networks it is
attached to, in interface order, each with its names. Lookups follow Docker's: the whole
name on every network in order, then ``A.B`` as name ``A`` on network ``B`` (and ``A.B.C``
as ``A.B`` on network ``C``, then ``A`` on network ``B.C``); the first network that knows
the name answers with all its addresses. A name on a network the sandbox is not on does
not resolve. Case is ignored.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnm.store.base import Store

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NameEntry:
    """Names on one network and the addresses they resolve to."""

    network_id: str
    names: tuple[str, ...]
    addresses: tuple[IPAddress, ...]
    ptr: str | None = None  # the name each address maps back to (None: no PTR)


@dataclass(frozen=True)
class NetworkNames:
    id: str
    name: str  # lower case: the NETWORK of NAME.NETWORK
    internal: bool
    names: Mapping[str, tuple[IPAddress, ...]]  # lower-case name -> addresses
    reverse: Mapping[IPAddress, str]  # address -> "name.network"


@dataclass(frozen=True)
class SandboxView:
    """What one served sandbox sees."""

    id: str
    name: str
    netns_path: str
    networks: tuple[NetworkNames, ...]
    forward: bool  # some network has a way out: names it does not know are forwarded
    dns_servers: tuple[IPAddress, ...] = ()  # its own upstreams, dialled from inside it

    def lookup(self, name: str) -> tuple[IPAddress, ...] | None:
        """The addresses of ``name`` (lower case, no trailing dot), or None if no network
        of this sandbox knows it."""
        for wanted, network in _candidates(name):
            for net in self.networks:
                if network is not None and network != net.name:
                    continue
                found = net.names.get(wanted)
                if found is not None:
                    return found
        return None

    def reverse(self, address: IPAddress) -> str | None:
        for net in self.networks:
            found = net.reverse.get(address)
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class Snapshot:
    sandboxes: Mapping[str, SandboxView] = field(default_factory=dict)
    networks: Mapping[str, NetworkNames] = field(default_factory=dict)


# --- more names, from other features -------------------------------------------------------

Source = Callable[["Store", "Records"], Iterable[NameEntry]]
SOURCES: list[tuple[str, Source]] = []


def register_source(prefix: str, source: Source) -> None:
    """Add names from another feature to every resolver of this process:
    ``source(local_store, records)`` returns ``NameEntry`` values, called when a key
    under ``prefix`` of the host's key space changes (e.g. a service's virtual IP under
    ``services/``), when a network changes, and on every full sync. Register at import
    time, before the resolver starts."""
    if (prefix, source) not in SOURCES:
        SOURCES.append((prefix, source))


def _candidates(name: str) -> Iterable[tuple[str, str | None]]:
    """``a.b.c`` -> (a.b.c, any network), (a.b, network c), (a, network b.c)."""
    yield name, None
    cut = len(name)
    while True:
        cut = name.rfind(".", 0, cut)
        if cut <= 0:
            return
        yield name[:cut], name[cut + 1:]


# --- the records, as listed from the store ---------------------------------------------------


@dataclass
class Records:
    """One host's records (values of ``networks/``, ``endpoints/``, ``sandboxes/``) and
    the cluster's published names (values under ``dns/scopes/``, with their keys)."""

    networks: list[dict[str, Any]] = field(default_factory=list)
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    sandboxes: list[dict[str, Any]] = field(default_factory=list)
    published: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> value
    scopes: dict[str, str] = field(default_factory=dict)  # network id -> cluster scope


def _addresses(*cidrs: str | None) -> tuple[IPAddress, ...]:
    return tuple(_interface_ip(c) for c in cidrs if c)


# Every snapshot is built from every record: parsing each address once, not on every
# build, keeps a build cheap (ipaddress's parser was most of its cost).
@functools.lru_cache(maxsize=1 << 16)
def _interface_ip(cidr: str) -> IPAddress:
    return ipaddress.ip_interface(cidr).ip


@functools.lru_cache(maxsize=1 << 16)
def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def served(sandbox: Mapping[str, Any]) -> bool:
    """Whether the resolver serves this sandbox: one with a namespace of its own that
    can be attached to networks (host, none and container-mode sandboxes are not)."""
    return sandbox.get("mode", "default") == "default"


def local_entries(records: Records) -> list[NameEntry]:
    return [entry for _, entry in _local(records)]


def _local(records: Records) -> list[tuple[str, NameEntry]]:
    """(endpoint id, its entry) for every joined endpoint with an address."""
    sandboxes = {s["id"]: s for s in records.sandboxes}
    sharers = sharers_of(records)
    entries = []
    for ep in records.endpoints:
        sb = sandboxes.get(ep.get("sandbox_id") or "")
        entry = local_entry(ep, sb, sharers.get(sb["id"], ()) if sb is not None else ())
        if entry is not None:
            entries.append((ep["id"], entry))
    return entries


def sharers_of(records: Records) -> dict[str, tuple[str, ...]]:
    """Sandbox id -> the names of the container-mode sandboxes sharing it, sorted."""
    sharers: dict[str, list[str]] = {}
    for sharer in records.sandboxes:
        if sharer.get("mode") == "container" and sharer.get("container"):
            sharers.setdefault(sharer["container"], []).append(sharer["name"])
    return {sid: tuple(sorted(names)) for sid, names in sharers.items()}


def local_entry(ep: Mapping[str, Any], sb: Mapping[str, Any] | None,
                sharers: tuple[str, ...]) -> NameEntry | None:
    """The names of a joined endpoint with an address (else None)."""
    addresses = _addresses(ep.get("address"), ep.get("address_v6"))
    if sb is None or not addresses:
        return None
    names = (sb["name"], ep["name"], *ep.get("aliases", ()), *sharers)
    return NameEntry(ep["network_id"], names, addresses, sb["name"])


def publish_records(records: Records, host_id: str) -> dict[str, dict[str, Any]]:
    """What this host publishes for the cluster: one record per endpoint on a network
    with a cluster scope, keyed ``dns/scopes/SCOPE/HOST/ENDPOINT``."""
    result = {}
    for eid, entry in _local(records):
        scope = records.scopes.get(entry.network_id)
        if scope is None:
            continue
        result[published_key(scope, host_id, eid)] = published_record(entry, host_id)
    return result


def published_key(scope: str, host_id: str, endpoint_id: str) -> str:
    return f"dns/scopes/{scope}/{host_id}/{endpoint_id}"


def published_record(entry: NameEntry, host_id: str) -> dict[str, Any]:
    """What the cluster reads of one of this host's endpoints (``published_entries``)."""
    return {"names": list(entry.names), "ptr": entry.ptr, "host": host_id,
            "addresses": [str(a) for a in entry.addresses]}


def cluster_entries(records: Records, host_id: str) -> list[NameEntry]:
    """Other hosts' names, on each local network of the scope they were published in."""
    by_scope = scopes_networks(records)
    entries = []
    for key, value in records.published.items():
        entries += [e for _, e in published_entries(key, value, by_scope, host_id)]
    return entries


def scopes_networks(records: Records) -> dict[str, list[str]]:
    """Cluster scope -> this host's networks in it."""
    by_scope: dict[str, list[str]] = {}
    for nid, scope in records.scopes.items():
        by_scope.setdefault(scope, []).append(nid)
    return by_scope


def published_entries(key: str, value: Mapping[str, Any], by_scope: Mapping[str, list[str]],
                      host_id: str) -> list[tuple[str, NameEntry]]:
    """(network id, entry) for another host's published record ``key``, on each local
    network of its scope (none for this host's own records)."""
    parts = key.split("/")
    if len(parts) != 5 or parts[3] == host_id:
        return []
    try:
        addresses = tuple(_ip(a) for a in value.get("addresses", ()))
        names = tuple(str(n) for n in value.get("names", ()))
    except (TypeError, ValueError):
        return []  # a record pycnm did not write: ignore it
    ptr = value.get("ptr")
    return [(nid, NameEntry(nid, names, addresses, ptr if isinstance(ptr, str) else None))
            for nid in by_scope.get(parts[2], ())]


def build(records: Records, host_id: str, extra: Iterable[NameEntry] = ()) -> Snapshot:
    """The snapshot of every served sandbox of this host."""
    nets = {n["id"]: n for n in records.networks}
    tables: dict[str, dict[str, list[IPAddress]]] = {nid: {} for nid in nets}
    reverse: dict[str, dict[IPAddress, str]] = {nid: {} for nid in nets}
    for entry in (*local_entries(records), *cluster_entries(records, host_id), *extra):
        table = tables.get(entry.network_id)
        if table is None:
            continue
        for name in dict.fromkeys(n.lower() for n in entry.names):
            have = table.setdefault(name, [])
            have.extend(a for a in entry.addresses if a not in have)
        if entry.ptr:
            ptr = f"{entry.ptr}.{nets[entry.network_id]['name']}"
            for address in entry.addresses:
                reverse[entry.network_id].setdefault(address, ptr)
    networks = {
        nid: NetworkNames(nid, net["name"].lower(), bool(net.get("internal")),
                          {k: tuple(v) for k, v in tables[nid].items()}, reverse[nid])
        for nid, net in nets.items()
    }
    return Snapshot(views(records, networks), networks)


def views(records: Records, networks: Mapping[str, NetworkNames]) -> dict[str, SandboxView]:
    """What each served sandbox sees, given every network's names."""
    return {sb["id"]: view_of(sb, networks, *view_inputs(sb))
            for sb in records.sandboxes if served(sb)}


def view_inputs(sb: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """A served sandbox's networks in interface order, and its own upstream servers."""
    order = sorted(sb.get("interfaces", {}).items(), key=lambda item: _ifname_order(item[0]))
    nids = tuple(key.partition("/")[0] for _, key in order)
    servers = []
    for text in sb.get("dns_servers", ()):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address != ipaddress.IPv4Address("127.0.0.11"):
            servers.append(address)
    return nids, tuple(servers)


def view_of(sb: Mapping[str, Any], networks: Mapping[str, NetworkNames],
            nids: tuple[str, ...], servers: tuple[IPAddress, ...]) -> SandboxView:
    attached = tuple(networks[nid] for nid in nids if nid in networks)
    return SandboxView(sb["id"], sb["name"], sb["netns_path"], attached,
                       forward=any(not net.internal for net in attached), dns_servers=servers)


def _ifname_order(ifname: str) -> tuple[str, int]:
    head = ifname.rstrip("0123456789")
    tail = ifname[len(head):]
    return head, int(tail) if tail else -1
