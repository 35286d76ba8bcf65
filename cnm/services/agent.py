"""The long-running half of load-balanced services (in ``pycnm agent`` and ``pycnm plugin
serve``): this host's load balancers follow the store, also for changes made elsewhere.

One control thread does everything in order; watch callbacks only wake it:

    connect:  a lease (etcd), recorded at lb/agent so that short-lived processes publish
              under it too; watches on this host's services/, endpoints/ and networks/ and
              the cluster's services/ and service-backends/, then a full sync (every
              network's rules loaded again: a restart repairs whatever changed meanwhile).
    serve:    after watch events (coalesced): apply the networks they touch
              (``Services.apply`` loads a table only when its plan changed) and publish
              this host's backends there on cluster-wide networks under the lease; an
              endpoint that serves no service, before or after, touches nothing, so a
              host full of plain containers does no work per container; refresh the
              lease every ttl/3; a full sync every ``resync_interval``.
    failure:  StoreUnavailable: drop the watches, connect again with back-off. The rules
              in the kernel stay as they are meanwhile.
    stop:     nothing is torn down: the rules are the store's. The lease is not revoked,
              so other hosts keep this host's backends while it restarts (they go when the
              lease runs out if it never comes back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cnm.errors import CNMError, StoreUnavailable
from cnm.services.manager import AGENT_KEY, Services
from cnm.store.base import WatchEvent
from cnm.store.prefixed import PrefixedStore
from cnm.store.reconnect import cancel_all, run_reconnecting

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 15.0
DEFAULT_RESYNC_INTERVAL = 30.0
ENV_LEASE_TTL = "PYCNM_OVERLAY_LEASE_TTL"


class ServiceAgent:
    def __init__(self, controller: Controller, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.ctl = controller
        self.services = Services(controller)
        self.cluster = PrefixedStore(controller.store, "global/")
        self.ttl = float(config.get("lease_ttl") or os.environ.get(ENV_LEASE_TTL)
                         or DEFAULT_LEASE_TTL)
        self.resync_interval = float(config.get("resync_interval") or DEFAULT_RESYNC_INTERVAL)
        self.connected = threading.Event()
        self._lease: Any = None
        self._dirty = threading.Event()
        # Networks the queued events touch (None: every network); endpoints that serve
        # some service, as their last event said (an endpoint that stops serving touches
        # its network once more).
        self._touched: set[str] | None = set()
        self._serving: set[str] = set()
        self._touched_lock = threading.Lock()
        self._stopping = threading.Event()
        self._cancels: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="pycnm-lb-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(15)
        self._drop_watches()
        with contextlib.suppress(CNMError):
            entry = self.ctl.local.get(AGENT_KEY)
            if entry is not None and entry.value.get("pid") == os.getpid():
                self.ctl.local.delete(AGENT_KEY)

    def _run(self) -> None:
        run_reconnecting(f"services {self.ctl.host_id}", self._stopping, self._connect,
                         self._serve, (StoreUnavailable,), self._store_failed,
                         self._disconnected, log)

    def _store_failed(self, exc: Exception, backoff: float) -> None:
        log.warning("services %s: store unavailable (%s); the rules stay, retrying in %.1f s",
                    self.ctl.host_id, exc, backoff)

    def _disconnected(self) -> None:
        self.connected.clear()
        self._drop_watches()

    def _drop_watches(self) -> None:
        cancel_all(self._cancels)

    def _note(self, _event: WatchEvent) -> None:
        """A cluster-wide change (a service or another host's backend): every network."""
        with self._touched_lock:
            self._touched = None
        self._dirty.set()

    def _note_local(self, event: WatchEvent) -> None:
        kind, _, rest = event.key.partition("/")
        nid = rest.split("/", 1)[0]
        if kind == "endpoints":
            serves = bool(event.value and event.value.get("services"))
            with self._touched_lock:
                if not serves and event.key not in self._serving:
                    return  # a plain endpoint: no load balancer cares
                if serves:
                    self._serving.add(event.key)
                else:
                    self._serving.discard(event.key)
        with self._touched_lock:
            if self._touched is not None:
                self._touched.add(nid)
        self._dirty.set()

    def _take_touched(self) -> set[str] | None:
        with self._touched_lock:
            touched, self._touched = self._touched, set()
        return touched

    def _connect(self) -> None:
        self._drop_watches()
        if hasattr(self.cluster, "grant_lease"):
            self._lease = self.cluster.grant_lease(self.ttl)
        self.ctl.local.put(AGENT_KEY, {"pid": os.getpid(), "since": time.time(),
                                       "lease": getattr(self._lease, "id", None)})
        for prefix in ("services/", "endpoints/", "networks/"):
            self._cancels.append(self.ctl.local.watch(prefix, self._note_local))
        for prefix in ("services/", "service-backends/"):
            self._cancels.append(self.cluster.watch(prefix, self._note))
        self._sync(full=True)
        self.connected.set()
        log.info("services %s: load balancers in line with the store", self.ctl.host_id)

    def _serve(self) -> None:
        refresh_every = max(self.ttl / 3.0, 0.2)
        now = time.monotonic()
        next_refresh, next_resync = now + refresh_every, now + self.resync_interval
        while not self._stopping.is_set():
            wait = max(0.0, min(next_refresh, next_resync) - time.monotonic())
            if self._dirty.wait(wait) and not self._stopping.is_set():
                self._dirty.clear()
                self._sync(full=False)
            now = time.monotonic()
            if now >= next_refresh:
                if self._lease is not None and not self._lease.refresh():
                    raise StoreUnavailable(f"the services lease of host {self.ctl.host_id} "
                                           "expired")
                next_refresh = now + refresh_every
            if now >= next_resync:
                self._sync(full=True)
                next_resync = now + self.resync_interval

    def _sync(self, full: bool) -> None:
        touched = None if full else self._take_touched()
        if full:
            # Added to, never replaced: an event that came while listing is kept (a key
            # that stopped serving and stays costs one needless apply at most).
            serving = {e.key for e in self.ctl.local.list("endpoints/")
                       if e.value.get("services")}
            with self._touched_lock:
                self._serving |= serving
        if touched is not None and not touched:
            return
        for problem in self.services.reconcile(force=full) if full else \
                self._apply_all(touched):
            log.warning("services %s: %s", self.ctl.host_id, problem)
        if touched is None:
            self.services.publish_all(self._lease)
        else:
            self.services.publish_some(touched, self._lease)

    def _apply_all(self, touched: set[str] | None) -> list[str]:
        problems = []
        from cnm.services.manager import LB_KEY

        if touched is None:
            nids = {e.value["id"] for e in self.ctl.local.list("networks/")}
            nids |= {e.key[len(LB_KEY):] for e in self.ctl.local.list(LB_KEY)}
        else:
            nids = touched
        for nid in sorted(nids):
            try:
                self.services.apply(nid)
            except StoreUnavailable:
                raise
            except CNMError as exc:
                problems.append(f"load balancer of network {nid[:12]}: {exc}")
        return problems
