"""One pool's record and the address operations on it; ``Ipam`` wraps them in
compare-and-swap loops, so nothing here touches the store.

The record (``ipam/pools/<pool-id>``)::

    {"version": 2, "id": "local/10.1.0.0/24", "space": "local", "subnet": "10.1.0.0/24",
     "ip_range": null, "runs": "1-40,77", "cursor": 40, "gateway": "10.1.0.1",
     "refs": 1}

``runs``: the offsets handed out, run-length encoded as one string (``cnm.ipam.runs``).
``cursor``: the offset last handed out by a serial request, where the next search starts
(libnetwork's bitseq ``curr``). ``gateway``: the pool's gateway when asked for as such (one
per pool, however many networks share it). ``refs``: how many identical requests share the
pool. Version 1 records kept a plain ``allocated`` list of offsets; they are read, and
rewritten as runs on their next change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cnm.errors import Conflict, InvalidOption, PoolExhausted
from cnm.inputs import address_text, shown
from cnm.ipam import pools as P
from cnm.ipam import runs as R

RECORD_VERSION = 2


def parse_address(address: str | P.IPAddress) -> P.IPAddress:
    """An address as given by a caller (``10.1.0.5`` or ``10.1.0.5/24``)."""
    text = address_text(address)
    try:
        if text is None:
            raise ValueError
        return ipaddress.ip_address(text.split("/")[0])
    except ValueError:
        raise InvalidOption(f"{shown(address)} is not a valid IP address") from None


@dataclass
class PoolState:
    """A pool as stored, plus ``dirty``: whether an operation changed it (so a no-op,
    such as releasing an address not held, writes nothing)."""

    id: str
    space: str
    subnet: P.IPNetwork
    ip_range: P.IPNetwork | None
    runs: R.Runs = field(default_factory=list)
    cursor: int | None = None
    gateway: str | None = None
    refs: int = 1
    blocks: dict[int, str] = field(default_factory=dict)  # block index -> owning host
    dirty: bool = False

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> PoolState:
        legacy = "runs" not in value
        return cls(
            id=value["id"],
            space=value["space"],
            subnet=ipaddress.ip_network(value["subnet"]),
            ip_range=ipaddress.ip_network(value["ip_range"]) if value.get("ip_range") else None,
            runs=R.from_offsets(value.get("allocated", [])) if legacy else R.decode(value["runs"]),
            cursor=value.get("cursor"),
            gateway=value.get("gateway"),
            refs=value.get("refs", 1),
            blocks={int(k): h for k, h in value.get("blocks", {}).items()},
            dirty=legacy,
        )

    def to_value(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION, "id": self.id, "space": self.space,
            "subnet": str(self.subnet),
            "ip_range": None if self.ip_range is None else str(self.ip_range),
            "runs": R.encode(self.runs), "cursor": self.cursor, "gateway": self.gateway,
            "refs": self.refs,
            **({"blocks": {str(k): h for k, h in sorted(self.blocks.items())}}
               if self.blocks else {}),
        }

    # --- addresses ----------------------------------------------------------------------

    def offset_for(self, address: str | P.IPAddress) -> int:
        """The offset of an address a caller asks for: inside the subnet and assignable."""
        ip = parse_address(address)
        if ip.version != self.subnet.version or ip not in self.subnet:
            raise InvalidOption(f"address {ip} is not in subnet {self.subnet}")
        offset = P.offset_of(self.subnet, ip)
        if offset < P.first_offset(self.subnet):
            kind = "network" if ip.version == 4 else "subnet-router anycast"
            raise InvalidOption(f"address {ip} is the {kind} address of subnet {self.subnet}")
        if offset > P.last_offset(self.subnet):
            raise InvalidOption(f"address {ip} is the broadcast address of subnet {self.subnet}")
        return offset

    def take(self, address: str | P.IPAddress) -> int:
        """Reserve a given address (anywhere in the subnet, as libnetwork allows, not only
        in the ip-range)."""
        offset = self.offset_for(address)
        if not R.add(self.runs, offset):
            raise Conflict(
                f"address {P.address_at(self.subnet, offset)} is already in use in "
                f"subnet {self.subnet}"
            )
        self.dirty = True
        return offset

    def take_next(self, whole_subnet: bool = False) -> int:
        """Reserve the next free address of the ip-range after the cursor, wrapping around;
        with ``whole_subnet``, the first free address of the subnet (a gateway: Docker's is
        the subnet's first host address even with an ip-range), cursor left alone."""
        rng = None if whole_subnet else self.ip_range
        low, high = P.range_bounds(self.subnet, rng)
        busy = self._busy()
        if whole_subnet:
            offset = R.first_free(busy, low, high)
        else:
            start = low if self.cursor is None else self.cursor + 1
            offset = R.next_free(busy, low, high, start)
        if offset is None:
            where = f"subnet {self.subnet}" if rng is None else \
                f"ip-range {rng} of subnet {self.subnet}"
            if self.blocks and not whole_subnet:
                raise PoolExhausted(
                    f"no free address left in {where} for this host: the rest is in blocks "
                    "other hosts hand addresses out from"
                )
            raise PoolExhausted(
                f"no free address left in {where}: all {high - low + 1} are in use"
            )
        R.add(self.runs, offset)
        if not whole_subnet:
            self.cursor = offset
        self.dirty = True
        return offset

    def _busy(self) -> R.Runs:
        """What a search here must skip: the addresses handed out through this record and
        every block a host hands addresses out from itself (``cnm.ipam.blocks``)."""
        if not self.blocks:
            return self.runs
        busy = [list(run) for run in self.runs]
        size = block_size(self.subnet, self.ip_range) or 1
        for index in self.blocks:
            for offset in range(index * size, (index + 1) * size):
                R.add(busy, offset)
        return busy

    def block_of(self, offset: int) -> int | None:
        """The index of the block holding ``offset``, if a host has claimed it."""
        size = block_size(self.subnet, self.ip_range)
        if size is None or offset // size not in self.blocks:
            return None
        return offset // size

    def take_gateway(self, address: str | P.IPAddress | None) -> int:
        """The pool's one gateway: reserved by the first request (``address``, or the
        subnet's first free one), returned as it is to later ones; asking for another
        address is a Conflict."""
        if self.gateway is not None:
            held = P.offset_of(self.subnet, ipaddress.ip_address(self.gateway))
            if address is not None and self.offset_for(address) != held:
                raise Conflict(
                    f"subnet {self.subnet} already has gateway {self.gateway} (shared with "
                    f"another network), not {parse_address(address)}"
                )
            return held
        offset = self.take_next(whole_subnet=True) if address is None else self.take(address)
        self.gateway = str(P.address_at(self.subnet, offset))
        return offset

    def give_back(self, address: P.IPAddress) -> None:
        """Release an address; one not held is no change. A shared pool's gateway stays
        while other networks use the pool (one network's rollback must not take it)."""
        if address.version != self.subnet.version or address not in self.subnet:
            return
        if self.gateway == str(address):
            if self.refs > 1:
                return
            self.gateway = None
            self.dirty = True
        if R.remove(self.runs, P.offset_of(self.subnet, address)):
            self.dirty = True

    def addresses(self) -> set[P.IPAddress]:
        return {P.address_at(self.subnet, offset) for offset in R.offsets(self.runs)}


MAX_BLOCK = 64  # addresses per block at most (Calico's default block is a /26)
MIN_BLOCK = 4  # below this, addresses are claimed one by one in the cluster store
BLOCKS_PER_POOL = 16  # blocks a pool is cut into at least, so many hosts get one


def block_size(subnet: P.IPNetwork, ip_range: P.IPNetwork | None) -> int | None:
    """How many addresses a host claims at once from a cluster-wide pool (a power of two,
    blocks aligned on it), or None when the range is too small for blocks: then every
    address is claimed in the cluster store, so two hosts can share a /29."""
    low, high = P.range_bounds(subnet, ip_range)
    fits = min(MAX_BLOCK, (high - low + 1) // BLOCKS_PER_POOL)
    if fits < MIN_BLOCK:
        return None
    return 1 << (fits.bit_length() - 1)


def block_indexes(low: int, high: int, size: int) -> range:
    """The blocks hosts may claim in the range ``low..high``: those of its upper half.
    The lower half is claimed address by address in the cluster record (explicit
    addresses, commonly chosen low, and dynamic ones once no block is left), so an
    explicit address there never falls in a block another host hands out from."""
    middle = low + (high - low + 1) // 2
    return range(-(-middle // size), high // size + 1)
