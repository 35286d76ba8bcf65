"""Validation of a parsed topology: every field checked, every problem collected.

Who does what: ``validate`` walks plain data section by section (hosts, links, networks,
sandboxes, routes, the expectation matrix) with a ``_Checker`` that records a ``Problem``
(a field path and one sentence) for each bad value and carries on, so a file with five
mistakes gets five messages at once. Driver options go through the drivers' own option
parsers, which are pure, so a typo fails here and not half-way through a build. Nothing
here touches the kernel.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cnm import names
from cnm.errors import InvalidOption
from netns_fixtures.lab.model import (
    DNS_OUTCOMES,
    DNS_TYPES,
    DRIVERS,
    KINDS,
    LAB_NAME_RE,
    NODE_NAME_RE,
    OUTCOMES,
    PARENT_DRIVERS,
    PROTOS,
    SWITCH_BRIDGE,
    Attachment,
    EtcdSpec,
    Expectation,
    Link,
    LinkEnd,
    NetworkSpec,
    Node,
    Path,
    Problem,
    Route,
    SandboxSpec,
    ServiceSpec,
    Target,
    Topology,
    TopologyError,
    format_path,
)
from netns_fixtures.lab.netem import Netem
from netns_fixtures.lab.netem import parse as parse_netem


class _Checker:
    """Collects problems; helpers return None for a bad value so checking goes on."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def mapping(self, value: Any, path: Path, known: Iterable[str],
                required: Iterable[str] = ()) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping (key: value lines), not {_kind(value)}")
            return None
        known = list(known)
        for key in value:
            if key not in known:
                self.add(path + (str(key),), f"unknown key {key!r}{_suggest(str(key), known)}"
                         f" (known: {', '.join(known)})")
        for key in required:
            if value.get(key) is None:
                self.add(path, f"{key!r} is required")
        return value

    def sequence(self, value: Any, path: Path, *, allow_missing: bool = True) -> list[Any]:
        if value is None and allow_missing:
            return []
        if not isinstance(value, list):
            self.add(path, f"must be a list, not {_kind(value)}")
            return []
        return value

    def text(self, value: Any, path: Path, pattern: re.Pattern[str] | None = None,
             rule: str = "") -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(path, f"must be text, not {_kind(value)}")
            return None
        text = str(value)
        if pattern is not None and not pattern.fullmatch(text):
            self.add(path, f"{text!r} is not a valid name: {rule}")
            return None
        return text

    def boolean(self, value: Any, path: Path) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            self.add(path, f"must be true or false, not {value!r}")
            return False
        return value

    def choice(self, value: Any, path: Path, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            self.add(path, f"{value!r} is not one of {', '.join(choices)}"
                     f"{_suggest(str(value), choices)}")
            return default
        return str(value)

    def interface(self, value: Any, path: Path) -> str | None:
        """An address with its prefix length (``10.0.0.1/24``)."""
        text = self.text(value, path)
        if text is None:
            return None
        if "/" not in text:
            self.add(path, f"{text!r} needs a prefix length, e.g. {text}/24")
            return None
        try:
            ipaddress.ip_interface(text)
        except ValueError:
            self.add(path, f"{text!r} is not an address with a prefix length (10.0.0.1/24)")
            return None
        return text

    def address(self, value: Any, path: Path) -> str | None:
        text = self.text(value, path)
        if text is None:
            return None
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            self.add(path, f"{text!r} is not an IP address")
            return None

    def prefix(self, value: Any, path: Path, *, allow_default: bool = False) -> str | None:
        text = self.text(value, path)
        if text is None:
            return None
        if allow_default and text == "default":
            return text
        try:
            return str(ipaddress.ip_network(text))
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
                self.add(path, f"{text} has host bits set: did you mean {loose}?")
            except ValueError:
                self.add(path, f"{text!r} is not a prefix such as 10.1.0.0/24"
                         + (" (or 'default')" if allow_default else ""))
            return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), type(value).__name__)


def _suggest(word: str, choices: Iterable[str]) -> str:
    import difflib  # only for a word that is wrong

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


TOP_KEYS = ("name", "description", "etcd", "hosts", "links", "networks", "services",
            "sandboxes", "expect")
SERVICE_KEYS = ("name", "network", "ports", "mode", "balance", "vip", "publish")
MAX_SPREAD_COUNT = 3000
ETCD_KEYS = ("tls", "auth")
NODE_RULE = "lower-case letters and digits, starting with a letter, at most 20"
LAB_RULE = "lower-case letters and digits, starting with a letter, at most 12"
MAX_PING_SIZE = 65507  # the largest ICMP payload in one IPv4 packet


