"""Real servers and real clients for the load-balancing tests.

Backends run busybox ``httpd`` (its page is the backend's own name; ``/cgi-bin/slow``
answers after a while, for connections that are still open when a backend leaves) and a
small UDP responder that answers every datagram with the backend's name (a DNS-like
request and response). Clients are one Python process inside the client's namespace that
opens N real connections in a row and counts who answered (``spread``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from tests.integration.agent_helpers import RunsAgent, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SLOW_SECONDS = 2

_CLIENT = r"""
import collections, json, socket, sys
address, port, count, proto, path = sys.argv[1:6]
port, count = int(port), int(count)
seen = collections.Counter()
# UDP sockets stay open to the end: a closed one's source port could come back for a
# later request, which then matches the first one's conntrack entry (a flow, not a new
# one to balance).
kept = []
for i in range(count):
    try:
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((address, port))
            s.send(b"who %d" % i)
            kept.append(s)
            seen[s.recv(512).decode().strip()] += 1
            continue
        else:
            s = socket.create_connection((address, port), timeout=3)
            s.sendall(("GET %s HTTP/1.0\r\n\r\n" % path).encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            lines = data.decode(errors="replace").strip().splitlines()
            seen[lines[-1].strip() if lines else "<empty>"] += 1
        s.close()
    except ConnectionRefusedError:
        seen["<refused>"] += 1
    except OSError as exc:
        seen["<%s>" % type(exc).__name__] += 1
for s in kept:
    s.close()
print(json.dumps(seen))
"""

_UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(512)
    s.sendto(sys.argv[1].encode(), peer)
"""


def in_ns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def spread(netns: str, address: str, port: int, count: int, proto: str = "tcp",
           path: str = "/", timeout: float = 120) -> collections.Counter[str]:
    """Open ``count`` connections (one after the other) from inside ``netns``; who
    answered how often (``<refused>``, ``<TimeoutError>``... for failures)."""
    out = subprocess.run(in_ns(netns, sys.executable, "-c", _CLIENT, address, str(port),
                               str(count), proto, path),
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"client in {netns} failed: {out.stderr.strip()}")
    return collections.Counter(json.loads(out.stdout))


def busy_on(netns: str, port: int) -> int:
    """Established TCP connections to local ``port`` inside ``netns`` (ss)."""
    out = subprocess.run(in_ns(netns, "ss", "-Htn", "state", "established",
                               f"( sport = :{port} )"),
                         capture_output=True, text=True, timeout=30)
    return len([line for line in out.stdout.splitlines() if line.strip()])


@dataclass
class Backends:
    """httpd (+ a UDP responder) in each backend namespace, answering with its name."""

    root: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def serve(self, netns: str, name: str, port: int = 80, udp_port: int | None = None) -> None:
        www = os.path.join(self.root, f"www-{name}")
        os.makedirs(os.path.join(www, "cgi-bin"), exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as handle:
            handle.write(f"{name}\n")
        slow = os.path.join(www, "cgi-bin", "slow")
        with open(slow, "w") as handle:
            handle.write("#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho begun\n"
                         f"sleep {SLOW_SECONDS}\necho {name}\n")
        os.chmod(slow, 0o755)
        self.processes.append(subprocess.Popen(
            in_ns(netns, "busybox", "httpd", "-f", "-p", str(port), "-h", www),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if udp_port is not None:
            self.processes.append(subprocess.Popen(
                in_ns(netns, sys.executable, "-c", _UDP_SERVER, name, str(udp_port)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: _listening(netns, port), 10, f"httpd in {netns}")

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _listening(netns: str, port: int) -> bool:
    out = subprocess.run(in_ns(netns, "ss", "-Hltn", f"( sport = :{port} )"),
                         capture_output=True, text=True, timeout=30)
    return bool(out.stdout.strip())


@dataclass
class LbHost(RunsAgent):
    """One emulated host driven through the pycnm command line (each call a process)."""

    name: str  # the host namespace
    store_url: str
    logdir: str
    agent: subprocess.Popen | None = None
    agent_log: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cnm.cli", "--store", self.store_url, "--host-ns",
                self.name, *args]

    def pycnm(self, *args: str, check: bool = True,
              timeout: float = 90) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True,
                                timeout=timeout, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"pycnm {' '.join(args)} failed: {result.stderr}")
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.pycnm("--json", *args).stdout)

    def sandbox(self, name: str, network: str, *services: str) -> str:
        """Sandbox ``name`` attached to ``network`` (a backend of ``services``); its
        namespace name."""
        self.pycnm("sandbox", "create", name)
        flags = [f for s in services for f in ("--service", s)]
        self.pycnm("attach", network, name, *flags)
        return f"pcsb-{name}"

    def address(self, sandbox: str) -> str:
        info = self.json("sandbox", "inspect", sandbox)[0]  # type: ignore[index]
        return info["Interfaces"]["eth0"]["IPv4Address"].split("/")[0]

    def start_agent(self) -> subprocess.Popen:
        self.agent_log = os.path.join(self.logdir, f"agent-{self.name}-{len(self.processes)}.log")
        with open(self.agent_log, "ab") as log:
            proc = subprocess.Popen(self.argv("-v", "agent", "--lease-ttl", "2"),
                                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.agent = proc
        self.processes.append(proc)
        wait_for(lambda: self.logged(proc, f"services {self.name}: load balancers in line"),
                 30, "the agent's load balancers")
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.pycnm("cleanup", check=False)
