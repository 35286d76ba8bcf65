"""One query in, one reply out, from one sandbox's view (no sockets, no state).

``handle`` returns a ``Reply`` (answered here), ``FORWARD`` (a name this sandbox's
networks do not know: the caller forwards it upstream, or fails it when the sandbox may
not forward), or None (not a query: dropped). Messages are parsed and built with
dnspython; a reply is kept as bytes without the query's ID, so the server can cache it
by the query's bytes and send it again with another ID.

What is answered here (as Docker's resolver does, with the differences noted):
- A and AAAA for a known name: all its addresses on the first network that knows it, in
  a new random order for every reply (round robin); a known name without an address of
  the asked family, or asked for another type, gets an empty NOERROR answer (Docker
  forwards the other types; the name is ours, so the answer is ours too);
- PTR for an address of a known endpoint: ``NAME.NETWORK`` (the sandbox's name);
- malformed queries: FORMERR; opcodes other than QUERY: NOTIMP;
- everything else goes upstream.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.reversename
import dns.rrset

from cnm.dns.names import TTL
from cnm.dns.registry import IPAddress, SandboxView

UDP_MIN = 512
UDP_MAX = 4096
TCP_MAX = 65535
FORWARD = "forward"


@dataclass(frozen=True)
class Reply:
    """A reply without its 2-byte ID: ``head`` (header after the ID, and the question),
    the answer records (shuffled for every reply when there are several), ``tail``."""

    head: bytes
    records: tuple[bytes, ...] = ()
    tail: bytes = b""
    cacheable: bool = True

    def wire(self, qid: bytes) -> bytes:
        if len(self.records) < 2:
            return qid + self.head + b"".join(self.records) + self.tail
        order = list(self.records)
        random.shuffle(order)
        return qid + self.head + b"".join(order) + self.tail


def header_only(data: bytes, rcode: int) -> Reply | None:
    """A reply of just a header (FORMERR for a query too broken to parse): opcode and RD
    copied, no sections. None when there is not even a whole header."""
    if len(data) < 12:
        return None
    flags = 0x80 | (data[2] & 0x79)  # QR, the opcode and RD as asked
    return Reply(bytes([flags, 0x80 | (rcode & 0x0F)]) + bytes(8), cacheable=False)


def handle(view: SandboxView, data: bytes, tcp: bool = False) -> Reply | str | None:
    if len(data) < 12 or data[2] & 0x80:
        return None  # not even a header, or a response: never answer those
    try:
        query = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, IndexError):
        return header_only(data, dns.rcode.FORMERR)
    if query.opcode() != dns.opcode.QUERY:
        return _status(query, dns.rcode.NOTIMP, tcp)
    if len(query.question) != 1:
        return _status(query, dns.rcode.FORMERR, tcp)
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return FORWARD
    qtype = question.rdtype
    if qtype == dns.rdatatype.PTR:
        address = _reverse(question.name)
        found = view.reverse(address) if address is not None else None
        if found is None:
            return FORWARD
        return _answer(query, [dns.rrset.from_text(question.name, TTL, "IN", "PTR",
                                                   found + ".")], tcp)
    name = question.name.to_text(omit_final_dot=True).lower()
    addresses = view.lookup(name)
    if addresses is None:
        return FORWARD
    wanted = {dns.rdatatype.A: (4,), dns.rdatatype.AAAA: (6,),
              dns.rdatatype.ANY: (4, 6)}.get(qtype, ())
    rrsets = []
    for version in wanted:
        picked = [a for a in addresses if a.version == version]
        if picked:
            rrsets.append(_rrset(question.name, picked))
    return _answer(query, rrsets, tcp, shuffle=qtype != dns.rdatatype.ANY)


def failure(data: bytes, rcode: int, tcp: bool = False) -> Reply | None:
    """SERVFAIL or REFUSED for a query that parsed (a header-only reply otherwise)."""
    try:
        query = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, IndexError):
        return header_only(data, rcode)
    return _status(query, rcode, tcp)


def _rrset(name: dns.name.Name, addresses: list[IPAddress]) -> dns.rrset.RRset:
    # Rdata built from the address, not parsed from text (ten times cheaper).
    v4 = addresses[0].version == 4
    rdtype = dns.rdatatype.A if v4 else dns.rdatatype.AAAA
    make = dns.rdtypes.IN.A.A if v4 else dns.rdtypes.IN.AAAA.AAAA
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
    for address in addresses:
        rrset.add(make(dns.rdataclass.IN, rdtype, str(address)), TTL)
    return rrset


def _reverse(name: dns.name.Name) -> IPAddress | None:
    try:
        return ipaddress.ip_address(dns.reversename.to_address(name))
    except (dns.exception.DNSException, ValueError):
        return None


def _max_size(query: dns.message.Message, tcp: bool) -> int:
    if tcp:
        return TCP_MAX
    if query.edns >= 0:
        return max(UDP_MIN, min(int(query.payload), UDP_MAX))
    return UDP_MIN


def _response(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    return response


def _status(query: dns.message.Message, rcode: int, tcp: bool) -> Reply:
    response = _response(query)
    response.set_rcode(dns.rcode.Rcode(rcode))
    return Reply(response.to_wire(max_size=_max_size(query, tcp))[2:])


def _answer(query: dns.message.Message, rrsets: list[dns.rrset.RRset], tcp: bool,
            shuffle: bool = True) -> Reply:
    response = _response(query)
    response.answer.extend(rrsets)
    try:
        wire = response.to_wire(max_size=_max_size(query, tcp))
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC  # the client asks again over TCP
        return Reply(response.to_wire(max_size=_max_size(query, tcp))[2:])
    if not shuffle or len(rrsets) != 1 or len(rrsets[0]) < 2:
        return Reply(wire[2:])
    # Every record of one type has the same length (the owner name is a compression
    # pointer), so the records can be cut out and shuffled for each reply.
    count = len(rrsets[0])
    start = _question_end(wire)
    size = _record_size(wire, start)
    end = start + size * count
    records = tuple(wire[start + i * size:start + (i + 1) * size] for i in range(count))
    return Reply(wire[2:start], records, wire[end:])


def _question_end(wire: bytes) -> int:
    """Offset of the answer section: after the header and the one question."""
    offset = 12
    while wire[offset]:
        offset += 1 + wire[offset]
    return offset + 1 + 4


def _record_size(wire: bytes, start: int) -> int:
    """Length of the record at ``start`` (owner name as a 2-byte pointer)."""
    if wire[start] & 0xC0 != 0xC0:
        raise ValueError("answer record without a compressed owner name")
    rdlength = int.from_bytes(wire[start + 10:start + 12], "big")
    return 12 + rdlength
