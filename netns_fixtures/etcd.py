"""A real etcd for tests and labs: throwaway members on free ports, started, stopped,
restarted and killed on demand; plain, with TLS and client certificates, with
user/password auth, alone or as a cluster.

``start_etcd(workdir)`` runs Debian's ``etcd`` on 127.0.0.1 (or ``address``, optionally
inside network namespace ``netns`` through ``ip netns exec``) with its data under
``workdir/data`` and its log in ``workdir/etcd.log``, and returns once etcd answers
``/health``. ``stop``/``start`` restart it on the same ports and data, as an operator's
restart would; ``kill`` is a crash. The process gets SIGKILL if the test process dies, so a
crashed session leaves no etcd behind.

``start_etcd(workdir, tls=EtcdTLS.create(folder))`` serves clients over TLS only and, by
default, accepts only clients whose certificate the test's CA signed (``--client-cert-auth``,
as production clusters run); ``enable_auth(server, users)`` turns on etcd's user/password
authentication with one read-write user per key prefix. ``start_cluster(workdir, 3)``
starts members that form one cluster (``EtcdCluster.url`` names them all).

The session fixture ``etcd_server`` gives every test of a session the same server; tests
isolate themselves by key prefix. Tests that stop or kill etcd start their own with
``start_etcd`` so the shared one stays up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from netns_fixtures.orphans import die_with_parent
from netns_fixtures.pki import CertificateAuthority, KeyPair

if TYPE_CHECKING:
    import etcd3

NOT_INSTALLED = "etcd not installed: run scripts/setup.sh"
START_TIMEOUT = 20.0

_FREE_PORTS = """
import socket, sys
socks = [socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
         for _ in range(2)]
for s in socks:
    s.bind((sys.argv[1], 0))
print(*(s.getsockname()[1] for s in socks))
"""

_HEALTH = """
import ssl, sys, urllib.request
handlers = [urllib.request.ProxyHandler({})]
if len(sys.argv) > 2:
    context = ssl.create_default_context(cafile=sys.argv[2])
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    handlers.append(urllib.request.HTTPSHandler(context=context))
opener = urllib.request.build_opener(*handlers)
print(opener.open(sys.argv[1], timeout=1).read().decode())
"""


@dataclass(frozen=True)
class EtcdTLS:
    """What an etcd serving TLS needs: the CA, its own certificate (for every address it
    listens on) and a client certificate for pycnm; ``client_cert_auth``: refuse clients
    without a certificate the CA signed."""

    ca: CertificateAuthority
    server: KeyPair
    client: KeyPair
    client_cert_auth: bool = True

    @classmethod
    def create(cls, folder: str | Path, ips: tuple[str, ...] = ("127.0.0.1",),
               client_name: str = "pycnm", client_cert_auth: bool = True) -> EtcdTLS:
        """A new CA in ``folder`` with a server certificate for ``ips`` and a client
        certificate whose common name is ``client_name``."""
        ca = CertificateAuthority.create(folder, "etcd-ca")
        return cls(ca, ca.issue(folder, "etcd-server", ips=list(ips), dns=["localhost"]),
                   ca.issue(folder, client_name, client_only=True), client_cert_auth)

    def query(self) -> dict[str, str]:
        """pycnm's store URL parameters for these files."""
        return {"ca": self.ca.cert, "cert": self.client.cert, "key": self.client.key}


class EtcdError(RuntimeError):
    """etcd did not start; the message carries the end of its log."""


