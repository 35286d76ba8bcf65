"""Stored records of the core objects: plain dataclasses, JSON in the store.

Each record carries ``version`` (its schema) so later releases can migrate old records.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA = 1
R = TypeVar("R", bound="Record")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class Record:
    # Every attach reads and writes several records: ``dataclasses.asdict`` and
    # ``dataclasses.fields`` cost ~0.1 ms a record (a third of a millisecond per attach),
    # the cached field names and a copy of plain JSON values a tenth of that.
    def to_dict(self) -> dict[str, Any]:
        return {name: _copy(getattr(self, name)) for name in _field_names(type(self))}

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        known = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in known})


_FIELDS: dict[type, tuple[str, ...]] = {}
_SCALARS = (str, int, float, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _copy(value: Any) -> Any:
    """A deep copy of a record's value, so that changing the dict never changes the
    record: what ``dataclasses.asdict`` gives, for the values records hold."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return copy.deepcopy(value)


@dataclass
class PoolRecord(Record):
    """One address pool of a network. ``pool_id`` is empty when the caller (Docker) owns
    the allocation and pycnm's IPAM is not involved."""

    subnet: str
    gateway: str | None = None  # CIDR form, e.g. 10.0.0.1/24
    ip_range: str | None = None
    aux_addresses: dict[str, str] = field(default_factory=dict)
    pool_id: str = ""


@dataclass
class NetworkRecord(Record):
    id: str
    name: str
    driver: str
    scope: str = "local"
    options: dict[str, Any] = field(default_factory=dict)
    internal: bool = False
    ipv6: bool = False
    ipv4: bool = True  # False: IPv6 only (Docker 28's --ipv4=false)
    ipv4_pools: list[dict[str, Any]] = field(default_factory=list)
    ipv6_pools: list[dict[str, Any]] = field(default_factory=list)
    ipam: str = "pycnm"  # "pycnm": our IPAM allocates; "external": the caller does
    # Which of pycnm's IPAMs holds the pools: "global" (cluster-wide) for networks whose
    # connectivity spans hosts (overlay), else "local". Not ``scope``: an overlay's state
    # is per host (scope "local") while its addresses must be unique across hosts.
    ipam_scope: str = "local"
    labels: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now)
    version: int = SCHEMA

    def pools(self, version: int) -> list[PoolRecord]:
        raw = self.ipv4_pools if version == 4 else self.ipv6_pools
        return [PoolRecord.from_dict(p) for p in raw]


@dataclass
class EndpointRecord(Record):
    id: str
    name: str
    network_id: str
    address: str | None = None  # CIDR
    address_v6: str | None = None
    mac: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sandbox_id: str | None = None
    sandbox_key: str | None = None
    ifname: str | None = None  # name inside the sandbox, once joined
    src_name: str | None = None  # host-side name the driver handed over at join
    gateway: str | None = None
    gateway_v6: str | None = None
    static_routes: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # more DNS names (RFC 1123)
    services: list[str] = field(default_factory=list)  # load-balanced services it serves
    draining: bool = False  # leaving its services: out of their rules, connections finish
    created: str = field(default_factory=now)
    version: int = SCHEMA


@dataclass
class SandboxRecord(Record):
    id: str
    name: str
    netns_path: str
    owned: bool = True  # we created the namespace, so we delete it
    hostname: str = ""
    dns_servers: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    ip_forward: bool = False  # route between the sandbox's interfaces (a router sandbox)
    interfaces: dict[str, str] = field(default_factory=dict)  # ifname -> endpoint id
    gateway_endpoint: str | None = None
    mode: str = "default"  # default | host | none | container (see cnm.modes)
    container: str | None = None  # container mode: id of the sandbox whose namespace it uses
    shared_by: list[str] = field(default_factory=list)  # ids of container-mode sharers
    removing: bool = False  # set once removal began: no new sharer may join
    created: str = field(default_factory=now)
    version: int = SCHEMA