def validate(data: Any) -> Topology:
    """Check a whole parsed topology; return it as a ``Topology`` or raise
    ``TopologyError`` listing every problem (nothing is built from a bad file)."""
    v = _Checker()
    top = v.mapping(data, (), TOP_KEYS, required=("name", "hosts"))
    if top is None:
        raise TopologyError(v.problems)
    lab = v.text(top.get("name"), ("name",), LAB_NAME_RE, LAB_RULE) or "lab"
    description = v.text(top.get("description"), ("description",)) or ""
    nodes: dict[str, Path] = {}  # every node name -> where it was declared
    kinds: dict[str, str] = {}  # every node name -> host kind or "sandbox"

    def declare(name: str | None, path: Path, kind: str) -> None:
        if name is None:
            return
        if name in nodes:
            v.add(path, f"name {name!r} is already used by {format_path(nodes[name])}")
        else:
            nodes[name], kinds[name] = path, kind

    hosts = _hosts(v, top, declare)
    links = _links(v, top, hosts)
    networks = _networks(v, top, hosts, links)
    services = _services(v, top, networks)
    sandboxes = _sandboxes(v, top, hosts, networks, declare, services)
    connected = _connected(hosts, links, networks, sandboxes)
    for node in hosts.values():
        _check_routes(v, node.routes, ("hosts", _index(top, "hosts", node.name)), node.name,
                      connected)
    for i, sb in enumerate(sandboxes):
        _check_routes(v, sb.routes, ("sandboxes", i), sb.name, connected)
    for service in services.values():
        if service.name in nodes:
            v.add(("services", _index(top, "services", service.name), "name"),
                  f"name {service.name!r} is already a node's: a check's 'to' could not "
                  "tell them apart")
    expect = _expectations(v, top, kinds, links, services)
    etcd = _etcd(v, top, networks)
    if v.problems:
        raise TopologyError(v.problems)
    return Topology(lab, description, tuple(hosts.values()), tuple(links), tuple(networks),
                    tuple(sandboxes), tuple(expect), data=dict(top), etcd=etcd,
                    services=tuple(services.values()))


def _services(v: _Checker, top: Mapping[str, Any],
              networks: list[NetworkSpec]) -> dict[str, ServiceSpec]:
    """``services:``, each value checked by pycnm's own (pure) service checks."""
    result: dict[str, ServiceSpec] = {}
    if not top.get("services"):  # (``v.sequence`` below says so if it is not a list)
        v.sequence(top.get("services"), ("services",))
        return result
    from cnm.services import model as service_model  # ~7 ms: only labs with services

    by_name = {n.name: n for n in networks}
    for i, item in enumerate(v.sequence(top.get("services"), ("services",))):
        path: Path = ("services", i)
        entry = v.mapping(item, path, SERVICE_KEYS, required=("name", "network", "ports"))
        if entry is None:
            continue
        name = v.text(entry.get("name"), path + ("name",))
        net_name = v.text(entry.get("network"), path + ("network",))
        net = by_name.get(net_name or "")
        if net_name is not None and net is None:
            v.add(path + ("network",), f"unknown network {net_name!r}"
                  f"{_suggest(net_name, by_name)}")
        mode = v.choice(entry.get("mode"), path + ("mode",), service_model.MODES, "vip")
        balance = entry.get("balance")
        if balance is not None:
            balance = v.choice(balance, path + ("balance",), service_model.BALANCES, "rr")
        try:
            if name is not None:
                service_model.check_name(name)
                if name in result:
                    v.add(path + ("name",), f"service {name!r} is declared twice")
                    name = None
            ports = service_model.check_ports(entry.get("ports"))
            publish = service_model.check_publish(entry.get("publish"), ports)
        except InvalidOption as exc:
            v.add(path, str(exc))
            continue
        vip = v.address(entry.get("vip"), path + ("vip",))
        if vip is not None and net is not None and \
                not _inside(vip, ipaddress.ip_network(net.subnet)):
            v.add(path + ("vip",), f"{vip} is not in network {net.name!r}'s subnet {net.subnet}")
        if mode == "dnsrr" and (vip or balance or publish):
            v.add(path, "a dnsrr service has no virtual IP: no vip, balance or publish")
        if name and net is not None:
            result[name] = ServiceSpec(name, net.name, tuple(str(p) for p in ports), mode,
                                       balance, vip, tuple(str(p) for p in publish))
    return result


def _etcd(v: _Checker, top: Mapping[str, Any], networks: list[NetworkSpec]) -> EtcdSpec:
    """``etcd: {tls: true, auth: true}``: how the etcd of an overlay lab runs."""
    if top.get("etcd") is None:
        return EtcdSpec()
    spec = v.mapping(top["etcd"], ("etcd",), ETCD_KEYS)
    if spec is None:
        return EtcdSpec()
    if not any(n.driver == "overlay" for n in networks):
        v.add(("etcd",), "only an overlay lab runs etcd: this lab has no overlay network")
    return EtcdSpec(tls=v.boolean(spec.get("tls"), ("etcd", "tls")),
                    auth=v.boolean(spec.get("auth"), ("etcd", "auth")))


def _index(top: Mapping[str, Any], key: str, name: str) -> int:
    for i, item in enumerate(top.get(key) or []):
        if isinstance(item, dict) and item.get("name") == name:
            return i
    return 0


def _routes(v: _Checker, value: Any, path: Path) -> tuple[Route, ...]:
    routes = []
    for j, item in enumerate(v.sequence(value, path)):
        where = path + (j,)
        entry = v.mapping(item, where, ("to", "via"), required=("to", "via"))
        if entry is None:
            continue
        to = v.prefix(entry.get("to"), where + ("to",), allow_default=True)
        via = v.address(entry.get("via"), where + ("via",))
        if to and via:
            routes.append(Route(to, via))
    return tuple(routes)


def _hosts(v: _Checker, top: Mapping[str, Any],
           declare: Callable[[str | None, Path, str], None]) -> dict[str, Node]:
    hosts: dict[str, Node] = {}
    items = v.sequence(top.get("hosts"), ("hosts",), allow_missing=False)
    if "hosts" in top and not items and isinstance(top.get("hosts"), list):
        v.add(("hosts",), "a lab needs at least one host")
    for i, item in enumerate(items):
        path: Path = ("hosts", i)
        entry = v.mapping(item, path, ("name", "kind", "routes"), required=("name",))
        if entry is None:
            continue
        name = v.text(entry.get("name"), path + ("name",), NODE_NAME_RE, NODE_RULE)
        kind = v.choice(entry.get("kind"), path + ("kind",), KINDS, "host")
        declare(name, path, kind)
        routes = _routes(v, entry.get("routes"), path + ("routes",))
        if kind == "switch" and routes:
            v.add(path + ("routes",), "a switch forwards frames, not packets: it has no routes")
        if name and name not in hosts:
            hosts[name] = Node(name, kind, routes)
    return hosts


