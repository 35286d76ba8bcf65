"""pycnm as a Docker network plugin, end to end: a real dockerd (the package's
``docker_engine``), ``pycnm plugin serve`` as a real process on the real socket path, and
each engine's own client.

Traffic goes only to containers these tests start and to an "outside" namespace made here
(wired to the root namespace by a veth with TEST-NET-2 addresses, checked with ``ip route
get`` before anything is sent). Containers get ``--dns 127.0.0.1`` so that Docker's
embedded DNS never forwards a name it does not know off the machine. Every loop is
bounded; every test removes its containers, networks and namespaces in ``finally``.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.docker_client import (
    NO_DNS_OUT,
    Docker,
    Names,
    kernel_objects_of,
    links,
    nft_ruleset,
    run_container,
    wired_outside,
)
from tests.e2e.plugin_process import SOCKET, Plugin, call_socket

pytestmark = [pytest.mark.docker, pytest.mark.root]

# --- the tests ---------------------------------------------------------------------------------


def test_create_with_and_without_subnet_ls_inspect_rm(docker: Docker, plugin: Plugin,
                                                      names: Names) -> None:
    from cnm.controller import Controller

    with_subnet, without = names.network("sub"), names.network("auto")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.81.0.0/24",
               "--gateway", "10.81.0.254", "-o", "mtu=1400", with_subnet)
    docker.run("network", "create", "-d", "pycnm", without)
    listed = docker.run("network", "ls", "--filter", "driver=pycnm", "--format",
                        "{{.ID}} {{.Name}} {{.Driver}} {{.Scope}}").splitlines()
    inspected = {n: docker.network(n) for n in (with_subnet, without)}
    for name, info in inspected.items():
        assert f"{info['Id'][:12]} {name} pycnm local" in listed
    assert inspected[with_subnet]["IPAM"]["Config"] == [{"Subnet": "10.81.0.0/24",
                                                         "Gateway": "10.81.0.254"}]
    auto_subnet = inspected[without]["IPAM"]["Config"][0]["Subnet"]
    ipaddress.ip_network(auto_subnet)
    # pycnm's records say the same as Docker's.
    with Controller(plugin.store_url, reconcile=False) as ctl:
        for info in inspected.values():
            record = ctl.network(info["Id"]).record
            assert record.name == "docker-" + info["Id"][:12]
            assert [p["subnet"] for p in record.ipv4_pools] == [
                c["Subnet"] for c in info["IPAM"]["Config"]]
        assert ctl.network(inspected[with_subnet]["Id"]).record.ipv4_pools[0]["gateway"] == \
            "10.81.0.254/24"
    bridge = "pcbr-" + inspected[with_subnet]["Id"][:10]
    assert "mtu 1400" in subprocess.run(["ip", "link", "show", bridge], capture_output=True,
                                        text=True, check=True).stdout
    # A container's life leaves nothing behind either.
    c1 = names.container("c1")
    run_container(docker, c1, with_subnet)
    endpoint = docker.inspect(c1)[0]["NetworkSettings"]["Networks"][with_subnet]["EndpointID"]
    assert "pcv-" + endpoint[:11] in links()
    docker.run("rm", "-f", c1)
    for name, info in inspected.items():
        docker.run("network", "rm", name)
        assert kernel_objects_of(info["Id"], [endpoint]) == []
    with Controller(plugin.store_url, reconcile=False) as ctl:
        ids = {n.id for n in ctl.networks()}
        assert not ids & {i["Id"] for i in inspected.values()}


def test_two_containers_ping_by_address_and_name(docker: Docker, names: Names) -> None:
    net = names.network("net")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.82.0.0/24", net)
    c1, c2 = names.container("c1"), names.container("c2")
    run_container(docker, c1, net)
    run_container(docker, c2, net)
    assert docker.ping(c1, docker.address(c2, net))
    assert docker.ping(c2, docker.address(c1, net))
    assert docker.ping(c1, c2) and docker.ping(c2, c1)  # Docker's embedded DNS
    # Join returned the gateway: one interface, a default route through it, no gwbridge.
    routes = docker.run("exec", c1, "ip", "route")
    assert "default via 10.82.0.1 dev eth0" in routes
    assert "eth1" not in docker.run("exec", c1, "ip", "link")
    assert "docker_gwbridge" not in docker.run("network", "ls", "--format", "{{.Name}}")


def test_connect_and_disconnect_a_running_container(docker: Docker, names: Names) -> None:
    front, back = names.network("front"), names.network("back")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.83.0.0/24", front)
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.84.0.0/24", back)
    app, db = names.container("app"), names.container("db")
    run_container(docker, app, front)
    run_container(docker, db, back)
    assert not docker.ping(app, docker.address(db, back), attempts=1)
    docker.run("network", "connect", "--ip", "10.84.0.50", back, app)
    assert docker.address(app, back) == "10.84.0.50"
    assert "10.84.0.50/24" in docker.run("exec", app, "ip", "addr", "show", "eth1")
    assert docker.ping(app, "10.84.0.2") and docker.ping(db, "10.84.0.50")
    assert docker.ping(app, db)
    endpoint = docker.inspect(app)[0]["NetworkSettings"]["Networks"][back]["EndpointID"]
    docker.run("network", "disconnect", back, app)
    assert "eth1" not in docker.run("exec", app, "ip", "link")
    assert not {"pcv-" + endpoint[:11], "pcp-" + endpoint[:11]} & links()
    assert docker.ping(app, "10.83.0.1")  # still on its first network


# "-p PORT:80", and every IPv4 plus every IPv6 address written out as two bindings (one
# port on both families; on this IPv4 network, the IPv4 one)
@pytest.mark.parametrize("publish", [["{port}:80"], ["0.0.0.0:{port}:80", "[::]:{port}:80"]],
                         ids=["any", "0.0.0.0+::"])
def test_published_port_reached_from_an_outside_namespace(
        docker: Docker, names: Names, outside: Callable[..., Any], publish: list[str]) -> None:
    net = names.network("web")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.85.0.0/24", net)
    server = names.container("srv")
    port = 20000 + secrets.randbelow(9000)
    flags = [flag for spec in publish for flag in ("-p", spec.format(port=port))]
    docker.run("run", "-d", "--name", server, "--network", net, *NO_DNS_OUT,
               *flags, docker.image, "sh", "-c",
               "while true; do echo hello-from-pycnm | busybox nc -l -p 80; done")
    assert "docker_gwbridge" not in docker.run("network", "ls", "--format", "{{.Name}}")
    far, root_ip = wired_outside(outside)
    answer = b""
    for _ in range(10):  # bounded: the server loop may not be listening yet
        answer = far.tcp_connect(root_ip, port) or b""
        if answer:
            break
        time.sleep(0.3)
    assert answer.strip() == b"hello-from-pycnm"
    docker.run("rm", "-f", server)
    assert f"dport {port} " not in nft_ruleset()


def test_internal_network_has_no_way_out(docker: Docker, names: Names) -> None:
    net = names.network("int")
    docker.run("network", "create", "-d", "pycnm", "--internal", "--subnet", "10.86.0.0/24", net)
    assert docker.network(net)["Internal"] is True
    c1, c2 = names.container("c1"), names.container("c2")
    run_container(docker, c1, net)
    run_container(docker, c2, net)
    assert docker.ping(c1, c2)
    assert "default" not in docker.run("exec", c1, "ip", "route")
    assert "eth1" not in docker.run("exec", c1, "ip", "link")
    assert "docker_gwbridge" not in docker.run("network", "ls", "--format", "{{.Name}}")
    bridge = "pcbr-" + docker.network(net)["Id"][:10]
    assert f'iifname "{bridge}" oifname != "{bridge}" drop' in nft_ruleset()


def test_static_ip_mac_and_ipv6(docker: Docker, names: Names) -> None:
    net = names.network("v6")
    docker.run("network", "create", "-d", "pycnm", "--ipv6", "--subnet", "10.87.0.0/24",
               "--subnet", "fd00:87::/64", net)
    c1, c2 = names.container("c1"), names.container("c2")
    run_container(docker, c1, net, "--ip", "10.87.0.50", "--ip6", "fd00:87::50",
                  "--mac-address", "02:42:aa:bb:cc:dd")
    run_container(docker, c2, net)
    shown = docker.run("exec", c1, "ip", "addr", "show", "eth0")
    assert "10.87.0.50/24" in shown and "fd00:87::50/64" in shown
    assert "02:42:aa:bb:cc:dd" in shown
    assert docker.address(c1, net) == "10.87.0.50"
    v6 = docker.address(c2, net, v6=True)
    assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd00:87::/64")
    assert docker.ping(c1, v6) and docker.ping(c2, "fd00:87::50")
    assert "default via fd00:87::1" in docker.run("exec", c1, "ip", "-6", "route")


def test_plugin_killed_and_restarted_loses_nothing(docker: Docker, plugin: Plugin,
                                                   names: Names) -> None:
    net = names.network("k")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.88.0.0/24", net)
    c1, c2, c3 = names.container("c1"), names.container("c2"), names.container("c3")
    run_container(docker, c1, net)
    run_container(docker, c2, net)
    assert docker.ping(c1, c2)
    plugin.kill()
    log_before = len(plugin.log_path.read_bytes())
    try:
        assert os.path.exists(SOCKET)  # stale: the next start must cope with it
        assert docker.ping(c1, c2)  # the kernel keeps working without the plugin
    finally:
        plugin.start()
    assert docker.ping(c1, c2) and docker.ping(c2, c1)
    run_container(docker, c3, net)
    assert docker.ping(c3, c1) and docker.ping(c1, c3)
    restart_log = plugin.log_path.read_bytes()[log_before:].decode(errors="replace")
    assert "serving on unix://" + SOCKET in restart_log
    assert "removed the stale socket" in restart_log
    assert "reconcile:" not in restart_log  # the store and the kernel agreed


def test_twenty_containers_started_at_once(docker: Docker, names: Names) -> None:
    net = names.network("many")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.89.0.0/24", net)
    containers = [names.container(f"m{i}") for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        started = list(pool.map(lambda c: run_container(docker, c, net), containers))
    assert all(started)
    info = docker.inspect(*containers)
    assert all(i["State"]["Running"] for i in info)
    addresses = [i["NetworkSettings"]["Networks"][net]["IPAddress"] for i in info]
    assert len(set(addresses)) == 20 and all(addresses)
    script = "for a in {}; do ping -c 1 -W 2 $a >/dev/null || ping -c 1 -W 2 $a >/dev/null " \
             "|| echo unreachable $a; done".format(" ".join(addresses))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: docker.run("exec", c, "sh", "-c", script,
                                                     timeout=120), containers))
    assert [r for r in results if r] == []


def test_bad_requests_to_the_socket_change_nothing(docker: Docker, plugin: Plugin,
                                                   names: Names) -> None:
    net = names.network("b")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.90.0.0/24", net)
    c1 = names.container("c1")
    run_container(docker, c1, net)
    nid = docker.network(net)["Id"]

    def state() -> tuple:
        ours = sorted(n for n in links() if n.startswith(("pcbr-", "pcv-", "pcp-")))
        return ours, nft_ruleset(), plugin.store_snapshot(), docker.run(
            "network", "ls", "--format", "{{.ID}}")

    before = state()
    unknown = "cd" * 32
    cases = [
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": ', 500, "not valid JSON"),
        ("NetworkDriver.CreateNetwork", b'{"Options": {}}', 500, "has no NetworkID"),
        ("NetworkDriver.CreateEndpoint", json.dumps(
            {"NetworkID": unknown, "EndpointID": unknown}).encode(), 500, "not found"),
        ("NetworkDriver.Join", json.dumps(
            {"NetworkID": nid, "EndpointID": unknown, "SandboxKey": "/x"}).encode(),
         500, "not found"),
        ("NetworkDriver.CreateNetwork", json.dumps(
            {"NetworkID": unknown, "Options": {"com.docker.network.generic": {"mtu": "huge"}},
             "IPv4Data": [{"Pool": "10.91.0.0/24", "Gateway": "10.91.0.1/24"}]}).encode(),
         500, "whole number"),
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": "' + b"x" * (2 << 20) + b'"}', 413,
         "larger than"),
        ("NetworkDriver.NoSuchCall", b"{}", 404, "does not implement"),
    ]
    for call, body, status, words in cases:
        got, answer = call_socket(call, body)
        assert (got, words in answer.get("Err", "")) == (status, True), (call, answer)
    # Docker shows our sentence to its user.
    shown = docker.fails("network", "create", "-d", "pycnm", "-o", "colour=blue",
                         names.network("bad"))
    assert "unknown option 'colour'" in shown
    shown = docker.fails("network", "create", "-d", "pycnm", "-o", "driver=nosuch",
                         names.network("bad2"))
    assert "unknown driver 'nosuch'" in shown
    assert state() == before
    assert docker.ping(c1, "10.90.0.1")


def test_ipam_driver_pycnm(docker: Docker, plugin: Plugin, names: Names) -> None:
    from cnm.controller import Controller

    auto, fixed = names.network("ipam"), names.network("ipam2")
    docker.run("network", "create", "-d", "pycnm", "--ipam-driver", "pycnm", auto)
    docker.run("network", "create", "-d", "pycnm", "--ipam-driver", "pycnm",
               "--subnet", "10.92.0.0/24", "--ip-range", "10.92.0.128/25", fixed)
    info = docker.network(auto)
    assert info["IPAM"]["Driver"] == "pycnm"
    subnet = ipaddress.ip_network(info["IPAM"]["Config"][0]["Subnet"])
    c1, c2, c3 = names.container("c1"), names.container("c2"), names.container("c3")
    run_container(docker, c1, auto)
    run_container(docker, c2, auto)
    run_container(docker, c3, fixed)
    a1, a2 = docker.address(c1, auto), docker.address(c2, auto)
    assert {ipaddress.ip_address(a) in subnet for a in (a1, a2)} == {True} and a1 != a2
    assert docker.address(c3, fixed) == "10.92.0.128"
    assert docker.ping(c1, c2) and docker.ping(c2, a1)
    with Controller(plugin.store_url, reconcile=False) as ctl:
        held = {str(a) for a in ctl.ipam.allocated(f"local/{subnet}")}
        assert {a1, a2} <= held and len(held) == 3  # and the gateway
        record = ctl.network(info["Id"]).record
        assert record.labels["docker.ipam"] == "pycnm" and record.ipam == "external"
    docker.run("rm", "-f", c1, c2, c3)
    docker.run("network", "rm", auto, fixed)
    with Controller(plugin.store_url, reconcile=False) as ctl:
        assert not {str(p.subnet) for p in ctl.ipam.list_pools()} & {str(subnet),
                                                                    "10.92.0.0/24"}
