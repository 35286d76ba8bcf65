"""nftables rulesets as nft's JSON, built from typed values only.

Every ruleset pycnm loads is a list of JSON commands (``nft -j -f -``), and every value in
it comes from a typed, checked source: addresses and prefixes are ``ipaddress`` objects,
ports and numbers are ``int`` (never ``bool``), interface, table, chain and set names match
a fixed pattern. Nothing a user typed is ever parsed as nft syntax: a string reaches nft
only as a JSON string value in a field whose type this module fixed, and only after its
check. (nft resolves some string values itself, e.g. a host name where an address is
expected; the checks below are what keep that from happening.)

    commands = replace_table("inet", "pycnm", [
        Chain("prerouting", nat_hook("prerouting"), [
            rule(match_addr("daddr", ip_address("127.0.0.1")), match_port("tcp", "dport", 8080),
                 dnat(ip_address("10.1.0.2"), 80)),
        ]),
    ])
    nft.load(ns, commands, what="bridge firewall")

Expressions are plain dicts in nft's JSON schema (libnftables-json(5)); a driver that
needs one this module lacks adds a typed builder here rather than writing a dict inline.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cnm.names import is_valid_ifname

Family = Literal["inet", "ip", "ip6"]
L4Proto = Literal["tcp", "udp", "sctp"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
Expr = dict[str, Any]
Command = dict[str, Any]

_OBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_COMMENT = re.compile(r"[A-Za-z0-9 _.:/,=()+-]{0,120}")
_FAMILIES = ("inet", "ip", "ip6")
_L4 = ("tcp", "udp", "sctp")
_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
               "srcnat": 100}
_OPS = ("==", "!=", "<", ">", "<=", ">=", "in")


class InvalidNftValue(ValueError):
    """A value that cannot go into a ruleset (a programming error, or input that was not
    validated at the boundary): nothing was loaded."""


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidNftValue(f"{what} must be an integer from {low} to {high}, not {value!r}")
    return value


def _port(value: object) -> int:
    return _int(value, "port", 0, 65535)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _OBJECT_NAME.fullmatch(value):
        raise InvalidNftValue(f"{what} {value!r} is not a valid nft object name")
    return value


def _ifname(value: object) -> str:
    if not isinstance(value, str) or not is_valid_ifname(value):
        raise InvalidNftValue(f"{value!r} is not a valid interface name")
    return value


def _op(op: str) -> str:
    if op not in _OPS:
        raise InvalidNftValue(f"unknown comparison {op!r}")
    return op


def _addr(value: object) -> Address:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise InvalidNftValue(f"{value!r} is not an ipaddress address")
    return value


def _family_of(value: Address | Prefix) -> Literal["ip", "ip6"]:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address
                      | ipaddress.IPv4Network | ipaddress.IPv6Network):
        raise InvalidNftValue(f"{value!r} is not an ipaddress address or network")
    return "ip" if value.version == 4 else "ip6"


def address_value(value: Address | Prefix) -> Any:
    """An address or prefix as nft's JSON right-hand side."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        if value.prefixlen == value.max_prefixlen:
            return str(value.network_address)
        return {"prefix": {"addr": str(value.network_address), "len": value.prefixlen}}
    return str(_addr(value))


# --- objects and commands ---------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """A base chain's hook: ``type`` filter|nat|route, hook name, priority, policy."""

    type: Literal["filter", "nat", "route"]
    hook: str
    priority: int | str
    policy: Literal["accept", "drop"] = "accept"

    def fields(self) -> dict[str, Any]:
        if self.hook not in _HOOKS:
            raise InvalidNftValue(f"unknown hook {self.hook!r}")
        prio = self.priority
        if isinstance(prio, str):
            if prio not in _PRIORITIES:
                raise InvalidNftValue(f"unknown priority {prio!r}")
            prio = _PRIORITIES[prio]
        return {"type": self.type, "hook": self.hook, "prio": _int(prio, "priority", -1000, 1000),
                "policy": self.policy}


def nat_hook(hook: str, priority: int | str | None = None) -> Hook:
    default = "srcnat" if hook in ("postrouting", "input") else "dstnat"
    return Hook("nat", hook, default if priority is None else priority)


def filter_hook(hook: str, priority: int | str = "filter",
                policy: Literal["accept", "drop"] = "accept") -> Hook:
    return Hook("filter", hook, priority, policy)


@dataclass(frozen=True)
class Rule:
    exprs: tuple[Expr, ...]
    comment: str | None = None


def rule(*exprs: Expr, comment: str | None = None) -> Rule:
    """One rule: its expressions in order (matches, then a statement)."""
    if comment is not None and not _COMMENT.fullmatch(comment):
        raise InvalidNftValue(f"comment {comment!r} has characters pycnm does not write")
    return Rule(tuple(exprs), comment)


