"""Docker's embedded DNS with pycnm's resolver as its upstream: a container on a pycnm
overlay resolves the name of a pycnm sandbox on another emulated host.

    root namespace: dockerd, `pycnm plugin serve --dns-gateway` (its resolver answers on
      port 53 of each network's gateway: 10.0.0.1 in the overlay's namespace here)
        198.51.100.9/30 --- router --- 192.168.1.2/24 host h2 (pycnm agent, sandbox C2)

The container is run with ``--dns 10.0.0.1``: Docker's resolver answers the names Docker
knows and forwards the rest to 10.0.0.1, dialled from the container's namespace across
the overlay's bridge; pycnm answers with the overlay's names, h2's included (from etcd).
The network is internal, so names nobody knows get SERVFAIL and nothing leaves. Wiring
as in test_overlay_docker (a route for h2's underlay only, checked before use).
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from tests.e2e.plugin_process import Plugin
from tests.e2e.test_overlay_docker import ROOT_LINK, root_wired_to
from tests.integration.overlay_lab import overlay_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.docker]

PLUGIN = "pycnmdns"
SOCKET = f"/run/docker/plugins/{PLUGIN}.sock"
H2_UNDERLAY = "192.168.1.0/24"
C2_IP = "10.0.0.4"
GATEWAY = "10.0.0.1"


def nslookup(docker, container: str, name: str) -> str:
    return docker("exec", container, "nslookup", name, check=False, timeout=30).stdout


def test_a_container_resolves_a_sandbox_on_another_host_through_pycnm(
        docker_engine, etcd_server, tmp_path) -> None:
    docker = docker_engine.docker
    with overlay_lab(etcd_server.url, lease_ttl=3.0) as lab, root_wired_to(lab) as link:
        h2 = lab.add_host("2", H2_UNDERLAY)
        route = subprocess_route(h2.underlay)
        assert f"dev {link}" in route and "eth0" not in route, route
        lab.start_agent(h2)
        overlay, c2 = f"ov{lab.tag}", f"c2{lab.tag}"
        lab.pycnm(h2, "network", "create", "-d", "overlay", "--subnet", "10.0.0.0/24",
                  "-o", f"overlay={overlay}", "ovnet")
        lab.pycnm(h2, "sandbox", "create", c2)
        lab.pycnm(h2, "attach", "ovnet", c2, "--ip", C2_IP, "--alias", "backend")

        network, container = f"dns{lab.tag}", f"dc{lab.tag}"
        served = Plugin(lab.store_url, tmp_path / "plugin.log", socket=SOCKET,
                        host_id=f"dk{lab.tag}", args=("--dns-gateway",),
                        env={"PYCNM_OVERLAY_LEASE_TTL": "3"})
        with served.serving():
            try:
                docker("network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN,
                       "--ipam-opt", "scope=global", "--subnet", "10.0.0.0/24", "--internal",
                       "-o", "driver=overlay", "-o", f"overlay={overlay}",
                       "-o", f"vtep={ROOT_LINK.ip}", network)
                docker("run", "-d", "--name", container, "--network", network, "--dns",
                       GATEWAY, docker_engine.image, "sleep", "120")
                mine = docker("inspect", "-f",
                              f"{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}",
                              container).stdout.strip()
                assert ipaddress.ip_address(mine) in ipaddress.ip_network("10.0.0.0/24")
                assert "answering on 10.0.0.1:53" in served.tail(200)
                # Docker's own names still answer (its resolver first)...
                assert mine in nslookup(docker, container, container)
                # ...and what Docker does not know comes from pycnm: h2's sandbox.
                for name in (c2, "backend", c2.upper()):
                    wait_for(lambda n=name: C2_IP in nslookup(docker, container, n), 20,
                             what=f"{name} to resolve in the container")
                unknown = nslookup(docker, container, f"nobody{lab.tag}")
                assert C2_IP not in unknown and "can't find" in unknown
                lab.pycnm(h2, "detach", "ovnet", c2)
                wait_for(lambda: C2_IP not in nslookup(docker, container, "backend"), 20,
                         what="the name to go after the detach on h2")
            finally:
                docker("rm", "-f", container, check=False, timeout=60)
                deadline = time.monotonic() + 30
                while docker("network", "rm", network, check=False).returncode != 0 \
                        and time.monotonic() < deadline:
                    time.sleep(0.5)


def subprocess_route(address: str) -> str:
    import subprocess

    return subprocess.run(["ip", "route", "get", address], capture_output=True, text=True,
                          timeout=30).stdout
