"""The overlay through Docker: a container on the session's dockerd reaches a pycnm
sandbox on another emulated host, over VXLAN.

    root namespace (dockerd's host; the plugin is its pycnm process)
        198.51.100.9/30 --- router --- 192.168.1.2/24 host h2 (pycnm agent, sandbox C2)

The root namespace is wired to the lab's router by a veth with TEST-NET-2 addresses and a
route for h2's underlay only (192.168.1.0/24), checked with ``ip route get`` before any
packet is sent and removed afterwards: the VTEP in the root namespace sends its UDP to
192.168.1.2 through that veth, never through eth0. The plugin runs under its own name
(``/run/docker/plugins/pycnmov.sock``) so it never meets the plugin tests' socket, with
the session's etcd as its store and ``--ipam-driver`` + ``--ipam-opt scope=global`` so
Docker's addresses come from the cluster-wide IPAM that h2 uses too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import time
from collections.abc import Iterator

import pytest

from netns_fixtures.netns import FIXTURE_PREFIX
from tests.e2e.plugin_process import Plugin
from tests.integration.bridge_helpers import ping_eventually
from tests.integration.overlay_lab import OverlayLab, overlay_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.docker]

PLUGIN = "pycnmov"
SOCKET = f"/run/docker/plugins/{PLUGIN}.sock"
ROOT_LINK = ipaddress.ip_interface("198.51.100.9/30")  # TEST-NET-2, never routed anywhere
ROUTER_LINK = ipaddress.ip_interface("198.51.100.10/30")
H2_UNDERLAY = "192.168.1.0/24"
C2_IP = "10.0.0.4"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@contextlib.contextmanager
def root_wired_to(lab: OverlayLab) -> Iterator[str]:
    """A veth from the root namespace to the lab's router and a route to h2's underlay
    through it; yields the root side's name. Removed on exit, whatever happened."""
    link = f"{FIXTURE_PREFIX}{lab.tag}d"
    peer = f"d{lab.tag}"
    try:
        _ip("link", "add", link, "type", "veth", "peer", "name", peer, "netns", lab.router)
        _ip("addr", "add", str(ROOT_LINK), "dev", link)
        _ip("link", "set", link, "up")
        _ip("-n", lab.router, "addr", "add", str(ROUTER_LINK), "dev", peer)
        _ip("-n", lab.router, "link", "set", peer, "up")
        _ip("route", "add", H2_UNDERLAY, "via", str(ROUTER_LINK.ip), "dev", link)
        yield link
    finally:
        _ip("route", "del", H2_UNDERLAY, "via", str(ROUTER_LINK.ip), check=False)
        _ip("link", "del", link, check=False)


def test_a_docker_container_reaches_a_pycnm_sandbox_on_another_host(
        docker_engine, etcd_server, tmp_path) -> None:
    docker = docker_engine.docker
    with overlay_lab(etcd_server.url, lease_ttl=3.0) as lab, root_wired_to(lab) as link:
        h2 = lab.add_host("2", H2_UNDERLAY)
        route = _ip("route", "get", h2.underlay).stdout
        assert f"dev {link}" in route and "eth0" not in route, route
        lab.start_agent(h2)
        overlay, c2 = f"ov{lab.tag}", f"c2{lab.tag}"
        lab.pycnm(h2, "network", "create", "-d", "overlay", "--subnet", "10.0.0.0/24",
                  "-o", f"overlay={overlay}", "ovnet")
        lab.pycnm(h2, "sandbox", "create", c2)
        lab.pycnm(h2, "attach", "ovnet", c2, "--ip", C2_IP)

        network, container = f"dov{lab.tag}", f"dc{lab.tag}"
        served = Plugin(lab.store_url, tmp_path / "plugin.log", socket=SOCKET,
                        host_id=f"dk{lab.tag}", local_store=lab.local_url,
                        env={"PYCNM_OVERLAY_LEASE_TTL": "3"})
        with served.serving():
            try:
                docker("network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN,
                       "--ipam-opt", "scope=global", "--subnet", "10.0.0.0/24", "--internal",
                       "-o", "driver=overlay", "-o", f"overlay={overlay}",
                       "-o", f"vtep={ROOT_LINK.ip}", network)
                docker("run", "-d", "--name", container, "--network", network, "--dns",
                       "127.0.0.1", docker_engine.image, "sleep", "120")
                inspect = docker("inspect", "-f",
                                 f"{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}",
                                 container).stdout.strip()
                assert inspect and inspect != C2_IP
                assert ipaddress.ip_address(inspect) in ipaddress.ip_network("10.0.0.0/24")
                # h2 learns the container (published by the plugin's process)...
                wait_for(lambda: any(ip == inspect for ip, _ in
                                     lab.vtep_entries(h2, lab.vni_of(overlay)).neigh),
                         15, what="h2 to learn the container")
                # ...and the container reaches C2 across the underlay, and back.
                ok = any(
                    docker("exec", container, "ping", "-c", "1", "-W", "2", C2_IP,
                           check=False, timeout=30).returncode == 0
                    for _ in range(5)
                )
                assert ok, "the container cannot ping C2 over the overlay"
                assert ping_eventually(f"pcsb-{c2}", inspect)
            finally:
                docker("rm", "-f", container, check=False, timeout=60)
                deadline = time.monotonic() + 30
                while docker("network", "rm", network, check=False).returncode != 0 \
                        and time.monotonic() < deadline:
                    time.sleep(0.5)  # dockerd may still be releasing the endpoint
