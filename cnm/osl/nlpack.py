"""The rtnetlink requests of an attach, packed with ``struct``, byte for byte as pyroute2's
message classes pack them.

Why: building and encoding the six requests of one attach (the veth, its host end up,
the inside end's address, up and default route) through pyroute2's ``ifinfmsg``,
``ifaddrmsg`` and ``rtmsg`` took ~0.8-1.5 ms of Python per sandbox here, more than the
kernel's work on most of them. This module packs the few message kinds and attributes
those requests use (``pack``); anything else (``NotPacked``) is left to pyroute2, so a
caller falls back to it. ``tests/unit/test_nlpack.py`` checks the bytes against
pyroute2's for every kind.

A body is what follows the 16-byte netlink header (``Rtnl.run`` adds it): the family
header, then the attributes, each padded to 4 bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any

IFINFO = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# family, dst_len, src_len, tos, table, protocol, scope, type; flags
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")  # family, (pad), index, state, flags, type
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")


class NotPacked(Exception):
    """A field or attribute this module does not pack (pyroute2 does)."""


def _attr(kind: int, payload: bytes) -> bytes:
    return _ATTR.pack(_ATTR.size + len(payload), kind) + payload + bytes(-len(payload) % 4)


def _asciiz(value: Any) -> bytes:
    if not isinstance(value, str):
        raise NotPacked("not text")
    return value.encode() + b"\0"


def _u32(value: Any) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise NotPacked("not a u32")
    return _U32.pack(value)


def _mac(value: Any) -> bytes:
    if not isinstance(value, str):
        raise NotPacked("not a MAC")
    raw = bytes(int(part, 16) for part in value.split(":"))
    if len(raw) != 6:
        raise NotPacked("not a MAC")
    return raw


def _address(value: Any) -> bytes:
    if not isinstance(value, str):
        raise NotPacked("not an address")
    return ipaddress.ip_address(value).packed


def _nested(table: Mapping[str, tuple[int, Any]], value: Any) -> bytes:
    _check_nest(value)
    return _attrs(table, value["attrs"])


def _check_nest(value: Any) -> None:
    """A nest is {"attrs": [...]} (pyroute2 adds a "header" when it encodes one: its type
    and length, which are packed anew here)."""
    if not isinstance(value, dict) or "attrs" not in value or set(value) - {"attrs", "header"}:
        raise NotPacked("not a nest")


def _attrs(table: Mapping[str, tuple[int, Any]], attrs: Iterable[tuple[str, Any]]) -> bytes:
    out = []
    for pair in attrs:
        name, value = pair
        if name not in table:
            raise NotPacked(name)
        kind, pack = table[name]
        out.append(_attr(kind, pack(value)))
    return b"".join(out)


def _peer(value: Any) -> bytes:
    """VETH_INFO_PEER: an ifinfomsg of its own (all zero), then the peer's attributes."""
    return IFINFO.pack(0, 0, 0, 0, 0) + _nested(_LINK, value)


_INET6 = {"IFLA_INET6_ADDR_GEN_MODE": (8, lambda v: bytes([v]) if v in (0, 1, 2, 3)
                                       else _raise("not a mode"))}
_AF_SPEC = {"AF_INET6": (socket.AF_INET6, lambda v: _nested(_INET6, v))}
_VETH = {"VETH_INFO_PEER": (1, _peer)}
_INFO = {"IFLA_INFO_KIND": (1, _asciiz),
         "IFLA_INFO_DATA": (2, lambda v: _nested(_VETH, v))}


def _linkinfo(value: Any) -> bytes:
    """IFLA_LINKINFO: a kind, and data only for a veth (its peer)."""
    _check_nest(value)
    kinds = [v for name, v in value["attrs"] if name == "IFLA_INFO_KIND"]
    if any(name == "IFLA_INFO_DATA" for name, _ in value["attrs"]) and kinds != ["veth"]:
        raise NotPacked("data of a link kind other than veth")
    return _attrs(_INFO, value["attrs"])


_LINK: dict[str, tuple[int, Any]] = {
    "IFLA_ADDRESS": (1, _mac),
    "IFLA_IFNAME": (3, _asciiz),
    "IFLA_MTU": (4, _u32),
    "IFLA_MASTER": (10, _u32),
    "IFLA_LINKINFO": (18, _linkinfo),
    "IFLA_AF_SPEC": (26, lambda v: _nested(_AF_SPEC, v)),
    "IFLA_GROUP": (27, _u32),
    "IFLA_NET_NS_FD": (28, _u32),
}
_ADDR = {"IFA_ADDRESS": (1, _address), "IFA_LOCAL": (2, _address), "IFA_FLAGS": (8, _u32)}
_ROUTE = {"RTA_DST": (1, _address), "RTA_OIF": (4, _u32), "RTA_GATEWAY": (5, _address)}
_NEIGH = {"NDA_DST": (1, _address), "NDA_LLADDR": (2, _mac)}


def _raise(why: str) -> bytes:
    raise NotPacked(why)


def link(index: int, flags: int, change: int, attrs: Iterable[tuple[str, Any]]) -> bytes:
    """An ifinfomsg (family AF_UNSPEC) with ``attrs`` (pyroute2's names and values)."""
    return IFINFO.pack(0, 0, index, flags, change) + _attrs(_LINK, attrs)


def addr(family: int, prefixlen: int, index: int, attrs: Iterable[tuple[str, Any]]) -> bytes:
    """An ifaddrmsg with ``attrs``."""
    return IFADDR.pack(family, prefixlen, 0, 0, index) + _attrs(_ADDR, attrs)


def route(family: int, dst_len: int, table: int, proto: int, kind: int,
          attrs: Iterable[tuple[str, Any]]) -> bytes:
    """An rtmsg (scope universe, no flags) with ``attrs``."""
    return RTMSG.pack(family, dst_len, 0, 0, table, proto, 0, kind, 0) + _attrs(_ROUTE, attrs)


def neigh(family: int, index: int, state: int, flags: int,
          attrs: Iterable[tuple[str, Any]]) -> bytes:
    """An ndmsg (a neighbour, or with AF_BRIDGE a forwarding entry) with ``attrs``."""
    return NDMSG.pack(family, index, state, flags, 0) + _attrs(_NEIGH, attrs)
