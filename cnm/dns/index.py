"""The resolver's snapshot kept up to date entry by entry: what ``registry.build`` gives
from scratch, for the cost of what changed.

``registry.build`` looks at every name of the host on every change: at a few hundred
endpoints that cost each host's resolver 2-4 ms of CPU per event, on every host, for
every endpoint event of the cluster (measured: bench/README.md, bench_overlay). An
``Index`` holds the records names come from, by id, and is told which of them changed
(``change``): it makes again the entries of those records only (an endpoint's, and those
of the endpoints in a sandbox whose record changed or whose sharers did), takes out and
puts back only the entries that differ, gives only the networks they touched a new table
(a copy: the snapshot the server answers from is never changed under it), and makes
again the views of the sandboxes whose record changed or that are attached to a network
with a new table. ``update`` compares a whole set of records with the ones held (by
identity, as the resolver's mirror replaces a record's value when it changes) and hands
the differences to ``change``. A change it does not follow entry by entry (a network
added, removed or changed, a cluster scope) makes it start over.

Order, as ``build`` has it for records in key order (as the resolver's mirror lists
them): a name's addresses come from this host's endpoints first (by network and endpoint
id), then the other hosts' published names (by key), then the names of other sources;
an address's PTR is the first entry's that gives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    view_inputs,
    view_of,
)

Key = tuple[Any, ...]  # where an entry comes from; entries are ordered by it
Record = Mapping[str, Any]


class Index:
    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next update builds every table."""
        self._nets: dict[str, dict[str, Any]] = {}
        self._scopes: dict[str, str] = {}
        self._by_scope: dict[str, list[str]] = {}
        # the records, by id (published ones by key), as last told
        self._endpoints: dict[str, Record] = {}
        self._sandboxes: dict[str, Record] = {}
        self._published: dict[str, Record] = {}
        self._extra: tuple[NameEntry, ...] = ()
        self._members: dict[str, set[str]] = {}  # sandbox id -> its endpoints' ids
        self._sharers: dict[str, dict[str, str]] = {}  # sandbox id -> sharer id -> name
        self._entries: dict[Key, NameEntry] = {}
        self._local_keys: dict[str, Key] = {}  # endpoint id -> its entry's key
        self._published_keys: dict[str, list[Key]] = {}  # record key -> its entries' keys
        # network id -> lower-case name -> entry key -> addresses
        self._given: dict[str, dict[str, dict[Key, tuple[IPAddress, ...]]]] = {}
        # network id -> address -> entry key -> PTR name
        self._ptrs: dict[str, dict[IPAddress, dict[Key, str]]] = {}
        self._tables: dict[str, NetworkNames] = {}
        self._views: dict[str, SandboxView] = {}
        self._view_nets: dict[str, tuple[str, ...]] = {}  # sandbox id -> its networks
        # sandbox id -> (its record, its networks, its own servers): what its view is made of
        self._view_inputs: dict[str, tuple[Any, tuple[str, ...], tuple[IPAddress, ...]]] = {}
        self._attached: dict[str, set[str]] = {}  # network id -> served sandboxes on it
        # What the last change did to this host's endpoints' entries (endpoint id ->
        # its entry, None: it has none now), for the caller that publishes them.
        self.changed_locals: dict[str, NameEntry | None] = {}
        self.changed_views: set[str] = set()  # sandbox ids whose view is new or gone

    @property
    def scopes(self) -> Mapping[str, str]:
        """Network id -> cluster scope, as last told."""
        return self._scopes

    def local_entries(self) -> dict[str, NameEntry]:
        """This host's endpoints' entries, by endpoint id."""
        return {eid: self._entries[key] for eid, key in self._local_keys.items()}

    # --- from a whole set of records ----------------------------------------------------

    def update(self, records: Records, extra: Iterable[NameEntry] = ()) -> Snapshot:
        """The snapshot for ``records`` (and the names of other sources, ``extra``)."""
        nets = {n["id"]: n for n in records.networks}
        if nets != self._nets or records.scopes != self._scopes:
            self.networks(nets, records.scopes)
        endpoints = {e["id"]: e for e in records.endpoints}
        sandboxes = {s["id"]: s for s in records.sandboxes}
        return self.change(
            endpoints=_differences(self._endpoints, endpoints),
            sandboxes=_differences(self._sandboxes, sandboxes),
            published=_differences(self._published, records.published),
            extra=tuple(extra))

    def networks(self, nets: Mapping[str, Record], scopes: Mapping[str, str]) -> None:
        """New networks or cluster scopes: start over (the records are told again)."""
        self.reset()
        self._nets = {k: dict(v) for k, v in nets.items()}
        self._scopes = dict(scopes)
        self._by_scope = scopes_networks(Records(scopes=self._scopes))
        self._given = {nid: {} for nid in nets}
        self._ptrs = {nid: {} for nid in nets}
        self._tables = {nid: self._table(nid, {}, {}) for nid in nets}
        self._attached = {nid: set() for nid in nets}

    # --- change by change -----------------------------------------------------------------

    def change(self, endpoints: Mapping[str, Record | None] | None = None,
               sandboxes: Mapping[str, Record | None] | None = None,
               published: Mapping[str, Record | None] | None = None,
               extra: tuple[NameEntry, ...] | None = None) -> Snapshot:
        """Apply changed records (by id; published ones by key; None: gone) and, unless
        None, the whole new list of other sources' names; return the new snapshot."""
        dirty_locals: set[str] = set()
        dirty_views: set[str] = set()
        for sid, sb in (sandboxes or {}).items():
            self._sandbox(sid, sb, dirty_locals)
            dirty_views.add(sid)
        for eid, ep in (endpoints or {}).items():
            self._endpoint(eid, ep)
            dirty_locals.add(eid)
        wanted: dict[Key, NameEntry | None] = {}
        self.changed_locals = {}
        for eid in dirty_locals:
            ep = self._endpoints.get(eid)
            entry = None
            if ep is not None:
                sb = self._sandboxes.get(ep.get("sandbox_id") or "")
                shared = self._shared(sb["id"]) if sb is not None else ()
                entry = local_entry(ep, sb, shared)
            old_key = self._local_keys.pop(eid, None)
            if old_key is not None:
                wanted.setdefault(old_key, None)
            if entry is not None and entry.network_id in self._nets:
                key = (0, entry.network_id, eid)
                self._local_keys[eid] = key
                wanted[key] = entry
            else:
                entry = None
            self.changed_locals[eid] = entry
        for rkey, value in (published or {}).items():
            for key in self._published_keys.pop(rkey, ()):
                wanted.setdefault(key, None)
            if value is None:
                self._published.pop(rkey, None)
                continue
            self._published[rkey] = value
            made = published_entries(rkey, value, self._by_scope, self.host_id)
            if made:
                self._published_keys[rkey] = [(1, rkey, nid) for nid, _ in made]
            for nid, entry in made:
                wanted[(1, rkey, nid)] = entry
        if extra is not None and extra != self._extra:
            for number in range(len(self._extra)):
                wanted.setdefault((2, number), None)
            for number, entry in enumerate(extra):
                if entry.network_id in self._nets:
                    wanted[(2, number)] = entry
            self._extra = extra
        names: dict[str, set[str]] = {}  # network id -> names to make again
        addresses: dict[str, set[IPAddress]] = {}
        for key, new in wanted.items():
            old = self._entries.get(key)
            if new is old or new == old:
                continue
            if old is not None:
                self._take_out(key, old, names, addresses)
                del self._entries[key]
            if new is not None:
                self._put_in(key, new, names, addresses)
                self._entries[key] = new
        for nid in names.keys() | addresses.keys():
            self._tables[nid] = self._remake(nid, names.get(nid, set()),
                                             addresses.get(nid, set()))
            dirty_views |= self._attached[nid]
        self.changed_views = set()
        for sid in dirty_views:
            self._view(sid)
        return Snapshot(dict(self._views), dict(self._tables))

    def _sandbox(self, sid: str, sb: Record | None, dirty_locals: set[str]) -> None:
        old = self._sandboxes.get(sid)
        if sb is None:
            self._sandboxes.pop(sid, None)
        else:
            self._sandboxes[sid] = sb
        dirty_locals |= self._members.get(sid, set())
        before, after = _shares(old), _shares(sb)
        if before != after:
            for target, name in (before, after):
                if target is None or name is None:
                    continue
                sharers = self._sharers.setdefault(target, {})
                if (target, name) == before:
                    sharers.pop(sid, None)
                else:
                    sharers[sid] = name
                if not sharers:
                    del self._sharers[target]
                dirty_locals |= self._members.get(target, set())

    def _endpoint(self, eid: str, ep: Record | None) -> None:
        old = self._endpoints.get(eid)
        if old is not None:
            members = self._members.get(old.get("sandbox_id") or "")
            if members is not None:
                members.discard(eid)
        if ep is None:
            self._endpoints.pop(eid, None)
            return
        self._endpoints[eid] = ep
        if ep.get("sandbox_id"):
            self._members.setdefault(ep["sandbox_id"], set()).add(eid)

    def _shared(self, sid: str) -> tuple[str, ...]:
        sharers = self._sharers.get(sid)
        return tuple(sorted(sharers.values())) if sharers else ()

    def _view(self, sid: str) -> None:
        """Make a sandbox's view again (its record or a network's table changed)."""
        sb = self._sandboxes.get(sid)
        inputs = self._view_inputs.get(sid)
        if inputs is None or inputs[0] is not sb:  # its record changed: its networks too
            for nid in self._view_nets.pop(sid, ()):
                self._attached[nid].discard(sid)
            if sb is None or not served(sb):
                self._view_inputs.pop(sid, None)
                if self._views.pop(sid, None) is not None:
                    self.changed_views.add(sid)
                return
            inputs = (sb, *view_inputs(sb))
            self._view_inputs[sid] = inputs
            self._view_nets[sid] = tuple(nid for nid in inputs[1] if nid in self._attached)
            for nid in self._view_nets[sid]:
                self._attached[nid].add(sid)
        self._views[sid] = view_of(sb, self._tables, inputs[1], inputs[2])
        self.changed_views.add(sid)

    # --- entries ---------------------------------------------------------------------------

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


def _shares(sb: Record | None) -> tuple[str | None, str | None]:
    """(the sandbox it shares, its name) for a container-mode sandbox, else (None, None)."""
    if sb is not None and sb.get("mode") == "container" and sb.get("container"):
        return sb["container"], sb["name"]
    return None, None


def _differences(held: Mapping[str, Record], now: Mapping[str, Record]
                 ) -> dict[str, Record | None]:
    """The records of ``now`` that are not the ones ``held`` (by identity), and None for
    those gone."""
    changed: dict[str, Record | None] = {k: v for k, v in now.items() if held.get(k) is not v}
    changed.update((k, None) for k in held.keys() - now.keys())
    return changed