class EtcdServer:
    """One etcd member; see the module docstring."""

    def __init__(self, workdir: str | Path, address: str = "127.0.0.1",
                 netns: str | None = None, name: str = "pycnm-test",
                 die_with_parent: bool = True, tls: EtcdTLS | None = None,
                 ports: tuple[int, int] | None = None, extra_args: tuple[str, ...] = ()
                 ) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdError(NOT_INSTALLED)
        self.binary = binary
        self.workdir = Path(workdir)
        self.address = address
        self.netns = netns
        self.name = name
        # False for a server that must outlive its starter (a lab's, stopped by its pid).
        self.die_with_parent = die_with_parent
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.tls = tls
        self.extra_args = tuple(extra_args)  # more etcd flags, e.g. --auth-token-ttl
        self.client_port, self.peer_port = ports or _free_ports(address, netns)
        self.proc: subprocess.Popen[bytes] | None = None
        # The whole cluster as etcd's --initial-cluster wants it (set by start_cluster).
        self.initial_cluster = f"{self.name}={self.peer_url}"
        self.auth: dict[str, str] | None = None  # root's name and password, once enabled

    @property
    def host(self) -> str:
        """The address as it appears in a URL (IPv6 in brackets)."""
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        """The pycnm store URL of this server: ``etcd://host:port``, or over TLS
        ``etcds://host:port?ca=..&cert=..&key=..`` with the test's client certificate."""
        return store_url([self.endpoint], self.tls)

    @property
    def client_url(self) -> str:
        """etcd's own client URL (``http(s)://host:port``), for etcdctl and HTTP probes."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr",
        ]
        if self.tls is not None:
            cmd += ["--cert-file", self.tls.server.cert, "--key-file", self.tls.server.key,
                    "--trusted-ca-file", self.tls.ca.cert]
            if self.tls.client_cert_auth:
                cmd.append("--client-cert-auth")
        cmd += self.extra_args
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start etcd (again) on the same ports and data; return once it is healthy."""
        if self.running:
            return
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the process without waiting (a cluster's members wait for each other)."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            logfile.write(f"--- pycnm: starting {' '.join(self.command())}\n".encode())
            logfile.flush()
            command = self.command()
            self.proc = subprocess.Popen(
                die_with_parent(command) if self.die_with_parent else command,
                stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                start_new_session=not self.die_with_parent)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EtcdError(f"etcd exited with status {self.proc.returncode} on start: "
                                f"{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise EtcdError(f"etcd did not answer {self.client_url}/health within {timeout:g} s: "
                        f"{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd cleanly (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None

    def kill(self) -> None:
        """Crash etcd (SIGKILL); its data stays for ``start``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10.0)
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _healthy(self) -> bool:
        url = f"{self.client_url}/health"
        files = [self.tls.ca.cert, self.tls.client.cert, self.tls.client.key] if self.tls \
            else []
        try:
            if self.netns:
                body = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                       _HEALTH, url, *files], capture_output=True, text=True,
                                      timeout=5, check=True).stdout
            else:
                handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
                if self.tls:
                    context = ssl.create_default_context(cafile=files[0])
                    context.load_cert_chain(files[1], files[2])
                    handlers.append(urllib.request.HTTPSHandler(context=context))
                body = urllib.request.build_opener(*handlers).open(url, timeout=1).read() \
                    .decode()
            return json.loads(body).get("health") == "true"
        except (OSError, ValueError, subprocess.SubprocessError):
            return False

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        return f"EtcdServer({self.client_url}{where}, running={self.running})"


def store_url(endpoints: list[str], tls: EtcdTLS | None = None,
              params: Mapping[str, str] | None = None) -> str:
    """A pycnm store URL for ``endpoints`` (``host:port``), with the client certificate of
    ``tls`` and any other ``params`` (prefix, user, password, timeout) encoded."""
    query = {**(tls.query() if tls else {}), **(params or {})}
    text = f"{'etcds' if tls else 'etcd'}://{','.join(endpoints)}"
    return f"{text}?{urllib.parse.urlencode(query, safe='/')}" if query else text


def start_etcd(workdir: str | Path, address: str = "127.0.0.1", netns: str | None = None,
               timeout: float = START_TIMEOUT, die_with_parent: bool = True,
               tls: EtcdTLS | None = None, extra_args: tuple[str, ...] = ()) -> EtcdServer:
    """Start a fresh etcd with its data in ``workdir``; see the module docstring.

    Ports are picked free just before the start; if another process grabs one in between,
    the start is retried on new ports."""
    ipaddress.ip_address(address)  # a clear error for a typo, before etcd gives a vague one
    for attempt in range(3):
        server = EtcdServer(workdir, address, netns, die_with_parent=die_with_parent, tls=tls,
                            extra_args=extra_args)
        try:
            server.start(timeout)
            return server
        except EtcdError as exc:
            server.kill()
            if attempt == 2 or "address already in use" not in str(exc):
                raise
            shutil.rmtree(server.data_dir, ignore_errors=True)
    raise AssertionError("unreachable")


@dataclass
class EtcdCluster:
    """Members of one etcd cluster; ``url`` names them all (pycnm fails over among them)."""

    members: list[EtcdServer]
    tls: EtcdTLS | None = None

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return store_url(self.endpoints, self.tls)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(workdir: str | Path, size: int = 3, address: str = "127.0.0.1",
                  tls: EtcdTLS | None = None, timeout: float = START_TIMEOUT) -> EtcdCluster:
    """Start ``size`` members on ``address`` that form one new cluster; return once every
    member is healthy (which needs a quorum)."""
    ports = _free_port_list(address, 2 * size)
    members = [EtcdServer(Path(workdir) / f"m{i}", address, name=f"m{i}", tls=tls,
                          ports=(ports[2 * i], ports[2 * i + 1])) for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    cluster = EtcdCluster(members, tls)
    try:
        for member in members:
            member.initial_cluster = initial
            member.launch()
        for member in members:
            member.wait_healthy(timeout)
    except BaseException:
        for member in members:
            member.kill()
        raise
    return cluster


def _grpc_client(server: EtcdServer, user: str | None = None,
                 password: str | None = None) -> etcd3.Etcd3Client:
    import etcd3

    tls = server.tls
    return etcd3.Etcd3Client(server.host, server.client_port, timeout=5,
                             ca_cert=tls.ca.cert if tls else None,
                             cert_key=tls.client.key if tls else None,
                             cert_cert=tls.client.cert if tls else None,
                             user=user, password=password,
                             grpc_options=[("grpc.enable_http_proxy", 0)])


def enable_auth(server: EtcdServer, users: Mapping[str, tuple[str, str]],
                root_password: str = "root-secret") -> None:
    """Turn on etcd's authentication: a ``root`` user (``root_password``) and, for each
    ``name: (password, prefix)``, a user whose role may read and write keys under
    ``prefix`` only. From then on every call needs a user (or, with client-certificate
    auth, a certificate whose common name is a user)."""
    import etcd3.etcdrpc as rpc

    from cnm.store.base import prefix_end

    client = _grpc_client(server)
    try:
        auth = rpc.AuthStub(client.channel)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), 5)
        auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=root_password), 5)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), 5)
        for name, (password, prefix) in users.items():
            perm = rpc.auth_pb2.Permission(permType=rpc.auth_pb2.Permission.READWRITE,
                                           key=prefix.encode(),
                                           range_end=(prefix_end(prefix) or "\0").encode())
            auth.RoleAdd(rpc.AuthRoleAddRequest(name=name), 5)
            auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name=name, perm=perm),
                                     5)
            auth.UserAdd(rpc.AuthUserAddRequest(name=name, password=password), 5)
            auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=name, role=name), 5)
        auth.AuthEnable(rpc.AuthEnableRequest(), 5)
    finally:
        client.close()
    server.auth = {"user": "root", "password": root_password}


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd on loopback for the whole session (stopped at its end)."""
    if shutil.which("etcd") is None:
        pytest.fail(NOT_INSTALLED)
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.stop()


def _free_port_list(address: str, count: int) -> list[int]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks = [socket.socket(family) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((address, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _free_ports(address: str, netns: str | None) -> tuple[int, int]:
    """Two distinct ports free on ``address`` (asked of the kernel, in ``netns`` if set)."""
    if netns:
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _FREE_PORTS,
                              address], capture_output=True, text=True, timeout=10, check=True)
        client, peer = (int(p) for p in out.stdout.split())
        return client, peer
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as one, socket.socket(family) as two:
        one.bind((address, 0))
        two.bind((address, 0))
        return one.getsockname()[1], two.getsockname()[1]
