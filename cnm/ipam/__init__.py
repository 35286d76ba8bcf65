"""IPAM: address pools and addresses, kept entirely in the store.

Shaped like libnetwork's ipamapi so the Docker IPAM plugin maps onto it one to one:
address spaces ("local", "global"), pool ids ``SPACE/SUBNET[/RANGE]``, a gateway request
that may take any address of the subnet (``whole_subnet``) while endpoints draw from the
ip-range.

Concurrency: every change is a compare-and-swap on one store record (the pool for
addresses; the address space's index, together with the pool, for pools), retried on
conflict. Two threads, two Ipam objects or two processes on one store therefore never hand
out one address or overlapping pools twice.

Allocation is serial, as libnetwork's bitmap: the next free address after the last one
handed out, wrapping around, so a just-released address is not reused at once (stale ARP
caches) but is reused once the range wraps. Allocated addresses are stored sparsely (a
sorted list of offsets), so a /8 or an IPv6 /64 costs nothing until used.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cnm.errors import Conflict, InvalidOption, NotFound, PoolExhausted
from cnm.ipam import pools as P
from cnm.store.base import Store, Txn

IPNetwork = P.IPNetwork
IPAddress = P.IPAddress
ADDRESS_SPACES = ("local", "global")


@dataclass(frozen=True)
class Pool:
    id: str
    address_space: str
    subnet: IPNetwork
    ip_range: IPNetwork | None


def _pool_key(pool_id: str) -> str:
    return "ipam/pools/" + pool_id.replace("/", "_")


def _space_key(space: str) -> str:
    return f"ipam/spaces/{space}"


def _pool_from(value: dict[str, Any]) -> Pool:
    return Pool(
        id=value["id"],
        address_space=value["space"],
        subnet=ipaddress.ip_network(value["subnet"]),
        ip_range=ipaddress.ip_network(value["ip_range"]) if value.get("ip_range") else None,
    )


class Ipam:
    """Address management for one store (already scoped to a host or the cluster)."""

    def __init__(
        self, store: Store, host_prefixes: Callable[[], Iterable[IPNetwork]] = lambda: ()
    ) -> None:
        self.store = store
        self.host_prefixes = host_prefixes

    # --- pools ------------------------------------------------------------------------

    def request_pool(
        self,
        *,
        subnet: str | None = None,
        ip_range: str | None = None,
        v6: bool = False,
        address_space: str = "local",
        shared: bool = False,
    ) -> Pool:
        """Reserve a pool: the user's ``subnet`` or the first free default pool.

        ``shared``: an identical existing request (same subnet and range) returns the same
        pool with its reference count raised, as Docker's IPAM does; otherwise any overlap
        with another pool of the address space is a Conflict.
        """
        if address_space not in ADDRESS_SPACES:
            raise InvalidOption(
                f"unknown address space {address_space!r}: use {' or '.join(ADDRESS_SPACES)}"
            )
        wanted = P.parse_subnet(subnet, v6 if subnet is None else None) if subnet else None
        if ip_range and wanted is None:
            raise InvalidOption("an ip-range needs a subnet that contains it")
        rng = P.parse_subnet(ip_range) if ip_range else None
        if rng is not None and wanted is not None and (
            rng.version != wanted.version or not rng.subnet_of(wanted)  # type: ignore[arg-type]
        ):
            raise InvalidOption(f"ip-range {rng} is not inside subnet {wanted}")
        host = list(self.host_prefixes()) if wanted is None else []
        for _ in range(200):
            index = self.store.get(_space_key(address_space))
            taken = {} if index is None else dict(index.value["pools"])
            taken_nets = [ipaddress.ip_network(s) for s in taken.values()]
            if wanted is None:
                choice = next(
                    (c for c in P.default_pools(v6)
                     if P.overlapping(c, taken_nets) is None and P.overlapping(c, host) is None),
                    None,
                )
                if choice is None:
                    raise PoolExhausted(
                        f"every default IPv{6 if v6 else 4} pool is in use or overlaps the "
                        "host's routes: give a subnet (--subnet)"
                    )
            else:
                choice = wanted
            pool_id = f"{address_space}/{choice}" + (f"/{rng}" if rng else "")
            if pool_id in taken and shared:
                if self._add_reference(pool_id):
                    return self.get_pool(pool_id)
                continue
            clash = P.overlapping(choice, taken_nets)
            if clash is not None:
                raise Conflict(
                    f"subnet {choice} overlaps subnet {clash}, already in use by another network"
                )
            taken[pool_id] = str(choice)
            record = {"id": pool_id, "space": address_space, "subnet": str(choice),
                      "ip_range": str(rng) if rng else None, "allocated": [], "cursor": None,
                      "refs": 1}
            txn = Txn(
                compares={_space_key(address_space): 0 if index is None else index.revision,
                          _pool_key(pool_id): 0},
                puts={_space_key(address_space): {"pools": taken}, _pool_key(pool_id): record},
            )
            if self.store.commit(txn):
                return _pool_from(record)
        raise Conflict("address pools kept changing under this request; try again")

    def _add_reference(self, pool_id: str) -> bool:
        entry = self.store.get(_pool_key(pool_id))
        if entry is None:
            return False
        value = dict(entry.value)
        value["refs"] = value.get("refs", 1) + 1
        return self.store.cas(_pool_key(pool_id), value, entry.revision)

    def release_pool(self, pool_id: str) -> None:
        """Drop one reference to the pool; the last one frees it (whatever addresses it
        still holds: the caller releases a network's pool after its endpoints). Unknown
        pools are success, so rollback and retries are safe."""
        for _ in range(200):
            entry = self.store.get(_pool_key(pool_id))
            if entry is None:
                return
            if entry.value.get("refs", 1) > 1:
                value = dict(entry.value)
                value["refs"] -= 1
                if self.store.cas(_pool_key(pool_id), value, entry.revision):
                    return
                continue
            space = entry.value["space"]
            index = self.store.get(_space_key(space))
            txn = Txn(compares={_pool_key(pool_id): entry.revision}, deletes=[_pool_key(pool_id)])
            if index is not None:
                taken = dict(index.value["pools"])
                taken.pop(pool_id, None)
                txn.compares[_space_key(space)] = index.revision
                txn.puts[_space_key(space)] = {"pools": taken}
            if self.store.commit(txn):
                return
        raise Conflict(f"pool {pool_id} kept changing; try again")

    def get_pool(self, pool_id: str) -> Pool:
        entry = self.store.get(_pool_key(pool_id))
        if entry is None:
            raise NotFound(f"address pool {pool_id} not found")
        return _pool_from(entry.value)

    def list_pools(self, address_space: str | None = None) -> list[Pool]:
        found = [_pool_from(e.value) for e in self.store.list("ipam/pools/")]
        return [p for p in found if address_space in (None, p.address_space)]

    # --- addresses --------------------------------------------------------------------

    def request_address(
        self, pool_id: str, address: str | IPAddress | None = None, *, whole_subnet: bool = False,
        gateway: bool = False,
    ) -> IPAddress:
        """Reserve ``address``, or the next free one of the ip-range (of the whole subnet
        with ``whole_subnet``, as for a gateway).

        ``gateway``: the pool's gateway, one per pool however many networks share it (an
        overlay's pool is shared by its network on every host): the first request reserves
        it as ``whole_subnet`` would, later ones get the same address back; asking for a
        different one is a Conflict."""
        whole_subnet = whole_subnet or gateway
        for _ in range(1000):
            entry = self.store.get(_pool_key(pool_id))
            if entry is None:
                raise NotFound(f"address pool {pool_id} not found")
            value = dict(entry.value)
            subnet = ipaddress.ip_network(value["subnet"])
            held = value.get("gateway")
            if gateway and held:
                if address is not None and P.offset_of(subnet, ipaddress.ip_address(held)) != \
                        self._explicit_offset(subnet, address):
                    raise Conflict(f"subnet {subnet} already has gateway {held} (shared with "
                                   f"another network), not {address}")
                return ipaddress.ip_address(held)
            allocated: list[int] = list(value["allocated"])
            if address is not None:
                offset = self._explicit_offset(subnet, address)
                at = bisect.bisect_left(allocated, offset)
                if at < len(allocated) and allocated[at] == offset:
                    raise Conflict(f"address {address} is already in use")
                allocated.insert(at, offset)
            else:
                rng = None if whole_subnet or not value.get("ip_range") else \
                    ipaddress.ip_network(value["ip_range"])
                # A gateway (whole subnet) takes the first free address and leaves the
                # endpoints' cursor alone.
                cursor = None if whole_subnet else value.get("cursor")
                offset = self._next_free(subnet, rng, allocated, cursor)
                bisect.insort(allocated, offset)
                if not whole_subnet:
                    value["cursor"] = offset
            if gateway:
                value["gateway"] = str(P.address_at(subnet, offset))
            value["allocated"] = allocated
            if self.store.cas(_pool_key(pool_id), value, entry.revision):
                return P.address_at(subnet, offset)
        raise Conflict(f"pool {pool_id} is too busy; try again")

    @staticmethod
    def _explicit_offset(subnet: IPNetwork, address: str | IPAddress) -> int:
        try:
            ip = ipaddress.ip_address(str(address).split("/")[0])
        except ValueError:
            raise InvalidOption(f"{address!r} is not a valid IP address") from None
        if ip not in subnet:
            raise InvalidOption(f"address {ip} is not in subnet {subnet}")
        offset = P.offset_of(subnet, ip)
        if not P.first_offset(subnet) <= offset <= P.last_offset(subnet):
            kind = "network" if offset == 0 else "broadcast"
            raise InvalidOption(f"address {ip} is the {kind} address of {subnet}")
        return offset

    @staticmethod
    def _next_free(
        subnet: IPNetwork, rng: IPNetwork | None, allocated: list[int], cursor: int | None
    ) -> int:
        low, high = P.first_offset(subnet), P.last_offset(subnet)
        if rng is not None:
            low = max(low, P.offset_of(subnet, rng.network_address))
            high = min(high, P.offset_of(subnet, rng.broadcast_address))
        start = low if cursor is None or not low <= cursor < high else cursor + 1
        # Walk the allocated offsets from the start, wrapping once: the first gap wins.
        for begin, end in ((start, high), (low, start - 1)):
            candidate = begin
            at = bisect.bisect_left(allocated, candidate)
            while candidate <= end:
                if at < len(allocated) and allocated[at] == candidate:
                    candidate += 1
                    at += 1
                    continue
                return candidate
        where = f"ip-range {rng}" if rng is not None else f"subnet {subnet}"
        raise PoolExhausted(f"no free address left in {where}")

    def release_address(self, pool_id: str, address: str | IPAddress) -> None:
        """Give an address back; an address not held (or a pool gone) is success."""
        for _ in range(1000):
            entry = self.store.get(_pool_key(pool_id))
            if entry is None:
                return
            value = dict(entry.value)
            subnet = ipaddress.ip_network(value["subnet"])
            ip = ipaddress.ip_address(str(address).split("/")[0])
            if ip not in subnet:
                return
            offset = P.offset_of(subnet, ip)
            allocated: list[int] = list(value["allocated"])
            at = bisect.bisect_left(allocated, offset)
            if at == len(allocated) or allocated[at] != offset:
                return
            if value.get("gateway") == str(ip):
                if value.get("refs", 1) > 1:
                    return  # the other networks sharing the pool keep their gateway
                value["gateway"] = None
            del allocated[at]
            value["allocated"] = allocated
            if self.store.cas(_pool_key(pool_id), value, entry.revision):
                return
        raise Conflict(f"pool {pool_id} is too busy; try again")

    def allocated(self, pool_id: str) -> set[IPAddress]:
        entry = self.store.get(_pool_key(pool_id))
        if entry is None:
            raise NotFound(f"address pool {pool_id} not found")
        subnet = ipaddress.ip_network(entry.value["subnet"])
        return {P.address_at(subnet, o) for o in entry.value["allocated"]}