def _links(v: _Checker, top: Mapping[str, Any], hosts: Mapping[str, Node]) -> list[Link]:
    links: list[Link] = []
    used: dict[tuple[str, str], Path] = {}
    addresses: dict[str, Path] = {}
    for i, item in enumerate(v.sequence(top.get("links"), ("links",))):
        path: Path = ("links", i)
        entry = v.mapping(item, path, ("endpoints", "addresses", "mtu", "netem", "vlan",
                                       "trunk"),
                          required=("endpoints",))
        if entry is None:
            continue
        raw_ends = v.sequence(entry.get("endpoints"), path + ("endpoints",))
        if len(raw_ends) != 2:
            if entry.get("endpoints") is not None:
                v.add(path + ("endpoints",), "a link has exactly two ends: [node:iface, "
                      "node:iface]")
            continue
        raw_addrs = entry.get("addresses")
        addrs = v.sequence(raw_addrs, path + ("addresses",))
        if raw_addrs is not None and len(addrs) != 2:
            v.add(path + ("addresses",), "give one address per end (null for none)")
            addrs = []
        addrs = addrs or [None, None]
        ends: list[LinkEnd] = []
        for j, raw in enumerate(raw_ends):
            end = _link_end(v, raw, path + ("endpoints", j), hosts, used)
            address = v.interface(addrs[j], path + ("addresses", j))
            if end is None:
                continue
            if address and hosts[end.node].kind == "switch":
                v.add(path + ("addresses", j), f"{end.node} is a switch: its ports carry no "
                      "address (switches work at layer 2)")
                address = None
            if address:
                ip = str(ipaddress.ip_interface(address).ip)
                if ip in addresses:
                    v.add(path + ("addresses", j),
                          f"{ip} is already used by {format_path(addresses[ip])}")
                addresses[ip] = path + ("addresses", j)
            ends.append(LinkEnd(end.node, end.iface, address))
        if len(ends) != 2:
            continue
        if ends[0].node == ends[1].node:
            v.add(path + ("endpoints",), f"both ends are on {ends[0].node}: a link joins two "
                  "different nodes")
            continue
        if ends[0].address and ends[1].address:
            net_a = ipaddress.ip_interface(ends[0].address).network
            if ipaddress.ip_interface(ends[1].address).ip not in net_a:
                v.add(path + ("addresses",), f"{ends[0].address} and {ends[1].address} are "
                      "not in one subnet: the two ends could not talk")
        mtu = entry.get("mtu")
        if isinstance(mtu, list):  # one per end: [1500, 1400] (null keeps the default)
            if len(mtu) != 2:
                v.add(path + ("mtu",), "give one MTU for both ends, or a list of two: "
                      "[1500, 1400]")
            else:
                mtus = [_mtu(v, value, path + ("mtu", j)) for j, value in enumerate(mtu)]
                ends = [dataclasses.replace(end, mtu=m) for end, m in zip(ends, mtus,
                                                                           strict=True)]
            mtu = None
        else:
            mtu = _mtu(v, mtu, path + ("mtu",))
        vlan, trunk = _vlans(v, entry, path, ends, hosts)
        links.append(Link(ends[0], ends[1], mtu, _netem(v, entry.get("netem"),
                                                      path + ("netem",)), vlan, trunk))
    return links


def _mtu(v: _Checker, value: Any, path: Path) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 68 <= value <= 65535):
        v.add(path, f"must be a number between 68 and 65535, not {value!r}")
        return None
    return value


def _netem(v: _Checker, value: Any, path: Path) -> Netem | None:
    if value is None:
        return None
    try:
        netem = parse_netem(value)
    except InvalidOption as exc:
        v.add(path, str(exc))
        return None
    return None if netem.empty() else netem


def _vlans(v: _Checker, entry: Mapping[str, Any], path: Path, ends: list[LinkEnd],
           hosts: Mapping[str, Node]) -> tuple[int | None, tuple[int, ...]]:
    """``vlan: N`` (access port) or ``trunk: [N, ...]`` (tagged), on a link to a switch."""
    raw_vlan, raw_trunk = entry.get("vlan"), entry.get("trunk")
    if raw_vlan is None and raw_trunk is None:
        return None, ()
    switches = [e for e in ends if hosts[e.node].kind == "switch"]
    key = "vlan" if raw_vlan is not None else "trunk"
    if len(switches) != 1:
        v.add(path + (key,), "VLANs are set on a switch's port: exactly one end of this "
              "link must be a switch")
        return None, ()
    if raw_vlan is not None and raw_trunk is not None:
        v.add(path + ("trunk",), "a port is either an access port (vlan) or a trunk, not both")
        return None, ()

    def vid(value: Any, where: Path) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4094:
            v.add(where, f"a VLAN id is a number between 1 and 4094, not {value!r}")
            return None
        return value

    if raw_vlan is not None:
        return vid(raw_vlan, path + ("vlan",)), ()
    vids = [vid(x, path + ("trunk", k))
            for k, x in enumerate(v.sequence(raw_trunk, path + ("trunk",)))]
    if not vids and isinstance(raw_trunk, list):
        v.add(path + ("trunk",), "a trunk carries at least one VLAN")
    return None, tuple(x for x in vids if x is not None)


