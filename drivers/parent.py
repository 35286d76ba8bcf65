"""What the macvlan and ipvlan drivers share: endpoints as children of a host interface.

Design notes
------------
Both drivers put sandboxes on an existing LAN by making each endpoint a child link of a
host interface, the *parent*: a macvlan child has a MAC address of its own, an ipvlan
child shares the parent's. Everything around the child is the same and lives here:

- the parent: it must exist in the host namespace, be free (not enslaved to a bridge or
  bond, whose master already takes every frame) and not be the loopback; a child's MTU
  cannot exceed it. ``parent=IFACE.VID`` names an 802.1q sub-interface, made on first use;
- the claims on a parent, in the driver's store under ``parents/<name>``: which networks
  use it and in which mode. The kernel keeps one mode per parent for ipvlan (a second
  mode would silently switch the first network's children) and makes children of
  different macvlan modes unable to reach each other, so networks sharing a parent must
  share its mode (each driver says what "mode" covers and adds its own rules). The claim
  is also the reference count of an 802.1q sub-interface we created: the last network
  out deletes it, as Docker does; one the user made is used and never deleted;
- the life cycle: the child is made at join, directly inside the sandbox when the core
  asks with OPT_JOIN_IFNAME (no move between namespaces), otherwise in the host under
  ``<prefix><eid:10>`` for dockerd to move; it is deleted at leave wherever it is, but
  only if it is still ours (its kind, and for macvlan its MAC);
- restore after a restart: sub-interfaces we made and that vanished are made again (the
  kernel deleted their children with them; the core's sandbox reconcile rebuilds those
  through join); a missing parent of the user's is reported, never invented.

A driver subclass gives its option parser and its hooks: the endpoint's MAC, how to make
a child, what Join returns, and extras (the macvlan host shim).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import ipaddress
import logging
import re
import threading
from typing import Any, ClassVar, Protocol

from pyroute2.netlink.exceptions import NetlinkError

from cnm import names
from cnm.driverapi import (
    OPT_JOIN_IFNAME,
    Capability,
    Driver,
    DriverContext,
    InterfaceInfo,
    IpamData,
    JoinInfo,
)
from cnm.errors import CNMError, Conflict, InvalidOption, KernelFeatureMissing, NotFound
from cnm.osl import iproute, netns_exists
from cnm.osl import links as osl_links
from cnm.osl.netns import NetlinkHandle, netns_fd
from drivers.common import ipam_record, refuse_overlap
from drivers.options import parse_ifname

log = logging.getLogger(__name__)

VLAN_FEATURE = (
    "this kernel has no 802.1q VLAN support (the 8021q module is not built in or loadable), "
    "so the VLAN sub-interface {name} cannot be created"
)
_VLAN_RE = re.compile(r"(?P<base>.+)\.(?P<vid>[0-9]{1,4})")


# --- the parent ------------------------------------------------------------------------


def split_vlan(parent: str) -> tuple[str, int] | None:
    """``eth0.10`` -> ("eth0", 10): how Docker reads a parent that names a VLAN.

    Only consulted when no interface of that exact name exists (a dotted name the user
    made, VLAN or not, is used as it is)."""
    match = _VLAN_RE.fullmatch(parent)
    if match is None:
        return None
    vid = int(match["vid"])
    if not 1 <= vid <= 4094:
        raise InvalidOption(f"option parent: VLAN id {vid} in {parent} must be between 1 and 4094")
    return match["base"], vid


def parse_parent(value: Any, kind: str) -> str:
    """The ``parent`` option: a host interface name (IFACE or IFACE.VID), not ours."""
    if not value:
        raise InvalidOption(
            f"a {kind} network needs -o parent=IFACE: the host interface on the LAN "
            "(IFACE.VID for an 802.1q VLAN on it)"
        )
    parent = parse_ifname("parent", value)
    if names.is_pycnm_kernel_name(parent):
        raise InvalidOption(
            f"option parent: {parent} is an interface pycnm made; give the host's own "
            "interface on the LAN"
        )
    return parent


def master_of(ipr: NetlinkHandle, info: dict[str, Any]) -> tuple[str, str] | None:
    """(name, kind) of the device ``info``'s link is enslaved to, or None."""
    if not info.get("master"):
        return None
    try:
        msg = ipr.link("get", index=info["master"])[0]
    except NetlinkError:
        return ("?", "device")
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    return msg.get_attr("IFLA_IFNAME"), kind or "device"


