"""Default address pools and the arithmetic of subnets, ranges and offsets."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from cnm.errors import InvalidOption

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Docker's defaults: 172.17-31.0.0/16, then 192.168.0.0/16 cut into /20s.
DEFAULT_V4: list[ipaddress.IPv4Network] = [
    ipaddress.IPv4Network(f"172.{second}.0.0/16") for second in range(17, 32)
] + list(ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=20))
# pycnm's own ULA /48 ("pcnm" in hex), cut into /64s, for --ipv6 without a subnet.
DEFAULT_V6_BASE = ipaddress.IPv6Network("fd42:7063:6e6d::/48")


def default_pools(v6: bool) -> Iterator[IPNetwork]:
    if v6:
        yield from DEFAULT_V6_BASE.subnets(new_prefix=64)
    else:
        yield from DEFAULT_V4


def parse_subnet(text: str, v6: bool | None = None) -> IPNetwork:
    """A user's subnet, with one clear sentence for each way it can be wrong."""
    cleaned = str(text).strip()
    try:
        subnet = ipaddress.ip_network(cleaned, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(cleaned, strict=False)
            raise InvalidOption(f"subnet {cleaned} has host bits set; did you mean {fixed}?") \
                from None
        raise InvalidOption(
            f"{cleaned!r} is not a valid subnet in CIDR form (e.g. 10.1.0.0/24)"
        ) from None
    if v6 is not None and (subnet.version == 6) != v6:
        raise InvalidOption(f"subnet {cleaned} is IPv{subnet.version}, not IPv{6 if v6 else 4}")
    if usable_size(subnet) < 2:
        raise InvalidOption(
            f"subnet {cleaned} is too small: it must hold a gateway and at least one address"
        )
    return subnet


def usable_size(subnet: IPNetwork) -> int:
    return last_offset(subnet) - first_offset(subnet) + 1


def first_offset(subnet: IPNetwork) -> int:
    """Offset of the first assignable address: the network address is never handed out
    (IPv4's network address; IPv6's subnet-router anycast), except on /31 and /32 links."""
    return 0 if subnet.num_addresses <= 2 else 1


def last_offset(subnet: IPNetwork) -> int:
    """Offset of the last assignable address: IPv4 keeps its broadcast address back."""
    if subnet.version == 4 and subnet.num_addresses > 2:
        return subnet.num_addresses - 2
    return subnet.num_addresses - 1


def offset_of(subnet: IPNetwork, address: IPAddress) -> int:
    return int(address) - int(subnet.network_address)


def address_at(subnet: IPNetwork, offset: int) -> IPAddress:
    return ipaddress.ip_address(int(subnet.network_address) + offset)


def overlapping(candidate: IPNetwork, others: Iterable[IPNetwork]) -> IPNetwork | None:
    for other in others:
        if other.version == candidate.version and other.overlaps(candidate):
            return other
    return None
