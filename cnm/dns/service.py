"""The resolver's long-running half: keeps the names in line with the store, takes
sandboxes over, publishes this host's names for the cluster, gives sandboxes back.

It runs inside ``pycnm agent`` or ``pycnm plugin serve`` (``Controller.start_background``),
one per host: it claims ``dns/resolver`` in the host's key space, under a lease, and a
second process finds the claim alive and serves no DNS. One control thread does
everything in order; the store's watch callbacks only queue the event and wake it:

    connect:  grant a lease, claim dns/resolver, watch this host's key space (one watch,
              so its events come in revision order) and the cluster's dns/scopes/, list
              the records into memory (``mirror``), then sync. Watching before listing
              means no change falls between the two.
    sync:     apply the queued events to the records in memory (no listing: an event
              costs in proportion to itself, not to the cluster's size), tell the
              snapshot (``index``) the records they changed (it makes again only the
              names, tables and views they touch), take over the sandboxes it now
              serves among those (sockets inside, NAT table, ``nameserver
              127.0.0.11``), drop those gone, hand the snapshot to the event loop, record
              at dns/applied the newest revision the listing covers (what a process that
              just changed names waits for; a revision that changed no name is recorded
              with the next one that does, or ``APPLIED_LATER`` after), then publish the
              names of this host's endpoints that changed on cluster-wide networks under
              the lease (and withdraw the ones gone). A network or cluster scope that changed, and a
              full sync, make every name again and publish them all.
    serve:    sync after watch events (coalesced), refresh the lease every ttl/3, re-read
              the host's resolv.conf when it changes, list everything again and sync
              every ``resync_interval`` as a safety net.
    failure:  a StoreUnavailable (etcd down, lease lost) drops the watches and connects
              again with back-off; the event loop keeps answering from the last snapshot.
    stop:     every sandbox gets its plain files back (the host's servers, no NAT table),
              the claim goes; the lease is not revoked, so a restart does not make other
              hosts drop this host's names (they go when it runs out).
    restart:  sandboxes taken over by a process that was killed keep their NAT table and
              127.0.0.11; the next process listens on the same ports again where they are
              free, so nothing in the sandbox has to change, and no name is lost: names
              live in the store, not in the process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnm import etcfiles, names
from cnm.dns import client, registry, upstreams
from cnm.dns.index import Index
from cnm.dns.mirror import Mirror
from cnm.dns.names import FORWARD_TIMEOUT, RESOLVER_ADDRESS
from cnm.dns.registry import NameEntry, Records, Source
from cnm.dns.server import Server
from cnm.errors import CNMError, Conflict, StoreUnavailable
from cnm.osl import dnsnat
from cnm.osl.netns import netns_exists
from cnm.records import SandboxRecord
from cnm.store.base import Store, WatchEvent
from cnm.store.prefixed import PrefixedStore
from cnm.store.reconnect import cancel_all, run_reconnecting

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 15.0
DEFAULT_RESYNC_INTERVAL = 30.0
UPSTREAM_CHECK = 2.0  # seconds between two looks at the host's resolv.conf
# Seconds the record of a revision whose changes no name depends on (an endpoint made,
# not joined; a driver's own record) may wait at most, to go with the next change that
# matters: no process waits for such a revision (it waits for the names it changed), and
# each write of dns/applied wakes every watcher of the host's store.
APPLIED_LATER = 0.02
ENV_LEASE_TTL = "PYCNM_OVERLAY_LEASE_TTL"

_SCOPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
RECORDS = ("networks/", "endpoints/", "sandboxes/")  # this host's, that names come from
DRIVERS = "drivers/"  # drivers' own records: a network's cluster scope and gateway place
SCOPES = "dns/scopes/"  # the cluster's published names


class LeaseLost(StoreUnavailable):
    """The resolver's lease (and its records) are gone."""


