"""A Sandbox: an isolated network stack (a network namespace with its interfaces, routes
and DNS files)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cnm import etcfiles, names
from cnm.dns import client as dns_client
from cnm.endpoint import Endpoint
from cnm.errors import Busy, CNMError, Conflict, NotFound
from cnm.osl import dnsnat, plumbing
from cnm.osl.netns import (
    NETNS_RUN_DIR,
    create_named_netns,
    delete_named_netns,
    in_netns,
    netns_exists,
)
from cnm.records import EndpointRecord, SandboxRecord

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger(__name__)


class Sandbox:
    def __init__(self, controller: Controller, sandbox_id: str) -> None:
        self.controller = controller
        self.id = sandbox_id

    def __repr__(self) -> str:
        return f"<Sandbox {self.id[:12]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> SandboxRecord:
        return self.controller._sandbox_record(self.id)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def netns_path(self) -> str:
        return self.record.netns_path

    @property
    def netns_name(self) -> str | None:
        """The ``ip netns`` name of the sandbox's namespace (its owner's, for a sharer; the
        host's, for host mode on an emulated host), or None when it has none."""
        sb = self.record
        if sb.mode == "container" and sb.container:
            return Sandbox(self.controller, sb.container).netns_name
        if sb.mode == "host":
            folder, _, base = sb.netns_path.rpartition("/")
            return base if folder == NETNS_RUN_DIR else None
        return names.sandbox_netns(sb.name) if sb.owned else None

    @property
    def mode(self) -> str:
        """``default``, ``host``, ``none`` or ``container:OWNER``."""
        sb = self.record
        if sb.mode == "container" and sb.container:
            try:
                return f"container:{Sandbox(self.controller, sb.container).name}"
            except NotFound:
                return f"container:{sb.container[:12]}"
        return sb.mode

    @property
    def owner(self) -> Sandbox:
        """The sandbox whose namespace this one uses: itself, or a sharer's owner."""
        sb = self.record
        if sb.mode == "container" and sb.container:
            return Sandbox(self.controller, sb.container)
        return self

    def endpoints(self) -> list[Endpoint]:
        """Joined endpoints in interface order (eth0 first); a sharer's are its owner's."""
        return [ep for _, ep in self.owner._joined()]

    def refuse_attach(self, record: SandboxRecord | None = None) -> None:
        """Raise, with one sentence, if this sandbox's mode forbids joining networks
        (``record``: its record, if the caller has just read it)."""
        sb = record if record is not None else self.record
        if sb.mode == "host":
            raise Conflict(f"sandbox {sb.name} uses the host's network namespace (mode host): "
                           "it has the host's interfaces and cannot be attached to networks")
        if sb.mode == "none":
            raise Conflict(f"sandbox {sb.name} has mode none (loopback only): it cannot be "
                           "attached to networks")
        if sb.mode == "container":
            owner = self.mode.partition(":")[2]
            raise Conflict(f"sandbox {sb.name} shares the network namespace of sandbox {owner} "
                           f"(mode container:{owner}): attach {owner} instead")

    def _joined(self) -> list[tuple[str, Endpoint]]:
        """(ifname, endpoint) pairs in interface order; ``interfaces`` maps ifname to
        "network-id/endpoint-id" so each lookup is one store read."""
        result = []
        for ifname, key in sorted(self.record.interfaces.items(), key=lambda i: _order(i[0])):
            nid, _, eid = key.partition("/")
            if self.controller.local.get(f"endpoints/{nid}/{eid}") is not None:
                result.append((ifname, Endpoint(self.controller, nid, eid)))
        return result

    def _find_endpoint(self, key: str) -> EndpointRecord | None:
        nid, _, eid = key.partition("/")
        entry = self.controller.local.get(f"endpoints/{nid}/{eid}")
        return None if entry is None else EndpointRecord.from_dict(entry.value)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the sandbox (never through a shell)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return in_netns(self.netns_path, lambda: subprocess.run(list(argv), **kwargs))

    # --- bookkeeping used by Endpoint.join/leave (atomic updates of the record) -------

    def _update(self, mutate: Callable[[SandboxRecord], None],
                also: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
                ) -> SandboxRecord:
        """Change the record with ``mutate`` (compare-and-swap, retried); ``also``:
        more records written in the same transaction (``Store.update``)."""
        def change(value: dict[str, Any] | None) -> dict[str, Any]:
            if value is None:
                raise NotFound(f"sandbox {self.id[:12]} not found")
            record = SandboxRecord.from_dict(value)
            mutate(record)
            return record.to_dict()

        return SandboxRecord.from_dict(
            self.controller.local.update(f"sandboxes/{self.id}", change, also=also) or {}
        )

    def _add_sharer(self, sid: str, mode: str) -> None:
        def add(record: SandboxRecord) -> None:
            if record.removing:
                raise Conflict(f"mode {mode}: sandbox {record.name} is being removed")
            if sid not in record.shared_by:
                record.shared_by.append(sid)

        self._update(add)

    def _remove_sharer(self, sid: str) -> None:
        def remove(record: SandboxRecord) -> None:
            if sid in record.shared_by:
                record.shared_by.remove(sid)

        with contextlib.suppress(NotFound):
            self._update(remove)

    def _begin_removal(self) -> None:
        """Mark the sandbox as going, unless others share its namespace (one
        compare-and-swap: a sharer being added at this moment is either seen or refused)."""
        ctl = self.controller

        def begin(record: SandboxRecord) -> None:
            sharers = []
            for sid in record.shared_by:
                entry = ctl.local.get(f"sandboxes/{sid}")
                if entry is not None:
                    sharers.append(entry.value.get("name", sid[:12]))
            if sharers:
                raise Busy(f"sandbox {record.name}'s network namespace is shared by "
                           f"{', '.join(sorted(sharers))} (mode container:{record.name}): "
                           "remove them first")
            record.removing = True

        self._update(begin)

    def _reserve_ifname(
        self, prefix: str, eid: str,
        also: Callable[[str], Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> str:
        """The first free ``prefix<N>`` name of the sandbox, reserved for ``eid``; ``also``:
        given the name, more records written in the same transaction."""
        chosen: list[str] = []

        def reserve(record: SandboxRecord) -> None:
            index = 0
            while f"{prefix}{index}" in record.interfaces:
                index += 1
            name = f"{prefix}{index}"
            if len(name) > names.IFNAMSIZ:
                raise Conflict(f"sandbox {record.name} has no free interface name")
            record.interfaces[name] = eid
            chosen[:] = [name]

        self._update(reserve, None if also is None else lambda: also(chosen[0]))
        return chosen[0]

    def _release_ifname(self, ifname: str, eid: str) -> None:
        def release(record: SandboxRecord) -> None:
            if record.interfaces.get(ifname) == eid:
                del record.interfaces[ifname]

        with contextlib.suppress(NotFound):
            self._update(release)

    def _claim_gateway(self, eid: str) -> bool:
        claimed: list[bool] = []

        def claim(record: SandboxRecord) -> None:
            claimed[:] = [record.gateway_endpoint in (None, eid)]
            if claimed[0]:
                record.gateway_endpoint = eid

        self._update(claim)
        return claimed[0]

    def _drop_gateway(self, eid: str) -> None:
        def drop(record: SandboxRecord) -> None:
            if record.gateway_endpoint == eid:
                record.gateway_endpoint = None

        self._update(drop)

    def _elect_gateway(self) -> None:
        """After the gateway endpoint left, route through the next one that has a gateway."""
        for ep in self.endpoints():
            rec = ep.record
            if (rec.gateway or rec.gateway_v6) and self._claim_gateway(ep.id):
                ep._become_gateway(rec, self.record, rec.options)
                return

    def _write_files(self, hosts_only: bool = True, joined: EndpointRecord | None = None) -> None:
        # One read of the sandbox and one per joined endpoint but ``joined``, the record
        # the caller just saved: this runs on every join.
        sb = self.record
        ordered = sorted(sb.interfaces.items(), key=lambda i: _order(i[0]))
        records = [r for r in (
            joined if joined is not None and key.endswith(f"/{joined.id}")
            else self._find_endpoint(key)
            for _, key in ordered) if r]
        netns_name = names.sandbox_netns(sb.name) if sb.owned else None
        served = not hosts_only and dns_client.is_served(self.controller.local, sb.id)
        etcfiles.write(sb, records, netns_name, hosts_only=hosts_only, served=served,
                       host_conf=etcfiles.host_resolv_conf(self.controller.host_ns))

    # --- life cycle -------------------------------------------------------------------

    def delete(self) -> None:
        """Detach and delete every endpoint in the sandbox (as libnetwork does), then remove
        the namespace if pycnm made it."""
        ctl = self.controller
        try:
            sb = self.record
        except NotFound:
            return
        if sb.mode in ("host", "container"):
            # Nothing in the namespace is this sandbox's own: only the records go.
            if sb.container:
                Sandbox(ctl, sb.container)._remove_sharer(self.id)
            ctl.local.delete(f"sandboxes/{self.id}")
            ctl.local.delete(f"names/sandboxes/{sb.name}")
            log.info("sandbox %s (%s): deleted (mode %s)", sb.name, self.id[:12], sb.mode)
            return
        self._begin_removal()
        if sb.owned:
            # The namespace first: the kernel then takes the sandbox's interfaces with it,
            # many namespaces in one batch, where leaving first would move each interface
            # out only to delete it. The endpoints leave after it (records, addresses, the
            # host ends of their links, rules); nothing of a leave that would act inside
            # the sandbox runs while it is being removed.
            delete_named_netns(names.sandbox_netns(sb.name))
        for ep in reversed(self.endpoints()):
            ep.leave()
            ep.delete()
        if not sb.owned and netns_exists(sb.netns_path):
            dnsnat.remove(sb.netns_path)  # the namespace is not ours; the resolver's table is
        ctl.local.delete(dns_client.sandbox_key(self.id))
        etcfiles.remove(sb, self.netns_name)
        ctl.local.delete(f"sandboxes/{self.id}")
        ctl.local.delete(f"names/sandboxes/{sb.name}")
        log.info("sandbox %s (%s): deleted", sb.name, self.id[:12])

    def reconcile(self) -> list[str]:
        """Recreate a lost namespace and lost interfaces; report what cannot be fixed."""
        sb = self.record
        problems: list[str] = []
        if sb.mode == "host":
            return problems
        if sb.mode == "container":
            if sb.container is None or self.controller.local.get(
                    f"sandboxes/{sb.container}") is None:
                problems.append(f"sandbox {sb.name}: the sandbox whose namespace it shares is "
                                f"gone; remove it with 'pycnm sandbox rm {sb.name}'")
            return problems
        if not netns_exists(sb.netns_path):
            if not sb.owned:
                return [f"sandbox {sb.name}: its namespace {sb.netns_path} is gone "
                        f"(did the process exit?); remove it with 'pycnm sandbox rm {sb.name}'"]
            delete_named_netns(names.sandbox_netns(sb.name))  # a stale file, if any
            create_named_netns(names.sandbox_netns(sb.name))
            plumbing.loopback_up(sb.netns_path)
            plumbing.set_forwarding(sb.netns_path, sb.ip_forward)
            log.info("sandbox %s: namespace recreated", sb.name)
        for ifname, key in sorted(sb.interfaces.items()):
            rec = self._find_endpoint(key)
            if rec is None:
                self._release_ifname(ifname, key)
                continue
            if plumbing.interface_exists(sb.netns_path, ifname):
                continue
            try:
                Endpoint(self.controller, rec.network_id, rec.id).repair(self)
                log.info("sandbox %s: %s rebuilt", sb.name, ifname)
            except CNMError as exc:
                problems.append(f"sandbox {sb.name}: cannot rebuild {ifname}: {exc}")
        self._write_files(hosts_only=False)
        return problems

    def inspect(self) -> dict[str, Any]:
        sb = self.record
        owner = self.owner
        sharers = []
        for sid in sb.shared_by:
            entry = self.controller.local.get(f"sandboxes/{sid}")
            if entry is not None:
                sharers.append(entry.value["name"])
        return {
            "Name": sb.name,
            "Id": sb.id,
            "Mode": self.mode,
            "SandboxKey": sb.netns_path,
            "NetnsName": self.netns_name or "",
            "Hostname": sb.hostname,
            "Created": sb.created,
            "Gateway": (owner.record.gateway_endpoint if owner is not self
                        else sb.gateway_endpoint) or "",
            "Interfaces": {ifname: ep.inspect() for ifname, ep in owner._joined()},
            "SharedBy": sorted(sharers),
            "DNS": {"Servers": sb.dns_servers, "Search": sb.dns_search,
                    "Options": sb.dns_options},
        }


def _order(ifname: str) -> tuple[str, int]:
    head = ifname.rstrip("0123456789")
    tail = ifname[len(head):]
    return head, int(tail) if tail else -1


