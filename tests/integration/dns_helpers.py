"""An emulated host with pycnm's resolver, an upstream DNS server of its own, and real
DNS clients (Debian's dig, busybox nslookup) run inside its sandboxes.

    host namespace (pycnm --host-ns, sandboxes, bridges)  --veth--  upstream namespace
      198.18.53.1/24, resolv.conf: nameserver 198.18.53.2         dnsmasq on 198.18.53.2

The host's resolv.conf is ``/etc/netns/HOST/resolv.conf`` (what ``ip netns exec HOST``
shows as its /etc/resolv.conf, and what the resolver reads for an emulated host), so no
query ever leaves for a real server. dnsmasq answers ``*.example.test`` with
198.51.100.7, a 900-byte TXT record at ``big.example.test``, NXDOMAIN for the rest, and
logs every query it gets (with the address it came from) to a file the test reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from netns_fixtures.netns import Host, Namespace, veth
from tests.integration.agent_helpers import RunsAgent, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_ADDRESS = "198.18.53.1"
UPSTREAM_ADDRESS = "198.18.53.2"
FORWARDED_NAME = "www.example.test"
FORWARDED_ADDRESS = "198.51.100.7"


@dataclass
class Dig:
    status: str
    answers: list[str]
    flags: list[str]
    seconds: float

    @property
    def addresses(self) -> list[str]:
        return [a.split()[-1] for a in self.answers if a.split()[3] in ("A", "AAAA")]


def dig(netns: str, name: str, rdtype: str = "A", *options: str, server: str | None = None,
        timeout: float = 3) -> Dig:
    """``dig`` inside ``netns``: the resolv.conf there picks the server unless ``server``."""
    argv = ["ip", "netns", "exec", netns, "dig", "+tries=1", f"+time={int(timeout)}",
            "+noall", "+comments", "+answer", *options, name, rdtype]
    if server:
        argv.insert(4, f"@{server}")
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 3 + 10)
    took = time.monotonic() - started
    status = re.search(r"status: (\w+)", out.stdout)
    flags = re.search(r";; flags: ([\w ]+);", out.stdout)
    answers = [line for line in out.stdout.splitlines()
               if line and not line.startswith(";")]
    return Dig(status.group(1) if status else "TIMEOUT", answers,
               flags.group(1).split() if flags else [], took)


def nslookup(netns: str, name: str) -> list[str]:
    """busybox nslookup inside ``netns`` (its resolv.conf's server): the addresses."""
    out = subprocess.run(["ip", "netns", "exec", netns, "busybox", "nslookup", name],
                         capture_output=True, text=True, timeout=30).stdout
    found = re.findall(r"^Address:\s*(\S+)\s*$", out, re.M)
    return found[1:]  # the first is the server's own ("127.0.0.11:53")


@dataclass
class DnsHost(RunsAgent):
    host: Host
    upstream: Namespace
    store_url: str
    logdir: str
    agent: subprocess.Popen | None = None
    agent_log: str = ""
    dnsmasq: subprocess.Popen | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def dnsmasq_log(self) -> str:
        return os.path.join(self.logdir, "dnsmasq.log")

    # --- pycnm ------------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cnm.cli", "--store", self.store_url, "--host-ns",
                self.host.name, *args]

    def pycnm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=90,
                                cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"pycnm {' '.join(args)} failed: {result.stderr}")
        return result

    def start_agent(self, *extra: str) -> subprocess.Popen:
        self.agent_log = os.path.join(self.logdir, f"agent-{len(self.processes)}.log")
        with open(self.agent_log, "ab") as log:
            proc = subprocess.Popen(self.argv("-v", "agent", "--lease-ttl", "2",
                                              "--dns-timeout", "2", *extra),
                                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.agent = proc
        self.processes.append(proc)
        wait_for(lambda: self.logged(proc, f"resolver {self.host.name}: serving"), 30,
                 "the agent's resolver")
        return proc

    def sandbox(self, name: str, *networks: str, **attach: Any) -> str:
        """Create sandbox ``name`` attached to ``networks`` (extra attach flags as
        ``alias=[...]``, ``ip=...``); return its namespace name."""
        self.pycnm("sandbox", "create", name)
        for net in networks:
            flags: list[str] = []
            for alias in attach.get("alias", ()):
                flags += ["--alias", alias]
            if attach.get("ip"):
                flags += ["--ip", attach["ip"]]
            if attach.get("endpoint"):
                flags += ["--name", attach["endpoint"]]
            self.pycnm("attach", net, name, *flags)
        return f"pcsb-{name}"

    def resolv_conf(self, sandbox: str) -> str:
        with open(f"/etc/netns/pcsb-{sandbox}/resolv.conf") as handle:
            return handle.read()

    # --- the upstream -------------------------------------------------------------------

    def start_dnsmasq(self) -> None:
        txt = ["x" * 250, "y" * 250, "z" * 250, "w" * 150]
        argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--bind-interfaces", f"--listen-address={UPSTREAM_ADDRESS}",
                "--address=/example.test/" + FORWARDED_ADDRESS, "--address=/#/",
                "--txt-record=big.example.test," + ",".join(txt),
                "--log-queries", f"--log-facility={self.dnsmasq_log}",
                "--pid-file=", "--user=root", "--cache-size=0"]
        self.dnsmasq = self.upstream.popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        wait_for(lambda: "started" in self.upstream_log(), 10, "dnsmasq")

    def upstream_log(self) -> str:
        with contextlib.suppress(OSError), open(self.dnsmasq_log) as handle:
            return handle.read()
        return ""

    def upstream_queries(self, name: str) -> list[str]:
        """The addresses dnsmasq got queries for ``name`` from."""
        return re.findall(rf"query\[\w+\] {re.escape(name)} from (\S+)", self.upstream_log())

    def set_host_servers(self, *servers: str) -> None:
        folder = f"/etc/netns/{self.host.name}"
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "resolv.conf"), "w") as handle:
            handle.write("".join(f"nameserver {s}\n" for s in servers))

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
        if self.dnsmasq is not None and self.dnsmasq.poll() is None:
            self.dnsmasq.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.dnsmasq.wait(timeout=10)
        folder = f"/etc/netns/{self.host.name}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, "resolv.conf"))
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def make_dns_host(host: Host, upstream: Namespace, store_url: str, logdir: str) -> DnsHost:
    veth(host, "up0", upstream, "eth0", f"{HOST_ADDRESS}/24", f"{UPSTREAM_ADDRESS}/24")
    lab = DnsHost(host, upstream, store_url, logdir)
    lab.set_host_servers(UPSTREAM_ADDRESS)
    return lab
