"""The resolver's snapshot kept up to date entry by entry: what ``registry.build`` gives
from scratch, for the cost of what changed.

``registry.build`` looks at every name of the host on every change: at a few hundred
endpoints that cost each host's resolver 2-4 ms of CPU per event, on every host, for
every endpoint event of the cluster (measured: bench/README.md, bench_overlay). An
``Index`` keeps, per network, which entry gives each name its addresses; an update
compares the entries with the last update's and takes out and puts back only those that
differ, and only the networks they touched get a new table (a copy: the snapshot the
server answers from is never changed under it). The sandboxes' views are made again
(each only points at its networks' tables). A change it does not follow entry by entry
(a network added, removed or changed, a cluster scope) makes it start over.

Order, as ``build`` has it for records in key order (as the resolver's mirror lists
them): a name's addresses come from this host's endpoints first (by network and endpoint
id), then the other hosts' published names (by key), then the names of other sources;
an address's PTR is the first entry's that gives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cnm.dns.registry import (
    IPAddress,
    NameEntry,
    NetworkNames,
    Records,
    SandboxView,
    Snapshot,
    local_entry,
    published_entries,
    scopes_networks,
    served,
    sharers_of,
    view_inputs,
    view_of,
)

Key = tuple[Any, ...]  # where an entry comes from; entries are ordered by it


class Index:
    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next update builds every table."""
        self._nets: dict[str, dict[str, Any]] = {}
        self._scopes: dict[str, str] = {}
        self._entries: dict[Key, NameEntry] = {}
        # network id -> lower-case name -> entry key -> addresses
        self._given: dict[str, dict[str, dict[Key, tuple[IPAddress, ...]]]] = {}
        # network id -> address -> entry key -> PTR name
        self._ptrs: dict[str, dict[IPAddress, dict[Key, str]]] = {}
        self._tables: dict[str, NetworkNames] = {}
        self._parsed: dict[str, tuple[dict[str, Any], list[tuple[str, NameEntry]]]] = {}
        self._locals: dict[str, tuple[Any, ...]] = {}  # endpoint id -> inputs, entry
        self._made: dict[str, tuple[Any, ...]] = {}  # sandbox id -> inputs, view

    def update(self, records: Records, extra: Iterable[NameEntry] = ()) -> Snapshot:
        nets = {n["id"]: n for n in records.networks}
        if nets != self._nets or records.scopes != self._scopes:
            self.reset()
            self._nets, self._scopes = {k: dict(v) for k, v in nets.items()}, \
                dict(records.scopes)
            self._given = {nid: {} for nid in nets}
            self._ptrs = {nid: {} for nid in nets}
            self._tables = {nid: self._table(nid, {}, {}) for nid in nets}
        entries = self._current(records, extra)
        names: dict[str, set[str]] = {}  # network id -> names to make again
        addresses: dict[str, set[IPAddress]] = {}
        for key, old in self._entries.items():
            now = entries.get(key)
            if now is not old and now != old:
                self._take_out(key, old, names, addresses)
        for key, new in entries.items():
            before = self._entries.get(key)
            if new is not before and new != before:
                self._put_in(key, new, names, addresses)
        self._entries = entries
        for nid in names.keys() | addresses.keys():
            self._tables[nid] = self._remake(nid, names.get(nid, set()),
                                             addresses.get(nid, set()))
        tables = dict(self._tables)
        return Snapshot(self._views(records, tables), tables)

    def _views(self, records: Records, tables: dict[str, NetworkNames]) -> dict[str, SandboxView]:
        """Each served sandbox's view: the one made last time while its record and its
        networks' tables are the same objects."""
        views: dict[str, SandboxView] = {}
        made: dict[str, tuple[Any, ...]] = {}
        for sb in records.sandboxes:
            if not served(sb):
                continue
            sid = sb["id"]
            have = self._made.get(sid)
            if have is not None and have[0] is sb:
                nids, servers = have[1], have[2]
            else:
                nids, servers = view_inputs(sb)
            attached = tuple(tables.get(nid) for nid in nids)
            if have is not None and have[0] is sb and len(have[3]) == len(attached) \
                    and all(a is b for a, b in zip(have[3], attached, strict=True)):
                view = have[4]
            else:
                view = view_of(sb, tables, nids, servers)
            views[sid] = view
            made[sid] = (sb, nids, servers, attached, view)
        self._made = made
        return views

    # --- entries ---------------------------------------------------------------------------

    def _current(self, records: Records, extra: Iterable[NameEntry]) -> dict[Key, NameEntry]:
        entries: dict[Key, NameEntry] = {}
        sandboxes = {s["id"]: s for s in records.sandboxes}
        sharers = sharers_of(records)
        locals_: dict[str, tuple[Any, ...]] = {}
        for ep in records.endpoints:
            sb = sandboxes.get(ep.get("sandbox_id") or "")
            shared = sharers.get(sb["id"], ()) if sb is not None else ()
            have = self._locals.get(ep["id"])
            if have is not None and have[0] is ep and have[1] is sb and have[2] == shared:
                entry = have[3]
            else:
                entry = local_entry(ep, sb, shared)
            locals_[ep["id"]] = (ep, sb, shared, entry)
            if entry is not None and entry.network_id in self._nets:
                entries[(0, entry.network_id, ep["id"])] = entry
        self._locals = locals_
        by_scope = scopes_networks(records)
        parsed: dict[str, tuple[dict[str, Any], list[tuple[str, NameEntry]]]] = {}
        for key, value in records.published.items():
            # A record's value is replaced, never changed, when it changes: one parsed
            # before is still good while it is the same object.
            have = self._parsed.get(key)
            if have is None or have[0] is not value:
                have = (value, published_entries(key, value, by_scope, self.host_id))
            parsed[key] = have
            for nid, entry in have[1]:
                entries[(1, key, nid)] = entry
        self._parsed = parsed
        for number, entry in enumerate(extra):
            if entry.network_id in self._nets:
                entries[(2, number)] = entry
        return entries

    def _take_out(self, key: Key, entry: NameEntry, names: dict[str, set[str]],
                  addresses: dict[str, set[IPAddress]]) -> None:
        nid = entry.network_id
        given = self._given[nid]
        for name in {n.lower() for n in entry.names}:
            holders = given.get(name)
            if holders is not None and holders.pop(key, None) is not None and not holders:
                del given[name]
            names.setdefault(nid, set()).add(name)
        if entry.ptr:
            ptrs = self._ptrs[nid]
            for address in entry.addresses:
                holders_ptr = ptrs.get(address)
                if holders_ptr is not None and holders_ptr.pop(key, None) is not None \
                        and not holders_ptr:
                    del ptrs[address]
                addresses.setdefault(nid, set()).add(address)

    def _put_in(self, key: Key, entry: NameEntry, names: dict[str, set[str]],
                addresses: dict[str, set[IPAddress]]) -> None:
        nid = entry.network_id
        given = self._given[nid]
        for name in {n.lower() for n in entry.names}:
            given.setdefault(name, {})[key] = entry.addresses
            names.setdefault(nid, set()).add(name)
        if entry.ptr:
            ptr = f"{entry.ptr}.{self._nets[nid]['name']}"
            for address in entry.addresses:
                self._ptrs[nid].setdefault(address, {})[key] = ptr
                addresses.setdefault(nid, set()).add(address)

    # --- tables ----------------------------------------------------------------------------

    def _remake(self, nid: str, names: set[str], addresses: set[IPAddress]) -> NetworkNames:
        old = self._tables[nid]
        table = dict(old.names)
        for name in names:
            holders = self._given[nid].get(name)
            if not holders:
                table.pop(name, None)
                continue
            merged: list[IPAddress] = []
            for key in sorted(holders):
                merged.extend(a for a in holders[key] if a not in merged)
            table[name] = tuple(merged)
        reverse = dict(old.reverse)
        for address in addresses:
            holders_ptr = self._ptrs[nid].get(address)
            if not holders_ptr:
                reverse.pop(address, None)
            else:
                reverse[address] = holders_ptr[min(holders_ptr)]
        return self._table(nid, table, reverse)

    def _table(self, nid: str, names: dict[str, tuple[IPAddress, ...]],
               reverse: dict[IPAddress, str]) -> NetworkNames:
        net = self._nets[nid]
        return NetworkNames(nid, net["name"].lower(), bool(net.get("internal")), names, reverse)
