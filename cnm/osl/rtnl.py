"""A lean rtnetlink channel for the attach path: pyroute2's messages on a plain socket.

pyroute2 0.9's ``IPRoute`` runs every request through an asyncio event loop: opening one
costs ~0.3 ms and each request ~0.1 ms on top of the kernel's work. An attach needs a
handful of requests that only want an acknowledgement, so here they are built with
pyroute2's message classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``), written to the socket
together in one datagram (the kernel runs them in order, acknowledging each) and their
acknowledgements read back. Anything that reads state back keeps using ``IPRoute``.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from pyroute2.netlink import nlmsg as NetlinkMessage
from pyroute2.netlink.exceptions import NetlinkError

# Message types and flags as ``ip`` sends them.
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 20, 24
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
SET = NLM_F_REQUEST | NLM_F_ACK
CREATE = SET | NLM_F_CREATE | NLM_F_EXCL
REPLACE = SET | NLM_F_CREATE | NLM_F_REPLACE
APPEND = SET | NLM_F_CREATE | NLM_F_APPEND

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_DUMP = 0x300
_RTM_GETLINK = 18
_IFLA_IFNAME, _IFLA_GROUP = 3, 27
_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
_ERROR_CODE = struct.Struct("=i")
_ATTR = struct.Struct("=HH")  # an rtattr: length, type
_U32 = struct.Struct("=I")


@dataclass
class Request:
    """One request: a pyroute2 message with its fields and attributes set, or its body
    packed already (``cnm.osl.nlpack``: what follows the netlink header)."""

    msg: NetlinkMessage | bytes
    msg_type: int
    flags: int
    what: str  # for the error message: "add address 10.0.0.2/24"
    tolerated: frozenset[int] = field(default_factory=frozenset)  # errnos meaning "done"


class RequestFailed(NetlinkError):
    """The kernel refused ``request``; ``code`` is the errno."""

    def __init__(self, code: int, request: Request) -> None:
        super().__init__(code, os.strerror(code))
        self.request = request


class Rtnl:
    """Send requests on one NETLINK_ROUTE socket (already bound to its namespace) and
    wait for each acknowledgement. Not thread-safe: one owner at a time, as a handle."""

    def __init__(self, sock: socket.socket, timeout: float = 30.0) -> None:
        self.sock = sock
        self.sock.bind((0, 0))
        self.sock.settimeout(timeout)  # the kernel always answers; never hang if it did not
        self._sequence = itertools.count(1)

    def run(self, requests: Sequence[Request]) -> None:
        """Run ``requests`` in order, in one datagram; raise ``RequestFailed`` for the first
        one refused with an errno it does not tolerate (the later ones still ran)."""
        if not requests:
            return
        pending: dict[int, Request] = {}
        chunks = []
        for request in requests:
            seq = next(self._sequence)
            msg = request.msg
            if isinstance(msg, bytes):
                chunks.append(_HEADER.pack(_HEADER.size + len(msg), request.msg_type,
                                           request.flags, seq, 0) + msg)
            else:
                header = msg["header"]
                header["type"], header["flags"] = request.msg_type, request.flags
                header["sequence_number"], header["pid"] = seq, 0
                msg.encode()
                chunks.append(msg.data)
            pending[seq] = request
        self.sock.send(b"".join(chunks))
        failure: RequestFailed | None = None
        while pending:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, seq, _port = _HEADER.unpack_from(data, offset)
                if msg_type == _NLMSG_ERROR and seq in pending:
                    request = pending.pop(seq)
                    code = -_ERROR_CODE.unpack_from(data, offset + _HEADER.size)[0]
                    if code and code not in request.tolerated and failure is None:
                        failure = RequestFailed(code, request)
                offset += (length + 3) & ~3 if length else len(data)
        if failure is not None:
            raise failure

    def get_link(self, name: str) -> bytes:
        """The kernel's RTM_NEWLINK message about the link called ``name`` (one lookup by
        name, no dump), undecoded; NetlinkError with the errno (ENODEV) if there is none.
        Callers decode it with pyroute2's ``ifinfmsg``, as ``IPRoute`` would have, without
        loading ``IPRoute`` itself (~40-80 ms of imports for a CLI call)."""
        seq = next(self._sequence)
        encoded = name.encode()
        attr = _ATTR.pack(_ATTR.size + len(encoded) + 1, _IFLA_IFNAME) + encoded + b"\0"
        attr += bytes(-len(attr) % 4)
        self.sock.send(_HEADER.pack(_HEADER.size + 16 + len(attr), _RTM_GETLINK, NLM_F_REQUEST,
                                    seq, 0) + bytes(16) + attr)
        for msg_type, data, offset, length in self._replies(seq, 65536):
            if msg_type == RTM_NEWLINK:
                return data[offset:offset + length]
        raise NetlinkError(0, "no answer about the link")  # the kernel always answers

    def link_groups(self) -> set[int]:
        """The group of every link in the namespace (``ip link``'s "group"), from one dump
        read by hand: decoding 1000 links with pyroute2 would cost more than it saves."""
        seq = next(self._sequence)
        # RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, then an empty ifinfomsg (16 bytes)
        self.sock.send(_HEADER.pack(_HEADER.size + 16, _RTM_GETLINK, NLM_F_REQUEST | _NLM_F_DUMP,
                                    seq, 0) + bytes(16))
        groups: set[int] = set()
        for msg_type, data, offset, length in self._replies(seq, 1 << 20):
            if msg_type == RTM_NEWLINK:
                groups.update(_u32_attrs(data, offset + _HEADER.size + 16, offset + length,
                                         _IFLA_GROUP))
        return groups

    def _replies(self, seq: int, size: int) -> Iterator[tuple[int, bytes, int, int]]:
        """(type, datagram, offset, length) of each message answering request ``seq``,
        until its NLMSG_DONE (a dump) or the caller stops; its NLMSG_ERROR raises."""
        while True:
            data = self.sock.recv(size)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, msg_seq, _port = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(0, "a malformed netlink message")
                if msg_seq == seq:
                    if msg_type == _NLMSG_DONE:
                        return
                    if msg_type == _NLMSG_ERROR:
                        code = -_ERROR_CODE.unpack_from(data, offset + _HEADER.size)[0]
                        raise NetlinkError(code, os.strerror(code))
                    yield msg_type, data, offset, length
                offset += (length + 3) & ~3


def _u32_attrs(data: bytes, start: int, end: int, wanted: int) -> list[int]:
    """The values of the top-level u32 attributes of type ``wanted`` in data[start:end]."""
    found = []
    while start + 4 <= end:
        size, kind = _ATTR.unpack_from(data, start)
        if size < 4:
            break
        if kind & 0x3FFF == wanted and size >= 8:
            found.append(_U32.unpack_from(data, start + 4)[0])
        start += (size + 3) & ~3
    return found
