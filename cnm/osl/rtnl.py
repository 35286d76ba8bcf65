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
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink import nlmsg as NetlinkMessage
from pyroute2.netlink.exceptions import NetlinkError

# Message types and flags as ``ip`` sends them.
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
SET = NLM_F_REQUEST | NLM_F_ACK
CREATE = SET | NLM_F_CREATE | NLM_F_EXCL
REPLACE = SET | NLM_F_CREATE | NLM_F_REPLACE

_NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
_ERROR_CODE = struct.Struct("=i")


@dataclass
class Request:
    """One request: a pyroute2 message with its fields and attributes set."""

    msg: NetlinkMessage
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
            header = request.msg["header"]
            header["type"], header["flags"] = request.msg_type, request.flags
            header["sequence_number"], header["pid"] = seq, 0
            request.msg.encode()
            chunks.append(request.msg.data)
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
