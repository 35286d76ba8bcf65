"""Default address pools, user subnets and ranges, and the arithmetic of offsets.

Default pools are Docker's (libnetwork's ``ipamutils``): the local address space takes
172.17.0.0/16 .. 172.31.0.0/16, then 192.168.0.0/16 cut into /20s (dockerd's
``default-address-pools``); the global one takes 10.0.0.0/8 cut into /24s, as swarm's
overlays do, so a multi-host network's default pool never coincides with a local one.
Docker has no default for IPv6; pycnm cuts /64s from a ULA /48 of its own,
``fd42:7063:6e6d::/48`` ("pcnm" in hex after fd42), so ``--ipv6`` works without a subnet
(in both address spaces: their IPv6 defaults can coincide).

An address is handled as its offset from the subnet's network address: an int, which the
store keeps as JSON whatever the family or the pool's size.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cnm.errors import InvalidOption
from cnm.inputs import address_text, shown

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DefaultPool:
    """A block of address space and the prefix length of the pools cut from it."""

    base: IPNetwork
    size: int


DEFAULT_V4: tuple[DefaultPool, ...] = tuple(
    DefaultPool(ipaddress.IPv4Network(f"172.{second}.0.0/16"), 16) for second in range(17, 32)
) + (DefaultPool(ipaddress.IPv4Network("192.168.0.0/16"), 20),)
GLOBAL_V4: tuple[DefaultPool, ...] = (DefaultPool(ipaddress.IPv4Network("10.0.0.0/8"), 24),)
DEFAULT_V6_BASE = ipaddress.IPv6Network("fd42:7063:6e6d::/48")
DEFAULT_V6: tuple[DefaultPool, ...] = (DefaultPool(DEFAULT_V6_BASE, 64),)


def default_pools(v6: bool, address_space: str = "local") -> tuple[DefaultPool, ...]:
    if v6:
        return DEFAULT_V6
    return GLOBAL_V4 if address_space == "global" else DEFAULT_V4


def first_free_default(
    v6: bool, blockers: Iterable[IPNetwork], address_space: str = "local"
) -> IPNetwork | None:
    """The first default pool of the address space, in order, that overlaps none of
    ``blockers`` (other pools, the host's routes and addresses), or None if every one does.

    Jumps past each blocker instead of trying the 65,536 IPv6 /64s one by one.
    """
    version = 6 if v6 else 4
    spans = _merged(
        (int(b.network_address), int(b.broadcast_address)) for b in blockers
        if b.version == version
    )
    starts = [first for first, _ in spans]
    bits, network = (128, ipaddress.IPv6Network) if v6 else (32, ipaddress.IPv4Network)
    for pool in default_pools(v6, address_space):
        step = 1 << (bits - pool.size)
        candidate, end = int(pool.base.network_address), int(pool.base.broadcast_address)
        while candidate + step - 1 <= end:
            at = bisect.bisect_right(starts, candidate + step - 1) - 1
            if at < 0 or spans[at][1] < candidate:
                return network((candidate, pool.size))
            candidate = -(-(spans[at][1] + 1) // step) * step  # next aligned block after it
    return None


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def parse_network(text: str, what: str = "subnet") -> IPNetwork:
    """A user's subnet or ip-range in CIDR form, with one clear sentence for each way it can
    be wrong (``what`` names the flag in the message)."""
    cleaned = address_text(text)
    if cleaned is None:
        raise InvalidOption(
            f"{what} {shown(text)} is not a valid subnet in CIDR form (e.g. 10.1.0.0/24)")
    if "/" not in cleaned:
        try:
            bare = ipaddress.ip_address(cleaned)
        except ValueError:
            pass
        else:
            example = f"{bare}/{64 if bare.version == 6 else 24}"
            raise InvalidOption(
                f"{what} {cleaned} has no prefix length: write it in CIDR form, e.g. {example}"
            )
    try:
        return ipaddress.ip_network(cleaned, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(cleaned, strict=False)
            raise InvalidOption(f"{what} {cleaned} has host bits set; did you mean {fixed}?") \
                from None
        raise InvalidOption(
            f"{what} {cleaned!r} is not a valid subnet in CIDR form (e.g. 10.1.0.0/24)"
        ) from None


def parse_subnet(text: str, v6: bool | None = None) -> IPNetwork:
    """A user's subnet for a pool: valid, of the family asked for, big enough."""
    subnet = parse_network(text, "subnet")
    if v6 is not None and (subnet.version == 6) != v6:
        raise InvalidOption(
            f"subnet {subnet} is an IPv{subnet.version} subnet, but an IPv{6 if v6 else 4} "
            "pool was requested"
        )
    if usable_size(subnet) < 2:
        raise InvalidOption(
            f"subnet {subnet} is too small: it must hold a gateway and at least one address"
        )
    return subnet


def parse_range(text: str, subnet: IPNetwork) -> IPNetwork:
    """A user's ip-range: inside ``subnet`` and holding at least one assignable address."""
    rng = parse_network(text, "ip-range")
    if rng.version != subnet.version or not rng.subnet_of(subnet):  # type: ignore[arg-type]
        raise InvalidOption(f"ip-range {rng} is not inside subnet {subnet}")
    low, high = range_bounds(subnet, rng)
    if low > high:
        raise InvalidOption(
            f"ip-range {rng} holds no address of subnet {subnet} that can be handed out"
        )
    return rng


def usable_size(subnet: IPNetwork) -> int:
    return last_offset(subnet) - first_offset(subnet) + 1


def first_offset(subnet: IPNetwork) -> int:
    """Offset of the first assignable address: the network address is never handed out
    (IPv4's network address; IPv6's subnet-router anycast), except on /31 and /32 links
    (RFC 3021) and their IPv6 counterparts /127 and /128 (RFC 6164)."""
    return 0 if subnet.num_addresses <= 2 else 1


def last_offset(subnet: IPNetwork) -> int:
    """Offset of the last assignable address: IPv4 keeps its broadcast address back."""
    if subnet.version == 4 and subnet.num_addresses > 2:
        return subnet.num_addresses - 2
    return subnet.num_addresses - 1


def range_bounds(subnet: IPNetwork, rng: IPNetwork | None) -> tuple[int, int]:
    """First and last assignable offsets of ``rng`` (of the whole subnet when None)."""
    low, high = first_offset(subnet), last_offset(subnet)
    if rng is not None:
        low = max(low, offset_of(subnet, rng.network_address))
        high = min(high, offset_of(subnet, rng.broadcast_address))
    return low, high


def offset_of(subnet: IPNetwork, address: IPAddress) -> int:
    return int(address) - int(subnet.network_address)


def address_at(subnet: IPNetwork, offset: int) -> IPAddress:
    return ipaddress.ip_address(int(subnet.network_address) + offset)


def overlapping(candidate: IPNetwork, others: Iterable[IPNetwork]) -> IPNetwork | None:
    """The first of ``others`` (same family) that shares an address with ``candidate``."""
    for other in others:
        if other.version == candidate.version and other.overlaps(candidate):
            return other
    return None