def _link_end(v: _Checker, raw: Any, path: Path, hosts: Mapping[str, Node],
              used: dict[tuple[str, str], Path]) -> LinkEnd | None:
    text = v.text(raw, path)
    if text is None:
        return None
    node, sep, iface = text.partition(":")
    if not sep or not node or not iface:
        v.add(path, f"{text!r} must be NODE:IFACE, e.g. h1:eth0")
        return None
    if node not in hosts:
        v.add(path, f"unknown node {node!r}{_suggest(node, hosts)} (links join hosts, "
              "routers, switches and servers; sandboxes join networks)")
        return None
    if not names.is_valid_ifname(iface) or iface == "lo":
        v.add(path, f"{iface!r} is not a valid interface name (1-15 characters, no '/')")
        return None
    if names.is_pycnm_kernel_name(iface) or (hosts[node].kind == "switch"
                                             and iface == SWITCH_BRIDGE):
        v.add(path, f"interface name {iface!r} is reserved (pycnm's prefixes, a switch's "
              f"{SWITCH_BRIDGE})")
        return None
    if (node, iface) in used:
        v.add(path, f"{node}:{iface} is already used by {format_path(used[(node, iface)])}")
        return None
    used[(node, iface)] = path
    return LinkEnd(node, iface, None)


def _hosts_of_network(v: _Checker, entry: Mapping[str, Any], path: Path,
                      hosts: Mapping[str, Node]) -> tuple[str, ...]:
    if (entry.get("host") is None) == (entry.get("hosts") is None):
        v.add(path, "give either 'host: NAME' or 'hosts: [NAME, ...]'")
        return ()
    if entry.get("host") is not None:
        raw, base = [entry["host"]], path + ("host",)
        paths: list[Path] = [base]
    else:
        raw = v.sequence(entry.get("hosts"), path + ("hosts",))
        paths = [path + ("hosts", j) for j in range(len(raw))]
    result: list[str] = []
    for name, where in zip(raw, paths, strict=True):
        text = v.text(name, where)
        if text is None:
            continue
        node = hosts.get(text)
        if node is None:
            v.add(where, f"unknown host {text!r}{_suggest(text, hosts)}")
        elif node.kind != "host":
            v.add(where, f"{text!r} is a {node.kind}; networks live on hosts (kind: host), "
                  "which run pycnm")
        elif text in result:
            v.add(where, f"host {text!r} is listed twice")
        else:
            result.append(text)
    return tuple(result)


def _networks(v: _Checker, top: Mapping[str, Any], hosts: Mapping[str, Node],
              links: list[Link]) -> list[NetworkSpec]:
    networks: list[NetworkSpec] = []
    seen: dict[str, Path] = {}
    keys = ("name", "driver", "host", "hosts", "subnet", "gateway", "ip_range", "internal",
            "options")
    for i, item in enumerate(v.sequence(top.get("networks"), ("networks",))):
        path: Path = ("networks", i)
        entry = v.mapping(item, path, keys, required=("name", "subnet"))
        if entry is None:
            continue
        name = v.text(entry.get("name"), path + ("name",))
        if name is not None and not names.is_valid_object_name(name):
            v.add(path + ("name",), f"{name!r} is not a valid network name (letters, digits, "
                  "'_', '.', '-')")
            name = None
        if name is not None and name in seen:
            v.add(path + ("name",), f"network {name!r} is already defined at "
                  f"{format_path(seen[name])}")
            name = None
        driver = v.choice(entry.get("driver"), path + ("driver",), DRIVERS, "bridge")
        on = _hosts_of_network(v, entry, path, hosts)
        subnet = v.prefix(entry.get("subnet"), path + ("subnet",))
        gateway = v.address(entry.get("gateway"), path + ("gateway",))
        ip_range = v.prefix(entry.get("ip_range"), path + ("ip_range",))
        internal = v.boolean(entry.get("internal"), path + ("internal",))
        options = entry.get("options")
        if options is not None and not isinstance(options, dict):
            v.add(path + ("options",), f"must be a mapping of option: value, not "
                  f"{_kind(options)}")
            options = None
        options = {str(k): val for k, val in (options or {}).items()}
        if driver == "overlay" and name:
            options.setdefault("overlay", name)  # the overlay's identity on every host
        if subnet:
            net = ipaddress.ip_network(subnet)
            for key, value in (("gateway", gateway), ("ip_range", ip_range)):
                if value and not _inside(value, net):
                    v.add(path + (key,), f"{value} is not inside the subnet {subnet}")
        if options is not None:
            _driver_options(v, driver, options, internal, path + ("options",))
        if driver in PARENT_DRIVERS:
            _parent_interface(v, driver, options, on, links, path + ("options", "parent"))
        if name is not None and subnet is not None and on:
            seen[name] = path
            networks.append(NetworkSpec(name, driver, on, subnet, gateway, ip_range, internal,
                                        options))
    _overlaps(v, networks, seen, links)
    return networks