@dataclass
class Chain:
    """A chain with its rules; ``hook`` None makes a regular chain (a jump target)."""

    name: str
    hook: Hook | None = None
    rules: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class NamedSet:
    """A named set (or map with ``map_type``) declared in the table."""

    name: str
    type: str | tuple[str, ...]
    elements: tuple[Any, ...] = ()
    map_type: str | None = None
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds, for dynamic sets


_TYPES = {"ipv4_addr", "ipv6_addr", "inet_proto", "inet_service", "ifname", "mark", "verdict",
          "ether_addr"}


def _set_type(value: str | tuple[str, ...]) -> Any:
    parts = (value,) if isinstance(value, str) else value
    for part in parts:
        if part not in _TYPES:
            raise InvalidNftValue(f"unknown set type {part!r}")
    return value if isinstance(value, str) else list(value)


def table_obj(family: Family, name: str) -> dict[str, Any]:
    if family not in _FAMILIES:
        raise InvalidNftValue(f"unknown family {family!r}")
    return {"table": {"family": family, "name": _name(name, "table")}}


def chain_obj(family: Family, table: str, chain: Chain) -> dict[str, Any]:
    body: dict[str, Any] = {"family": family, "table": _name(table, "table"),
                            "name": _name(chain.name, "chain")}
    if chain.hook is not None:
        body.update(chain.hook.fields())
    return {"chain": body}


def rule_obj(family: Family, table: str, chain: str, item: Rule) -> dict[str, Any]:
    body: dict[str, Any] = {"family": family, "table": _name(table, "table"),
                            "chain": _name(chain, "chain"), "expr": list(item.exprs)}
    if item.comment:
        body["comment"] = item.comment
    return {"rule": body}


def set_obj(family: Family, table: str, item: NamedSet) -> dict[str, Any]:
    body: dict[str, Any] = {"family": family, "table": _name(table, "table"),
                            "name": _name(item.name, "set"), "type": _set_type(item.type)}
    if item.map_type is not None:
        body["map"] = _set_type(item.map_type)
    if item.flags:
        body["flags"] = list(item.flags)
    if item.timeout is not None:
        body["timeout"] = _int(item.timeout, "timeout", 1, 86400 * 365)
    if item.elements:
        body["elem"] = list(item.elements)
    return {"map" if item.map_type is not None else "set": body}


def replace_table(
    family: Family, name: str, chains: Sequence[Chain], sets: Sequence[NamedSet] = ()
) -> list[Command]:
    """Commands that make table ``family name`` hold exactly ``sets`` and ``chains``, in one
    transaction: the table is added (so the delete cannot fail), deleted, and built anew."""
    table = table_obj(family, name)
    return [{"add": table}, {"delete": table}, {"add": table},
            *_contents(family, name, chains, sets)]


def create_table(
    family: Family, name: str, chains: Sequence[Chain], sets: Sequence[NamedSet] = ()
) -> list[Command]:
    """Commands that make table ``family name`` with ``sets`` and ``chains`` if there is no
    such table, and fail (nothing made) if there is one. Much cheaper for the kernel than
    ``replace_table`` where the table is new: a transaction that deletes a table (even one
    it just added) costs the commit ~13 ms of waiting here, one that only adds ~2 ms."""
    return [{"create": table_obj(family, name)}, *_contents(family, name, chains, sets)]


def _contents(family: Family, name: str, chains: Sequence[Chain],
              sets: Sequence[NamedSet]) -> list[Command]:
    # Chains before sets: a verdict map's elements jump to chains that must exist.
    commands: list[Command] = [{"add": chain_obj(family, name, c)} for c in chains]
    commands += [{"add": set_obj(family, name, s)} for s in sets]
    for chain in chains:
        commands += [{"add": rule_obj(family, name, chain.name, r)} for r in chain.rules]
    return commands


def delete_table(family: Family, name: str) -> list[Command]:
    """Commands that remove the table whether or not it exists."""
    table = table_obj(family, name)
    return [{"add": table}, {"delete": table}]


# --- matches ----------------------------------------------------------------------------


def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": _op(op), "left": left, "right": right}}


def meta(key: Literal["iifname", "oifname", "l4proto", "nfproto", "mark", "iif", "oif"]) -> Expr:
    return {"meta": {"key": key}}


