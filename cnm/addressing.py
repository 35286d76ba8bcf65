"""Turning a user's --subnet/--gateway/--ip-range/--aux-address into pools, as Docker
pairs them: each gateway, range and auxiliary address belongs to the subnet holding it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cnm.errors import InvalidOption
from cnm.inputs import address_text, shown

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class PoolRequest:
    subnet: IPNetwork | None  # None: let IPAM pick a default pool
    version: int
    gateway: IPAddress | None = None
    ip_range: IPNetwork | None = None
    aux: dict[str, IPAddress] = field(default_factory=dict)


def _network(value: str, what: str) -> IPNetwork:
    text = address_text(value)
    try:
        if text is None:
            raise ValueError
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if text is not None and "host bits set" in str(exc):
            raise InvalidOption(
                f"{what} {text!r} has host bits set; did you mean "
                f"{ipaddress.ip_network(text, strict=False)}?"
            ) from None
        raise InvalidOption(
            f"{what} {shown(value)} is not a valid CIDR subnet (e.g. 10.1.0.0/24)"
        ) from None


def _address(value: str, what: str) -> IPAddress:
    text = address_text(value)
    try:
        if text is None:
            raise ValueError
        return ipaddress.ip_address(text.split("/")[0])
    except ValueError:
        raise InvalidOption(f"{what} {shown(value)} is not a valid IP address") from None


def plan_pools(
    subnets: Iterable[str],
    gateways: Iterable[str] = (),
    ip_ranges: Iterable[str] = (),
    aux_addresses: Mapping[str, str] | None = None,
    ipv6: bool = False,
    ipv4: bool = True,
) -> list[PoolRequest]:
    """Validate and pair the user's addressing flags into one request per pool
    (``ipv4=False``: an IPv6-only network, no IPv4 pool at all)."""
    requests = [PoolRequest(s, s.version) for s in (_network(t, "subnet") for t in subnets)]
    for r in requests:
        if r.version == 4 and not ipv4:
            raise InvalidOption(f"subnet {r.subnet} is IPv4 but IPv4 is disabled for this "
                                "network")
    if len([r for r in requests if r.version == 4]) > 1:
        raise InvalidOption("give at most one IPv4 --subnet per network")
    for r in requests:
        if r.version == 6 and not ipv6:
            raise InvalidOption(f"subnet {r.subnet} is IPv6: add --ipv6 to enable IPv6")
    asked = [r.subnet for r in requests if r.subnet is not None]
    for i, a in enumerate(asked):
        for b in asked[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                raise InvalidOption(f"subnets {a} and {b} overlap")

    def owner(item: IPAddress | IPNetwork, what: str) -> PoolRequest:
        for r in requests:
            if r.subnet is not None and r.version == item.version and (
                item in r.subnet if not isinstance(item, ipaddress._BaseNetwork)
                else item.subnet_of(r.subnet)  # type: ignore[arg-type]
            ):
                return r
        if not requests:
            raise InvalidOption(f"{what} {item} needs a --subnet that contains it")
        raise InvalidOption(f"{what} {item} is not inside any given subnet")

    for text in gateways:
        gw = _address(text, "gateway")
        r = owner(gw, "gateway")
        if r.gateway is not None:
            raise InvalidOption(f"subnet {r.subnet} has two gateways: {r.gateway} and {gw}")
        r.gateway = gw
    for text in ip_ranges:
        rng = _network(text, "ip-range")
        r = owner(rng, "ip-range")
        if r.ip_range is not None:
            raise InvalidOption(f"subnet {r.subnet} has two ip-ranges")
        r.ip_range = rng
    for name, text in (aux_addresses or {}).items():
        if not isinstance(name, str) or not name or "=" in name or not name.isprintable() \
                or any(c.isspace() for c in name):
            raise InvalidOption(f"aux-address needs the form NAME=IP with a NAME of printable "
                                f"characters and no blanks, got {shown(name)}")
        ip = _address(text, f"aux-address {name}")
        owner(ip, f"aux-address {name}").aux[name] = ip
    if ipv4 and not any(r.version == 4 for r in requests):
        requests.insert(0, PoolRequest(None, 4))
    if ipv6 and not any(r.version == 6 for r in requests):
        requests.append(PoolRequest(None, 6))
    return requests
