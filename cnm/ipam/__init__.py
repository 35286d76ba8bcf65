"""IPAM: address pools and addresses, kept entirely in the store.

Shaped like libnetwork's ipamapi so the Docker IPAM plugin maps onto it one to one:
address spaces ("local", "global"), pool ids ``SPACE/SUBNET[/RANGE]`` (libnetwork's
AddressSpace/Pool/SubPool), a gateway request that may take any address of the subnet
(``whole_subnet``) while endpoints draw from the ip-range.

Who does what: ``pools`` knows Docker's default pools and validates subnets and ranges;
``runs`` is the run-length set of offsets a pool has handed out; ``allocator`` is one
pool's record and the address operations on it; ``Ipam`` puts them in the store.

Concurrency: every change is a compare-and-swap on store records, retried on conflict:
an address change swaps the pool's record; a pool change commits the address space's
index (``ipam/spaces/<space>``: every pool id and subnet) together with the pool's record,
so two requests for overlapping subnets cannot both pass the overlap check. Two threads,
two Ipam objects or two processes on one store therefore never hand out one address, or
overlapping pools, twice.

Allocation is serial, as libnetwork's bitmap: the next free address after the last one
handed out, wrapping around, so a just-released address is not reused at once (stale ARP
and neighbour caches elsewhere) but is reused once the range wraps. Addresses are stored
as runs of offsets, so a /8 or an IPv6 /64 costs nothing until used and a thousand
addresses handed out in order are one ``[first, last]`` pair.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from cnm.errors import Conflict, InvalidOption, NotFound, PoolExhausted, StoreUnavailable
from cnm.ipam import pools as P
from cnm.ipam import runs as R
from cnm.ipam.allocator import (
    RECORD_VERSION,
    PoolState,
    block_indexes,
    block_size,
    parse_address,
)
from cnm.ipam.blocks import HostBlocks, LocalBlocks
from cnm.store.base import Store, Txn

IPNetwork = P.IPNetwork
IPAddress = P.IPAddress
ADDRESS_SPACES = ("local", "global")
ATTEMPTS = 1000  # compare-and-swap rounds before giving up on a busy record

T = TypeVar("T")

__all__ = ["ADDRESS_SPACES", "IPAddress", "IPNetwork", "Ipam", "Pool"]


@dataclass(frozen=True)
class Pool:
    """A reserved pool, as ``request_pool`` returns it and ``get_pool`` finds it."""

    id: str
    address_space: str
    subnet: IPNetwork
    ip_range: IPNetwork | None


def _pool_key(pool_id: str) -> str:
    return "ipam/pools/" + pool_id.replace("/", "_")


def _space_key(space: str) -> str:
    return f"ipam/spaces/{space}"


def _pool(state: PoolState) -> Pool:
    return Pool(state.id, state.space, state.subnet, state.ip_range)


def _attempts(what: str) -> Iterator[int]:
    """Compare-and-swap rounds; after a few lost ones, a short random pause, so writers
    in several processes stop colliding in step. Raises when they are used up."""
    for attempt in range(ATTEMPTS):
        if attempt >= 3:
            time.sleep(random.uniform(0, min(0.005, 0.0001 * 2 ** min(attempt - 3, 6))))
        yield attempt
    raise StoreUnavailable(f"{what} kept changing under this request; try again")


class Ipam:
    """Address management for one store (already scoped to a host or to the cluster)."""

    def __init__(
        self, store: Store, host_prefixes: Callable[[], Iterable[IPNetwork]] = lambda: (),
        blocks: LocalBlocks | None = None,
    ) -> None:
        """``blocks``: this host's blocks of the pools (``cnm.ipam.blocks``), for the
        cluster-wide IPAM, which then hands addresses out from them without a round trip
        to ``store``; without, every address is claimed in ``store``."""
        self.store = store
        self.host_prefixes = host_prefixes
        self.blocks = blocks

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
        """Reserve a pool: the user's ``subnet`` (of the family ``v6`` says) or the first
        default pool of the address space (``pools``: Docker's lists) that overlaps neither
        a pool of the address space nor a prefix the host already routes or holds.

        ``shared``: an identical existing request (same subnet and range) returns the same
        pool with its reference count raised, as Docker's IPAM does; otherwise any overlap
        with another pool of the address space is a Conflict.
        """
        if address_space not in ADDRESS_SPACES:
            raise InvalidOption(
                f"unknown address space {address_space!r}: use {' or '.join(ADDRESS_SPACES)}"
            )
        wanted = P.parse_subnet(subnet, v6) if subnet else None
        if ip_range and wanted is None:
            raise InvalidOption(f"ip-range {ip_range} needs a subnet that contains it")
        rng = P.parse_range(ip_range, wanted) if ip_range and wanted else None
        # Default routes say nothing about which prefixes are in use (libnetwork skips
        # them too); the Controller leaves them out already, other callers may not.
        host = [p for p in self.host_prefixes() if p.prefixlen] if wanted is None else []
        space_key = _space_key(address_space)
        for _ in _attempts(f"the pools of address space {address_space}"):
            index = self.store.get(space_key)
            taken: dict[str, str] = {} if index is None else dict(index.value["pools"])
            nets = {pid: ipaddress.ip_network(s) for pid, s in taken.items()}
            choice = wanted or P.first_free_default(v6, [*nets.values(), *host], address_space)
            if choice is None:
                raise PoolExhausted(
                    f"every default IPv{6 if v6 else 4} pool is in use or overlaps the "
                    "host's routes: give a subnet (--subnet)"
                )
            pool_id = f"{address_space}/{choice}" + (f"/{rng}" if rng else "")
            if shared and pool_id in taken:
                added = self._add_reference(pool_id)
                if added is not None:
                    self._forget_lost_blocks(added)
                    return _pool(added)
                continue
            clash = next((pid for pid, net in nets.items() if P.overlapping(choice, [net])), None)
            if clash is not None:
                raise Conflict(
                    f"subnet {choice} overlaps subnet {nets[clash]} (pool {clash}), already in "
                    "use by another network"
                )
            state = PoolState(pool_id, address_space, choice, rng, dirty=True)
            txn = Txn(
                compares={space_key: 0 if index is None else index.revision,
                          _pool_key(pool_id): 0},
                puts={space_key: {"version": RECORD_VERSION,
                                  "pools": {**taken, pool_id: str(choice)}},
                      _pool_key(pool_id): state.to_value()},
            )
            if self.store.commit(txn):
                self._forget_lost_blocks(state)
                return _pool(state)
        raise AssertionError("unreachable")  # _attempts raises when the rounds run out

    def _add_reference(self, pool_id: str) -> PoolState | None:
        entry = self.store.get(_pool_key(pool_id))
        if entry is None:
            return None
        state = PoolState.from_value(entry.value)
        state.refs += 1
        return state if self.store.cas(_pool_key(pool_id), state.to_value(), entry.revision) \
            else None

    def _forget_lost_blocks(self, state: PoolState) -> None:
        """Drop from this host's local record every block the pool's record does not say is
        this host's: blocks of an earlier pool of the same id (released by the other hosts
        while this host still held addresses it had leaked), which would otherwise be
        handed out again beside another host's. Every network of the host requests its
        pool before it takes an address, so this runs before any stale block is used."""
        if self.blocks is None:
            return
        owned = {index for index, host in state.blocks.items() if host == self.blocks.host_id}

        def forget(blocks: HostBlocks | None) -> None:
            if blocks is not None:
                blocks.drop(set(blocks.held) - owned)

        self.blocks.update(state.id, forget, _attempts)

    def release_pool(self, pool_id: str) -> None:
        """Drop one reference to the pool; the last one frees it, with whatever addresses
        it still holds (the caller owns those: a network releases its pool after its
        endpoints). An unknown pool is success, so rollbacks and retries are safe."""
        mine = self._empty_blocks(pool_id)
        for _ in _attempts(f"pool {pool_id}"):
            entry = self.store.get(_pool_key(pool_id))
            if entry is None:
                if self.blocks is not None:
                    self.blocks.delete(pool_id)
                return
            state = PoolState.from_value(entry.value)
            if state.refs > 1:
                state.refs -= 1
                for block in mine:  # this host's network leaves the pool: its blocks go back
                    if state.blocks.get(block) == self.blocks.host_id:  # type: ignore[union-attr]
                        del state.blocks[block]
                if self.store.cas(_pool_key(pool_id), state.to_value(), entry.revision):
                    return
                continue
            space_key = _space_key(state.space)
            index = self.store.get(space_key)
            txn = Txn(compares={_pool_key(pool_id): entry.revision}, deletes=[_pool_key(pool_id)])
            if index is not None:
                rest = {k: v for k, v in index.value["pools"].items() if k != pool_id}
                txn.compares[space_key] = index.revision
                if rest:
                    txn.puts[space_key] = {"version": RECORD_VERSION, "pools": rest}
                else:  # the last pool: leave no empty record behind
                    txn.deletes.append(space_key)
            if self.store.commit(txn):
                if self.blocks is not None:
                    self.blocks.delete(pool_id)
                return

    def _empty_blocks(self, pool_id: str) -> set[int]:
        """This host's blocks of the pool from which nothing is handed out, forgotten
        locally (so no process of this host hands addresses out from them any more)."""
        if self.blocks is None:
            return set()

        def forget(blocks: HostBlocks | None) -> set[int]:
            if blocks is None:
                return set()
            empty = {index for index, held in blocks.held.items() if not held}
            blocks.drop(empty)
            return empty

        return self.blocks.update(pool_id, forget, _attempts)[1]

    def get_pool(self, pool_id: str) -> Pool:
        """The pool called ``pool_id``; NotFound if it was never requested or is released."""
        entry = self.store.get(_pool_key(pool_id))
        if entry is None:
            raise NotFound(f"address pool {pool_id} not found")
        return _pool(PoolState.from_value(entry.value))

    def list_pools(self, address_space: str | None = None) -> list[Pool]:
        """Every pool (of one address space when given), ordered by id."""
        found = [_pool(PoolState.from_value(e.value)) for e in self.store.list("ipam/pools/")]
        return sorted((p for p in found if address_space in (None, p.address_space)),
                      key=lambda p: p.id)

    # --- addresses --------------------------------------------------------------------

    def request_address(
        self, pool_id: str, address: str | IPAddress | None = None, *, whole_subnet: bool = False,
        gateway: bool = False,
    ) -> IPAddress:
        """Reserve ``address`` (anywhere in the subnet), or the next free one of the
        ip-range after the last handed out (with ``whole_subnet``: the subnet's first free
        address, as for a gateway).

        ``gateway``: the pool's gateway, one per pool however many networks share it (an
        overlay's pool is shared by its network on every host): the first request reserves
        it as ``whole_subnet`` would, later ones get the same address back; asking for a
        different one is a Conflict.
        """

        if self.blocks is not None and not gateway and not whole_subnet:
            return self._from_blocks(pool_id, address)

        def change(state: PoolState) -> int:
            if gateway:
                if address is not None:
                    self._outside_blocks(state, state.offset_for(address))
                return state.take_gateway(address)
            if address is not None:
                return state.take(address)
            return state.take_next(whole_subnet)

        state, offset = self._change(pool_id, change)
        return P.address_at(state.subnet, offset)

    def _outside_blocks(self, state: PoolState, offset: int) -> None:
        """Refuse an address in a block a host hands addresses out from itself."""
        index = state.block_of(offset)
        if index is None:
            return
        size = block_size(state.subnet, state.ip_range) or 1
        block = ipaddress.ip_network(
            (int(state.subnet.network_address) + index * size,
             state.subnet.max_prefixlen - (size.bit_length() - 1)))
        raise Conflict(
            f"address {P.address_at(state.subnet, offset)} is in block {block}, from which "
            f"host {state.blocks[index]} hands addresses out: ask for an address outside the "
            "network's --ip-range (blocks are cut from it), or for none"
        )

    def _from_blocks(self, pool_id: str, address: str | IPAddress | None) -> IPAddress:
        """An address through this host's blocks (``cnm.ipam.blocks``): from a block it
        holds with no cluster round trip, else after claiming a block, else (no block
        left, or the pool too small for blocks) claimed in the cluster record alone."""
        assert self.blocks is not None
        blocks = self.blocks
        wanted = None if address is None else parse_address(address)
        rng = _range_of(pool_id)

        def take(b: HostBlocks | None) -> int | bool | None:
            """From this host's blocks: an offset, False if ``wanted`` is taken, None if
            they cannot say (full, or ``wanted`` is in none of them)."""
            if b is None:
                return None
            if wanted is None:
                return b.take_next(*P.range_bounds(b.subnet, rng))
            offset = b.offset(wanted)
            index = None if offset is None else b.owns(offset)
            if index is None or offset is None:
                return None
            if R.contains(b.reserved.get(index, []), offset) or not R.add(b.held[index], offset):
                return False
            return offset

        for _ in _attempts(f"pool {pool_id}"):
            held, got = blocks.update(pool_id, take, _attempts)  # one local read and write
            if got is False:
                raise Conflict(f"address {wanted} is already in use in pool {pool_id}")
            if held is not None and isinstance(got, int):
                return P.address_at(held.subnet, got)
            known = set() if held is None else set(held.held)

            def claim(state: PoolState, known: set[int] = known) -> tuple[str, int]:
                return self._claim(state, wanted, known)

            state, (kind, value) = self._change(pool_id, claim)
            if kind == "address":
                return P.address_at(state.subnet, value)
            self._hold(pool_id, value, state)
        raise AssertionError("unreachable")  # _attempts raises when the rounds run out

    def _hold(self, pool_id: str, index: int, state: PoolState) -> None:
        """Record locally a block the cluster record now says this host holds."""
        assert self.blocks is not None
        size = block_size(state.subnet, state.ip_range) or 1

        def add(b: HostBlocks | None) -> None:
            if b is not None and index not in b.held:
                b.add_block(index, state)

        self.blocks.update(pool_id, add, _attempts,
                           fresh=lambda: HostBlocks(state.id, state.subnet, size))

    def _claim(self, state: PoolState, wanted: IPAddress | None,
               known: set[int]) -> tuple[str, int]:
        """In the cluster record: ("address", offset) of an address claimed there, or
        ("block", index) of a block this host now holds (claimed, or found claimed by it
        and missing from its local record: a process stopped between the two writes)."""
        me = self.blocks.host_id  # type: ignore[union-attr]
        lost = sorted(i for i, host in state.blocks.items() if host == me and i not in known)
        if lost:
            return "block", lost[0]
        if wanted is not None:
            offset = state.offset_for(wanted)
            self._outside_blocks(state, offset)
            return "address", state.take(wanted)
        size = block_size(state.subnet, state.ip_range)
        if size is not None:
            low, high = P.range_bounds(state.subnet, state.ip_range)
            for index in block_indexes(low, high, size):
                first, last = max(low, index * size), min(high, (index + 1) * size - 1)
                if index not in state.blocks and R.first_free(state.runs, first, last) \
                        is not None:
                    state.blocks[index] = me
                    state.dirty = True
                    return "block", index
        return "address", state.take_next()

    def release_address(self, pool_id: str, address: str | IPAddress) -> None:
        """Give an address back; one not held, or a pool gone, is success (idempotent).
        A shared pool's gateway is kept while another network still uses the pool."""
        ip = parse_address(address)
        if self.blocks is not None and self._give_back_to_block(pool_id, ip):
            return
        try:
            self._change(pool_id, lambda state: state.give_back(ip))
        except NotFound:
            return

    def _give_back_to_block(self, pool_id: str, ip: IPAddress) -> bool:
        """Release an address this host handed out from its block; a block left empty
        goes back to the pool unless it is the host's last one. False: not from a block."""
        assert self.blocks is not None

        def give_back(b: HostBlocks | None) -> tuple[bool, int | None]:
            offset = None if b is None else b.offset(ip)
            index = None if b is None or offset is None else b.owns(offset)
            if b is None or index is None or offset is None or \
                    not R.remove(b.held[index], offset):
                return False, None
            if b.held[index] or len(b.held) == 1:
                return True, None
            del b.held[index]  # empty, and not the last: back to the pool
            b.reserved.pop(index, None)
            return True, index

        was, emptied = self.blocks.update(pool_id, give_back, _attempts)[1]
        if emptied is not None:
            me = self.blocks.host_id

            def drop(state: PoolState) -> None:
                if state.blocks.get(emptied) == me:
                    del state.blocks[emptied]
                    state.dirty = True

            with contextlib.suppress(NotFound):
                self._change(pool_id, drop)
        return was

    def allocated(self, pool_id: str) -> set[IPAddress]:
        """Every address the pool has handed out and not got back (gateway included)."""
        entry = self.store.get(_pool_key(pool_id))
        if entry is None:
            raise NotFound(f"address pool {pool_id} not found")
        found = PoolState.from_value(entry.value).addresses()
        held = None if self.blocks is None else self.blocks.get(pool_id)
        if held is not None:  # this host's from its blocks (other hosts' are theirs)
            found |= {P.address_at(held.subnet, o) for runs in held.held.values()
                      for o in R.offsets(runs)}
        return found

    def _change(self, pool_id: str, change: Callable[[PoolState], T]) -> tuple[PoolState, T]:
        """Apply ``change`` to the pool's record with compare-and-swap, retried until it
        lands; ``change`` may raise to refuse. A change that changes nothing writes
        nothing."""
        key = _pool_key(pool_id)
        for _ in _attempts(f"pool {pool_id}"):
            entry = self.store.get(key)
            if entry is None:
                raise NotFound(f"address pool {pool_id} not found")
            state = PoolState.from_value(entry.value)
            result = change(state)
            if not state.dirty or self.store.cas(key, state.to_value(), entry.revision):
                return state, result
        raise AssertionError("unreachable")  # _attempts raises when the rounds run out


def _range_of(pool_id: str) -> IPNetwork | None:
    """The ip-range of a pool id ``SPACE/SUBNET[/RANGE]``, if it has one."""
    parts = pool_id.split("/")
    return ipaddress.ip_network(f"{parts[3]}/{parts[4]}") if len(parts) == 5 else None
