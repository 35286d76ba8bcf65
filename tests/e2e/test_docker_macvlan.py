"""The macvlan driver through Docker: ``docker network create -d pycnm -o driver=macvlan``.

dockerd's host is the real root namespace, so the parent is a veth in the root namespace
(never eth0) whose other end is a port of an emulated LAN switch: a namespace with a
bridge, where an "external server" namespace also plugs in. The root namespace holds no
address of the test LAN (TEST-NET-3) and routes nothing to it, except in the shim test,
where the host shim puts a host route to the one container on our own interface, checked
with ``ip route get`` before a packet is sent. Every loop is bounded; every test removes
its containers, networks and links in ``finally``.

The plugin: the e2e package's own ``pycnm plugin serve`` on Docker's socket (the
``plugin`` fixture of tests/e2e/conftest.py). A test owns the plugin it talks to: if
another process already answers there, the fixture fails rather than test someone else's
plugin and store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cnm.store import open_store
from netns_fixtures.netns import Namespace, unique_name, veth
from tests.e2e.plugin_process import Plugin

pytestmark = [pytest.mark.docker, pytest.mark.root]

LAN = "203.0.113.0/24"  # TEST-NET-3, only inside this test's namespaces and veths
RANGE = "203.0.113.64/26"  # containers' addresses, away from the LAN's machines
ROUTER = "203.0.113.1"
SERVER = "203.0.113.10"
SHIM_IP = "203.0.113.250"
NO_DNS_OUT = ["--dns", "127.0.0.1"]  # names Docker does not know stay on the machine


@dataclass
class Wire:
    """The emulated LAN: ``parent`` (root namespace) -- [switch] -- server."""

    parent: str
    switch: Namespace
    server: Namespace
    docker: Callable[..., subprocess.CompletedProcess]
    image: str
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def network(self, *args: str) -> str:
        name = f"pt{self.tag}-net{len(self.networks)}"
        self.networks.append(name)
        self.docker("network", "create", "-d", "pycnm", "-o", "driver=macvlan",
                    "-o", f"parent={self.parent}", "--subnet", LAN, "--gateway", ROUTER,
                    "--ip-range", RANGE, *args, name)
        return name

    def container(self, network: str) -> str:
        name = f"pt{self.tag}-c{len(self.containers)}"
        self.containers.append(name)
        self.docker("run", "-d", "--name", name, "--network", network, *NO_DNS_OUT, self.image,
                    "sleep", "600")
        return name

    def settings(self, container: str, network: str) -> dict[str, Any]:
        out = self.docker("inspect", container).stdout
        return json.loads(out)[0]["NetworkSettings"]["Networks"][network]

    def ping_from(self, container: str, target: str, attempts: int = 3) -> bool:
        for _ in range(attempts):
            result = self.docker("exec", container, "ping", "-c", "1", "-W", "2", target,
                                 check=False, timeout=30)
            if result.returncode == 0:
                return True
        return False


def root_overlaps(prefix: str) -> list[str]:
    """Root-namespace addresses and routes (default routes aside) that overlap ``prefix``:
    the test LAN must be foreign to the machine, or the shim's host address and routes
    could shadow a real neighbour."""
    lan = ipaddress.ip_network(prefix)
    found = []
    for argv in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route", "show", "table", "all"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True,
                             timeout=30).stdout
        for word in out.split():
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(word, strict=False)
                if net.prefixlen and net.version == 4 and net.overlaps(lan):
                    found.append(word)
    return found


@pytest.fixture
def wire(docker_engine: Any, plugin: Plugin,
         netns: Callable[..., Namespace]) -> Iterator[Wire]:
    overlaps = root_overlaps(LAN)
    assert not overlaps, f"the test LAN {LAN} overlaps this machine's {overlaps}: pick another"
    switch, server = netns("switch"), netns("server")
    parent = unique_name()
    made = False
    try:
        switch.run(["ip", "link", "add", "br0", "type", "bridge"], check=True)
        switch.run(["ip", "link", "set", "br0", "up"], check=True)
        port = unique_name()
        subprocess.run(["ip", "link", "add", parent, "type", "veth", "peer", "name", port,
                        "netns", switch.name], check=True, capture_output=True, timeout=30)
        made = True
        # The root end carries no address; keep IPv6 autoconfiguration off it too.
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{parent}.disable_ipv6=1"],
                       check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "set", parent, "up"], check=True, capture_output=True,
                       timeout=30)
        switch.run(["ip", "link", "set", port, "master", "br0", "up"], check=True)
        server_port = unique_name()
        veth(server, "eth0", switch, server_port, f"{SERVER}/24")
        switch.run(["ip", "link", "set", server_port, "master", "br0"], check=True)
        w = Wire(parent, switch, server, docker_engine.docker, docker_engine.image)
        try:
            yield w
        finally:
            for name in w.containers:
                w.docker("rm", "-f", name, check=False)
            for name in w.networks:
                w.docker("network", "rm", name, check=False)
    finally:
        if made:
            subprocess.run(["ip", "link", "del", parent], capture_output=True, timeout=30)


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def macvlan_records(plugin: Plugin, network_id: str) -> list[str]:
    """Store keys of the macvlan driver (or the core) still naming ``network_id``."""
    store = open_store(plugin.store_url)
    try:
        return [e.key for e in store.list("") if network_id in e.key]
    finally:
        store.close()


def server_learns(server: Namespace, address: str, deadline: float = 5.0) -> str | None:
    end = time.monotonic() + deadline
    while True:
        mac = server.neighbours().get(address)
        if mac or time.monotonic() > end:
            return mac
        time.sleep(0.05)


def test_container_on_a_macvlan_network_is_a_machine_on_the_lan(
    wire: Wire, plugin: Plugin
) -> None:
    net = wire.network()
    network_id = json.loads(wire.docker("network", "inspect", net).stdout)[0]["Id"]
    c = wire.container(net)
    settings = wire.settings(c, net)
    address, mac = settings["IPAddress"], settings["MacAddress"]
    assert address.startswith("203.0.113.") and mac
    assert wire.ping_from(c, SERVER)
    # The server saw the container's own MAC: a machine of its own on the LAN.
    assert server_learns(wire.server, address) == mac
    routes = wire.docker("exec", c, "ip", "route").stdout
    assert f"default via {ROUTER} dev eth0" in routes
    # dockerd moved the child into the container; the root namespace holds nothing of it
    # and never got the LAN's router address.
    endpoint = settings["EndpointID"]
    assert f"pcmv-{endpoint[:10]}" not in root_links()
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                               check=True).stdout
    assert ROUTER not in addresses
    assert macvlan_records(plugin, network_id)  # our plugin's store holds the network
    # Removal: the container, then the network; nothing of either is left.
    wire.docker("rm", "-f", c)
    wire.containers.remove(c)
    wire.docker("network", "rm", net)
    wire.networks.remove(net)
    assert not [n for n in root_links() if n.startswith(("pcmv-", "pcsh-"))
                and (endpoint[:10] in n or network_id[:10] in n)]
    assert macvlan_records(plugin, network_id) == []
    assert wire.parent in root_links()  # the parent is the user's: left as found


def test_host_shim_through_docker(wire: Wire, plugin: Plugin) -> None:
    net = wire.network("--aux-address", f"host={SHIM_IP}", "-o", "host_shim=host")
    network_id = json.loads(wire.docker("network", "inspect", net).stdout)[0]["Id"]
    shim = f"pcsh-{network_id[:10]}"
    assert shim in root_links()
    c = wire.container(net)
    address = wire.settings(c, net)["IPAddress"]
    route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True,
                           check=True).stdout
    assert f"dev {shim}" in route, route  # checked before any packet leaves the root
    result = subprocess.run(["ping", "-c", "1", "-W", "2", address], capture_output=True,
                            timeout=30)
    assert result.returncode == 0
    assert wire.ping_from(c, SHIM_IP)
    wire.docker("rm", "-f", c)
    wire.containers.remove(c)
    assert address not in subprocess.run(["ip", "route"], capture_output=True, text=True,
                                         check=True).stdout
    wire.docker("network", "rm", net)
    wire.networks.remove(net)
    assert shim not in root_links()
    assert SHIM_IP not in subprocess.run(["ip", "-o", "addr"], capture_output=True,
                                         text=True, check=True).stdout


def test_bad_parent_is_refused_in_docker_words(wire: Wire, plugin: Plugin) -> None:
    name = f"pt{wire.tag}-bad"
    result = wire.docker("network", "create", "-d", "pycnm", "-o", "driver=macvlan",
                         "-o", "parent=nosuch0", "--subnet", LAN, name, check=False)
    assert result.returncode != 0
    assert "parent interface nosuch0 does not exist" in result.stderr
    listed = wire.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert name not in listed
