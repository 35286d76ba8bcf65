"""The Controller (libnetwork's NetworkController): the entry point of the Python API.

It owns the store, IPAM and the drivers, creates and finds networks and sandboxes, and on
start reconciles the kernel with the store. Every object it hands out (Network, Endpoint,
Sandbox) is a thin handle on a stored record, so several processes sharing a store see the
same world.

    ctl = Controller("sqlite:///tmp/state.db")
    net = ctl.new_network("web", subnet="10.1.0.0/24")
    sb = ctl.new_sandbox("c1")
    ep = net.create_endpoint("c1-web")
    ep.join(sb)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import drivers as driver_registry
from cnm import addressing, etcfiles, inputs, modes, names, osl
from cnm.driverapi import OPT_ENABLE_IPV4, OPT_ENABLE_IPV6, OPT_INTERNAL, Driver, DriverContext
from cnm.endpoint import Endpoint
from cnm.errors import (
    CNMError,
    Conflict,
    InvalidOption,
    NotFound,
    StoreRefused,
    StoreUnavailable,
)
from cnm.ipam import Ipam
from cnm.ipam.blocks import LocalBlocks
from cnm.network import Network
from cnm.osl import plumbing, reaper
from cnm.osl.netns import create_named_netns, delete_named_netns, netns_exists
from cnm.records import EndpointRecord, NetworkRecord, PoolRecord, SandboxRecord
from cnm.sandbox import Sandbox
from cnm.store import Store, open_store
from cnm.store.base import Txn
from cnm.store.prefixed import PrefixedStore
from cnm.store.url import DEFAULT_URL, ENV_LOCAL_STORE

log = logging.getLogger(__name__)


def _object_id(given: str | None, what: str) -> str:
    """A caller's object id (Docker's), or a new one. Ids become store keys and parts of
    kernel names and paths: letters and digits only."""
    if given is None:
        return names.new_id()
    if not names.is_valid_id(given):
        raise InvalidOption(f"{what} {inputs.shown(given)} must be 12 to 64 letters and digits")
    return given


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


class Controller:
    """Creates and finds networks and sandboxes on one host.

    ``store``: a Store or a store URL (None: ``PYCNM_STORE`` or the embedded default).
    ``local_store``: where this host's own records live (networks, endpoints, sandboxes,
    its local IPAM, its drivers' records) when ``store`` is a cluster store (etcd): a
    Store or URL of a store on this host (None: ``PYCNM_LOCAL_STORE`` or the embedded
    default). The cluster store then keeps only what hosts share (the cluster-wide IPAM,
    the overlays, their endpoints and the hosts' leases), as Docker keeps local-scope state
    in a local database and global state in its cluster store: a host's attach costs the
    cluster two writes, not a dozen round trips, and bridge networks keep working while
    etcd is away. With a single-host store everything lives in ``store``.
    ``host_ns``: path of the namespace that acts as this host's root namespace (None: the
    one this process runs in); tests and labs emulate several hosts this way.
    ``host_id``: this host's name in a shared store (default: the host namespace's name or
    the machine's hostname).
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        local_store: Store | str | None = None,
        host_ns: str | None = None,
        host_id: str | None = None,
        reconcile: bool = True,
    ) -> None:
        self._owns_store = not isinstance(store, Store)
        self.store: Store = store if isinstance(store, Store) else open_store(store)
        try:
            self.local_store, self._owns_local = self._open_local(local_store)
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self.host_ns = host_ns
        if host_ns is not None and not netns_exists(host_ns):
            raise NotFound(f"host namespace {inputs.shown(host_ns)} does not exist")
        self.host_id = host_id or (
            host_ns.rsplit("/", 1)[-1] if host_ns else socket.gethostname()
        )
        if not names.is_valid_object_name(self.host_id):
            raise InvalidOption(f"host id {self.host_id!r} is not a valid name")
        self.local = PrefixedStore(self.local_store, f"local/{self.host_id}/")
        self.ipam = Ipam(PrefixedStore(self.local_store, f"local/{self.host_id}/"),
                         self._host_prefixes)
        # With a cluster store, this host hands cluster-wide addresses out from blocks it
        # holds, kept in its local store (``cnm.ipam.blocks``): no round trip per address.
        blocks = LocalBlocks(self.local, self.host_id) if self.local_store is not self.store \
            else None
        self.global_ipam = Ipam(PrefixedStore(self.store, "global/"), self._host_prefixes,
                                blocks)
        self._drivers: dict[str, Driver] = {}
        self._drivers_lock = threading.Lock()
        self._dns: Any = None
        self._lb: Any = None
        self.last_reconcile: list[str] = []
        if reconcile:
            self.last_reconcile = self.reconcile()

    def check_cluster(self) -> None:
        """For a long-running process at its start: a cluster store that refuses this host
        (TLS, credentials) is an error now, in one sentence; one that is merely out of
        reach is left to the background work, which retries."""
        if self.store is self.local_store:
            return
        try:
            self.store.check()
        except StoreRefused:
            raise
        except StoreUnavailable as exc:
            log.warning("the cluster store is out of reach for now (%s); host-local work "
                        "goes on and the background work keeps retrying", exc)

    def _open_local(self, local_store: Store | str | None) -> tuple[Store, bool]:
        """The store for this host's own records, and whether this controller opened it."""
        if isinstance(local_store, Store):
            return local_store, False
        if local_store is None and not self.store.cluster:
            return self.store, False
        opened = open_store(local_store or os.environ.get(ENV_LOCAL_STORE) or DEFAULT_URL)
        if opened.cluster:
            opened.close()
            raise InvalidOption(
                f"the local store must be a store of this host (e.g. {DEFAULT_URL}), not "
                f"the cluster store {opened.url} (--local-store or PYCNM_LOCAL_STORE)")
        return opened, True

    # --- plumbing shared with the object handles ----------------------------------

    def _host_prefixes(self) -> list[Any]:
        with osl.iproute(self.host_ns) as ipr:
            from cnm.osl.links import routed_prefixes

            return routed_prefixes(ipr)

    def driver(self, name: str) -> Driver:
        """The driver called ``name``, loaded once per controller."""
        with self._drivers_lock:
            if name not in self._drivers:
                ctx = DriverContext(
                    host_ns=self.host_ns,
                    store=PrefixedStore(self.local_store,
                                        f"local/{self.host_id}/drivers/{name}/"),
                    host_id=self.host_id,
                    global_store=PrefixedStore(self.store, f"global/drivers/{name}/"),
                )
                self._drivers[name] = driver_registry.load(name, ctx)
            return self._drivers[name]

    def _claim_names(self, name_key: str, kind: str, object_id: str,
                     undo: contextlib.ExitStack, taken: str) -> None:
        """Hold an object's name (``name_key``; Conflict ``taken`` if another has it) and
        its kernel names (``_claim_kernel_names``) in one write when both are free, as
        they nearly always are; undone by ``undo`` on failure."""
        claim = names.kernel_claim(kind, object_id)
        value = {"id": object_id}
        if self.local.commit(Txn(compares={name_key: 0, claim: 0},
                                 puts={name_key: value, claim: value})):
            undo.callback(self.local.commit, Txn(deletes=[name_key, claim]))
            return
        if not self.local.create(name_key, value):
            raise Conflict(taken)
        undo.callback(self.local.delete, name_key)
        self._claim_kernel_names(kind, object_id, undo)

    def _claim_kernel_names(self, kind: str, object_id: str,
                            undo: contextlib.ExitStack) -> None:
        """Hold the kernel names derived from ``object_id`` for it alone (undone by
        ``undo`` on failure, released by ``_release_kernel_names``): a second object whose
        id starts the same way would share them, and its join could remove the first
        one's interface."""
        key = names.kernel_claim(kind, object_id)
        if not self.local.create(key, {"id": object_id}):
            holder = self.local.get(key)
            other = holder.value.get("id", "") if holder is not None else ""
            if other != object_id:
                raise Conflict(
                    f"{kind[:-1]} id {object_id[:12]} starts with the same "
                    f"{names.KERNEL_ID_CHARS} characters as that of {kind[:-1]} {other[:12]}, "
                    "and pycnm names its interfaces after them: use another id")
            return
        undo.callback(self.local.delete, key)

    def _release_kernel_names(self, kind: str, object_id: str) -> None:
        key = names.kernel_claim(kind, object_id)
        holder = self.local.get(key)
        if holder is not None and holder.value.get("id") == object_id:
            self.local.delete(key)

    def ipam_for(self, scope: str) -> Ipam:
        return self.global_ipam if scope == "global" else self.ipam

    # --- networks -------------------------------------------------------------------

    def new_network(
        self,
        name: str,
        driver: str = "bridge",
        *,
        subnet: str | Iterable[str] | None = None,
        gateway: str | Iterable[str] | None = None,
        ip_range: str | Iterable[str] | None = None,
        aux_addresses: Mapping[str, str] | None = None,
        ipv6: bool = False,
        internal: bool = False,
        options: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        network_id: str | None = None,
        preallocated: Iterable[PoolRecord] | None = None,
        ipv4: bool = True,
    ) -> Network:
        """Create a network (``docker network create``). Everything is validated before
        anything is made; on failure nothing remains.

        ``network_id`` and ``preallocated`` serve callers that own addressing (Docker's
        IPAM): the pools are recorded as given and pycnm's IPAM is not asked.
        ``ipv4=False`` makes an IPv6-only network (Docker 28's ``--ipv4=false``), for the
        drivers that support one.
        """
        if not names.is_valid_object_name(name):
            raise InvalidOption(
                f"network name {name!r} is invalid: use letters, digits, '_', '.', '-' "
                "(at most 63, starting with a letter or digit)"
            )
        nid = _object_id(network_id, "network id")
        existing = self.local.get(f"networks/{nid}")
        if existing is not None:
            return Network(self, nid)  # a retried create
        drv = self.driver(driver)
        opts = self.check_network_options(driver, options, internal=internal, ipv6=ipv6,
                                          ipv4=ipv4)
        caps = drv.capabilities()
        record = NetworkRecord(
            id=nid, name=name, driver=driver, scope=caps.scope, options=opts,
            internal=bool(internal), ipv6=bool(ipv6), ipv4=bool(ipv4),
            labels=dict(labels or {}), ipam_scope=caps.connectivity_scope,
        )
        with contextlib.ExitStack() as undo:
            self._claim_names(f"names/networks/{name}", "networks", nid, undo,
                              f"a network named {name!r} already exists")
            if preallocated is not None:
                record.ipam = "external"
                for pool in preallocated:
                    version = 6 if ":" in pool.subnet else 4
                    if version == 4 and not ipv4:
                        raise InvalidOption(f"subnet {pool.subnet} is IPv4 but IPv4 is "
                                            "disabled for this network")
                    (record.ipv6_pools if version == 6 else record.ipv4_pools).append(
                        pool.to_dict()
                    )
            else:
                requests = addressing.plan_pools(
                    _as_list(subnet), _as_list(gateway), _as_list(ip_range),
                    aux_addresses, ipv6, ipv4,
                )
                for request in requests:
                    pool = self._allocate_pool(record.ipam_scope, request, undo)
                    target = record.ipv6_pools if request.version == 6 else record.ipv4_pools
                    target.append(pool.to_dict())
            self.local.put(f"networks/{nid}", record.to_dict())
            undo.callback(self.local.delete, f"networks/{nid}")
            drv.create_network(
                nid, opts, Network.ipam_data(record.pools(4)), Network.ipam_data(record.pools(6))
            )
            undo.pop_all()
        log.info("network %s (%s): created with driver %s", name, nid[:12], driver)
        return Network(self, nid)

    def check_network_options(
        self, driver: str, options: Mapping[str, Any] | None, *, internal: bool = False,
        ipv6: bool = False, ipv4: bool = True,
    ) -> dict[str, Any]:
        """The options ``new_network`` would give ``driver``, validated by it (an
        InvalidOption naming the bad one), with nothing made: the generic flags join the
        user's options as Docker's keys."""
        if not ipv4 and not ipv6:
            raise InvalidOption("a network needs IPv4 or IPv6: both are disabled")
        drv = self.driver(driver)
        opts: dict[str, Any] = {str(k): v for k, v in (options or {}).items()}
        opts[OPT_INTERNAL] = bool(internal)
        opts[OPT_ENABLE_IPV6] = bool(ipv6)
        opts[OPT_ENABLE_IPV4] = bool(ipv4)
        drv.validate_network_options(opts)
        return opts

    def _allocate_pool(
        self, scope: str, request: addressing.PoolRequest, undo: contextlib.ExitStack
    ) -> PoolRecord:
        ipam = self.ipam_for(scope)
        pool = ipam.request_pool(
            subnet=str(request.subnet) if request.subnet else None,
            ip_range=str(request.ip_range) if request.ip_range else None,
            v6=request.version == 6,
            # An overlay's pool is requested by its network on every host: share it.
            shared=scope == "global",
            # Cluster-wide default pools (10.0.0.0/8) never collide with this host's own.
            address_space="global" if scope == "global" else "local",
        )
        undo.callback(ipam.release_pool, pool.id)
        gw = ipam.request_address(
            pool.id, str(request.gateway) if request.gateway else None, gateway=True
        )
        undo.callback(ipam.release_address, pool.id, gw)
        for aux_name, aux_ip in request.aux.items():
            try:
                ipam.request_address(pool.id, str(aux_ip), whole_subnet=True)
            except Conflict:
                raise Conflict(f"aux-address {aux_name}={aux_ip} is already in use") from None
            undo.callback(ipam.release_address, pool.id, aux_ip)
        prefix = pool.subnet.prefixlen
        return PoolRecord(
            subnet=str(pool.subnet),
            gateway=f"{gw}/{prefix}",
            ip_range=str(pool.ip_range) if pool.ip_range else None,
            aux_addresses={k: str(v) for k, v in request.aux.items()},
            pool_id=pool.id,
        )

    def network(self, name_or_id: str) -> Network:
        """Find a network by name, full id or unique id prefix."""
        return Network(self, self._resolve("networks", name_or_id, "network"))

    def networks(self) -> list[Network]:
        return [Network(self, e.value["id"]) for e in self.local.list("networks/")]

    def _resolve(self, kind: str, name_or_id: str, what: str) -> str:
        by_name = self.local.get(f"names/{kind}/{name_or_id}")
        if by_name is not None:
            return by_name.value["id"]
        if self.local.get(f"{kind}/{name_or_id}") is not None:
            return name_or_id
        if len(name_or_id) >= 3:
            matches = [
                e.value["id"] for e in self.local.list(f"{kind}/")
                if e.value["id"].startswith(name_or_id)
            ]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise Conflict(f"{what} id prefix {name_or_id!r} is ambiguous")
        raise self._not_found(what, name_or_id)

    def _not_found(self, what: str, name_or_id: str) -> NotFound:
        """With a cluster store, a host's own records are in its local store: say which
        one was searched, for whom (a forgotten local store reads as "no such network")."""
        url = getattr(self.local_store, "url", None)
        where = f" among host {self.host_id}'s records in local store {url}" \
            if self.store.cluster and url else ""
        return NotFound(f"no {what} named or with id {name_or_id!r}{where}")

    # --- sandboxes ------------------------------------------------------------------

    def new_sandbox(
        self,
        name: str,
        *,
        mode: str | None = None,
        netns_path: str | None = None,
        hostname: str | None = None,
        dns: Iterable[str] = (),
        dns_search: Iterable[str] = (),
        dns_options: Iterable[str] = (),
        extra_hosts: Mapping[str, str] | None = None,
        sandbox_id: str | None = None,
        ip_forward: bool = False,
    ) -> Sandbox:
        """Create a sandbox: a new named namespace ``pcsb-NAME`` (``ip netns exec pcsb-NAME``
        works in it), or adopt the existing namespace at ``netns_path``.

        ``mode`` (see ``cnm.modes``): ``host`` uses this host's own namespace, ``none``
        makes one with loopback only, ``container:OTHER`` shares sandbox OTHER's.
        A sandbox never forwards between its interfaces unless ``ip_forward`` makes it a
        router (new namespaces start with forwarding off).
        """
        if not names.is_valid_object_name(name) or len(name) > 40:
            raise InvalidOption(
                f"sandbox name {name!r} is invalid: use letters, digits, '_', '.', '-' "
                "(at most 40, starting with a letter or digit)"
            )
        parsed = modes.parse(mode)
        dns, dns_search, dns_options = _as_list(dns), _as_list(dns_search), _as_list(dns_options)
        if not parsed.own_namespace:
            given = [what for what, value in (
                ("a namespace path", netns_path), ("a hostname", hostname),
                ("DNS servers", dns), ("DNS search domains", dns_search),
                ("DNS options", dns_options), ("extra hosts", extra_hosts),
                ("IP forwarding", ip_forward)) if value]
            if given:
                whose = "the host's" if parsed.kind == "host" else f"sandbox {parsed.other}'s"
                raise InvalidOption(
                    f"{', '.join(given)} cannot be given with mode {parsed}: the sandbox "
                    f"uses {whose} namespace and files as they are"
                )
        elif parsed.kind == "none" and (netns_path or ip_forward):
            raise InvalidOption("a namespace path and IP forwarding cannot be given with mode "
                                "none: the sandbox is a new namespace with loopback only")
        sid = _object_id(sandbox_id, "sandbox id")
        if parsed.kind == "host":
            return self._new_shared_sandbox(name, sid, parsed, self._host_netns_path(), None)
        if parsed.kind == "container":
            return self._new_sharer(name, sid, parsed)
        if netns_path is not None and not netns_exists(netns_path):
            raise NotFound(f"{inputs.shown(netns_path)} is not a network namespace")
        record = SandboxRecord(
            id=sid, name=name, netns_path=netns_path or osl.named_netns_path(
                names.sandbox_netns(name)),
            owned=netns_path is None,
            hostname=inputs.hostname(hostname, "hostname") if hostname else name,
            dns_servers=[str(inputs.address(s, "DNS server")) for s in dns],
            dns_search=[inputs.domain(d, "DNS search domain") for d in dns_search],
            dns_options=[inputs.dns_option(o, "DNS option") for o in dns_options],
            extra_hosts={inputs.hostname(host, "extra host name"):
                         str(inputs.address(ip, f"address of extra host {host}"))
                         for host, ip in dict(extra_hosts or {}).items()},
            ip_forward=bool(ip_forward), mode=parsed.kind,
        )
        with self.local.wakeups_batched(), contextlib.ExitStack() as undo:
            if not self.local.create(f"names/sandboxes/{name}", {"id": sid}):
                raise Conflict(f"a sandbox named {name!r} already exists")
            undo.callback(self.local.delete, f"names/sandboxes/{name}")
            netns_name = self._netns_name(record)
            host_conf = etcfiles.host_resolv_conf(self.host_ns)
            undo.callback(etcfiles.remove, record, netns_name)
            if record.owned:
                # The files need no namespace: written while a thread makes it (both cost
                # the kernel file-system work, and they overlap on two cores).
                create_named_netns(names.sandbox_netns(name), loopback_up=True,
                                   forwarding=ip_forward,
                                   meanwhile=lambda: etcfiles.write(
                                       record, [], netns_name, host_conf=host_conf),
                                   keep_sockets=True)  # for the join that follows
                undo.callback(delete_named_netns, names.sandbox_netns(name))
            else:
                plumbing.set_forwarding(record.netns_path, ip_forward)
                etcfiles.write(record, [], netns_name, host_conf=host_conf)
            revision = self.local.put(f"sandboxes/{sid}", record.to_dict())
            undo.pop_all()
        log.info("sandbox %s (%s): created at %s (mode %s)", name, sid[:12], record.netns_path,
                 parsed)
        if parsed.kind == "default":
            self.settle_dns(revision)  # the resolver has taken it over (if one runs)
        return Sandbox(self, sid)

    def _host_netns_path(self) -> str:
        """The path of the namespace this controller treats as the host's."""
        if self.host_ns is not None:
            return self.host_ns
        mine, init = "/proc/self/ns/net", "/proc/1/ns/net"
        try:
            same = os.stat(mine).st_ino == os.stat(init).st_ino
        except OSError:
            same = False
        if not same:
            raise InvalidOption("mode host: this process does not run in the network "
                                "namespace of process 1; name the host's with --host-ns")
        return init

    def _new_sharer(self, name: str, sid: str, mode: modes.Mode) -> Sandbox:
        """A container-mode sandbox: it uses the namespace of the sandbox OTHER uses (one
        that shares another's leads to the owner), recorded in the owner's ``shared_by``
        in one compare-and-swap, so the owner's removal and a new sharer never cross."""
        assert mode.other is not None
        try:
            owner = self.sandbox(mode.other)
        except NotFound:
            raise NotFound(f"mode {mode}: there is no sandbox named or with id "
                           f"{mode.other!r} to share") from None
        owner_rec = owner.record
        if owner_rec.mode == "container" and owner_rec.container:
            owner = Sandbox(self, owner_rec.container)
            owner_rec = owner.record
        return self._new_shared_sandbox(name, sid, mode, owner_rec.netns_path, owner)

    def _new_shared_sandbox(self, name: str, sid: str, mode: modes.Mode, netns_path: str,
                            owner: Sandbox | None) -> Sandbox:
        record = SandboxRecord(
            id=sid, name=name, netns_path=netns_path, owned=False, mode=mode.kind,
            container=owner.id if owner is not None else None,
            hostname=owner.record.hostname if owner is not None else socket.gethostname(),
        )
        with contextlib.ExitStack() as undo:
            if not self.local.create(f"names/sandboxes/{name}", {"id": sid}):
                raise Conflict(f"a sandbox named {name!r} already exists")
            undo.callback(self.local.delete, f"names/sandboxes/{name}")
            if owner is not None:
                owner._add_sharer(sid, str(mode))
                undo.callback(owner._remove_sharer, sid)
            self.local.put(f"sandboxes/{sid}", record.to_dict())
            undo.pop_all()
        log.info("sandbox %s (%s): created (mode %s, namespace %s)", name, sid[:12], mode,
                 netns_path)
        return Sandbox(self, sid)

    @staticmethod
    def _netns_name(record: SandboxRecord) -> str | None:
        return names.sandbox_netns(record.name) if record.owned else None

    def sandbox(self, name_or_id: str) -> Sandbox:
        return Sandbox(self, self._resolve("sandboxes", name_or_id, "sandbox"))

    def sandboxes(self) -> list[Sandbox]:
        return [Sandbox(self, e.value["id"]) for e in self.local.list("sandboxes/")]

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self, e.value["network_id"], e.value["id"])
            for e in self.local.list("endpoints/")
        ]

    def endpoint(self, name_or_id: str) -> Endpoint:
        """Find an endpoint by id, id prefix, or ``NETWORK/NAME``."""
        if "/" in name_or_id:
            net_name, _, ep_name = name_or_id.partition("/")
            return self.network(net_name).endpoint(ep_name)
        matches = [
            e for e in self.endpoints()
            if e.id.startswith(name_or_id) or e.record.name == name_or_id
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise Conflict(f"endpoint {name_or_id!r} is ambiguous: name it as NETWORK/NAME")
        raise self._not_found("endpoint", name_or_id)

    # --- load-balanced services -----------------------------------------------------

    def new_service(
        self,
        name: str,
        network: str,
        ports: str | int | Iterable[str | int | Mapping[str, Any]],
        *,
        vip: str | None = None,
        mode: str = "vip",
        balance: str | None = None,
        publish: str | Iterable[str] | None = None,
    ) -> Any:
        """Create a load-balanced service on ``network`` (see docs/services.md).

        ``ports``: ``"80/tcp"``, ``"53/udp"``, ... ``mode``: ``vip`` (a virtual IP from the
        network's IPAM, or ``vip``; ``NAME`` resolves to it) or ``dnsrr`` (``NAME``
        resolves to the backends). ``balance``: ``rr`` (default), ``random`` or
        ``source-hash``. ``publish``: ``"8080:80/tcp"``, the service's port on every
        host's addresses. Backends join with ``create_endpoint(..., services=[NAME])``.
        """
        from cnm.services.manager import Services

        return Services(self).create(name, network, ports, vip=vip, mode=mode,
                                     balance=balance, publish=publish)

    def service(self, name: str, network: str | None = None) -> Any:
        from cnm.services.manager import Services

        return Services(self).find(name, network)

    def services(self) -> list[Any]:
        from cnm.services.manager import Services

        return Services(self).all()

    # --- life cycle -----------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Bring the kernel back in line with the store after a restart or a crash.

        Recreates bridges, firewall rules, sandbox namespaces and endpoint interfaces that
        are missing; returns one sentence per thing it could not repair.
        """
        problems: list[str] = []
        used = {e.value["driver"] for e in self.local.list("networks/")}
        for name in sorted(used):
            try:
                problems += self.driver(name).restore()
            except CNMError as exc:
                problems.append(f"driver {name}: {exc}")
        for sb in self.sandboxes():
            problems += sb.reconcile()
        from cnm.services.manager import Services

        problems += Services(self).reconcile(force=False)  # lost load balancers rebuilt
        for problem in problems:
            log.warning("reconcile: %s", problem)
        return problems

    def start_background(self, config: Mapping[str, Any] | None = None) -> list[str]:
        """Start the drivers' long-running work (e.g. the overlay's lease and watches) in
        this process; return the names of the drivers that run some. For long-running
        processes only (``pycnm agent``, the plugin server); ``close()`` stops it.
        ``config`` goes to every driver's ``ctx.config`` (e.g. ``{"lease_ttl": 15}``)."""
        started = []
        for name in driver_registry.available():
            try:
                drv = self.driver(name)
            except InvalidOption:
                continue  # a driver not part of this build
            drv.ctx.config.update(config or {})
            if drv.start():
                started.append(name)
        if self._lb is None:
            from cnm.services.agent import ServiceAgent

            self._lb = ServiceAgent(self, config)
            self._lb.start()
            started.append("services")
        if (config or {}).get("dns", True) and self._dns is None:
            from cnm.dns.service import DnsService
            from cnm.services.names import LB_PREFIX, dns_names

            service = DnsService(self, config)
            service.add_source(LB_PREFIX, dns_names)  # services' VIPs and tasks.NAME
            if service.start():
                self._dns = service
                started.append("dns")
        return started

    @property
    def dns(self) -> Any:
        """The embedded resolver this process runs (``cnm.dns.service``), or None."""
        return self._dns

    def settle_dns(self, revision: int) -> None:
        """After a change of names at store ``revision``: wait (briefly) until this host's
        resolver, if one runs, has applied it, so the name answers at once."""
        from cnm.dns import client

        # (The resolver is told of writes still untold before waiting for it.)
        client.wait_applied(self.local, revision, before_waiting=self.local.wake_watchers)

    def cleanup_all(self) -> None:
        """Remove every object this host has in the store, and its kernel state."""
        sandboxes = self.sandboxes()
        for sb in sorted(sandboxes, key=lambda s: s.record.mode != "container"):
            sb.delete()  # sharers first: an owner cannot go while others share it
        for ep in self.endpoints():
            ep.delete(force=True)
        for net in self.networks():
            net.delete(force=True)  # with this host's services (a cluster's stay)

    def close(self) -> None:
        if self._dns is not None:
            self._dns.stop()  # sandboxes get their plain files back
            self._dns = None
        if self._lb is not None:
            self._lb.stop()  # the rules stay: they are the store's, not this process's
            self._lb = None
        for drv in self._drivers.values():
            drv.close()
        reaper.flush()  # links queued for deletion are gone before we return
        if self._owns_local:
            self.local_store.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Helpers used by the handles.

    def _network_record(self, nid: str) -> NetworkRecord:
        entry = self.local.get(f"networks/{nid}")
        if entry is None:
            raise NotFound(f"network {nid[:12]} not found")
        return NetworkRecord.from_dict(entry.value)

    def _endpoint_record(self, nid: str, eid: str) -> EndpointRecord:
        entry = self.local.get(f"endpoints/{nid}/{eid}")
        if entry is None:
            raise NotFound(f"endpoint {eid[:12]} not found")
        return EndpointRecord.from_dict(entry.value)

    def _sandbox_record(self, sid: str) -> SandboxRecord:
        entry = self.local.get(f"sandboxes/{sid}")
        if entry is None:
            raise NotFound(f"sandbox {sid[:12]} not found")
        return SandboxRecord.from_dict(entry.value)