def check_parent(ipr: NetlinkHandle, name: str, mtu: int | None, kind: str) -> dict[str, Any]:
    """Facts about the parent ``name``, or an error saying why it cannot carry ``kind``
    children.

    An enslaved interface already hands every frame to its master (bridge, bond, team):
    the kernel allows one receive handler per device and answers a bare EBUSY.
    """
    info = osl_links.link_info(ipr, name)
    if info is None:
        raise NotFound(f"parent interface {name} does not exist in the host namespace")
    if info["index"] == 1 or name == "lo":
        raise InvalidOption(f"the loopback interface cannot be a {kind} parent")
    master = master_of(ipr, info)
    if master is not None:
        raise Conflict(
            f"parent interface {name} is enslaved to {master[1]} {master[0]}: a {kind} "
            f"parent must be free (use the {master[1]} itself, or release {name} first)"
        )
    if mtu is not None and info["mtu"] and mtu > info["mtu"]:
        raise InvalidOption(
            f"MTU {mtu} is larger than the MTU {info['mtu']} of parent interface {name}; "
            f"a {kind} interface cannot exceed its parent's MTU"
        )
    return info


def create_vlan(ipr: NetlinkHandle, base: str, vid: int, name: str) -> int:
    """Create the 802.1q sub-interface ``name`` (VLAN ``vid`` on ``base``), up.

    Raises KernelFeatureMissing, in one sentence naming 8021q, when the kernel lacks it;
    the kernel made nothing in that case, so there is nothing to undo.
    """
    base_index = osl_links.require_index(ipr, base)
    try:
        ipr.link("add", ifname=name, kind="vlan", link=base_index, vlan_id=vid)
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EPROTONOSUPPORT):
            raise KernelFeatureMissing(VLAN_FEATURE.format(name=name)) from exc
        if exc.code == errno.EEXIST:
            raise Conflict(f"interface {name} already exists") from exc
        raise osl_links.kernel_error(exc, f"create VLAN sub-interface {name}") from exc
    index = osl_links.require_index(ipr, name)
    try:
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        osl_links.delete_link(ipr, name)
        raise osl_links.kernel_error(exc, f"bring up {name}") from exc
    return index


def child_error(exc: NetlinkError, kind: str, name: str, parent: str) -> Exception | None:
    """The sentence for a kernel refusal every child kind shares, or None."""
    if exc.code == errno.EEXIST:
        return Conflict(f"interface {name} already exists")
    if exc.code == errno.EBUSY:
        other = "ipvlan" if kind == "macvlan" else "macvlan"
        return Conflict(
            f"parent interface {parent} is busy: it is enslaved (bridge, bond, team) or "
            f"carries {other} interfaces (macvlan and ipvlan cannot share a parent)"
        )
    if exc.code == errno.EOPNOTSUPP:
        return KernelFeatureMissing(
            f"this kernel has no {kind} support (the {kind} module is not built in or "
            "loadable)"
        )
    return None


def is_child(ipr: NetlinkHandle, name: str, kind: str, mac: str | None) -> bool:
    """Whether ``name`` is a ``kind`` link (with MAC ``mac``, if given): ours, not
    something that later took the same name."""
    info = osl_links.link_info(ipr, name)
    if info is None or info["kind"] != kind:
        return False
    return mac is None or str(info["mac"]).lower() == mac.lower()


# --- the driver ------------------------------------------------------------------------


class ParentOptions(Protocol):
    """What the shared code reads of a driver's parsed options (frozen dataclasses)."""

    @property
    def parent(self) -> str: ...

    @property
    def mtu(self) -> int | None: ...

    @property
    def internal(self) -> bool: ...

    @property
    def mode_key(self) -> str:
        """What networks sharing a parent must agree on (e.g. "bridge", "l2/bridge")."""

    def to_dict(self) -> dict[str, Any]: ...


