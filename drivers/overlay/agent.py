"""The overlay driver's long-running half: one thread per host process that holds the
host's lease and turns the cluster's endpoint records into VTEP entries.

It runs in ``pycnm agent`` (or the plugin server), never in a short-lived CLI process.
One worker thread does everything in order, fed by a queue: the store's watch callbacks
only enqueue, so kernel writes never race each other and a delete is never overtaken by
an older put.

    connect:  grant a lease, register hosts/<me>, watch overlays/ and hosts/ (global) and
              networks/ (this host's overlay networks), re-publish this host's endpoints
              under the lease, then list everything and resync every VTEP from scratch.
              Watching before listing means no change falls between the two: an event
              that the list already reflects is applied again, which changes nothing.
    serve:    apply watch events as they come (diffs of the entry sets, no kernel dump);
              refresh the lease every ttl/3; resync everything every ``resync_interval``
              as a safety net against missed events.
    failure:  any StoreUnavailable (etcd down, lease lost) drops the watches and retries
              connect with back-off (0.2 s doubling to 5 s). The kernel is left alone in
              the meantime, so the existing data plane keeps forwarding; the first
              successful connect re-lists and resyncs, which is how the host catches up.
    stop:     the lease is *not* revoked: a restarting agent (upgrade, systemd restart)
              must not make every peer drop this host's containers. A host that leaves
              for good removes its networks (which withdraws its records at once), or its
              records go when the lease expires.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnm.errors import CNMError, InvalidOption, StoreUnavailable
from cnm.store.base import WatchEvent
from cnm.store.reconnect import cancel_all, run_reconnecting
from drivers.overlay import cluster, dataplane
from drivers.overlay.cluster import Cluster, LeaseKeeper

if TYPE_CHECKING:
    from drivers.overlay import OverlayDriver

log = logging.getLogger(__name__)

_STOP = object()


class LeaseLost(StoreUnavailable):
    """The host's lease is gone (etcd was unreachable longer than its TTL)."""


@dataclass
class LocalNet:
    """One overlay network of this host, as the agent tracks it."""

    nid: str
    overlay: str
    vni: int
    ns_name: str
    remotes: dict[str, tuple[str, dataplane.Remote]] = field(default_factory=dict)
    tally: dataplane.Tally = field(default_factory=dataplane.Tally)  # what the VTEP holds
    forwarder: dataplane.Forwarder | None = None
    stale: bool = False  # a kernel write failed: the VTEP is resynced at the next event

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None


