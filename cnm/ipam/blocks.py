"""Blocks of a cluster-wide pool that one host hands addresses out from by itself.

Asking etcd for every address cost an overlay attach two round trips (a read and a
compare-and-swap of the pool's record, 3 ms of 15). As Calico does with its per-host
IPAM blocks, a host instead claims a block of the pool (``allocator.block_size``: a
power of two up to 64, aligned, from the upper half of the range only:
``allocator.block_indexes``) in the pool's cluster record (``blocks``: index -> host,
a compare-and-swap like any other change of the record), and hands its addresses out
from its own local store, the host's SQLite file, with no cluster round trip. It claims
the next block when its blocks are full.

Who may hand out which address, so that no address is handed out twice across hosts:

- an address in a block: only the block's host, from its local record
  (``ipam/blocks/<pool>`` under the host's prefix: per block the offsets it handed out,
  and those the cluster record held when it claimed the block, which it never hands out);
- any other address: the cluster record, as before (``Ipam._change``), whose searches
  skip every claimed block: the pool's gateway, an address asked for by a host whose
  blocks and the free blocks are used up, an explicit address (``--ip``) outside blocks.
  An explicit address in the lower half of the range is never in a block; one in this
  host's block is taken from the block; one in another host's block is refused
  (Docker's advice holds: give static addresses outside ``--ip-range``).
- a pool too small for blocks (under 64 addresses in its range) has none: every address
  is claimed in the cluster record, so two hosts can both take addresses in a /29.

A released address goes back to its block (and is handed out again when this host's
serial search wraps around); a block left empty goes back to the pool, unless it is the
host's last one of that pool; a host's network leaving the pool gives its empty blocks back.
Blocks are the host's, not leased: a host whose agent was away longer than its lease still
has containers holding those addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cnm.ipam import pools as P
from cnm.ipam import runs as R
from cnm.ipam.allocator import PoolState
from cnm.store.base import Store

T = TypeVar("T")
Attempts = Callable[[str], Iterator[int]]


def local_key(pool_id: str) -> str:
    return "ipam/blocks/" + pool_id.replace("/", "_")


@dataclass
class HostBlocks:
    """This host's blocks of one pool, as its local record keeps them."""

    pool_id: str
    subnet: P.IPNetwork
    size: int
    held: dict[int, R.Runs] = field(default_factory=dict)  # index -> offsets handed out
    reserved: dict[int, R.Runs] = field(default_factory=dict)  # index -> the cluster's
    cursor: int | None = None

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> HostBlocks:
        return cls(
            pool_id=value["pool"], subnet=ipaddress.ip_network(value["subnet"]),
            size=value["size"],
            held={int(k): R.decode(v) for k, v in value["held"].items()},
            reserved={int(k): R.decode(v) for k, v in value["reserved"].items()},
            cursor=value.get("cursor"),
        )

    def to_value(self) -> dict[str, Any]:
        return {
            "pool": self.pool_id, "subnet": str(self.subnet), "size": self.size,
            "cursor": self.cursor,
            "held": {str(k): R.encode(v) for k, v in sorted(self.held.items())},
            "reserved": {str(k): R.encode(v) for k, v in sorted(self.reserved.items())},
        }

    def offset(self, ip: P.IPAddress) -> int | None:
        if ip.version != self.subnet.version or ip not in self.subnet:
            return None
        return P.offset_of(self.subnet, ip)

    def owns(self, offset: int) -> int | None:
        index = offset // self.size
        return index if index in self.held else None

    def add_block(self, index: int, state: PoolState) -> None:
        """A block this host now holds, with what the cluster record held in it then."""
        first = index * self.size
        self.reserved[index] = [[max(a, first), min(b, first + self.size - 1)]
                                for a, b in state.runs
                                if b >= first and a <= first + self.size - 1]
        self.held.setdefault(index, [])

    def drop(self, indexes: set[int]) -> None:
        """Forget these blocks here (no process of this host hands addresses out from them)."""
        for index in indexes:
            self.held.pop(index, None)
            self.reserved.pop(index, None)

    def take_next(self, low: int, high: int) -> int | None:
        """Hand out the next offset free in this host's blocks after the cursor, wrapping
        around (serial, as the pool's own search: a released address is not reused at
        once); None when they are full."""
        after = -1 if self.cursor is None else self.cursor
        order = sorted(self.held)
        visits = [(index, max(low, index * self.size, after + 1)) for index in order
                  if (index + 1) * self.size - 1 > after]
        visits += [(index, max(low, index * self.size)) for index in order
                   if index * self.size <= after]  # wrapped round
        for index, begin in visits:
            found = R.first_free(self._busy(index), begin,
                                 min(high, (index + 1) * self.size - 1))
            if found is not None:
                R.add(self.held[index], found)
                self.cursor = found
                return found
        return None

    def _busy(self, index: int) -> R.Runs:
        busy = [list(run) for run in self.held[index]]
        for first, last in self.reserved.get(index, []):
            for offset in range(first, last + 1):
                R.add(busy, offset)
        return busy


class LocalBlocks:
    """The blocks this host holds, kept in its local store (one record per pool, changed
    by compare-and-swap: several processes of one host share it)."""

    def __init__(self, local: Store, host_id: str) -> None:
        self.local = local
        self.host_id = host_id

    def get(self, pool_id: str) -> HostBlocks | None:
        entry = self.local.get(local_key(pool_id))
        return None if entry is None else HostBlocks.from_value(entry.value)

    def update(self, pool_id: str, change: Callable[[HostBlocks | None], T],
               attempts: Attempts, fresh: Callable[[], HostBlocks] | None = None,
               ) -> tuple[HostBlocks | None, T]:
        """Apply ``change`` (which edits the record in place, or returns having changed
        nothing; an absent record is None, or ``fresh()`` when given) to the local record
        with compare-and-swap; a record left with no block is deleted.
        Returns the record and what ``change`` returned."""
        key = local_key(pool_id)
        for _ in attempts(f"this host's blocks of pool {pool_id}"):
            entry = self.local.get(key)
            blocks = HostBlocks.from_value(entry.value) if entry is not None else \
                fresh() if fresh is not None else None
            result = change(blocks)
            value = None if blocks is None or not blocks.held else blocks.to_value()
            if entry is None and value is None:
                return blocks, result
            if entry is not None and value == entry.value:
                return blocks, result  # nothing changed: nothing written
            if self.local.cas(key, value, 0 if entry is None else entry.revision):
                return blocks, result
        raise AssertionError("unreachable")  # attempts raises when the rounds run out

    def delete(self, pool_id: str) -> None:
        self.local.delete(local_key(pool_id))
