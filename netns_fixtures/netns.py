"""Network namespaces as small objects: make one, run things in it, wire it to others.

Who does what: a ``Namespace`` is a named network namespace (``ip netns list`` shows it)
that runs commands and small servers inside itself; ``veth`` wires two namespaces (or one
and the machine's root namespace); a ``Host`` is a namespace that plays a whole machine
(loopback up, forwarding on, optionally an uplink to a router or switch namespace), so
pycnm's Controller can treat it as the machine's root namespace; ``wire_outside`` makes
the far end of a NAT test ("the internet") on TEST-NET addresses, wired to a Host.

This module is independent of the pycnm core on purpose: learners can build topologies by
hand with it, and the tests build the world around pycnm with it. Commands run with
argument lists, never through a shell; every wait is bounded.

    with Namespace(unique_name()) as a, Namespace(unique_name()) as b:
        veth(a, "eth0", b, "eth0", "10.0.0.1/24", "10.0.0.2/24")
        assert a.ping("10.0.0.2")
        with b.tcp_server(8080, reply=b"hi"):
            assert a.tcp_connect("10.0.0.2", 8080) == b"hi"
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import select
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pyroute2 import IPRoute

FIXTURE_PREFIX = "pt"  # every namespace and root-namespace link these helpers name
FIXTURE_NAME_RE = re.compile(rf"^{FIXTURE_PREFIX}[0-9a-f]{{6}}")
IFNAMSIZ = 15  # the kernel's limit on interface names (16 bytes with the NUL)
NETNS_DIR = "/run/netns"
NAT_TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: never routed anywhere

# The 8-character stems ("pt" + 6 hex) of fixture names this process handed out or used.
# The leak check blames a fixture-named object on this process only when its stem is
# here, so other test runs sharing the machine do not look like our leaks.
_issued: set[str] = set()
# Root-namespace ends of veth pairs made by ``veth``, in creation order: the pytest
# fixtures delete the ones made during a test, synchronously (a namespace's deletion
# takes its veth peers along only later, from a kernel work queue).
_root_links: list[str] = []


def _remember(name: str) -> None:
    if FIXTURE_NAME_RE.match(name):
        _issued.add(name[:8])


def unique_name(prefix: str = FIXTURE_PREFIX, length: int = 6) -> str:
    """A short random name, e.g. ``pt3f9a1c``; fits an interface name (15 characters).

    Only names with the default prefix are covered by the fixtures' leak check.
    """
    name = prefix + os.urandom((length + 1) // 2).hex()[:length]
    if len(name) > IFNAMSIZ:
        raise ValueError(f"{name!r} is longer than {IFNAMSIZ} characters")
    _remember(name)
    return name


def issued_stems() -> frozenset[str]:
    """Stems of the fixture names this process made (for the leak check)."""
    return frozenset(_issued)


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; unlike its base class, the message carries stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return (f"{' '.join(map(str, self.cmd))} failed with exit code {self.returncode}"
                + (f": {err}" if err else ""))


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 60,
         **kwargs: Any) -> subprocess.CompletedProcess[str]:
    if isinstance(argv, str):  # a string would be split by nobody: refuse it early
        raise TypeError("argv must be a list of arguments, never a shell string")
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, list(argv), result.stdout, result.stderr)
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check, timeout=30)


def _in(ns: Namespace | None) -> list[str]:
    """``ip`` options that act inside ``ns`` (None: the root namespace)."""
    return [] if ns is None else ["-n", ns.name]


class Namespace:
    """A named network namespace with loopback up; a context manager that deletes it.

    ``Namespace(name, create=False)`` wraps one that exists already.
    """

    def __init__(self, name: str, *, create: bool = True, forwarding: bool = False) -> None:
        self.name = name
        self.role = name  # what a test calls it ("host", "outside"); for messages only
        self._procs: list[subprocess.Popen[str]] = []
        _remember(name)
        if not create:
            return
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            if forwarding:
                enable_forwarding(self)
        except BaseException:
            self.delete()
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.role})>"

    @property
    def path(self) -> str:
        """The namespace file, e.g. ``/run/netns/pt3f9a1c`` (what ``setns`` opens)."""
        return os.path.join(NETNS_DIR, self.name)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def delete(self) -> None:
        """Stop the servers started here, then remove the namespace (and every interface
        in it). Idempotent: a namespace that is already gone is success."""
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        if self.exists():
            _ip("netns", "delete", self.name, check=False)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # --- running things inside ----------------------------------------------------------

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (``ip netns exec``) and return its text output.

        ``check``: raise ``CommandFailed`` (a ``CalledProcessError``) on a non-zero exit.
        """
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, never a shell string")
        return _run(["ip", "netns", "exec", self.name, *argv], check=check,
                    timeout=timeout, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a long-running command inside (a server, tcpdump). It is stopped when the
        namespace is deleted, or earlier by the caller. Output is piped (text) unless
        ``stdout``/``stderr`` say otherwise: read it, or pass ``subprocess.DEVNULL``."""
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, never a shell string")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        # ``ip netns exec`` execs the command in place, so this pid is the command's own.
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def ipr(self) -> IPRoute:
        """A pyroute2 handle bound to this namespace; close it, or use it in ``with``."""
        from pyroute2 import IPRoute  # here: labs use this module without it (fast start)

        return IPRoute(netns=self.name)

    # --- traffic (bounded, and only to namespaces the caller made) -----------------------

    def ping(self, addr: str, count: int = 1, timeout: float = 2) -> bool:
        """Whether ``addr`` answers at least one of ``count`` echo requests, each
        waited for at most ``timeout`` seconds."""
        family = ["-6"] if ":" in addr else ["-4"]
        argv = ["ping", *family, "-n", "-q", "-c", str(count), "-i", "0.2",
                "-W", str(timeout), addr]
        try:
            return self.run(argv, check=False, timeout=count * (timeout + 1) + 10
                            ).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def tcp_server(self, port: int, reply: bytes | None = b"hello", *,
                   address: str = "0.0.0.0", connections: int = 1,
                   timeout: float = 20) -> TcpServer:
        """Start a bounded TCP server inside; see ``TcpServer``. Use it in ``with``."""
        server = TcpServer(self, port, reply, address, connections, timeout)
        self._procs.append(server.proc)
        return server

    def tcp_connect(self, addr: str, port: int, payload: bytes = b"",
                    timeout: float = 3) -> bytes:
        """Connect from inside, send ``payload``, close the sending side and return all
        the server sent back; ``b""`` when no connection could be made in ``timeout``."""
        try:
            result = self.run(
                ["python3", "-c", _CLIENT, addr, str(port), payload.hex(), str(timeout)],
                check=False, timeout=timeout * 2 + 10,
            )
        except subprocess.TimeoutExpired:
            return b""
        if result.returncode != 0:
            return b""
        return bytes.fromhex(result.stdout.strip())

    # --- looking inside -----------------------------------------------------------------

    def addresses(self, dev: str | None = None) -> list[str]:
        """Addresses with prefix length (``10.0.0.1/24``, ``fe80::1/64``), of ``dev`` or
        of every interface."""
        argv = ["ip", "-o", "addr", "show", *(["dev", dev] if dev else [])]
        return [line.split()[3] for line in self.run(argv).stdout.splitlines()]

    def links(self) -> list[str]:
        """Interface names (a veth's ``@peer`` suffix removed)."""
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def neighbours(self, dev: str | None = None) -> dict[str, str]:
        """The neighbour table as IP -> MAC (entries without a MAC left out)."""
        table: dict[str, str] = {}
        argv = ["ip", "neigh", "show", *(["dev", dev] if dev else [])]
        for line in self.run(argv).stdout.splitlines():
            parts = line.split()
            if "lladdr" in parts:
                table[parts[0]] = parts[parts.index("lladdr") + 1]
        return table

    def routes(self, family: int = 4) -> list[str]:
        """``ip route`` lines of one family."""
        return self.run(["ip", f"-{family}", "route", "show"]).stdout.splitlines()


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a process this module started (by its own pid), bounded."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        proc.communicate(timeout=5)  # reap it and close its pipes


# The server and the client run in the namespace as ``python3 -c``: the same interpreter
# everywhere, no extra package, and a process that exits by itself when its work is done.
_SERVER = """
import socket, sys, time
address, port, reply, connections, timeout = sys.argv[1:6]
deadline = time.monotonic() + float(timeout)
srv = socket.socket(socket.AF_INET6 if ':' in address else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((address, int(port)))
srv.listen(16)
print('ready', flush=True)
for _ in range(int(connections)):
    left = deadline - time.monotonic()
    if left <= 0:
        break
    srv.settimeout(left)
    try:
        conn, peer = srv.accept()
    except socket.timeout:
        break
    print('peer', peer[0], flush=True)
    conn.settimeout(2)
    data = b''
    try:
        while len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if reply != '-':
                break
    except OSError:
        pass
    answer = data if reply == '-' else bytes.fromhex(reply).replace(b'{peer}', peer[0].encode())
    try:
        conn.sendall(answer)
    except OSError:
        pass
    conn.close()
"""

_CLIENT = """
import socket, sys
address, port, payload, timeout = sys.argv[1:5]
s = socket.create_connection((address, int(port)), timeout=float(timeout))
if payload:
    s.sendall(bytes.fromhex(payload))
s.shutdown(socket.SHUT_WR)
data = b''
while len(data) < 65536:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.hex())
"""


class TcpServer:
    """A TCP server inside a namespace that stops by itself.

    It answers up to ``connections`` clients, one after the other, then exits; it gives up
    after ``timeout`` seconds in all. ``reply`` is sent to each client after its first
    chunk of data (or at once if the client sends nothing and closes its side); ``{peer}``
    in it becomes the client's address as the server saw it (how NAT tests check a
    masquerade). ``reply=None`` echoes back everything the client sent.
    """

    def __init__(self, ns: Namespace, port: int, reply: bytes | None, address: str,
                 connections: int, timeout: float) -> None:
        self.ns = ns
        self.port = port
        self.stderr = ""
        self.peers: list[str] = []  # client addresses, filled in by close()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "python3", "-c", _SERVER, address, str(port),
             "-" if reply is None else reply.hex(), str(connections), str(timeout)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != "ready":
            self.close()
            raise RuntimeError(f"TCP server on {ns.name} port {port} did not start: "
                               f"{self.stderr.strip()}")

    def close(self) -> list[str]:
        """Stop the server (if still running); return the client addresses it saw."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            out, err = self.proc.communicate(timeout=10)
        except ValueError:  # closed already
            out, err = "", ""
        self.stderr += err or ""
        self.peers += [line.split()[1] for line in (out or "").splitlines()
                       if line.startswith("peer ")]
        return self.peers

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- wiring ------------------------------------------------------------------------------


class VethPair(NamedTuple):
    a: str
    b: str


def _check_ifname(name: str) -> None:
    if not 0 < len(name) <= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"{name!r} is not a valid interface name (1-{IFNAMSIZ} characters)")


def add_address(ns: Namespace | None, dev: str, addr: str) -> None:
    """Add ``addr`` (with prefix length) to ``dev``; IPv6 without duplicate detection, so
    it is usable at once."""
    ip = ipaddress.ip_interface(addr)  # refuse garbage before the kernel sees it
    _ip(*_in(ns), "addr", "add", str(ip), "dev", dev, *(["nodad"] if ip.version == 6 else []))


def veth(ns_a: Namespace | None, name_a: str, ns_b: Namespace | None, name_b: str,
         addr_a: str | None = None, addr_b: str | None = None, *,
         mtu: int | None = None) -> VethPair:
    """Wire two namespaces (None: the root namespace) with a veth pair, both ends up and
    addressed. A root-namespace end should carry a unique fixture name (``unique_name()``):
    interface names there are shared with everything else on the machine."""
    for name in (name_a, name_b):
        _check_ifname(name)
        _remember(name)
    for addr in (addr_a, addr_b):
        if addr is not None:
            ipaddress.ip_interface(addr)
    if ns_a is not None and ns_b is None:
        # Create from the root side: "netns 1" (pid 1's namespace) need not be ours.
        pair = veth(ns_b, name_b, ns_a, name_a, addr_b, addr_a, mtu=mtu)
        return VethPair(pair.b, pair.a)
    _ip(*_in(ns_a), "link", "add", name_a, *(["mtu", str(mtu)] if mtu else []), "type",
        "veth", "peer", "name", name_b, *(["mtu", str(mtu)] if mtu else []),
        *(["netns", ns_b.name] if ns_b is not None else []))
    if ns_a is None:
        _root_links.append(name_a)
    if ns_b is None:
        _root_links.append(name_b)
    ends = ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b))
    for ns, name, addr in ends:
        if addr:
            add_address(ns, name, addr)
        _ip(*_in(ns), "link", "set", name, "up")
    # Routes over the pair (IPv6's above all) work once the carrier is up, a moment later.
    for ns, name, _ in ends:
        if not wait_for(lambda ns=ns, name=name: "LOWER_UP" in _ip(
                *_in(ns), "-o", "link", "show", "dev", name).stdout, timeout=5):
            raise RuntimeError(f"veth {name} has no carrier after 5 s")
    return VethPair(name_a, name_b)


def delete_link(ns: Namespace | None, name: str) -> None:
    """Delete an interface; one that is already gone is success (as in CNI's DEL)."""
    result = _ip(*_in(ns), "link", "delete", name, check=False)
    if result.returncode != 0 and "Cannot find device" not in result.stderr:
        raise CommandFailed(result.returncode, result.args, result.stdout, result.stderr)


def root_links_made() -> int:
    """A mark for ``delete_root_links_since``."""
    return len(_root_links)


def delete_root_links_since(mark: int) -> None:
    """Delete the root-namespace veth ends ``veth`` made after ``mark``, newest first."""
    for name in reversed(_root_links[mark:]):
        delete_link(None, name)
    del _root_links[mark:]


def bridge(ns: Namespace, name: str = "br0") -> str:
    """A Linux bridge inside ``ns``, up: a switch for hosts wired with ``Host.connect``."""
    _check_ifname(name)
    _ip(*_in(ns), "link", "add", name, "type", "bridge")
    _ip(*_in(ns), "link", "set", name, "up")
    return name


def add_route(ns: Namespace | None, prefix: str, via: str, dev: str | None = None) -> None:
    """Add (or replace) a route to ``prefix`` through ``via`` in ``ns`` (None: root).

    In the root namespace, only add routes to test prefixes through a test veth, then check
    them with ``ip route get``: without one, test traffic would follow the default route.
    """
    ipaddress.ip_network(prefix if prefix != "default" else "0.0.0.0/0", strict=False)
    _ip(*_in(ns), "route", "replace", prefix, "via", via, *(["dev", dev] if dev else []))


def delete_route(ns: Namespace | None, prefix: str) -> None:
    """Delete a route; one that is already gone is success."""
    _ip(*_in(ns), "route", "delete", prefix, check=False)


def enable_forwarding(ns: Namespace) -> None:
    """Turn IPv4 and IPv6 forwarding on inside ``ns`` (never the machine's own)."""
    if ns is None:
        raise ValueError("refusing to change the root namespace's forwarding")
    ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])


# --- emulated machines -------------------------------------------------------------------


class Host(Namespace):
    """An emulated machine: a namespace with loopback up and forwarding on.

    It stands in for a machine's root namespace: ``Controller(store, host_ns=host.path)``
    or ``pycnm --host-ns NAME`` runs a driver inside it, so tests never touch the real
    root namespace. ``connect`` gives it an uplink to a router or switch namespace.
    """

    def __init__(self, name: str, *, create: bool = True) -> None:
        super().__init__(name, create=create, forwarding=create)
        self.uplink: str | None = None  # its uplink interface, once connected
        self.address: str | None = None  # the uplink's address (with prefix length)

    def connect(self, peer: Namespace | None, address: str | None = None, *,
                peer_address: str | None = None, ifname: str = "eth0",
                bridge: str | None = None, gateway: str | None = None,
                mtu: int | None = None) -> VethPair:
        """Wire an uplink veth from this host to ``peer`` (a router or switch namespace).

        Inside the host it is called ``ifname`` and gets ``address``; the peer's end gets a
        unique name and ``peer_address``, or joins ``bridge`` (a bridge in ``peer``: the
        hosts on it share one L2 segment). ``gateway`` becomes the host's default route.
        """
        peer_end = unique_name()
        pair = veth(self, ifname, peer, peer_end, address, None if bridge else peer_address,
                    mtu=mtu)
        if bridge:
            _ip(*_in(peer), "link", "set", peer_end, "master", bridge)
        if gateway:
            add_route(self, "default", gateway)
        self.uplink, self.address = ifname, address
        return pair


class Outside(Namespace):
    """The far end of a NAT test, "the internet": a namespace wired to a host by a veth.

    ``address`` is its own address and ``host_address`` the host end's (without prefix
    length); ``host_ifname`` is the host end's interface name.
    """

    address: str
    host_address: str
    host_ifname: str


def free_test_subnet(prefixlen: int = 30) -> ipaddress.IPv4Network:
    """A random subnet of 198.18.0.0/15 (reserved for tests, RFC 2544; never routed)."""
    count = 2 ** (prefixlen - NAT_TEST_RANGE.prefixlen)
    import secrets  # (hashlib: only here, not for a lab's namespaces)

    index = secrets.randbelow(count)
    start = int(NAT_TEST_RANGE.network_address) + index * 2 ** (32 - prefixlen)
    return ipaddress.IPv4Network((start, prefixlen))


def wire_outside(host: Namespace | None, host_addr: str | None = None,
                 outside_addr: str | None = None, *, name: str | None = None,
                 default_route: bool = True) -> Outside:
    """Make an ``Outside`` namespace and wire it to ``host`` (None: the root namespace).

    Without addresses, both ends get one from a random /30 of 198.18.0.0/15. When ``host``
    is a namespace without a default route, its default route goes to the outside (the
    far end of a masquerade); the root namespace's routes are never touched. The outside
    gets no routes beyond its own subnet: it answers only what reaches it.
    """
    if host_addr is None or outside_addr is None:
        net = free_test_subnet()
        first, second = list(net.hosts())[:2]
        host_addr = host_addr or f"{first}/{net.prefixlen}"
        outside_addr = outside_addr or f"{second}/{net.prefixlen}"
    far = Outside(name or unique_name())
    far.role = "outside"
    host_end = unique_name()
    try:
        veth(host, host_end, far, "eth0", host_addr, outside_addr)
        far.address = str(ipaddress.ip_interface(outside_addr).ip)
        far.host_address = str(ipaddress.ip_interface(host_addr).ip)
        far.host_ifname = host_end
        if (host is not None and default_route
                and not host.run(["ip", "route", "show", "default"]).stdout.strip()):
            add_route(host, "default", far.address)
    except BaseException:
        far.delete()
        if host is None:
            delete_link(None, host_end)
        raise
    return far


def wait_for(condition: Any, timeout: float = 5, interval: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` passes (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
