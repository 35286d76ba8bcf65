"""The overlay's cluster-wide records, in the global store (etcd), and this host's lease.

Keys (under the driver's global space, ``global/drivers/overlay/``):

    overlays/<name>/config          {"vni", "subnets", "gateways", "hosts": [...]}
    vnis/<vni>                      {"overlay": name}       one key per VNI in use
    overlays/<name>/endpoints/<eid> {"host", "vtep", "mac", "ip", "ip6", "lease"}  leased
    hosts/<host>                    {"name", "vtep", "lease", "since"}            leased

An overlay's config and its VNI key are created in one transaction that requires both to
be absent, so two hosts creating different overlays at once never take the same VNI, and
two hosts creating the same overlay at once end up with one config; every later host
compares its subnets, gateways and explicit VNI with the config and is refused on a
difference. ``hosts`` in the config counts the hosts using the overlay; the last one out
deletes the config and frees the VNI (compare-and-swap on the config's revision, so a host
joining at that moment is never lost).

Endpoint and host records are written under the host's lease, kept alive by the host's
long-running process (``pycnm agent`` or the plugin server): if that process dies, etcd
deletes them when the lease expires and every other host's watch removes the entries.
Short-lived processes (the CLI) write under the lease they find in ``hosts/<me>``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cnm.errors import CNMError, Conflict, StoreUnavailable
from cnm.store.base import Entry, Store, Txn
from drivers.overlay.dataplane import Remote
from drivers.overlay.options import VNI_AUTO_START, VNI_MAX

log = logging.getLogger(__name__)

ATTEMPTS = 64  # compare-and-swap retries before giving up (each one lost to another host)


def config_key(overlay: str) -> str:
    return f"overlays/{overlay}/config"


def endpoints_prefix(overlay: str) -> str:
    return f"overlays/{overlay}/endpoints/"


def endpoint_key(overlay: str, eid: str) -> str:
    return f"overlays/{overlay}/endpoints/{eid}"


def host_key(host: str) -> str:
    return f"hosts/{host}"


def parse_endpoint_key(key: str) -> tuple[str, str] | None:
    """(overlay, endpoint id) of an endpoint record's key, or None for other keys."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "overlays" and parts[2] == "endpoints":
        return parts[1], parts[3]
    return None


@dataclass(frozen=True)
class OverlaySpec:
    """What a host asks for; every host of one overlay must ask for the same."""

    name: str
    vni: int | None
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]


def remote_of(value: dict[str, Any] | None) -> Remote | None:
    """The VTEP's view of an endpoint record (None for a record it cannot use)."""
    if not value or not value.get("mac") or not value.get("vtep"):
        return None
    return Remote(mac=value["mac"], vtep=value["vtep"], ip=value.get("ip"), ip6=value.get("ip6"))


def _describe(values: Iterable[str]) -> str:
    return ", ".join(values) or "none"


def _check_same(spec: OverlaySpec, cfg: dict[str, Any]) -> None:
    if spec.vni is not None and spec.vni != cfg["vni"]:
        raise Conflict(
            f"overlay {spec.name} already exists with VNI {cfg['vni']}, not {spec.vni}: "
            f"use -o vni={cfg['vni']} or leave the option out on this host"
        )
    if tuple(cfg["subnets"]) != spec.subnets:
        raise Conflict(
            f"overlay {spec.name} already exists with subnet(s) {_describe(cfg['subnets'])}, "
            f"not {_describe(spec.subnets)}: every host must give the same --subnet"
        )
    if cfg.get("gateways") and spec.gateways and tuple(cfg["gateways"]) != spec.gateways:
        raise Conflict(
            f"overlay {spec.name} already exists with gateway(s) "
            f"{_describe(cfg['gateways'])}, not {_describe(spec.gateways)}"
        )


def _lease_id(lease: Any) -> Any:
    """The form a lease is stored in a record (an etcd lease id)."""
    return getattr(lease, "id", lease)


