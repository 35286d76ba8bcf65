"""The classic multi-host picture for the overlay tests and benchmark, in namespaces.

    h1 172.31.1.2/24 --- .1  router  .1 --- 192.168.1.2/24 h2
                             | .1
                     h3 172.31.3.2/24 (joins later)

Each emulated host is a namespace with one veth to the router namespace and a default
route through it. Each host's pycnm runs as its own process (``pycnm --host-ns H agent``)
whose sockets stay in the root namespace, where etcd listens on loopback; it acts on its
host's namespace through netlink. CLI calls run as separate processes too. The hosts' own
records live in one SQLite file of the lab's (``local_url``; each host under its own
prefix), or with ``local_per_host`` in a file per host as on real machines (the benchmark:
a write on one host then wakes no other host's watchers); etcd holds what they share.

``OverlayLab.close`` kills every process it started, removes what pycnm made on each host
(orderly first, then by name) and deletes the namespaces, whatever state a test left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cnm.osl.netns import (
    create_named_netns,
    delete_named_netns,
    iproute,
    list_named_netns,
    named_netns_path,
    write_sysctl,
)
from netns_fixtures.netns import FIXTURE_PREFIX

T = TypeVar("T")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAY_PREFIX = "global/drivers/overlay/"


def wait_for(condition: Callable[[], T], timeout: float, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Host:
    name: str  # namespace name, also the pycnm host id
    underlay: str  # this host's address (its VTEP)
    router_address: str
    router_if: str
    agent: subprocess.Popen | None = None
    agent_log: str = ""

    @property
    def path(self) -> str:
        return named_netns_path(self.name)


@dataclass
class OverlayLab:
    store_url: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    lease_ttl: float = 2.0
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    logdir: str = "/tmp"
    local_per_host: bool = False

    def __post_init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"pycnm-overlay-lab-{self.tag}-")
        self.local_url = f"sqlite:///{self.workdir}/local.db"
        # The fixtures' prefix: the session's leak check reports any of these left behind.
        self.router = f"{FIXTURE_PREFIX}{self.tag}r"
        create_named_netns(self.router)
        write_sysctl(named_netns_path(self.router), "net/ipv4/ip_forward", "1")

    # --- topology ---------------------------------------------------------------------

    def add_host(self, key: str, subnet: str) -> Host:
        """A host namespace on its own underlay ``subnet`` (.2 for the host, .1 the router)."""
        net = ipaddress.ip_network(subnet)
        host = Host(name=f"{FIXTURE_PREFIX}{self.tag}h{key}", underlay=str(net[2]),
                    router_address=str(net[1]), router_if=f"r{key}{self.tag}"[:15])
        create_named_netns(host.name)
        self.hosts[key] = host
        fd = os.open(host.path, os.O_RDONLY)
        try:
            with iproute(named_netns_path(self.router)) as ipr:
                ipr.link("add", ifname=host.router_if, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": fd})
                index = ipr.link_lookup(ifname=host.router_if)[0]
                ipr.addr("add", index=index, address=host.router_address,
                         prefixlen=net.prefixlen)
                ipr.link("set", index=index, state="up")
        finally:
            os.close(fd)
        with iproute(host.path) as ipr:
            ipr.link("set", index=1, state="up")
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=host.underlay, prefixlen=net.prefixlen)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=host.router_address)
        return host

    # --- pycnm processes ----------------------------------------------------------------

    def local_url_of(self, host: Host) -> str:
        """The local store of ``host``: the lab's shared file, or its own."""
        if not self.local_per_host:
            return self.local_url
        return f"sqlite:///{self.workdir}/{host.name}.db"

    def argv(self, host: Host, *args: str) -> list[str]:
        return [sys.executable, "-m", "cnm.cli", "--store", self.store_url, "--local-store",
                self.local_url_of(host), "--host-ns", host.name, *args]

    def controller(self, host: Host, **kwargs: Any) -> Any:
        """An in-process Controller of ``host`` (the caller closes it)."""
        from cnm.controller import Controller

        return Controller(self.store_url, local_store=self.local_url_of(host), host_ns=host.path,
                          **kwargs)

    def pycnm(self, host: Host, *args: str, check: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(host, *args), capture_output=True, text=True,
                                timeout=timeout, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"pycnm {' '.join(args)} on {host.name} failed: "
                                 f"{result.stderr.strip()}")
        return result

    def pycnm_json(self, host: Host, *args: str) -> Any:
        return json.loads(self.pycnm(host, "--json", *args).stdout)

    def start_agent(self, host: Host, wait: bool = True,
                    extra: tuple[str, ...] = ()) -> subprocess.Popen:
        """Start ``pycnm agent`` for ``host`` (``extra``: more of its flags)."""
        host.agent_log = os.path.join(self.logdir, f"{host.name}-agent.log")
        with open(host.agent_log, "ab") as log:
            proc = subprocess.Popen(
                self.argv(host, "-v", "agent", "--lease-ttl", str(self.lease_ttl), *extra),
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )
        host.agent = proc
        self.processes.append(proc)
        if wait:
            self.wait_registered(host)
        return proc

    def agent_output(self, host: Host) -> str:
        with contextlib.suppress(OSError), open(host.agent_log) as handle:
            return handle.read()[-4000:]
        return ""

    def wait_registered(self, host: Host, timeout: float = 20) -> None:
        from cnm.store import open_store

        with contextlib.closing(open_store(self.store_url)) as store:
            def registered() -> bool:
                if host.agent is not None and host.agent.poll() is not None:
                    raise AssertionError(f"agent of {host.name} exited: "
                                         f"{self.agent_output(host)}")
                return store.get(f"{OVERLAY_PREFIX}hosts/{host.name}") is not None

            wait_for(registered, timeout, what=f"{host.name} to register")

    def stop_agent(self, host: Host, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        proc = host.agent
        assert proc is not None
        proc.send_signal(sig)
        code = proc.wait(timeout=timeout)
        host.agent = None
        return code

    # --- kernel state, read directly ------------------------------------------------------

    def overlay_netns(self, host: Host, vni: int) -> str:
        return f"pcov-{vni}-{host.name}"

    def vtep_entries(self, host: Host, vni: int) -> Any:
        from drivers.overlay.dataplane import Forwarder

        with Forwarder(self.overlay_netns(host, vni), vni) as fwd:
            return fwd.current()

    def vni_of(self, overlay: str) -> int:
        from cnm.store import open_store

        with contextlib.closing(open_store(self.store_url)) as store:
            entry = store.get(f"{OVERLAY_PREFIX}overlays/{overlay}/config")
            assert entry is not None, f"overlay {overlay} has no config in the store"
            return int(entry.value["vni"])

    # --- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.pycnm(host, "cleanup", check=False, timeout=60)
        for name in list_named_netns():
            if any(name.startswith("pc") and name.endswith(h.name) for h in self.hosts.values()):
                delete_named_netns(name)
        for host in self.hosts.values():
            delete_named_netns(host.name)
        delete_named_netns(self.router)
        shutil.rmtree(self.workdir, ignore_errors=True)


class UnderlayCounter:
    """Counts the VXLAN frames that cross the lab's underlay: every frame a host sends
    enters the router once, so a raw socket on each of the router's host-facing links
    (incoming frames only) sees each exactly once. ``counts``: ``vxlan`` (all), ``bum``
    (the inner frame is broadcast or multicast: head-end replicated), ``ipv6`` (inner
    IPv6) and ``arp`` (inner ARP)."""

    PACKET_OUTGOING = 4
    ETH_P_ALL = 0x0003

    def __init__(self, lab: OverlayLab, hosts: list[Host]) -> None:
        from cnm.osl.netns import in_netns

        self.counts = {"vxlan": 0, "bum": 0, "ipv6": 0, "arp": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = []
        for host in hosts:
            sock = in_netns(named_netns_path(lab.router), lambda: socket.socket(
                socket.AF_PACKET, socket.SOCK_RAW, socket.htons(self.ETH_P_ALL)))
            sock.bind((host.router_if, 0))
            sock.settimeout(0.1)
            self._socks.append(sock)
        self._threads = [threading.Thread(target=self._read, args=(s,), daemon=True)
                         for s in self._socks]
        for thread in self._threads:
            thread.start()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _read(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                frame, address = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == self.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue
            ihl = (frame[14] & 0x0F) * 4
            udp = 14 + ihl
            if frame[23] != 17 or int.from_bytes(frame[udp + 2:udp + 4], "big") != 4789:
                continue
            inner = frame[udp + 16:]  # UDP 8 + VXLAN 8
            with self._lock:
                self.counts["vxlan"] += 1
                if inner[:1] and inner[0] & 1:
                    self.counts["bum"] += 1
                kind = inner[12:14]
                if kind == b"\x86\xdd":
                    self.counts["ipv6"] += 1
                elif kind == b"\x08\x06":
                    self.counts["arp"] += 1

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._socks:
            sock.close()


@contextlib.contextmanager
def overlay_lab(store_url: str, **kwargs: Any) -> Iterator[OverlayLab]:
    lab = OverlayLab(store_url, **kwargs)
    try:
        yield lab
    finally:
        lab.close()
