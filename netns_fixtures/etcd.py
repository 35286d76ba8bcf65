"""A real etcd for tests and labs: one throwaway member on free ports, started, stopped,
restarted and killed on demand.

``start_etcd(workdir)`` runs Debian's ``etcd`` on 127.0.0.1 (or ``address``, optionally
inside network namespace ``netns`` through ``ip netns exec``) with its data under
``workdir/data`` and its log in ``workdir/etcd.log``, and returns once etcd answers
``/health``. ``stop``/``start`` restart it on the same ports and data, as an operator's
restart would; ``kill`` is a crash. The process gets SIGKILL if the test process dies, so a
crashed session leaves no etcd behind.

The session fixture ``etcd_server`` gives every test of a session the same server; tests
isolate themselves by key prefix. Tests that stop or kill etcd start their own with
``start_etcd`` so the shared one stays up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

NOT_INSTALLED = "etcd not installed: run scripts/setup.sh"
START_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1

_FREE_PORTS = """
import socket, sys
socks = [socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
         for _ in range(2)]
for s in socks:
    s.bind((sys.argv[1], 0))
print(*(s.getsockname()[1] for s in socks))
"""

_HEALTH = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
print(opener.open(sys.argv[1], timeout=1).read().decode())
"""


class EtcdError(RuntimeError):
    """etcd did not start; the message carries the end of its log."""


class EtcdServer:
    """One etcd member; see the module docstring."""

    def __init__(self, workdir: str | Path, address: str = "127.0.0.1",
                 netns: str | None = None, name: str = "pycnm-test",
                 die_with_parent: bool = True) -> None:
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
        self.client_port, self.peer_port = _free_ports(address, netns)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The address as it appears in a URL (IPv6 in brackets)."""
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def url(self) -> str:
        """The pycnm store URL of this server (``etcd://host:port``)."""
        return f"etcd://{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        """etcd's own client URL (``http://host:port``), for etcdctl and HTTP probes."""
        return f"http://{self.host}:{self.client_port}"

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
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr",
        ]
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start etcd (again) on the same ports and data; return once it is healthy."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            logfile.write(f"--- pycnm: starting {' '.join(self.command())}\n".encode())
            logfile.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=logfile, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent if self.die_with_parent
                                         else None,
                                         start_new_session=not self.die_with_parent)
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
        try:
            if self.netns:
                body = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                       _HEALTH, url], capture_output=True, text=True,
                                      timeout=5, check=True).stdout
            else:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                body = opener.open(url, timeout=1).read().decode()
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


def start_etcd(workdir: str | Path, address: str = "127.0.0.1", netns: str | None = None,
               timeout: float = START_TIMEOUT, die_with_parent: bool = True) -> EtcdServer:
    """Start a fresh etcd with its data in ``workdir``; see the module docstring.

    Ports are picked free just before the start; if another process grabs one in between,
    the start is retried on new ports."""
    ipaddress.ip_address(address)  # a clear error for a typo, before etcd gives a vague one
    for attempt in range(3):
        server = EtcdServer(workdir, address, netns, die_with_parent=die_with_parent)
        try:
            server.start(timeout)
            return server
        except EtcdError as exc:
            server.kill()
            if attempt == 2 or "address already in use" not in str(exc):
                raise
            shutil.rmtree(server.data_dir, ignore_errors=True)
    raise AssertionError("unreachable")


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


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process goes away (no orphaned etcd)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