class Cluster:
    """Reads and writes the overlay driver's cluster-wide keys."""

    def __init__(self, store: Store, host_id: str) -> None:
        self.store = store
        self.host_id = host_id

    # --- overlays and VNIs -------------------------------------------------------------

    def overlay(self, name: str) -> dict[str, Any] | None:
        entry = self.store.get(config_key(name))
        return None if entry is None else entry.value

    def _free_vni(self) -> int:
        used = set()
        for entry in self.store.list("vnis/"):
            with contextlib.suppress(ValueError):
                used.add(int(entry.key.split("/", 1)[1]))
        vni = VNI_AUTO_START
        while vni in used:
            vni += 1
        if vni > VNI_MAX:
            raise Conflict("every VXLAN id is in use")
        return vni

    def join_overlay(self, spec: OverlaySpec) -> int:
        """Create the overlay or check that it matches, count this host in; return its VNI."""
        key = config_key(spec.name)
        for _ in range(ATTEMPTS):
            entry = self.store.get(key)
            if entry is not None:
                cfg = dict(entry.value)
                _check_same(spec, cfg)
                if self.host_id in cfg["hosts"]:
                    return int(cfg["vni"])
                cfg["hosts"] = sorted({*cfg["hosts"], self.host_id})
                if self.store.cas(key, cfg, entry.revision):
                    return int(cfg["vni"])
                continue
            vni = spec.vni if spec.vni is not None else self._free_vni()
            taken = self.store.get(f"vnis/{vni}")
            if taken is not None:
                if spec.vni is not None:
                    raise Conflict(
                        f"VNI {vni} is already used by overlay {taken.value.get('overlay')}"
                    )
                continue  # another host took it a moment ago: pick again
            cfg = {
                "name": spec.name, "vni": vni, "subnets": list(spec.subnets),
                "gateways": list(spec.gateways), "hosts": [self.host_id],
                "created_by": self.host_id, "created": time.time(),
            }
            txn = Txn(
                compares={key: 0, f"vnis/{vni}": 0},
                puts={key: cfg, f"vnis/{vni}": {"overlay": spec.name}},
            )
            if self.store.commit(txn):
                log.info("overlay %s: created with VNI %d", spec.name, vni)
                return vni
        raise StoreUnavailable(f"overlay {spec.name}: the store kept changing; try again")

    def leave_overlay(self, name: str) -> None:
        """Count this host out; the last host deletes the config and frees the VNI."""
        key = config_key(name)
        for _ in range(ATTEMPTS):
            entry = self.store.get(key)
            if entry is None:
                return
            cfg = dict(entry.value)
            hosts = [h for h in cfg["hosts"] if h != self.host_id]
            if hosts:
                if hosts == cfg["hosts"] or self.store.cas(key, {**cfg, "hosts": hosts},
                                                           entry.revision):
                    return
                continue
            txn = Txn(compares={key: entry.revision}, deletes=[key, f"vnis/{cfg['vni']}"])
            if self.store.commit(txn):
                log.info("overlay %s: last host left, VNI %s freed", name, cfg["vni"])
                return
        raise StoreUnavailable(f"overlay {name}: the store kept changing; try again")

    # --- endpoints ---------------------------------------------------------------------

    def endpoints(self, overlay: str) -> list[Entry]:
        return self.store.list(endpoints_prefix(overlay))

    def publish(self, overlay: str, eid: str, record: dict[str, Any], lease: Any) -> None:
        """Write an endpoint record under ``lease`` (None: unleased, until an agent adopts
        it)."""
        key = endpoint_key(overlay, eid)
        value = {**record, "host": self.host_id, "lease": _lease_id(lease)}
        put_leased(self.store, key, value, lease)

    def withdraw(self, overlay: str, eid: str) -> None:
        self.store.delete(endpoint_key(overlay, eid))

    # --- hosts ---------------------------------------------------------------------------

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {e.key.split("/", 1)[1]: e.value for e in self.store.list("hosts/")}

    def host(self, name: str) -> dict[str, Any] | None:
        entry = self.store.get(host_key(name))
        return None if entry is None else entry.value

    def register(self, vtep: str | None, lease: Any) -> None:
        put_leased(self.store, host_key(self.host_id), {
            "name": self.host_id, "vtep": vtep, "lease": _lease_id(lease), "since": time.time(),
        }, lease)

    def forget_records_of(self, host: str, before_revision: int) -> int:
        """Delete what a vanished host left without a lease (records written while it had
        none), never anything written after it went away. Return how many."""
        removed = 0
        for entry in self.store.list("overlays/"):
            if parse_endpoint_key(entry.key) is None or entry.value.get("host") != host:
                continue
            if entry.revision < before_revision and self.store.cas(entry.key, None,
                                                                  entry.revision):
                removed += 1
        return removed


# --- leases, through whatever the backend offers -------------------------------------


def put_leased(store: Store, key: str, value: dict[str, Any], lease: Any) -> None:
    """``put`` under ``lease`` when there is one and the backend has leases."""
    if lease is None or not hasattr(store, "put_with_lease"):
        store.put(key, value)
        return
    try:
        store.put_with_lease(key, value, lease)
    except CNMError:
        raise
    except Exception as exc:  # noqa: BLE001 - the lease expired under us: say so plainly
        raise StoreUnavailable(f"cannot write {key} under lease {_lease_id(lease)}: {exc}") \
            from exc


class LeaseKeeper:
    """This host's lease: granted, kept alive, granted anew after it was lost.

    Backends without leases (the embedded store) get ``lease = None``: records then live
    until removed, which is right for a single machine.
    """

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.lease: Any = None
        self.supported = callable(getattr(store, "grant_lease", None))

    def grant(self) -> Any:
        if self.supported:
            self.lease = self.store.grant_lease(self.ttl)  # type: ignore[attr-defined]
        return self.lease

    def refresh(self) -> bool:
        """Keep the lease alive; False if it is gone (expired, or etcd lost it) and a new
        one must be granted. Raises StoreUnavailable when etcd cannot be reached."""
        if not self.supported or self.lease is None:
            return True
        return bool(self.store.refresh_lease(self.lease))  # type: ignore[attr-defined]


def watch_all(store: Store, prefixes: Iterable[str],
              callback: Callable[[Any], None]) -> list[Callable[[], None]]:
    """Start one watch per prefix; on failure cancel those already started."""
    cancels: list[Callable[[], None]] = []
    try:
        for prefix in prefixes:
            cancels.append(store.watch(prefix, callback))
    except BaseException:
        for cancel in cancels:
            with contextlib.suppress(Exception):
                cancel()
        raise
    return cancels
