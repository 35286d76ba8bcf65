"""Docker's client for the end-to-end tests: each engine's own client (Debian 12's for
20.10, Debian 13's for 26.1), unique names removed after each test, and what pycnm holds
in the kernel (links, nftables)."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netns_fixtures.docker import DockerEngine, restart_engine
from netns_fixtures.netns import FIXTURE_PREFIX

IMAGE = "pycnm-busybox:test"
NO_DNS_OUT = ["--dns", "127.0.0.1"]  # names Docker does not know stay on the machine
OUTSIDE_V4 = ipaddress.ip_network("198.51.100.0/30")  # TEST-NET-2, never routed anywhere


@dataclass
class Docker:
    """An engine's own client (Debian 12's for 20.10, Debian 13's for 26.1)."""

    engine: DockerEngine
    image: str = IMAGE

    @property
    def client(self) -> str:
        return self.engine.install.docker

    def run(self, *args: str, check: bool = True, timeout: float = 90) -> str:
        result = subprocess.run([self.client, *args], capture_output=True, text=True,
                                timeout=timeout, env=self.engine.env)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip() if check else result.stdout + result.stderr

    def fails(self, *args: str, timeout: float = 90) -> str:
        result = subprocess.run([self.client, *args], capture_output=True, text=True,
                                timeout=timeout, env=self.engine.env)
        assert result.returncode != 0, f"docker {' '.join(args)} succeeded"
        return result.stderr.strip()

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        return json.loads(self.run("inspect", *names))

    def has_network(self, name: str) -> bool:
        return subprocess.run([self.client, "network", "inspect", name], capture_output=True,
                              timeout=90, env=self.engine.env).returncode == 0

    def network(self, name: str) -> dict[str, Any]:
        return json.loads(self.run("network", "inspect", name))[0]

    def address(self, container: str, network: str, v6: bool = False) -> str:
        settings = self.inspect(container)[0]["NetworkSettings"]["Networks"][network]
        return settings["GlobalIPv6Address" if v6 else "IPAddress"]

    def ping(self, container: str, target: str, attempts: int = 3) -> bool:
        """Bounded: a first packet may be lost while neighbours resolve."""
        flag = ["-6"] if ":" in target else []
        for _ in range(attempts):
            result = subprocess.run(
                [self.client, "exec", container, "ping", *flag, "-c", "1", "-W", "2", target],
                capture_output=True, text=True, timeout=30, env=self.engine.env)
            if result.returncode == 0:
                return True
        return False


@dataclass
class Names:
    """Unique names for a test's containers and networks, removed at its end."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def container(self, label: str) -> str:
        self.containers.append(f"pt{self.tag}-{label}")
        return self.containers[-1]

    def network(self, label: str) -> str:
        self.networks.append(f"pt{self.tag}-{label}")
        return self.networks[-1]

    def remove(self, docker: Docker) -> None:
        # One container at a time: `docker rm -f A B ...` removes them side by side, and
        # dockerd 20.10 can then miscount a network's endpoints (moby/moby#43286: "has
        # active endpoints" with no container left, until dockerd restarts).
        for name in self.containers:
            docker.run("rm", "-f", name, check=False, timeout=120)
        failures = []
        for name in self.networks:
            answer = remove_network(docker, name)
            if answer and "active endpoints" in answer and not docker.network(name).get(
                    "Containers"):
                # moby/moby#43286 struck all the same: a restart makes dockerd count again.
                restart_engine(docker.engine)
                answer = remove_network(docker, name)
            if answer:
                failures.append(f"docker network rm {name}: {answer.strip()}")
        if failures:
            raise AssertionError("; ".join(failures))


def remove_network(docker: Docker, name: str, wait: float = 15) -> str | None:
    """Remove a network, retrying while Docker still releases the endpoints of containers
    it just removed; None once it is gone, else Docker's last answer."""
    deadline = time.monotonic() + wait
    while True:
        answer = docker.run("network", "rm", name, check=False)
        if not docker.has_network(name):
            return None
        if time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def run_container(docker: Docker, name: str, network: str, *extra: str) -> str:
    return docker.run("run", "-d", "--name", name, "--network", network, *NO_DNS_OUT, *extra,
                      docker.image, "sleep", "600")


# --- what pycnm has in the kernel ------------------------------------------------------------


def links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines()}


def nft_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                          check=True).stdout


def kernel_objects_of(network_id: str, endpoint_ids: list[str]) -> list[str]:
    """pycnm's kernel objects named after one network and its endpoints."""
    found = [n for n in links() if n == "pcbr-" + network_id[:10]]
    found += [n for n in links() for e in endpoint_ids if n in ("pcv-" + e[:11], "pcp-" + e[:11])]
    if "pcbr-" + network_id[:10] in nft_ruleset():
        found.append("nft rules naming pcbr-" + network_id[:10])
    return found


def wired_outside(outside: Callable[..., Any]) -> tuple[Any, str]:
    """An "outside" namespace wired to the root namespace by a veth with TEST-NET-2
    addresses (the fixture removes both); returns it and the root side's address, once
    ``ip route get`` shows the way to it is that veth, never eth0."""
    root_ip, far_ip = (str(a) for a in list(OUTSIDE_V4.hosts())[:2])
    far = outside(None, f"{root_ip}/{OUTSIDE_V4.prefixlen}", f"{far_ip}/{OUTSIDE_V4.prefixlen}")
    route = subprocess.run(["ip", "route", "get", far_ip], capture_output=True, text=True,
                           check=True).stdout
    device = route.split(" dev ")[1].split()[0]
    assert device.startswith(FIXTURE_PREFIX), f"{far_ip} would leave through {device}: {route}"
    return far, root_ip


def read_from_outside(far: Any, address: str, port: int, attempts: int = 10) -> bytes:
    """What a TCP server behind ``address``:``port`` says to the outside namespace ``far``;
    bounded (the container's server loop may not be listening yet)."""
    for _ in range(attempts):
        answer = far.tcp_connect(address, port) or b""
        if answer:
            return answer
        time.sleep(0.3)
    return b""


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               details: Callable[[], str] = lambda: "") -> None:
    """Poll ``condition`` every 0.2 s; AssertionError naming ``what`` (and showing
    ``details()``, a log tail say) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                 f"{details()}")
        time.sleep(0.2)


def docker_endpoints(docker: Docker, network: str) -> dict[str, str]:
    """Container name -> endpoint id, as Docker sees the network."""
    containers = docker.network(network)["Containers"] or {}
    return {c["Name"]: c["EndpointID"] for c in containers.values()}


def store_endpoints(store_url: str, network_id: str) -> set[str]:
    """Endpoint ids pycnm's store holds for a network (Docker's network id)."""
    from cnm.controller import Controller

    with Controller(store_url, reconcile=False) as ctl:
        return {ep.id for ep in ctl.endpoints() if ep.network_id == network_id}


def pycnm_links() -> set[str]:
    """pycnm's bridge and veth links in the root namespace."""
    return {n for n in links() if n.startswith(("pcbr-", "pcv-", "pcp-"))}


def dnat_targets(host_port: int) -> list[str]:
    """Where pycnm forwards a published host port (its prerouting chain's rules)."""
    chain = subprocess.run(["nft", "list", "chain", "inet", "pycnm", "prerouting"],
                           capture_output=True, text=True, timeout=30).stdout
    found = re.findall(rf"dport {host_port} dnat ip6? to (?:\[([0-9a-f:]+)\]|([0-9.]+)):\d+",
                       chain)
    return [v6 or v4 for v6, v4 in found]