def match_ifname(direction: Literal["iifname", "oifname"], names: str | Iterable[str],
                 op: str = "==") -> Expr:
    """``iifname NAME`` or ``oifname { A, B }``."""
    if isinstance(names, str):
        return match(meta(direction), _ifname(names), op)
    if not isinstance(names, Iterable):
        raise InvalidNftValue(f"{names!r} is not an interface name or a list of them")
    values = sorted({_ifname(n) for n in names})
    if not values:
        raise InvalidNftValue("an interface set needs at least one name")
    return match(meta(direction), {"set": values}, op)


def match_addr(direction: Literal["saddr", "daddr"], value: Address | Prefix,
               op: str = "==") -> Expr:
    """``ip daddr 10.1.0.2`` / ``ip6 saddr fd00::/64`` (the family follows the value)."""
    return match({"payload": {"protocol": _family_of(value), "field": direction}},
                 address_value(value), op)


def match_port(proto: L4Proto, direction: Literal["sport", "dport"], port: int | range,
               op: str = "==") -> Expr:
    """``tcp dport 80`` or ``udp dport 8000-8010`` (a ``range`` of ports, end exclusive)."""
    if proto not in _L4:
        raise InvalidNftValue(f"unknown protocol {proto!r}")
    right: Any
    if isinstance(port, range):
        if port.step != 1 or len(port) == 0:
            raise InvalidNftValue(f"bad port range {port!r}")
        right = {"range": [_port(port.start), _port(port.stop - 1)]}
        if port.start == port.stop - 1:
            right = port.start
    else:
        right = _port(port)
    return match({"payload": {"protocol": proto, "field": direction}}, right, op)


def match_l4proto(proto: L4Proto) -> Expr:
    if proto not in _L4:
        raise InvalidNftValue(f"unknown protocol {proto!r}")
    return match(meta("l4proto"), proto)


def match_nfproto(family: Literal["ipv4", "ipv6"]) -> Expr:
    return match(meta("nfproto"), family)


def match_local_daddr() -> Expr:
    """``fib daddr type local``: the packet is for one of this namespace's addresses."""
    return match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


def match_ct_state(states: Iterable[Literal["new", "established", "related", "invalid",
                                            "untracked"]]) -> Expr:
    return match({"ct": {"key": "state"}}, {"set": sorted(set(states))}, "in")


def match_mark(value: int, op: str = "==") -> Expr:
    return match(meta("mark"), _int(value, "mark", 0, 2**32 - 1), op)


def match_addr_in(direction: Literal["saddr", "daddr"], values: Iterable[Address],
                  family: Literal["ip", "ip6"] = "ip") -> Expr:
    """``ip daddr { A, B }``: one of several addresses (all of ``family``)."""
    found = sorted({_addr(v) for v in values}, key=lambda a: a.packed)
    if not found:
        raise InvalidNftValue("an address set needs at least one address")
    if any(_family_of(a) != family for a in found):
        raise InvalidNftValue(f"every address of the set must be of family {family}")
    return match({"payload": {"protocol": family, "field": direction}},
                 {"set": [str(a) for a in found]})


def match_ct_status(status: Literal["dnat", "snat"]) -> Expr:
    """``ct status dnat``: the connection's destination (source) was translated."""
    if status not in ("dnat", "snat"):
        raise InvalidNftValue(f"unknown conntrack status {status!r}")
    return match({"ct": {"key": "status"}}, status, "in")


def concat(*exprs: Expr) -> Expr:
    """``A . B . C``: a concatenated key (for a lookup in a map of concatenated keys)."""
    if len(exprs) < 2:
        raise InvalidNftValue("a concatenation needs at least two expressions")
    return {"concat": list(exprs)}


def service_key(address: Address, proto: L4Proto, port: int) -> Any:
    """A map key ``ADDR . PROTO . PORT`` for a map of type
    ``ipv4_addr . inet_proto . inet_service`` (kube-proxy's service-ips map)."""
    if proto not in _L4:
        raise InvalidNftValue(f"unknown protocol {proto!r}")
    return {"concat": [str(_addr(address)), proto, _port(port)]}


def service_key_expr(family: Literal["ip", "ip6"] = "ip") -> Expr:
    """``ip daddr . meta l4proto . th dport``: the key ``service_key`` values match."""
    return concat(payload(family, "daddr"), meta("l4proto"), payload("th", "dport"))


def goto_element(key: Any, chain: str) -> list[Any]:
    """One element of a verdict map: ``KEY : goto CHAIN``."""
    return [key, goto(chain)]


def vmap_lookup(key: Expr, map_name: str) -> Expr:
    """``KEY vmap @MAP``: the verdict the named map holds for the key (none: go on)."""
    return {"vmap": {"key": key, "data": "@" + _name(map_name, "map")}}


# --- statements -------------------------------------------------------------------------


def accept() -> Expr:
    return {"accept": None}


def drop() -> Expr:
    return {"drop": None}