def _inside(value: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        if "/" in value:
            inner = ipaddress.ip_network(value)
            return inner.version == net.version and inner.subnet_of(net)  # type: ignore[arg-type]
        return ipaddress.ip_address(value) in net
    except ValueError:
        return False


def _driver_options(v: _Checker, driver: str, options: dict[str, Any], internal: bool,
                    path: Path) -> None:
    """Ask the driver's own option parser (pure: no kernel) so a typo fails here, with a
    line number, instead of half-way through building."""
    import importlib

    from cnm.errors import InvalidOption

    try:
        module = importlib.import_module(f"drivers.{driver}.options")
    except ModuleNotFoundError:
        v.add(path, f"driver {driver!r} is not available in this build")
        return
    try:
        module.parse({**options, "com.docker.network.internal": internal})
    except InvalidOption as exc:
        v.add(path, str(exc))


def _parent_interface(v: _Checker, driver: str, options: Mapping[str, Any],
                      on: tuple[str, ...], links: list[Link], path: Path) -> None:
    parent = options.get("parent")
    if not parent:
        return  # the driver's parser said so already
    base = str(parent).rsplit(".", 1)[0] if "." in str(parent) else str(parent)  # IFACE.VID
    for host in on:
        ifaces = [e.iface for link in links for e in (link.a, link.b) if e.node == host]
        if base not in ifaces:
            v.add(path, f"host {host!r} has no interface {base!r} to be the {driver} parent "
                  f"(its links: {', '.join(ifaces) or 'none'})")


def _overlaps(v: _Checker, networks: list[NetworkSpec], seen: Mapping[str, Path],
              links: list[Link]) -> None:
    """Two networks on one host may not share addresses, nor may a bridge or overlay
    network overlap the host's own links (pycnm's IPAM would refuse it half-way)."""
    for i, a in enumerate(networks):
        net_a = ipaddress.ip_network(a.subnet)
        for b in networks[i + 1:]:
            shared = set(a.hosts) & set(b.hosts)
            if shared and net_a.overlaps(ipaddress.ip_network(b.subnet)):
                v.add(seen[b.name] + ("subnet",), f"{b.subnet} overlaps network {a.name!r} "
                      f"({a.subnet}) on host {sorted(shared)[0]!r}")
        if a.driver in PARENT_DRIVERS:
            continue  # a macvlan (or ipvlan) network is the LAN its parent is on
        for link in links:
            for end in (link.a, link.b):
                if end.node in a.hosts and end.address and \
                        ipaddress.ip_interface(end.address).network.overlaps(net_a):
                    v.add(seen[a.name] + ("subnet",), f"{a.subnet} overlaps {end.node}'s "
                          f"link address {end.address} ({end.node}:{end.iface})")


def _sandboxes(v: _Checker, top: Mapping[str, Any], hosts: Mapping[str, Node],
               networks: list[NetworkSpec],
               declare: Callable[[str | None, Path, str], None],
               services: Mapping[str, ServiceSpec]) -> list[SandboxSpec]:
    result: list[SandboxSpec] = []
    by_name = {n.name: n for n in networks}
    taken: dict[tuple[str, str | None, str], Path] = {}  # (network, host or None, ip)
    keys = ("name", "host", "mode", "networks", "ports", "ip_forward", "routes")
    for i, item in enumerate(v.sequence(top.get("sandboxes"), ("sandboxes",))):
        path: Path = ("sandboxes", i)
        entry = v.mapping(item, path, keys, required=("name", "host"))
        if entry is None:
            continue
        name = v.text(entry.get("name"), path + ("name",), NODE_NAME_RE, NODE_RULE)
        declare(name, path, "sandbox")
        host = v.text(entry.get("host"), path + ("host",))
        if host is not None and host not in hosts:
            v.add(path + ("host",), f"unknown host {host!r}{_suggest(host, hosts)}")
            host = None
        elif host is not None and hosts[host].kind != "host":
            v.add(path + ("host",), f"{host!r} is a {hosts[host].kind}; sandboxes run on "
                  "hosts (kind: host)")
            host = None
        mode = _mode(v, entry, path)
        if mode is None:
            continue
        if mode != "default":
            result += _moded_sandbox(v, entry, path, name, host, mode)
            continue
        if entry.get("networks") is None:
            v.add(path, "'networks' is required (or a mode: host, none, container:OTHER)")
        attachments: list[Attachment] = []
        raw_nets = v.sequence(entry.get("networks"), path + ("networks",))
        if entry.get("networks") is not None and isinstance(entry.get("networks"), list) \
                and not raw_nets:
            v.add(path + ("networks",), "a sandbox joins at least one network")
        for j, raw in enumerate(raw_nets):
            where = path + ("networks", j)
            att = _attachment(v, raw, where, by_name, host, attachments, services)
            if att is None:
                continue
            net = by_name[att.network]
            if att.ip is None and net.driver in PARENT_DRIVERS and len(net.hosts) > 1:
                v.add(where, f"network {net.name!r} is a LAN shared by several hosts whose "
                      "IPAMs do not know each other: give this sandbox a static ip")
            if att.ip is not None:
                scope = None if net.driver in ("overlay", *PARENT_DRIVERS) else host
                key = (net.name, scope, att.ip)
                if key in taken:
                    v.add(where + ("ip",), f"{att.ip} is already given to "
                          f"{format_path(taken[key])}")
                taken[key] = where + ("ip",)
            attachments.append(att)
        ports = tuple(_ports(v, entry.get("ports"), path + ("ports",), attachments, by_name))
        ip_forward = v.boolean(entry.get("ip_forward"), path + ("ip_forward",))
        routes = _routes(v, entry.get("routes"), path + ("routes",))
        if name and host and attachments:
            result.append(SandboxSpec(name, host, tuple(attachments), ports, ip_forward,
                                      routes))
    _check_sharing(v, result, top)
    return result


def _mode(v: _Checker, entry: Mapping[str, Any], path: Path) -> str | None:
    from cnm import modes
    from cnm.errors import InvalidOption

    text = v.text(entry.get("mode"), path + ("mode",))
    if text is None:
        return "default" if entry.get("mode") is None else None
    try:
        parsed = modes.parse(text)
    except InvalidOption:
        v.add(path + ("mode",), f"{text!r} is not a sandbox mode: use host, none or "
              "container:OTHER (OTHER: a sandbox of this lab)")
        return None
    if parsed.kind == "container" and not NODE_NAME_RE.fullmatch(parsed.other or ""):
        v.add(path + ("mode",), f"{parsed.other!r} is not a lab sandbox name: {NODE_RULE}")
        return None
    return str(parsed)


def _moded_sandbox(v: _Checker, entry: Mapping[str, Any], path: Path, name: str | None,
                   host: str | None, mode: str) -> list[SandboxSpec]:
    """A host, none or container-mode sandbox: no networks, ports, forwarding or routes of
    its own (they would be the host's or the owner's)."""
    why = {"host": "it is the host's own namespace", "none": "it has loopback only"}.get(
        mode, "it uses the other sandbox's namespace")
    bad = False
    for key in ("networks", "ports", "ip_forward", "routes"):
        if entry.get(key) is not None:
            v.add(path + (key,), f"a sandbox with mode {mode} has no {key}: {why}")
            bad = True
    if bad or not name or not host:
        return []
    return [SandboxSpec(name, host, (), mode=mode)]


def _check_sharing(v: _Checker, sandboxes: list[SandboxSpec], top: Mapping[str, Any]) -> None:
    """container:OTHER names a sandbox of this lab on the same host, and no loop."""
    by_name = {s.name: s for s in sandboxes}
    for spec in sandboxes:
        if spec.shares is None:
            continue
        where = ("sandboxes", _index(top, "sandboxes", spec.name), "mode")
        other = by_name.get(spec.shares)
        if other is None:
            v.add(where, f"there is no sandbox {spec.shares!r} to share"
                  f"{_suggest(spec.shares, by_name)}")
        elif other.host != spec.host:
            v.add(where, f"sandbox {spec.shares!r} runs on {other.host}, not on {spec.host}: "
                  "only a namespace of the same host can be shared")
        else:
            seen = {spec.name}
            while other is not None and other.shares is not None:
                if other.name in seen:
                    v.add(where, f"sandboxes {', '.join(sorted(seen))} share each other's "
                          "namespace in a loop: one of them needs a namespace of its own")
                    break
                seen.add(other.name)
                other = by_name.get(other.shares)


def _attachment(v: _Checker, raw: Any, where: Path, by_name: Mapping[str, NetworkSpec],
                host: str | None, done: list[Attachment],
                services: Mapping[str, ServiceSpec]) -> Attachment | None:
    aliases: tuple[str, ...] = ()
    backs: list[str] = []
    if isinstance(raw, dict):
        entry = v.mapping(raw, where, ("name", "ip", "aliases", "services"),
                          required=("name",))
        if entry is None:
            return None
        net_name = v.text(entry.get("name"), where + ("name",))
        ip = v.address(entry.get("ip"), where + ("ip",))
        name_path = where + ("name",)
        aliases = _aliases(v, entry.get("aliases"), where + ("aliases",))
        for k, item in enumerate(v.sequence(entry.get("services"), where + ("services",))):
            service = services.get(str(item)) if isinstance(item, str) else None
            if service is None or service.network != net_name:
                v.add(where + ("services", k), f"{item!r} is not a service of network "
                      f"{net_name!r}")
            elif item not in backs:
                backs.append(item)
    else:
        net_name, ip, name_path = v.text(raw, where), None, where
    if net_name is None:
        return None
    net = by_name.get(net_name)
    if net is None:
        v.add(name_path, f"unknown network {net_name!r}{_suggest(net_name, by_name)}")
        return None
    if host is not None and host not in net.hosts:
        v.add(name_path, f"network {net_name!r} is not on host {host!r} (it lives on "
              f"{', '.join(net.hosts)})")
        return None
    if any(a.network == net_name for a in done):
        v.add(name_path, f"network {net_name!r} is joined twice")
        return None
    if ip is not None:
        subnet = ipaddress.ip_network(net.subnet)
        address = ipaddress.ip_address(ip)
        if address not in subnet:
            v.add(where + ("ip",), f"{ip} is not in network {net_name!r}'s subnet {net.subnet}")
            return None
        if subnet.num_addresses > 2 and address in (subnet.network_address,
                                                    subnet.broadcast_address):
            v.add(where + ("ip",), f"{ip} is the subnet's network or broadcast address")
            return None
        if net.gateway and ip == net.gateway:
            v.add(where + ("ip",), f"{ip} is the network's gateway")
            return None
    return Attachment(net_name, ip, aliases, tuple(backs))


def _aliases(v: _Checker, value: Any, path: Path) -> tuple[str, ...]:
    from cnm.dns.names import is_valid_hostname

    result = []
    for j, raw in enumerate(v.sequence(value, path)):
        text = v.text(raw, path + (j,))
        if text is None:
            continue
        if not is_valid_hostname(text):
            v.add(path + (j,), f"{text!r} is not a DNS name: letters, digits and '-' in "
                  "dot-separated labels of at most 63 characters (RFC 1123)")
            continue
        result.append(text)
    return tuple(result)


def _ports(v: _Checker, value: Any, path: Path, attachments: list[Attachment],
           by_name: Mapping[str, NetworkSpec]) -> list[str]:
    from cnm.cli.endpoint import parse_publish
    from cnm.errors import InvalidOption

    specs: list[str] = []
    for j, raw in enumerate(v.sequence(value, path)):
        text = v.text(raw, path + (j,))
        if text is None:
            continue
        try:
            parse_publish([text])
        except InvalidOption as exc:
            v.add(path + (j,), str(exc))
            continue
        specs.append(text)
    if specs and attachments and by_name[attachments[0].network].driver != "bridge":
        v.add(path, "ports are published by the bridge driver: the sandbox's first network "
              "must be a bridge network")
    return specs


def _connected(hosts: Mapping[str, Node], links: list[Link], networks: list[NetworkSpec],
               sandboxes: list[SandboxSpec]) -> dict[str, list[Any]]:
    """Subnets each node reaches directly (what a route's ``via`` must be inside)."""
    result: dict[str, list[Any]] = {name: [] for name in hosts}
    for link in links:
        for end in (link.a, link.b):
            if end.address:
                result[end.node].append(ipaddress.ip_interface(end.address).network)
    by_name = {n.name: n for n in networks}
    for sb in sandboxes:
        result[sb.name] = [ipaddress.ip_network(by_name[a.network].subnet) for a in sb.networks]
    return result


def _check_routes(v: _Checker, routes: tuple[Route, ...], path: Path, node: str,
                  connected: Mapping[str, list[Any]]) -> None:
    nets = connected.get(node, [])
    for j, route in enumerate(routes):
        via = ipaddress.ip_address(route.via)
        if not any(via in net for net in nets):
            have = ", ".join(str(n) for n in nets) or "none"
            v.add(path + ("routes", j, "via"), f"{route.via} is not on any subnet {node} is "
                  f"directly connected to ({have}): the next hop must be a neighbour")


def _target(v: _Checker, value: Any, path: Path, nodes: Mapping[str, str],
            ifaces: Mapping[str, list[str]],
            services: Mapping[str, ServiceSpec] | None = None) -> Target | None:
    text = v.text(value, path)
    if text is None:
        return None
    if services and text in services:
        return Target(None, service=text)
    try:
        return Target(None, None, str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    node, _, iface = text.partition(":")
    if node not in nodes:
        v.add(path, f"unknown node {node!r}{_suggest(node, nodes)} (give a node, "
              "NODE:IFACE, or an IP address)")
        return None
    if nodes[node] == "switch":
        v.add(path, f"{node!r} is a switch: it has no address")
        return None
    if iface and nodes[node] != "sandbox" and iface not in ifaces.get(node, []):
        v.add(path, f"{node!r} has no link interface {iface!r} (it has: "
              f"{', '.join(ifaces.get(node, [])) or 'none'})")
        return None
    if not iface and nodes[node] != "sandbox" and not ifaces.get(node):
        v.add(path, f"{node!r} has no address on any link to be reached at")
        return None
    return Target(node, iface or None)


def _expectations(v: _Checker, top: Mapping[str, Any], nodes: Mapping[str, str],
                  links: list[Link],
                  services: Mapping[str, ServiceSpec]) -> list[Expectation]:
    addressed: dict[str, list[str]] = {}
    for link in links:
        for end in (link.a, link.b):
            if end.address:
                addressed.setdefault(end.node, []).append(end.iface)
    keys = ("from", "to", "proto", "port", "expect", "listen", "seen_as", "size", "spread",
            "count", "sticky")
    result = []
    for i, item in enumerate(v.sequence(top.get("expect"), ("expect",))):
        path: Path = ("expect", i)
        if isinstance(item, dict) and "resolve" in item:
            found = _dns_expectation(v, item, path, nodes, addressed)
            if found is not None:
                result.append(found)
            continue
        entry = v.mapping(item, path, keys, required=("from", "to"))
        if entry is None:
            continue
        src = v.text(entry.get("from"), path + ("from",))
        if src is not None and src not in nodes:
            v.add(path + ("from",), f"unknown node {src!r}{_suggest(src, nodes)}")
            src = None
        dst = _target(v, entry.get("to"), path + ("to",), nodes, addressed, services)
        proto = v.choice(entry.get("proto"), path + ("proto",), PROTOS, "icmp")
        if dst is not None and dst.service is not None:
            spread = _spread(v, entry, path, nodes, services[dst.service], proto)
            if src and spread is not None:
                result.append(Expectation(src, dst, proto, entry.get("port"),
                                          v.choice(entry.get("expect"), path + ("expect",),
                                                   OUTCOMES, "reach"),
                                          spread=spread[0], count=spread[1],
                                          sticky=v.boolean(entry.get("sticky"),
                                                           path + ("sticky",))))
            continue
        for key in ("spread", "count", "sticky"):
            if entry.get(key) is not None:
                v.add(path + (key,), f"only a check whose 'to' is a service has {key!r}")
        outcome = v.choice(entry.get("expect"), path + ("expect",), OUTCOMES, "reach")
        port = entry.get("port")
        if proto == "tcp":
            if port is None:
                v.add(path, "a tcp check needs 'port' (1-65535)")
            elif isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                v.add(path + ("port",), f"must be a port number between 1 and 65535, not "
                      f"{port!r}")
                port = None
        elif port is not None:
            v.add(path + ("port",), "only tcp checks have a port")
            port = None
        listen = _listen(v, entry.get("listen"), path + ("listen",), nodes, proto, port, dst)
        seen_as = None
        if entry.get("seen_as") is not None:
            if proto != "tcp":
                v.add(path + ("seen_as",), "only tcp checks can see the client's address")
            else:
                seen_as = _target(v, entry.get("seen_as"), path + ("seen_as",), nodes,
                                  addressed)
        size = entry.get("size")
        if size is not None:
            if proto != "icmp":
                v.add(path + ("size",), "only icmp checks have a size (a ping's payload)")
                size = None
            elif isinstance(size, bool) or not isinstance(size, int) \
                    or not 0 <= size <= MAX_PING_SIZE:
                v.add(path + ("size",), f"must be a number of bytes between 0 and "
                      f"{MAX_PING_SIZE}, not {size!r}")
                size = None
        if src and dst and (proto == "icmp" or (port and listen)):
            result.append(Expectation(src, dst, proto, port, outcome, listen, seen_as, size))
    return result


def _dns_expectation(v: _Checker, item: dict[str, Any], path: Path,
                     nodes: Mapping[str, str], addressed: Mapping[str, list[str]]
                     ) -> Expectation | None:
    """``{from: NODE, resolve: NAME, [type: A|AAAA], [answer: [TARGET, ...]],
    [rotates: true], [expect: resolves|nxdomain|servfail]}``: ``dig`` in NODE."""
    from cnm.dns.names import is_valid_hostname

    keys = ("from", "resolve", "type", "answer", "rotates", "expect")
    entry = v.mapping(item, path, keys, required=("from", "resolve"))
    if entry is None:
        return None
    src = v.text(entry.get("from"), path + ("from",))
    if src is not None and src not in nodes:
        v.add(path + ("from",), f"unknown node {src!r}{_suggest(src, nodes)}")
        src = None
    name = v.text(entry.get("resolve"), path + ("resolve",))
    if name is not None and not is_valid_hostname(name):
        v.add(path + ("resolve",), f"{name!r} is not a DNS name to ask for")
        name = None
    rdtype = v.choice(entry.get("type"), path + ("type",), DNS_TYPES, "A")
    outcome = v.choice(entry.get("expect"), path + ("expect",), DNS_OUTCOMES, "resolves")
    answer = []
    for j, raw in enumerate(v.sequence(entry.get("answer"), path + ("answer",))):
        target = _target(v, raw, path + ("answer", j), nodes, addressed)
        if target is not None:
            answer.append(target)
    rotates = v.boolean(entry.get("rotates"), path + ("rotates",))
    if (answer or rotates) and outcome != "resolves":
        v.add(path, f"a check that expects {outcome} has no answer to compare")
    if rotates and len(answer) < 2:
        v.add(path + ("rotates",), "round robin needs an answer of two addresses or more")
    if not src or not name:
        return None
    return Expectation(src, Target(None, None, name), "dns", None, outcome,
                       answer=tuple(answer), rotates=rotates, rdtype=rdtype)
def _spread(v: _Checker, entry: Mapping[str, Any], path: Path, nodes: Mapping[str, str],
            service: ServiceSpec, proto: str) -> tuple[tuple[str, ...], int] | None:
    """A service check: tcp to one of its tcp ports, the backends that must share the
    connections, and how many to open."""
    port = entry.get("port")
    tcp_ports = [int(p.split("/")[0]) for p in service.ports if p.endswith("/tcp")]
    bad = False
    if proto != "tcp":
        v.add(path + ("proto",), "a check of a service is tcp")
        bad = True
    if isinstance(port, bool) or not isinstance(port, int) or port not in tcp_ports:
        v.add(path + ("port",), f"must be one of service {service.name!r}'s tcp ports "
              f"({', '.join(map(str, tcp_ports)) or 'none'}), not {port!r}")
        bad = True
    for key in ("listen", "seen_as", "size"):
        if entry.get(key) is not None:
            v.add(path + (key,), f"a check of a service has no {key!r} (its backends serve)")
            bad = True
    backends = []
    for k, item in enumerate(v.sequence(entry.get("spread"), path + ("spread",),
                                        allow_missing=False)):
        if not isinstance(item, str) or nodes.get(item) != "sandbox":
            v.add(path + ("spread", k), f"{item!r} is not a sandbox of this lab")
            bad = True
        else:
            backends.append(item)
    count = entry.get("count", 30)
    if isinstance(count, bool) or not isinstance(count, int) or \
            not len(backends) <= count <= MAX_SPREAD_COUNT:
        v.add(path + ("count",), f"must be a number of connections from the number of "
              f"backends to {MAX_SPREAD_COUNT}, not {count!r}")
        bad = True
    if not backends and not bad:
        v.add(path + ("spread",), "name the backends that must answer")
        bad = True
    return None if bad else (tuple(backends), count)


def _listen(v: _Checker, value: Any, path: Path, nodes: Mapping[str, str], proto: str,
            port: int | None, dst: Target | None) -> tuple[str, int] | None:
    if proto != "tcp":
        if value is not None:
            v.add(path, "only tcp checks have a listener")
        return None
    if value is None:
        if dst is not None and dst.node is None:
            v.add(path, f"say which node serves {dst.address}: listen: NODE[:PORT]")
            return None
        return (dst.node, port) if dst is not None and dst.node and port else None
    text = v.text(value, path)
    if text is None:
        return None
    node, _, port_text = text.partition(":")
    if node not in nodes:
        v.add(path, f"unknown node {node!r}{_suggest(node, nodes)}")
        return None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            v.add(path, f"{port_text!r} is not a port number")
            return None
        return node, int(port_text)
    return (node, port) if port else None