class ParentDriver(Driver):
    """The shared life cycle (see the module notes); subclasses fill in the hooks."""

    kind: ClassVar[str]  # the child's link kind, also the word in messages
    child_prefix: ClassVar[str]  # host-side name of a child dockerd has yet to move
    own_mac: ClassVar[bool] = True  # False: the child has the parent's MAC, none to set

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        # Serialises this process's network create/delete (parent claims and the 802.1q
        # sub-interface); other processes are kept consistent by the store's CAS.
        self._lock = threading.Lock()

    # --- hooks ---------------------------------------------------------------------

    @abc.abstractmethod
    def parse(self, opts: dict[str, Any]) -> ParentOptions:
        """Every option checked at once, before anything is created."""

    def check_claim(self, parsed: ParentOptions, other: str, claim: dict[str, Any]) -> None:
        """Refuse to share the parent with network ``other`` (its claim ``claim``)."""
        if claim["mode"] != parsed.mode_key:
            raise Conflict(
                f"network {other} already uses parent interface {parsed.parent} in "
                f"{claim['mode']} mode; {self.kind} networks sharing a parent must use the "
                f"same mode (asked for {parsed.mode_key})"
            )

    def network_extras(self, nid: str, parsed: ParentOptions, ipv4: list[IpamData],
                       ipv6: list[IpamData]) -> dict[str, Any]:
        """Driver-specific fields of the network record."""
        return {}

    def build_extras(self, ipr: NetlinkHandle, record: dict[str, Any],
                     undo: contextlib.ExitStack) -> None:
        """Make the network's extra kernel objects (registering their undo)."""

    def remove_extras(self, ipr: NetlinkHandle, record: dict[str, Any]) -> None:
        """Remove what ``build_extras`` made."""

    def restore_extras(self, ipr: NetlinkHandle, record: dict[str, Any]) -> None:
        """Make the network's extra kernel objects again after a restart."""

    @abc.abstractmethod
    def endpoint_mac(self, nid: str, eid: str, network: dict[str, Any],
                     iface: InterfaceInfo, opts: dict[str, Any]) -> str:
        """The endpoint's MAC address (or a refusal of the one asked for)."""

    def endpoint_deleted(self, nid: str, eid: str) -> None:
        """Forget whatever else the driver kept for the endpoint."""

    @abc.abstractmethod
    def make_child(self, ipr: NetlinkHandle, name: str, network: dict[str, Any],
                   ep: dict[str, Any], parent_index: int, fd: int | None) -> None:
        """Create the endpoint's child (inside the namespace open on ``fd``, if given)."""

    def child_mac(self, ep: dict[str, Any]) -> str | None:
        """The MAC that tells our child from another link of the same name (None: any)."""
        return None

    def endpoint_joined(self, ipr: NetlinkHandle, network: dict[str, Any],
                        ep: dict[str, Any], joined: bool) -> None:
        """Host-side work when an endpoint joins (``joined``) or leaves."""

    def join_info(self, network: dict[str, Any], ep: dict[str, Any], src: str,
                  placed: bool) -> JoinInfo:
        """What Join answers; by default the LAN's router as the gateway (the network's
        ``--gateway``, never put on the host), none on an internal network."""
        internal = network["options"]["internal"]
        gw4 = next((d["gateway"] for d in network["ipv4"] if d.get("gateway")), None)
        gw6 = next((d["gateway"] for d in network["ipv6"] if d.get("gateway")), None)
        return JoinInfo(
            src_name=src,
            gateway=None if internal or gw4 is None else ipaddress.IPv4Interface(gw4).ip,
            gateway_v6=None if internal or gw6 is None else ipaddress.IPv6Interface(gw6).ip,
            disable_gateway_service=internal,
            placed=placed,
        )

    def info_extras(self, network: dict[str, Any]) -> dict[str, Any]:
        """The driver's own fields of an endpoint's operational info (its modes)."""
        return {}

    # --- network -------------------------------------------------------------------

    def capabilities(self) -> Capability:
        return Capability("local", "local")

    def validate_network_options(self, opts: dict[str, Any]) -> None:
        """Syntax, then the parent as it is now, then other networks' claims: every
        refusal we can give before the core allocates addresses."""
        parsed = self.parse(opts)
        with iproute(self.ctx.host_ns) as ipr:
            self._check_parent(ipr, parsed)
        claim = self.ctx.store.get(f"parents/{parsed.parent}")
        self._check_claim(parsed, None, claim.value if claim else None)

    def _check_parent(self, ipr: NetlinkHandle, parsed: ParentOptions) -> dict[str, Any] | None:
        """Check the parent (or, for a VLAN parent yet to be made, its base interface);
        return the parent's facts, or None if it is a sub-interface still to create."""
        if osl_links.link_index(ipr, parsed.parent) is not None:
            return check_parent(ipr, parsed.parent, parsed.mtu, self.kind)
        vlan = split_vlan(parsed.parent)
        if vlan is None:
            raise NotFound(
                f"parent interface {parsed.parent} does not exist in the host namespace"
            )
        base = vlan[0]
        if osl_links.link_index(ipr, base) is None:
            raise NotFound(
                f"parent interface {base} (for VLAN {vlan[1]} as {parsed.parent}) does not "
                "exist in the host namespace"
            )
        check_parent(ipr, base, parsed.mtu, self.kind)
        return None

    def _check_claim(self, parsed: ParentOptions, nid: str | None,
                     claim: dict[str, Any] | None) -> None:
        if claim is None:
            return
        others = [n for n in claim["networks"] if n != nid]
        if others:
            self.check_claim(parsed, others[0][:12], claim)

    def network_record(self, nid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"networks/{nid}")
        if entry is None:
            raise NotFound(f"{self.kind} network {nid[:12]} not found")
        return entry.value

    def create_network(
        self, nid: str, opts: dict[str, Any], ipv4: list[IpamData], ipv6: list[IpamData]
    ) -> None:
        if self.ctx.store.get(f"networks/{nid}") is not None:
            return  # a retried call: the first one finished
        parsed = self.parse(opts)
        record: dict[str, Any] = {
            "id": nid,
            "parent": parsed.parent,
            "options": parsed.to_dict(),
            "ipv4": [ipam_record(d) for d in ipv4],
            "ipv6": [ipam_record(d) for d in ipv6],
            **self.network_extras(nid, parsed, ipv4, ipv6),
        }
        with self._lock, iproute(self.ctx.host_ns) as ipr, contextlib.ExitStack() as undo:
            for entry in self.ctx.store.list("networks/"):
                if entry.value["parent"] == parsed.parent:
                    refuse_overlap([d.pool for d in ipv4 + ipv6], entry.value,
                                   f"{self.kind} networks on parent {parsed.parent}")
            self._claim_parent(nid, parsed)
            undo.callback(self._release_parent, ipr, nid, parsed.parent)
            if self._check_parent(ipr, parsed) is None:
                self._make_vlan(ipr, parsed.parent)
            self.ctx.store.put(f"networks/{nid}", record)
            undo.callback(self.ctx.store.delete, f"networks/{nid}")
            self.build_extras(ipr, record, undo)
            undo.pop_all()
        log.info("network %s: %s on %s (%s mode)", nid[:12], self.kind, parsed.parent,
                 parsed.mode_key)

    def _claim_parent(self, nid: str, parsed: ParentOptions) -> None:
        def claim(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                return {"parent": parsed.parent, "mode": parsed.mode_key, "networks": [nid],
                        "created_vlan": False}
            self._check_claim(parsed, nid, current)
            if nid not in current["networks"]:
                current["networks"].append(nid)
            return current

        self.ctx.store.update(f"parents/{parsed.parent}", claim)

    def _release_parent(self, ipr: NetlinkHandle, nid: str, parent: str) -> None:
        """Drop ``nid``'s claim; the last network out deletes a sub-interface we made."""
        removed: dict[str, Any] = {}

        def release(current: dict[str, Any] | None) -> dict[str, Any] | None:
            removed.clear()
            if current is None:
                return None
            current["networks"] = [n for n in current["networks"] if n != nid]
            if current["networks"]:
                return current
            removed.update(current)
            return None

        self.ctx.store.update(f"parents/{parent}", release)
        if removed.get("created_vlan"):
            osl_links.delete_link(ipr, parent)
            log.info("parent %s: VLAN sub-interface removed with its last network", parent)

    def _make_vlan(self, ipr: NetlinkHandle, parent: str) -> None:
        """Create the 802.1q sub-interface ``parent`` (IFACE.VID) and record that we own
        it; the caller's claim on ``parent`` is already in the store."""
        base, vid = split_vlan(parent) or ("", 0)
        create_vlan(ipr, base, vid, parent)

        def mark(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is not None:
                current["created_vlan"] = True
            return current

        try:
            self.ctx.store.update(f"parents/{parent}", mark)
        except Exception:
            osl_links.delete_link(ipr, parent)
            raise
        log.info("parent %s: VLAN %d sub-interface of %s created", parent, vid, base)

    def delete_network(self, nid: str) -> None:
        entry = self.ctx.store.get(f"networks/{nid}")
        if entry is None:
            return
        record = entry.value
        for ep in self.ctx.store.list(f"endpoints/{nid}/"):
            self.delete_endpoint(nid, ep.value["id"])
        with self._lock, iproute(self.ctx.host_ns) as ipr:
            self.remove_extras(ipr, record)
            self.ctx.store.delete(f"networks/{nid}")
            self._release_parent(ipr, nid, record["parent"])
        log.info("network %s: removed", nid[:12])

    # --- endpoints -----------------------------------------------------------------

    def create_endpoint(
        self, nid: str, eid: str, iface: InterfaceInfo, opts: dict[str, Any]
    ) -> InterfaceInfo:
        # The child itself is made at join, when the sandbox is known (see module notes).
        key = f"endpoints/{nid}/{eid}"
        existing = self.ctx.store.get(key)
        if existing is not None:
            return self._reported(iface, existing.value["mac"])
        network = self.network_record(nid)
        self._refuse_host_address(network, iface)
        mac = self.endpoint_mac(nid, eid, network, iface, opts)
        record = {
            "id": eid,
            "network": nid,
            "host_name": self.child_prefix + names.short(eid, 10),
            "mac": mac,
            "address": str(iface.address) if iface.address else None,
            "address_v6": str(iface.address_v6) if iface.address_v6 else None,
            "joined": False,
            "sandbox_key": None,
            "ifname": None,
        }
        self.ctx.store.put(key, record)
        return self._reported(iface, mac)

    def _reported(self, iface: InterfaceInfo, mac: str) -> InterfaceInfo:
        """The MAC the core (or dockerd) is to set: ours, unless it chose one or the
        child's MAC is not ours to set."""
        return InterfaceInfo(mac=None if iface.mac or not self.own_mac else mac)

    def _refuse_host_address(self, network: dict[str, Any], iface: InterfaceInfo) -> None:
        """An endpoint must not take the host's own LAN address: both would answer ARP on
        the same wire. IPAM cannot know the LAN's machines; this is the one we can see."""
        wanted = {a.ip for a in (iface.address, iface.address_v6) if a is not None}
        if not wanted:
            return
        with iproute(self.ctx.host_ns) as ipr:
            taken = {a.ip for a in osl_links.addresses(ipr)} & wanted
        if taken:
            raise Conflict(
                f"address {min(taken)} belongs to the host itself; keep endpoints off the "
                "LAN's machines with --ip-range or --aux-address (parent "
                f"{network['parent']})"
            )

    def endpoint_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self.endpoint_record(nid, eid)
        network = self.network_record(nid)
        return {"MacAddress": ep["mac"], "Parent": network["parent"],
                "HostInterface": ep["host_name"], **self.info_extras(network)}

    def endpoint_record(self, nid: str, eid: str) -> dict[str, Any]:
        entry = self.ctx.store.get(f"endpoints/{nid}/{eid}")
        if entry is None:
            raise NotFound(f"endpoint {eid[:12]} not found on {self.kind} network {nid[:12]}")
        return entry.value

    def delete_endpoint(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        entry = self.ctx.store.get(key)
        if entry is None:
            return
        self._unplug(nid, entry.value)
        self.ctx.store.delete(key)
        self.endpoint_deleted(nid, eid)

    def join(self, nid: str, eid: str, sandbox_key: str, opts: dict[str, Any]) -> JoinInfo:
        network = self.network_record(nid)
        key = f"endpoints/{nid}/{eid}"
        ep = self.endpoint_record(nid, eid)
        direct = opts.get(OPT_JOIN_IFNAME)
        with iproute(self.ctx.host_ns) as ipr:
            parent_index = osl_links.link_index(ipr, network["parent"])
            if parent_index is None:
                raise NotFound(
                    f"parent interface {network['parent']} of {self.kind} network "
                    f"{nid[:12]} is gone from the host namespace"
                )
            osl_links.delete_link(ipr, ep["host_name"])  # a half-made child from a retry
            if direct:
                self._place_child(ipr, direct, network, ep, parent_index, sandbox_key)
            else:
                self.make_child(ipr, ep["host_name"], network, ep, parent_index, None)
            ep.update(joined=True, sandbox_key=sandbox_key, ifname=direct or None)
            try:
                self.endpoint_joined(ipr, network, ep, True)
                self.ctx.store.put(key, ep)
            except Exception:
                self._remove_child(ipr, ep)
                raise
        return self.join_info(network, ep, direct or ep["host_name"], bool(direct))

    def _place_child(self, ipr: NetlinkHandle, name: str, network: dict[str, Any],
                     ep: dict[str, Any], parent_index: int, sandbox_key: str) -> None:
        """Make the child directly inside the sandbox as ``name``. Linux 6.1 (Debian 12's)
        refuses, with EEXIST, a child whose name the *host's* namespace already has, even
        when it is placed elsewhere (a host's own eth0 and a sandbox's eth0): then it is
        born under its host-side name and renamed inside the sandbox."""
        with netns_fd(sandbox_key) as fd:
            if osl_links.link_index(ipr, name) is None:
                self.make_child(ipr, name, network, ep, parent_index, fd)
                return
            self.make_child(ipr, ep["host_name"], network, ep, parent_index, fd)
        with iproute(sandbox_key) as inside:
            index = osl_links.require_index(inside, ep["host_name"])
            try:
                inside.link("set", index=index, ifname=name)
            except NetlinkError as exc:
                osl_links.delete_link(inside, ep["host_name"])
                shared = child_error(exc, self.kind, name, network["parent"])
                raise (shared or osl_links.kernel_error(exc, f"rename to {name}")) from exc

    def leave(self, nid: str, eid: str) -> None:
        key = f"endpoints/{nid}/{eid}"
        entry = self.ctx.store.get(key)
        if entry is None:
            return
        ep = entry.value
        self._unplug(nid, ep)
        ep.update(joined=False, sandbox_key=None, ifname=None)
        self.ctx.store.put(key, ep)

    def _unplug(self, nid: str, ep: dict[str, Any]) -> None:
        """Delete the endpoint's child wherever it is, and the host's part of it."""
        entry = self.ctx.store.get(f"networks/{nid}")
        with iproute(self.ctx.host_ns) as ipr:
            if entry is not None:
                self.endpoint_joined(ipr, entry.value, ep, False)
            self._remove_child(ipr, ep)

    def _remove_child(self, ipr: NetlinkHandle, ep: dict[str, Any]) -> None:
        # Docker moves the child back to the host under its host name before Leave.
        osl_links.delete_link(ipr, ep["host_name"])
        # A child we placed in a sandbox: delete it there, but only if it is still ours,
        # not an interface that took the name since.
        sandbox_key, ifname = ep.get("sandbox_key"), ep.get("ifname")
        if sandbox_key and ifname and netns_exists(sandbox_key):
            with iproute(sandbox_key) as inside:
                if is_child(inside, ifname, self.kind, self.child_mac(ep)):
                    osl_links.delete_link(inside, ifname)

    def endpoint_missing(self, nid: str, eid: str) -> bool:
        """Whether the endpoint's child is gone (used by reconcile)."""
        ep = self.endpoint_record(nid, eid)
        if ep.get("ifname") and ep.get("sandbox_key"):
            if not netns_exists(ep["sandbox_key"]):
                return True
            with iproute(ep["sandbox_key"]) as inside:
                return not is_child(inside, ep["ifname"], self.kind, self.child_mac(ep))
        with iproute(self.ctx.host_ns) as ipr:
            return osl_links.link_index(ipr, ep["host_name"]) is None

    # --- restart -------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Recreate missing 802.1q sub-interfaces and the networks' extras; report a
        missing parent, which is the user's interface and not ours to invent. Endpoint
        children are rebuilt by the core's sandbox reconcile (through join)."""
        problems: list[str] = []
        with self._lock, iproute(self.ctx.host_ns) as ipr:
            for entry in self.ctx.store.list("parents/"):
                claim = entry.value
                if not claim.get("created_vlan"):
                    continue
                if osl_links.link_index(ipr, claim["parent"]) is not None:
                    continue
                base, vid = split_vlan(claim["parent"]) or ("", 0)
                try:
                    create_vlan(ipr, base, vid, claim["parent"])
                    log.info("restore: VLAN sub-interface %s recreated", claim["parent"])
                except CNMError as exc:
                    problems.append(
                        f"{self.kind} parent {claim['parent']}: cannot recreate: {exc}")
            for entry in self.ctx.store.list("networks/"):
                net = entry.value
                nid = net["id"][:12]
                if osl_links.link_index(ipr, net["parent"]) is None:
                    problems.append(
                        f"{self.kind} network {nid}: parent interface {net['parent']} is "
                        "gone; its endpoints have no connectivity until it is back"
                    )
                    continue
                try:
                    self.restore_extras(ipr, net)
                except CNMError as exc:
                    problems.append(f"{self.kind} network {nid}: cannot rebuild: {exc}")
        return problems