def counter() -> Expr:
    return {"counter": None}


def masquerade() -> Expr:
    return {"masquerade": None}


def ret() -> Expr:
    """``return``: leave this chain (from a chain reached by ``goto``: the base chain's
    policy decides)."""
    return {"return": None}


def jump(chain: str) -> Expr:
    return {"jump": {"target": _name(chain, "chain")}}


def goto(chain: str) -> Expr:
    return {"goto": {"target": _name(chain, "chain")}}


def reject(kind: Literal["tcp reset", "icmp", "icmpx"] = "icmpx") -> Expr:
    if kind == "tcp reset":
        return {"reject": {"type": "tcp reset"}}
    if kind == "icmpx":
        return {"reject": {"type": "icmpx", "expr": "port-unreachable"}}
    return {"reject": {"type": "icmp", "expr": "port-unreachable"}}


def set_mark(value: int) -> Expr:
    return {"mangle": {"key": {"meta": {"key": "mark"}},
                       "value": _int(value, "mark", 0, 2**32 - 1)}}


def dnat(addr: Address, port: int | None = None) -> Expr:
    """``dnat ip to ADDR[:PORT]`` (the family follows the address)."""
    body: dict[str, Any] = {"family": _family_of(_addr(addr)), "addr": str(addr)}
    if port is not None:
        body["port"] = _port(port)
    return {"dnat": body}


def snat(addr: Address | None = None, port: int | None = None,
         family: Literal["ip", "ip6"] | None = None) -> Expr:
    """``snat ip to [ADDR][:PORT]``; with no address only the port is rewritten."""
    body: dict[str, Any] = {}
    if addr is not None:
        body["family"] = _family_of(_addr(addr))
        body["addr"] = str(addr)
    elif family is not None:
        body["family"] = family
    if port is not None:
        body["port"] = _port(port)
    if not body.get("addr") and "port" not in body:
        raise InvalidNftValue("snat needs an address or a port")
    return {"snat": body}


def numgen_vmap(mode: Literal["inc", "random"], targets: Sequence[str]) -> Expr:
    """``numgen inc|random mod N vmap { 0 : goto T0, ... }``: spread over chains."""
    if not targets:
        raise InvalidNftValue("a numgen map needs at least one target")
    return {"vmap": {
        "key": {"numgen": {"mode": mode, "mod": len(targets), "offset": 0}},
        "data": {"set": [[i, goto(t)] for i, t in enumerate(targets)]},
    }}


def jhash_vmap(field_expr: Expr, targets: Sequence[str], seed: int = 0) -> Expr:
    """``jhash FIELD mod N seed S vmap { ... }``: the same field value, the same target."""
    if not targets:
        raise InvalidNftValue("a hash map needs at least one target")
    return {"vmap": {
        "key": {"jhash": {"expr": field_expr, "mod": len(targets),
                          "seed": _int(seed, "seed", 0, 2**32 - 1), "offset": 0}},
        "data": {"set": [[i, goto(t)] for i, t in enumerate(targets)]},
    }}


def _address_map(key: Expr, addresses: Sequence[Address]) -> Expr:
    if not addresses:
        raise InvalidNftValue("an address map needs at least one address")
    return {"map": {"key": key, "data": {"set": [[i, str(_addr(a))]
                                                 for i, a in enumerate(addresses)]}}}


def dnat_numgen(mode: Literal["inc", "random"], addresses: Sequence[Address]) -> Expr:
    """``dnat to numgen inc|random mod N map { 0 : A, 1 : B, ... }``: one rule spreads
    connections over N addresses (the port stays)."""
    if mode not in ("inc", "random"):
        raise InvalidNftValue(f"unknown numgen mode {mode!r}")
    key = {"numgen": {"mode": mode, "mod": len(addresses), "offset": 0}}
    return {"dnat": {"addr": _address_map(key, addresses)}}


def dnat_jhash(field_expr: Expr, addresses: Sequence[Address], seed: int = 0) -> Expr:
    """``dnat to jhash FIELD mod N seed S map { 0 : A, ... }``: the same field value, the
    same address."""
    key = {"jhash": {"expr": field_expr, "mod": len(addresses),
                     "seed": _int(seed, "seed", 0, 2**32 - 1), "offset": 0}}
    return {"dnat": {"addr": _address_map(key, addresses)}}


def payload(protocol: Literal["ip", "ip6", "tcp", "udp", "sctp", "th"], field_name: str) -> Expr:
    if field_name not in ("saddr", "daddr", "sport", "dport"):
        raise InvalidNftValue(f"unknown payload field {field_name!r}")
    return {"payload": {"protocol": protocol, "field": field_name}}