@dataclass
class Adopted:
    netns_path: str
    inode: int  # a namespace rebuilt at the same path is another namespace
    udp_port: int
    tcp_port: int


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(claim: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a claim still runs (pid and start time match)."""
    pid = claim.get("pid")
    return isinstance(pid, int) and _start_time(pid) == claim.get("started")


class DnsService:
    def __init__(self, controller: Controller, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.ctl = controller
        self.host_id = controller.host_id
        self.local: Store = controller.local
        self.cluster: Store = PrefixedStore(controller.store, "global/")
        self.ttl = float(config.get("lease_ttl") or os.environ.get(ENV_LEASE_TTL)
                         or DEFAULT_LEASE_TTL)
        self.resync_interval = float(config.get("resync_interval") or DEFAULT_RESYNC_INTERVAL)
        self.host_conf = etcfiles.host_resolv_conf(controller.host_ns)
        self.resolv_conf = str(config.get("dns_resolv_conf") or self.host_conf)
        self.server = Server(controller.host_ns,
                             timeout=float(config.get("dns_timeout") or FORWARD_TIMEOUT))
        self.adopted: dict[str, Adopted] = {}
        # With ``dns_gateway``, the resolver also answers on port 53 of each network's
        # gateway address (for Docker's embedded DNS as an upstream: docs/dns.md).
        self.gateway = bool(config.get("dns_gateway"))
        self.gateways: dict[str, Adopted] = {}  # by network id
        # (store prefix to watch, source): registered ones (registry.register_source)
        # and this service's own (add_source)
        self.sources: list[tuple[str, Source]] = list(registry.SOURCES)
        self.upstreams = upstreams.Upstreams((), self.resolv_conf)
        self.connected = threading.Event()
        self._upstreams_stamp: tuple[float, int] | None = None
        self._lease: Any = None  # the local store's: this process's claim on the host
        # The cluster store's, for the names published there (the same lease when the
        # host's records and the cluster's share one store).
        self._cluster_lease: Any = None
        self._claim_revision = 0
        self._scopes: dict[str, str] = {}
        self._local: Mirror | None = None  # made at connect: the sources are known then
        self._cluster = Mirror((SCOPES,))
        self._index = Index(self.host_id)  # the names, kept up to date change by change
        self._applied = 0  # the revision last recorded at dns/applied
        self._unrecorded = 0  # a revision applied, not recorded yet (by _record_by)
        self._record_by: float | None = None
        self._unserved: set[str] = set()  # sandboxes whose take-over failed: tried again
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._cancels: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="pycnm-dns-control",
                                        daemon=True)

    # --- life cycle ---------------------------------------------------------------------

    def add_source(self, prefix: str, source: Source) -> None:
        """More names (a service's virtual IP, say): ``source(local_store, records)`` is
        called when a key under ``prefix`` (this host's key space) changes, when a
        network or its cluster scope changes, and on every full sync (connect and every
        ``resync_interval``); its names are kept in between. Call before ``start``."""
        self.sources.append((prefix, source))

    def start(self) -> bool:
        """Start serving; False (and a warning) if another live process serves this host."""
        claim = self.local.get(client.RESOLVER_KEY)
        if claim is not None and claim.value.get("pid") != os.getpid() and _alive(claim.value):
            log.warning("resolver: host %s is already served by process %s; this one serves "
                        "no DNS", self.host_id, claim.value.get("pid"))
            return False
        self.server.start()
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(15)
        self._drop_watches()
        for sid in list(self.adopted):
            self._give_back(sid)
        with contextlib.suppress(CNMError):
            entry = self.local.get(client.RESOLVER_KEY)
            if entry is not None and entry.value.get("pid") == os.getpid():
                self.local.delete(client.RESOLVER_KEY)
        self.server.stop()

    def _run(self) -> None:
        run_reconnecting(f"resolver {self.host_id}", self._stopping, self._connect,
                         self._serve, (StoreUnavailable, Conflict), self._store_failed,
                         self._disconnected, log)

    def _store_failed(self, exc: Exception, backoff: float) -> None:
        if isinstance(exc, Conflict):
            log.warning("resolver %s: %s", self.host_id, exc)
        else:
            log.warning("resolver %s: store unavailable (%s); answering from the names "
                        "known, retrying in %.1f s", self.host_id, exc, backoff)

    def _disconnected(self) -> None:
        self.connected.clear()
        self._drop_watches()

    # --- connecting -------------------------------------------------------------------------

    def _drop_watches(self) -> None:
        cancel_all(self._cancels)

    def _note_local(self, event: WatchEvent) -> None:
        if self._local is not None and self._local.note(event):
            self._dirty.set()

    def _note_cluster(self, event: WatchEvent) -> None:
        if self._cluster.note(event):
            self._dirty.set()

    def _connect(self) -> None:
        self._drop_watches()
        self._local = Mirror((*RECORDS, DRIVERS, *dict.fromkeys(p for p, _ in self.sources)))
        self._cluster.forget_pending()
        self._applied = self._unrecorded = 0
        self._record_by = None
        if hasattr(self.local, "grant_lease"):
            self._lease = self.local.grant_lease(self.ttl)
        self._cluster_lease = self._lease
        if self.ctl.store is not self.ctl.local_store:
            grant = getattr(self.ctl.store, "grant_lease", None)
            self._cluster_lease = grant(self.ttl) if grant is not None else None
        self._claim()
        # The whole key space in one watch: its events come in revision order, so once
        # an event of revision R is applied so is every change before it (what
        # dns/applied promises). Keys outside the mirror's prefixes are ignored.
        self._cancels.append(self.local.watch("", self._note_local))
        # Another host's names: a sync, but no revision (the local store's count, which
        # wait_applied compares, is not the cluster's).
        self._cancels.append(self.cluster.watch(SCOPES, self._note_cluster))
        self._sync(self._claim_revision, full=True)
        self.connected.set()
        log.info("resolver %s: serving %d sandbox(es) at %s (upstreams %s from %s)",
                 self.host_id, len(self.adopted), RESOLVER_ADDRESS,
                 ", ".join(map(str, self.upstreams.servers)) or "none", self.upstreams.source)

    def _claim(self) -> None:
        value = {"pid": os.getpid(), "started": _start_time(os.getpid()),
                 "host": self.host_id, "since": time.time()}
        entry = self.local.get(client.RESOLVER_KEY)
        if entry is not None and entry.value.get("pid") != os.getpid() and _alive(entry.value):
            raise Conflict(f"host {self.host_id} is already served by process "
                           f"{entry.value.get('pid')}")
        self._put(self.local, client.RESOLVER_KEY, value)
        claim = self.local.get(client.RESOLVER_KEY)
        self._claim_revision = claim.revision if claim is not None else 0

    def _put(self, store: Store, key: str, value: dict[str, Any], lease: Any = None) -> None:
        lease = self._lease if lease is None else lease
        if lease is None:
            store.put(key, value)
            return
        try:
            store.put_with_lease(key, value, lease)  # type: ignore[attr-defined]
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the lease ran out under us
            raise LeaseLost(f"cannot write {key}: {exc}") from exc

    # --- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        refresh_every = max(self.ttl / 3.0, 0.2)
        now = time.monotonic()
        next_refresh, next_resync, next_upstreams = (now + refresh_every,
                                                     now + self.resync_interval,
                                                     now + UPSTREAM_CHECK)
        while not self._stopping.is_set():
            due = min(next_refresh, next_resync, next_upstreams, self._record_by or math.inf)
            if self._dirty.wait(max(0.0, due - time.monotonic())) and \
                    not self._stopping.is_set():
                self._dirty.clear()
                self._sync()
            now = time.monotonic()
            if self._record_by is not None and now >= self._record_by:
                self._record_applied(0)
            if now >= next_refresh:
                for lease in {id(x): x for x in (self._lease, self._cluster_lease)
                              if x is not None}.values():
                    if not lease.refresh():
                        raise LeaseLost(f"the resolver lease of host {self.host_id} expired")
                next_refresh = now + refresh_every
            if now >= next_upstreams:
                if self._read_upstreams():
                    self._sync(changed=True)
                next_upstreams = now + UPSTREAM_CHECK
            if now >= next_resync:
                self._sync(full=True)
                next_resync = now + self.resync_interval

    def _read_upstreams(self) -> bool:
        """Re-read the host's servers if its resolv.conf changed; True if they did."""
        paths = [self.resolv_conf, upstreams.RESOLVED_REAL]
        stamp = tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else 0 for p in paths)
        if stamp == self._upstreams_stamp:
            return False
        self._upstreams_stamp = stamp  # type: ignore[assignment]
        found = upstreams.read(self.resolv_conf)
        changed = found != self.upstreams
        self.upstreams = found
        return changed

    def _records(self, local: Mirror) -> Records:
        records = Records(
            networks=local.values("networks/"),
            endpoints=local.values("endpoints/"),
            sandboxes=local.values("sandboxes/"),
            published=self._cluster.items(SCOPES),
        )
        for net in records.networks:
            scope = self._scope(net)
            if scope is not None:
                records.scopes[net["id"]] = scope
        return records

    def _scope(self, net: Mapping[str, Any]) -> str | None:
        """The network's cluster scope. Only a found one is kept: a network's driver may
        not have written its own record yet when the core's first shows up."""
        nid = net["id"]
        scope = self._scopes.get(nid)
        if scope is not None:
            return scope
        try:
            scope = self.ctl.driver(net["driver"]).dns_scope(nid)
        except CNMError as exc:
            log.warning("resolver: network %s: no cluster scope (%s)", nid[:12], exc)
            return None
        if scope is not None and not _SCOPE_RE.fullmatch(scope):
            log.warning("resolver: network %s: cluster scope %r is not usable as a key",
                        nid[:12], scope)
            return None
        if scope is not None:
            self._scopes[nid] = scope
        return scope

    def _sync(self, revision: int = 0, full: bool = False, changed: bool = False) -> None:
        """Bring everything in line with the store as of at least ``revision`` and the
        events queued so far; ``full``: list every record again first; ``changed``:
        something outside the store changed (the upstream servers)."""
        local = self._local
        assert local is not None  # made by _connect, which calls this first
        changed = self._read_upstreams() or changed
        if full:
            local.load(self.local)
            self._cluster.load(self.cluster)
        local_keys, newest = local.drain(_same_names)
        cluster_keys, _ = self._cluster.drain()
        revision = max(revision, newest)
        # This host's own published names come back through the cluster's watch: they
        # change nothing here (a host answers its own names from its records).
        others = [k for k in cluster_keys if _published_by(k) != self.host_id]
        # One of this host's names gone from the cluster (deleted by someone else, say):
        # published again now, not at the next resync.
        lost = any(_published_by(k) == self.host_id and k not in self._cluster.tables[SCOPES]
                   for k in cluster_keys)
        publish: Mapping[str, NameEntry | None] | None = {}
        if full or changed or local_keys or others:
            publish = self._rebuild(local, local_keys, others, full)
        if lost:
            publish = None
        # This host's sandboxes answer the new names now: the process waiting for them
        # (wait_applied) goes on before the cluster hears of them (an etcd round trip
        # it need not wait for: other hosts learn a name from their watch anyway).
        if revision > self._applied:
            if full or changed or local_keys:
                self._record_applied(revision)
            else:  # no name changed: recorded with the next change, or a moment later
                self._unrecorded = max(self._unrecorded, revision)
                if self._record_by is None:
                    self._record_by = time.monotonic() + APPLIED_LATER
        if publish is None or publish:
            self._publish(publish)

    def _record_applied(self, revision: int) -> None:
        """Record at dns/applied that the store as of ``revision`` (or of a revision
        applied earlier and not recorded yet) is answered."""
        revision = max(revision, self._unrecorded)
        if revision > self._applied:
            self.local.put(client.APPLIED_KEY, {"revision": revision, "pid": os.getpid()})
            self._applied = revision
        self._unrecorded, self._record_by = 0, None

    def _rebuild(self, local: Mirror, changed: set[str], published: list[str],
                 full: bool) -> Mapping[str, NameEntry | None] | None:
        """The snapshot after the changes of ``changed`` (this host's keys) and
        ``published`` (other hosts' names): only the names, views and sandboxes they
        touch are looked at, unless ``full`` (every sandbox's namespace is looked at too)
        or a network or cluster scope changed (every name is made again). Returns this
        host's endpoints whose names to publish again (by id, None: all of them)."""
        start_over = full or any(k.startswith(("networks/", DRIVERS)) for k in changed)
        prefixes = tuple({p for p, _ in self.sources})
        records: Records | None = None
        extra: tuple[NameEntry, ...] | None = None
        if start_over or (prefixes and any(k.startswith(prefixes) for k in changed)):
            records = self._records(local)
            extra = self._extra_names(records)
        if full:
            self._index.reset()  # built from scratch now and then, as a safety net
        if start_over:
            assert records is not None and extra is not None
            snapshot = self._index.update(records, extra)
            candidates = set(snapshot.sandboxes) | set(self.adopted)
        else:
            endpoints: dict[str, Any] = {}
            sandboxes: dict[str, Any] = {}
            for key in changed:
                if key.startswith("endpoints/"):
                    endpoints[key.rsplit("/", 1)[1]] = local.tables["endpoints/"].get(key)
                elif key.startswith("sandboxes/"):
                    sandboxes[key.split("/", 1)[1]] = local.tables["sandboxes/"].get(key)
            table = self._cluster.tables[SCOPES]
            snapshot = self._index.change(endpoints, sandboxes,
                                          {k: table.get(k) for k in published}, extra)
            candidates = self._index.changed_views | set(sandboxes) | self._unserved
        for sid in candidates:
            view = snapshot.sandboxes.get(sid)
            record = local.tables["sandboxes/"].get(f"sandboxes/{sid}")
            if view is None or record is None:
                self._unserved.discard(sid)
                if sid in self.adopted:
                    self._forget(sid, record)
                continue
            have = self.adopted.get(sid)
            # A namespace rebuilt at the same path is checked for on a full sync and when
            # the sandbox's record changed, not every sandbox on every event.
            recheck = full or f"sandboxes/{sid}" in changed
            if have is None or have.netns_path != view.netns_path or \
                    (recheck and have.inode != _inode(view.netns_path)):
                try:
                    self._take_over(SandboxRecord.from_dict(record), view)
                except CNMError as exc:
                    self._unserved.add(sid)  # tried again at the next sync
                    log.warning("resolver: sandbox %s not served: %s", view.name, exc)
                    continue
            self._unserved.discard(sid)
        views: set[str] | None = None if start_over else set(self._index.changed_views)
        if self.gateway:
            gateways = self._sync_gateways(list(local.tables["networks/"].values()), snapshot)
            if gateways:
                snapshot = registry.Snapshot({**snapshot.sandboxes, **gateways},
                                             snapshot.networks)
            if views is not None:
                views |= gateways.keys()
        self.server.update(snapshot, self.upstreams.servers, views)
        self.server.wait()  # the loop has the new names before anyone is told
        return None if start_over else self._index.changed_locals

    def _extra_names(self, records: Records) -> tuple[NameEntry, ...]:
        """The names of the other sources (``add_source``)."""
        extra: list[NameEntry] = []
        for _, source in self.sources:  # they may read anything
            try:
                extra += source(self.local, records)
            except CNMError as exc:
                log.warning("resolver: a name source failed: %s", exc)
        return tuple(extra)

    # --- taking sandboxes over and giving them back -------------------------------------

    def _take_over(self, sandbox: SandboxRecord, view: registry.SandboxView) -> None:
        if not netns_exists(sandbox.netns_path):
            raise CNMError(f"its namespace {sandbox.netns_path} is gone")
        before = self.local.get(client.sandbox_key(sandbox.id))
        ports = before.value if before is not None else {}
        udp, tcp = dnsnat.open_listeners(sandbox.netns_path, RESOLVER_ADDRESS,
                                         int(ports.get("udp", 0)), int(ports.get("tcp", 0)))
        try:
            udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
            dnsnat.install(sandbox.netns_path, RESOLVER_ADDRESS, udp_port, tcp_port,
                           fresh=before is None)
            self.server.add(view, udp, tcp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        self.adopted[sandbox.id] = Adopted(sandbox.netns_path, _inode(sandbox.netns_path),
                                           udp_port, tcp_port)
        self.local.put(client.sandbox_key(sandbox.id), {"udp": udp_port, "tcp": tcp_port})
        etcfiles.write_resolv_conf(sandbox, _files_name(sandbox), served=True,
                                   host_conf=self.host_conf)
        log.info("resolver: sandbox %s served (udp %d, tcp %d)", sandbox.name, udp_port,
                 tcp_port)

    def _forget(self, sid: str, record: Mapping[str, Any] | None) -> None:
        """A sandbox no longer served: gone, or no longer one that can be."""
        self.server.remove(sid)
        adopted = self.adopted.pop(sid, None)
        with contextlib.suppress(CNMError):
            self.local.delete(client.sandbox_key(sid))
        if record is not None and adopted is not None:
            self._restore_files(SandboxRecord.from_dict(dict(record)), adopted)

    def _give_back(self, sid: str) -> None:
        adopted = self.adopted.pop(sid, None)
        self.server.remove(sid)
        try:
            entry = self.local.get(f"sandboxes/{sid}")
            self.local.delete(client.sandbox_key(sid))
        except CNMError as exc:
            log.warning("resolver: sandbox %s given back without the store: %s", sid[:12], exc)
            entry = None
        if entry is not None and adopted is not None:
            self._restore_files(SandboxRecord.from_dict(entry.value), adopted)

    def _restore_files(self, sandbox: SandboxRecord, adopted: Adopted) -> None:
        if not netns_exists(adopted.netns_path):
            return
        dnsnat.remove(adopted.netns_path)
        try:
            etcfiles.write_resolv_conf(sandbox, _files_name(sandbox), served=False,
                                       host_conf=self.host_conf)
        except CNMError as exc:
            log.warning("resolver: sandbox %s keeps 127.0.0.11: %s", sandbox.name, exc)

    # --- answering on the networks' gateways ------------------------------------------------

    def _sync_gateways(self, networks: list[dict[str, Any]],
                       snapshot: registry.Snapshot) -> dict[str, registry.SandboxView]:
        """A listener on port 53 of each network's IPv4 gateway, where the driver says the
        gateway lives; queries there see that network's names only."""
        views: dict[str, registry.SandboxView] = {}
        for net in networks:
            nid = net["id"]
            gateway = next((p["gateway"] for p in net.get("ipv4_pools", ())
                            if p.get("gateway")), None)
            table = snapshot.networks.get(nid)
            try:
                place = self.ctl.driver(net["driver"]).gateway_place(nid)
            except CNMError:
                place = None
            if gateway is None or table is None or place is None:
                continue
            key = f"gw:{nid}"
            ns = place.netns
            view = registry.SandboxView(key, f"gateway of {net['name']}",
                                        ns or self.ctl.host_ns or "", (table,),
                                        forward=not table.internal)
            have = self.gateways.get(nid)
            if have is None or (ns is not None and have.inode != _inode(ns)):
                address = ipaddress.IPv4Interface(gateway).ip
                try:
                    udp, tcp = dnsnat.open_listeners(ns, address, 53, 53, exact=True)
                except CNMError as exc:
                    log.warning("resolver: not answering on %s:53 (network %s): %s",
                                address, net["name"], exc)
                    continue
                self.server.add(view, udp, tcp)
                self.gateways[nid] = Adopted(ns or "", _inode(ns) if ns else 0, 53, 53)
                log.info("resolver: answering on %s:53 for network %s", address, net["name"])
            views[key] = view
        for nid in [n for n in self.gateways if f"gw:{n}" not in views]:
            self.server.remove(f"gw:{nid}")
            del self.gateways[nid]
        return views

    # --- the cluster's names -------------------------------------------------------------

    def _publish(self, changed: Mapping[str, NameEntry | None] | None) -> None:
        """Publish the names of this host's endpoints on cluster-wide networks (and
        withdraw those gone): of the endpoints ``changed`` (by id; None: of all)."""
        table = self._cluster.tables[SCOPES]
        scopes = self._index.scopes
        if changed is None:
            entries: Mapping[str, NameEntry | None] = self._index.local_entries()
            mine = {k for k, v in table.items() if v.get("host") == self.host_id}
        else:
            entries = changed
            known = set(scopes.values())
            mine = {key for eid in changed for scope in known
                    if (key := registry.published_key(scope, self.host_id, eid)) in table
                    and table[key].get("host") == self.host_id}
        wanted: dict[str, dict[str, Any]] = {}
        for eid, entry in entries.items():
            scope = scopes.get(entry.network_id) if entry is not None else None
            if entry is not None and scope is not None:
                wanted[registry.published_key(scope, self.host_id, eid)] = \
                    registry.published_record(entry, self.host_id)
        lease = getattr(self._cluster_lease, "id", None)
        for key, value in wanted.items():
            value = {**value, "lease": lease}
            if table.get(key) != value:
                self._put(self.cluster, key, value, self._cluster_lease)
                table[key] = value  # its event may come later
        for key in mine - wanted.keys():
            self.cluster.delete(key)
            table.pop(key, None)


def _names_of(endpoint: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What an endpoint record gives the names (``registry``): nothing unless joined."""
    if endpoint is None or not endpoint.get("sandbox_id"):
        return None
    return (endpoint.get("sandbox_id"), endpoint.get("name"), endpoint.get("network_id"),
            endpoint.get("address"), endpoint.get("address_v6"),
            tuple(endpoint.get("aliases") or ()))


def _same_names(key: str, old: Mapping[str, Any] | None,
                new: Mapping[str, Any] | None) -> bool:
    """A change no name depends on costs no rebuild: an endpoint's when it is made (not
    joined yet) or when its interface's details follow the join's first record; a
    driver's record other than a network's (a driver's network record comes after the
    core's, and the network's cluster scope and gateway are read from it)."""
    if key.startswith("endpoints/"):
        return _names_of(old) == _names_of(new)
    return key.startswith(DRIVERS) and key.split("/")[2:3] != ["networks"]


def _published_by(key: str) -> str | None:
    """The host of a published name's key ``dns/scopes/SCOPE/HOST/ENDPOINT``."""
    parts = key.split("/")
    return parts[3] if len(parts) == 5 else None


def _files_name(sandbox: SandboxRecord) -> str | None:
    return names.sandbox_netns(sandbox.name) if sandbox.owned else None