class Agent:
    def __init__(self, driver: OverlayDriver, ttl: float, resync_interval: float) -> None:
        self.driver = driver
        self.host_id = driver.ctx.host_id
        self.cluster = Cluster(driver.global_store, self.host_id)
        self.keeper = LeaseKeeper(driver.global_store, ttl)
        self.ttl = ttl
        self.resync_interval = resync_interval
        self.nets: dict[str, LocalNet] = {}  # by overlay name
        self.connected = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._cancels: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="pycnm-overlay-agent",
                                        daemon=True)
        self._generation = 0  # events of older watches are dropped

    # --- life cycle ---------------------------------------------------------------------

    @property
    def lease(self) -> Any:
        return self.keeper.lease if self.connected.is_set() else None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._drop_watches()
        for net in self.nets.values():
            net.close()
        self.nets.clear()

    def notify_network(self, nid: str) -> None:
        """A network of this host was created or removed by this process."""
        self._queue.put(("network", nid))

    def _run(self) -> None:
        run_reconnecting(f"overlay agent {self.host_id}", self._stopping, self._connect,
                         self._serve, (StoreUnavailable,), self._store_failed,
                         self._disconnected, log)
        self.connected.clear()

    def _store_failed(self, exc: Exception, backoff: float) -> None:
        if self.connected.is_set():
            log.warning("overlay agent %s: lost the store (%s); forwarding continues with "
                        "the entries in place", self.host_id, exc)
        else:
            log.info("overlay agent %s: store unavailable (%s); retrying in %.1f s",
                     self.host_id, exc, backoff)

    def _disconnected(self) -> None:
        self.connected.clear()
        self._drop_watches()

    # --- connecting --------------------------------------------------------------------

    def _drop_watches(self) -> None:
        self._generation += 1
        cancel_all(self._cancels)

    def _enqueue(self, kind: str, generation: int) -> Any:
        def callback(event: WatchEvent) -> None:
            if generation == self._generation:
                self._queue.put((kind, event))

        return callback

    def _connect(self) -> None:
        self._drop_watches()
        generation = self._generation
        while True:  # events of the old watches are stale: the resync below covers them
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)
                return
        lease = self.keeper.grant()
        vtep = self._host_vtep()
        self.cluster.register(vtep, lease)
        gstore, lstore = self.driver.global_store, self.driver.ctx.store
        self._cancels += cluster.watch_all(gstore, ["overlays/", "hosts/"],
                                           self._enqueue("global", generation))
        self._cancels += cluster.watch_all(lstore, ["networks/"],
                                           self._enqueue("local", generation))
        self._load_networks()
        self.driver.republish(lease)
        self._resync_all()
        self.connected.set()
        log.info("overlay agent %s: connected (VTEP %s, lease %s, %d overlay(s))",
                 self.host_id, vtep, cluster._lease_id(lease), len(self.nets))

    def _host_vtep(self) -> str | None:
        peers = [h["vtep"] for name, h in self.cluster.hosts().items()
                 if name != self.host_id and h.get("vtep")]
        try:
            return dataplane.choose_vtep(self.driver.ctx.host_ns, None, peers).vtep
        except InvalidOption as exc:
            log.info("overlay agent %s: no default VTEP address (%s)", self.host_id, exc)
            return None

    def _load_networks(self) -> None:
        wanted = {rec["overlay"]: rec for rec in self.driver.local_networks()}
        for name in list(self.nets):
            net = self.nets[name]
            if name not in wanted or wanted[name]["id"] != net.nid:
                net.close()
                del self.nets[name]
        for name, rec in wanted.items():
            if name not in self.nets:
                self.nets[name] = LocalNet(rec["id"], name, rec["vni"], rec["netns"])

    # --- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        refresh_every = max(self.ttl / 3.0, 0.2)
        next_refresh = time.monotonic() + refresh_every
        next_resync = time.monotonic() + self.resync_interval
        while not self._stopping.is_set():
            wait = max(0.0, min(next_refresh, next_resync) - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                self._handle(*item)
            now = time.monotonic()
            if now >= next_refresh:
                if not self.keeper.refresh():
                    raise LeaseLost(f"the lease of host {self.host_id} expired")
                next_refresh = now + refresh_every
            if now >= next_resync:
                self._resync_all()
                self.driver.republish(self.keeper.lease)
                next_resync = now + self.resync_interval

    def _handle(self, kind: str, payload: Any) -> None:
        try:
            if kind == "global":
                self._on_global(payload)
            elif kind == "local":
                self._on_network(payload.key.split("/", 1)[1])
            elif kind == "network":
                self._on_network(payload)
        except StoreUnavailable:
            raise
        except CNMError as exc:  # a kernel refusal on one network: say so, go on
            log.warning("overlay agent %s: %s", self.host_id, exc)

    def _on_global(self, event: WatchEvent) -> None:
        parsed = cluster.parse_endpoint_key(event.key)
        if parsed is not None:
            overlay, eid = parsed
            net = self.nets.get(overlay)
            if net is None:
                return
            remote = cluster.remote_of(event.value) if event.value else None
            if event.kind == "put" and event.value and event.value.get("host") != \
                    self.host_id and remote is not None:
                self._change(net, eid, (event.value["host"], remote))
            else:
                self._change(net, eid, None)
            return
        if event.key.startswith("hosts/") and event.kind == "delete":
            host = event.key.split("/", 1)[1]
            if host == self.host_id:
                raise LeaseLost(f"the registration of host {host} vanished")
            for net in self.nets.values():
                self._apply(net, {e: hr for e, hr in net.remotes.items() if hr[0] != host})
            removed = self.cluster.forget_records_of(host, event.revision)
            log.info("overlay agent %s: host %s went away; its entries removed (%d unleased "
                     "record(s) deleted)", self.host_id, host, removed)

    def _on_network(self, nid: str) -> None:
        rec = self.driver.local_network(nid)
        for name, old in list(self.nets.items()):
            if old.nid == nid and (rec is None or rec["overlay"] != name):
                old.close()
                del self.nets[name]
        if rec is None:
            return
        net = self.nets.get(rec["overlay"])
        if net is None or net.nid != nid:
            if net is not None:
                net.close()
            net = self.nets[rec["overlay"]] = LocalNet(nid, rec["overlay"], rec["vni"],
                                                       rec["netns"])
        self._resync(net)

    # --- programming the VTEPs ------------------------------------------------------------

    def _forwarder(self, net: LocalNet) -> dataplane.Forwarder | None:
        if net.forwarder is None:
            if not dataplane.exists(net.ns_name, net.vni):
                log.warning("overlay agent %s: network %s has no VTEP in %s (run pycnm "
                            "reconcile)", self.host_id, net.nid[:12], net.ns_name)
                return None
            net.forwarder = dataplane.Forwarder(net.ns_name, net.vni)
        return net.forwarder

    def _change(self, net: LocalNet, eid: str,
                new: tuple[str, dataplane.Remote] | None) -> None:
        """One remote endpoint put or gone: the VTEP entries it changes, no others."""
        old = net.remotes.get(eid)
        if old == new and not net.stale:
            return
        if net.stale:  # an earlier write failed: what the VTEP holds is not known
            self._resync(net)
            return
        forwarder = self._forwarder(net)
        if forwarder is None:
            return
        gone, made = net.tally.change(old[1] if old else None, new[1] if new else None)
        if new is None:
            net.remotes.pop(eid, None)
        else:
            net.remotes[eid] = new
        try:
            forwarder.change(gone, made, net.tally.ips, net.tally.macs)
        except CNMError:
            net.stale = True
            net.close()  # the namespace may have been rebuilt: reopen and resync next time
            raise

    def _apply(self, net: LocalNet, remotes: dict[str, tuple[str, dataplane.Remote]]) -> None:
        wanted = dataplane.Entries.of(r for _, r in remotes.values())
        forwarder = self._forwarder(net)
        if forwarder is None:
            return
        try:
            forwarder.apply(net.tally.entries(), wanted)
        except CNMError:
            net.stale = True
            net.close()  # the namespace may have been rebuilt: reopen and resync next time
            raise
        net.remotes = remotes
        net.tally = dataplane.Tally.of(r for _, r in remotes.values())

    def _resync(self, net: LocalNet) -> None:
        remotes = {}
        for entry in self.cluster.endpoints(net.overlay):
            value = entry.value
            remote = cluster.remote_of(value)
            if value.get("host") != self.host_id and remote is not None:
                remotes[entry.key.rsplit("/", 1)[1]] = (value["host"], remote)
        forwarder = self._forwarder(net)
        if forwarder is None:
            return
        try:
            forwarder.sync(r for _, r in remotes.values())
        except CNMError:
            net.stale = True
            net.close()
            raise
        net.remotes, net.stale = remotes, False
        net.tally = dataplane.Tally.of(r for _, r in remotes.values())

    def _resync_all(self) -> None:
        for net in list(self.nets.values()):
            try:
                self._resync(net)
            except StoreUnavailable:
                raise
            except CNMError as exc:
                log.warning("overlay agent %s: resync of %s: %s", self.host_id, net.overlay, exc)
