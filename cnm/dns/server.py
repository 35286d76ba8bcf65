"""One event loop that serves every sandbox's resolver sockets, and the forwarding.

Design notes
------------
One thread holds an epoll set with each served sandbox's UDP socket, its TCP listening
socket, the forwarding sockets and a wake-up pipe. A readable UDP socket is drained (up to
``BATCH`` queries per turn, so one busy sandbox cannot starve the others). The hot path is a
dictionary: each sandbox keeps the replies it made, keyed by the query's bytes after the
ID, and sends a cached one back with the new query's ID (records shuffled for every reply
when there are several). The cache is emptied whenever the names change. Only a query
seen for the first time is parsed (``cnm.dns.answer``). Measured against a thread per
sandbox, and why this shape: docs/dns.md.

Forwarding (UDP) never blocks the loop: the query goes out on a socket of the namespace
that must dial the server (the host's for the host's servers, the sandbox's for its own
``--dns`` servers) under a fresh random ID; the pending entry remembers the client and the
original ID. An answer is accepted only from the server asked, with the ID given and the
question asked. A server that does not answer in its share of the timeout, or answers
SERVFAIL or REFUSED, passes the query to the next one; when none is left the client gets
SERVFAIL. At most ``MAX_IN_FLIGHT`` queries wait at a time: beyond, REFUSED at once (as
Docker). TCP connections (rare: answers too big for UDP) are served by short-lived worker
threads, at most ``TCP_WORKERS`` at a time, with blocking I/O under timeouts.

Everything the loop needs from outside (new sockets, a new snapshot, new upstream servers)
arrives as a command through a queue and the wake-up pipe; only the loop touches its
state.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import os
import queue
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.rcode

from cnm.dns import answer
from cnm.dns.names import FORWARD_TIMEOUT, MAX_IN_FLIGHT
from cnm.dns.registry import IPAddress, SandboxView, Snapshot
from cnm.osl import dnsnat

log = logging.getLogger(__name__)

BATCH = 256  # queries read from one socket per turn of the loop
CACHE_LIMIT = 4096  # replies kept per sandbox; the cache is emptied when it is full
SOCKETS_PER_NAMESPACE = 4  # forwarding sockets per namespace and family (port entropy)
TCP_WORKERS = 32
TCP_IDLE = 5.0  # seconds a TCP client may keep a connection without a query
TCP_QUERIES = 64  # queries served on one TCP connection
DNS_PORT = 53
_SERVFAIL = dns.rcode.SERVFAIL
_REFUSED = dns.rcode.REFUSED

Upstream = tuple[IPAddress, str | None]  # (server, namespace to dial it from)


@dataclass
class Listener:
    view: SandboxView
    udp: socket.socket
    tcp: socket.socket
    cache: dict[bytes, Any] = field(default_factory=dict)


@dataclass
class Pending:
    listener: Listener
    client: Any
    qid: bytes
    data: bytes  # the query as the client sent it
    question: bytes  # its question section, lower case, to check answers against
    servers: list[Upstream]
    index: int = -1
    key: tuple[int, bytes] | None = None
    peer: tuple[str, int] | None = None
    attempt: float = 0.0


@dataclass
class Stats:
    queries: int = 0
    local: int = 0
    forwarded: int = 0
    relayed: int = 0
    failed: int = 0
    refused: int = 0
    dropped: int = 0


def _question(data: bytes) -> bytes:
    """The question section of a query (empty if it does not end where it should)."""
    offset = 12
    try:
        while data[offset]:
            if data[offset] & 0xC0:
                return b""
            offset += 1 + data[offset]
    except IndexError:
        return b""
    return data[12:offset + 5].lower()


class Server:
    """The resolver's event loop; ``start`` runs it in a thread of its own."""

    def __init__(self, host_ns: str | None, timeout: float = FORWARD_TIMEOUT,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.host_ns = host_ns
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.stats = Stats()
        self.upstreams: tuple[IPAddress, ...] = ()
        self._listeners: dict[str, Listener] = {}  # by sandbox id
        self._by_fd: dict[int, Callable[[], None]] = {}
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pycnm-dns", daemon=True)
        # forwarding
        self._fwd_sockets: dict[tuple[str | None, int], list[socket.socket]] = {}
        self._pending: dict[tuple[int, bytes], Pending] = {}
        self._deadlines: list[tuple[float, int, Pending, tuple[int, bytes]]] = []
        self._seq = itertools.count()
        self._tcp_slots = threading.BoundedSemaphore(TCP_WORKERS)

    # --- the outside's side (any thread) ----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10)
        for listener in list(self._listeners.values()):
            self._close_listener(listener)
        for socks in self._fwd_sockets.values():
            for sock in socks:
                sock.close()
        self._fwd_sockets.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def call(self, command: Callable[[], None]) -> None:
        """Run ``command`` in the loop's thread, soon."""
        self._commands.put(command)
        self._wake()

    def wait(self, timeout: float = 10.0) -> None:
        """Return once every command given so far has run."""
        done = threading.Event()
        self.call(done.set)
        done.wait(timeout)

    def add(self, view: SandboxView, udp: socket.socket, tcp: socket.socket) -> None:
        self.call(lambda: self._add(view, udp, tcp))

    def remove(self, sandbox_id: str) -> None:
        self.call(lambda: self._remove(sandbox_id))

    def update(self, snapshot: Snapshot, upstreams: tuple[IPAddress, ...],
               changed: Iterable[str] | None = None) -> None:
        """Answer from ``snapshot`` from now on; ``changed``: the only sandboxes whose
        view may differ from the last snapshot's (None: any)."""
        self.call(lambda: self._update(snapshot, upstreams, changed))

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 1.0
            if self._deadlines:
                timeout = max(0.0, min(timeout, self._deadlines[0][0] - time.monotonic()))
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    self._drain_commands()
                    continue
                handler = self._by_fd.get(fd)
                if handler is None:
                    continue
                try:
                    handler()
                except Exception:  # noqa: BLE001 - the loop must outlive any one query
                    log.exception("resolver: error while serving fd %d", fd)
            if self._deadlines:
                self._expire(time.monotonic())

    def _drain_commands(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception:  # noqa: BLE001
                log.exception("resolver: command failed")

    def _add(self, view: SandboxView, udp: socket.socket, tcp: socket.socket) -> None:
        old = self._listeners.get(view.id)
        if old is not None:
            self._close_listener(old)
        listener = Listener(view, udp, tcp)
        self._listeners[view.id] = listener
        self._by_fd[udp.fileno()] = lambda: self._serve_udp(listener)
        self._by_fd[tcp.fileno()] = lambda: self._accept(listener)
        self._epoll.register(udp.fileno(), select.EPOLLIN)
        self._epoll.register(tcp.fileno(), select.EPOLLIN)

    def _remove(self, sandbox_id: str) -> None:
        listener = self._listeners.pop(sandbox_id, None)
        if listener is not None:
            self._close_listener(listener)

    def _close_listener(self, listener: Listener) -> None:
        for sock in (listener.udp, listener.tcp):
            self._forget(sock)
        # Its own upstream sockets (--dns) hold its namespace alive: close them with it.
        if listener.view.dns_servers:
            for key in [k for k in self._fwd_sockets if k[0] == listener.view.netns_path]:
                for sock in self._fwd_sockets.pop(key):
                    self._forget(sock)
        if self._listeners.get(listener.view.id) is listener:
            del self._listeners[listener.view.id]

    def _forget(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0:
            self._by_fd.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        sock.close()

    def _update(self, snapshot: Snapshot, upstreams: tuple[IPAddress, ...],
                changed: Iterable[str] | None) -> None:
        self.upstreams = upstreams
        for sid in self._listeners if changed is None else changed:
            listener = self._listeners.get(sid)
            view = snapshot.sandboxes.get(sid)
            # A sandbox's replies depend on its view only: the same view keeps them.
            if listener is not None and view is not None and view is not listener.view:
                listener.view = view
                listener.cache.clear()

    # --- UDP --------------------------------------------------------------------------------

    def _serve_udp(self, listener: Listener) -> None:
        sock = listener.udp
        cache = listener.cache
        stats = self.stats
        for _ in range(BATCH):
            try:
                data, client = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stats.queries += 1
            outcome = cache.get(data[2:])
            if outcome is None:
                outcome = self._decide(listener, data)
                if outcome is not None and (outcome == answer.FORWARD or outcome.cacheable):
                    if len(cache) >= CACHE_LIMIT:
                        cache.clear()
                    cache[data[2:]] = outcome
            if outcome is None:
                stats.dropped += 1
                continue
            if outcome == answer.FORWARD:
                self._forward(listener, client, data)
                continue
            stats.local += 1
            with contextlib.suppress(OSError):
                sock.sendto(outcome.wire(data[:2]), client)

    def _decide(self, listener: Listener, data: bytes, tcp: bool = False) -> Any:
        """A Reply, FORWARD (only when the sandbox may forward) or None (drop)."""
        view = listener.view
        try:
            outcome = answer.handle(view, data, tcp)
        except Exception:  # noqa: BLE001 - a bug answers SERVFAIL, it does not kill the loop
            log.exception("resolver: cannot answer a query in sandbox %s", view.name)
            return answer.failure(data, _SERVFAIL, tcp)
        if outcome == answer.FORWARD and not view.forward:
            return answer.failure(data, _SERVFAIL, tcp)  # internal only: nothing leaves
        return outcome

    def servers_for(self, view: SandboxView) -> list[Upstream]:
        if view.dns_servers:
            return [(s, view.netns_path) for s in view.dns_servers]
        return [(s, self.host_ns) for s in self.upstreams]

    def _forward(self, listener: Listener, client: Any, data: bytes) -> None:
        servers = self.servers_for(listener.view)
        question = _question(data)
        if not servers or not question:
            self._fail(listener, client, data, _SERVFAIL)
            return
        if len(self._pending) >= self.max_in_flight:
            self.stats.refused += 1
            self._fail(listener, client, data, _REFUSED)
            return
        self.stats.forwarded += 1
        pending = Pending(listener, client, data[:2], data, question, servers)
        self._next_server(pending)

    def _fail(self, listener: Listener, client: Any, data: bytes, rcode: int) -> None:
        self.stats.failed += 1
        reply = answer.failure(data, rcode)
        if reply is not None:
            with contextlib.suppress(OSError):
                listener.udp.sendto(reply.wire(data[:2]), client)

    def _next_server(self, pending: Pending) -> None:
        """Send ``pending`` to its next server, or fail it when none is left."""
        if pending.key is not None:
            self._pending.pop(pending.key, None)
            pending.key = None
        while True:
            pending.index += 1
            if pending.index >= len(pending.servers):
                self._fail(pending.listener, pending.client, pending.data, _SERVFAIL)
                return
            server, ns = pending.servers[pending.index]
            try:
                sock = self._forward_socket(ns, socket.AF_INET if server.version == 4
                                            else socket.AF_INET6)
            except Exception as exc:  # noqa: BLE001 - a namespace gone: try the next server
                log.warning("resolver: no socket to reach %s: %s", server, exc)
                continue
            fd = sock.fileno()
            while True:
                new_id = random.getrandbits(16).to_bytes(2, "big")
                if (fd, new_id) not in self._pending:
                    break
            try:
                sock.sendto(new_id + pending.data[2:], (str(server), DNS_PORT))
            except OSError as exc:
                log.debug("resolver: cannot send to %s: %s", server, exc)
                continue
            share = self.timeout / len(pending.servers)
            pending.key, pending.peer = (fd, new_id), (str(server), DNS_PORT)
            pending.attempt = time.monotonic() + share
            self._pending[pending.key] = pending
            heapq.heappush(self._deadlines, (pending.attempt, next(self._seq), pending,
                                             pending.key))
            return

    def _forward_socket(self, ns: str | None, family: int) -> socket.socket:
        socks = self._fwd_sockets.get((ns, family))
        if socks is None:
            socks = []
            for _ in range(SOCKETS_PER_NAMESPACE):
                sock = dnsnat.open_socket(ns, family)
                sock.setblocking(False)
                sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
                socks.append(sock)
                self._by_fd[sock.fileno()] = functools.partial(self._relay, sock)
                self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._fwd_sockets[(ns, family)] = socks
        return random.choice(socks)

    def _relay(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        for _ in range(BATCH):
            try:
                data, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < 12:
                continue
            pending = self._pending.get((fd, data[:2]))
            if pending is None or pending.peer is None or \
                    (peer[0], peer[1]) != pending.peer or not data[12:].lower().startswith(
                        pending.question):
                continue  # late, spoofed or for another query: ignored
            rcode = data[3] & 0x0F
            if rcode in (_SERVFAIL, _REFUSED) and pending.index + 1 < len(pending.servers):
                self._next_server(pending)
                continue
            self._pending.pop((fd, data[:2]), None)
            pending.key = None
            self.stats.relayed += 1
            with contextlib.suppress(OSError):
                pending.listener.udp.sendto(pending.qid + data[2:], pending.client)

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, pending, key = heapq.heappop(self._deadlines)
            if pending.key != key:
                continue  # answered, or already on its next server
            self._next_server(pending)

    # --- TCP ----------------------------------------------------------------------------

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                conn, _ = listener.tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not self._tcp_slots.acquire(blocking=False):
                conn.close()  # too many at once: the client retries
                continue
            threading.Thread(target=self._serve_tcp, args=(listener, conn),
                             name="pycnm-dns-tcp", daemon=True).start()

    def _serve_tcp(self, listener: Listener, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(TCP_IDLE)
            for _ in range(TCP_QUERIES):
                data = _read_message(conn)
                if data is None:
                    return
                self.stats.queries += 1
                reply = self._tcp_reply(listener, data)
                if reply is not None:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            return
        finally:
            conn.close()
            self._tcp_slots.release()

    def _tcp_reply(self, listener: Listener, data: bytes) -> bytes | None:
        outcome = self._decide(listener, data, tcp=True)
        if outcome is None:
            return None
        if outcome != answer.FORWARD:
            return outcome.wire(data[:2])
        deadline = time.monotonic() + self.timeout
        for server, ns in self.servers_for(listener.view):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got = _exchange_tcp(server, ns, data, remaining)
            except Exception as exc:  # noqa: BLE001 - any failure: the next server
                log.debug("resolver: TCP to %s failed: %s", server, exc)
                continue
            if got[3] & 0x0F in (_SERVFAIL, _REFUSED):
                continue
            return data[:2] + got[2:]
        failed = answer.failure(data, _SERVFAIL, tcp=True)
        return failed.wire(data[:2]) if failed is not None else None


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def _read_message(conn: socket.socket) -> bytes | None:
    head = _read_exactly(conn, 2)
    if head is None:
        return None
    return _read_exactly(conn, int.from_bytes(head, "big"))


def _exchange_tcp(server: IPAddress, ns: str | None, data: bytes, timeout: float) -> bytes:
    family = socket.AF_INET if server.version == 4 else socket.AF_INET6
    sock = dnsnat.open_socket(ns, family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((str(server), DNS_PORT))
        sock.sendall(len(data).to_bytes(2, "big") + data)
        got = _read_message(sock)
    finally:
        sock.close()
    if got is None or len(got) < 12 or got[:2] != data[:2]:
        raise ValueError("no usable answer")
    return got
