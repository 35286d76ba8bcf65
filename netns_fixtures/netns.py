"""Namespaces as small objects: make one, run things in it, wire it to others.

Independent of the pycnm core on purpose: learners can use it to build topologies by hand
and our tests use it to build the world around pycnm. Commands run with argument lists,
never through a shell.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute

FIXTURE_PREFIX = "pt"  # every namespace and link these helpers make starts with it


def unique_name(prefix: str = FIXTURE_PREFIX, length: int = 6) -> str:
    """A short unique name (kernel interface names must fit 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:length]}"


class Namespace:
    """A named network namespace (``ip netns list`` shows it) with loopback up."""

    def __init__(self, name: str, *, create: bool = True, forwarding: bool = False) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        if create:
            _ip("netns", "add", name)
            self.run(["ip", "link", "set", "lo", "up"], check=True)
            if forwarding:
                enable_forwarding(self)

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    def delete(self) -> None:
        """Remove the namespace (and with it every interface inside); gone is success."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def run(self, argv: Sequence[str], *, check: bool = False, timeout: float = 60,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` inside (as ``ip netns exec``), capturing text output."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
            timeout=timeout, **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.name} failed ({result.returncode}): "
                f"{result.stderr.strip()}"
            )
        return result

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start a long-running command inside; the caller stops it."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    @contextlib.contextmanager
    def ipr(self) -> Iterator[IPRoute]:
        """A pyroute2 handle inside the namespace."""
        ipr = IPRoute(netns=self.name)
        try:
            yield ipr
        finally:
            ipr.close()

    def ping(self, address: str, count: int = 1, timeout: int = 2) -> bool:
        """Whether ``address`` answers (bounded: ``count`` probes, ``timeout`` s each)."""
        flag = ["-6"] if ":" in address else []
        result = self.run(["ping", *flag, "-c", str(count), "-W", str(timeout), address],
                          timeout=count * timeout + 10)
        return result.returncode == 0

    def tcp_server(self, port: int, reply: bytes = b"hello", address: str = "0.0.0.0",
                   connections: int = 1, timeout: float = 20) -> TcpServer:
        return TcpServer(self, port, reply, address, connections, timeout)

    def tcp_connect(self, address: str, port: int, payload: bytes = b"",
                    timeout: float = 3) -> bytes | None:
        """Connect, send ``payload``, return what the server sent back (None: no reply)."""
        result = self.run(
            ["python3", "-c", _CLIENT, address, str(port), payload.hex(), str(timeout)],
            timeout=timeout + 10,
        )
        if result.returncode != 0:
            return None
        return bytes.fromhex(result.stdout.strip())

    def addresses(self) -> list[str]:
        out = self.run(["ip", "-o", "addr", "show"]).stdout
        return [line.split()[3] for line in out.splitlines()]

    def links(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def neighbours(self) -> dict[str, str]:
        """IP -> MAC of the neighbour table."""
        table = {}
        for line in self.run(["ip", "neigh", "show"]).stdout.splitlines():
            parts = line.split()
            if "lladdr" in parts:
                table[parts[0]] = parts[parts.index("lladdr") + 1]
        return table


_SERVER = """
import socket, sys
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
srv = socket.socket(family)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
srv.settimeout(float(sys.argv[5]))
print('ready', flush=True)
try:
    for _ in range(int(sys.argv[4])):
        conn, peer = srv.accept()
        conn.settimeout(2)
        try:
            conn.recv(4096)
        except OSError:
            pass
        conn.sendall(bytes.fromhex(sys.argv[3]).replace(b'{peer}', peer[0].encode()))
        conn.close()
except socket.timeout:
    pass
"""

_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
s.sendall(bytes.fromhex(sys.argv[3]) or b'.')
s.shutdown(socket.SHUT_WR)
data = b''
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.hex())
"""


class TcpServer:
    """A bounded TCP server in a namespace: answers ``reply`` (``{peer}`` becomes the
    client's address) to ``connections`` clients, then exits; gives up after ``timeout``."""

    def __init__(self, ns: Namespace, port: int, reply: bytes, address: str,
                 connections: int, timeout: float) -> None:
        self.proc = ns.popen(["python3", "-c", _SERVER, address, str(port), reply.hex(),
                              str(connections), str(timeout)])
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"TCP server on {ns.name}:{port} did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _in(ns: Namespace | None) -> list[str]:
    return [] if ns is None else ["-n", ns.name]


def veth(ns_a: Namespace | None, name_a: str, ns_b: Namespace | None, name_b: str,
         addr_a: str | None = None, addr_b: str | None = None, mtu: int | None = None) -> None:
    """Wire two namespaces (None: the root namespace) with a veth pair, up and addressed."""
    if ns_a is not None and ns_b is None:  # create from the root side: "netns 1" may lie
        veth(ns_b, name_b, ns_a, name_a, addr_b, addr_a, mtu)
        return
    _ip(*_in(ns_a), "link", "add", name_a, "type", "veth", "peer", "name", name_b,
        *(["netns", ns_b.name] if ns_b is not None else []))
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        if mtu:
            _ip(*_in(ns), "link", "set", name, "mtu", str(mtu))
        if addr:
            ipaddress.ip_interface(addr)  # refuse garbage before the kernel sees it
            _ip(*_in(ns), "addr", "add", addr, "dev", name, *(["nodad"] if ":" in addr else []))
        _ip(*_in(ns), "link", "set", name, "up")


def add_route(ns: Namespace | None, prefix: str, via: str) -> None:
    _ip(*_in(ns), "route", "replace", prefix, "via", via)


def enable_forwarding(ns: Namespace) -> None:
    ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    ns.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)


class Host(Namespace):
    """An emulated machine: a namespace with forwarding on, optionally an uplink."""

    def __init__(self, name: str) -> None:
        super().__init__(name, forwarding=True)
        self.uplink: str | None = None
