"""The ipvlan driver through Docker: ``docker network create -d pycnm -o driver=ipvlan``.

This machine's kernel has no ipvlan, so this runs under Debian's kernel in the VM, with
its own dockerd (the ``docker_engine`` fixture), its own ``pycnm plugin serve`` on the
VM's own /run/docker/plugins, and the macvlan Docker tests' emulated LAN: a veth of the
root namespace (the parent) into a "switch" namespace with a server on it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import test_docker_macvlan
from tests.e2e.test_docker_macvlan import LAN, RANGE, ROUTER, SERVER, Wire, server_learns

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.kernel("ipvlan")]
plugin = test_docker_macvlan.plugin  # our plugin process (a module fixture)
wire = test_docker_macvlan.wire  # the emulated LAN (a fixture)


def parent_mac(wire: Wire) -> str:
    with open(f"/sys/class/net/{wire.parent}/address") as handle:
        return handle.read().strip()


def test_containers_on_an_ipvlan_network_share_the_parents_mac(wire: Wire, plugin: Any
                                                               ) -> None:
    net = f"pt{wire.tag}-iv"
    wire.networks.append(net)
    wire.docker("network", "create", "-d", "pycnm", "-o", "driver=ipvlan",
                "-o", f"parent={wire.parent}", "-o", "ipvlan_mode=l2", "--subnet", LAN,
                "--gateway", ROUTER, "--ip-range", RANGE, net)
    c1, c2 = wire.container(net), wire.container(net)
    mac = parent_mac(wire)
    for c in (c1, c2):
        settings = wire.settings(c, net)
        assert settings["IPAddress"].startswith("203.0.113.")
        assert wire.ping_from(c, SERVER)
        # The LAN's server sees the container's address behind the parent's MAC.
        assert server_learns(wire.server, settings["IPAddress"]) == mac
        link = wire.docker("exec", c, "ip", "-d", "link", "show", "eth0").stdout
        assert mac in link and "ipvlan" in link
        assert f"default via {ROUTER} dev eth0" in wire.docker("exec", c, "ip", "route").stdout
    assert wire.ping_from(c1, wire.settings(c2, net)["IPAddress"])
    # A MAC address asked for is refused in one sentence, and the container not started.
    refused = wire.docker("run", "-d", "--name", f"pt{wire.tag}-mac", "--network", net,
                          "--mac-address", "02:42:c0:00:02:63", wire.image, "sleep", "60",
                          check=False)
    wire.containers.append(f"pt{wire.tag}-mac")
    assert refused.returncode != 0
    assert "have the MAC address of their parent interface" in refused.stderr
    for c in (c1, c2):
        wire.docker("rm", "-f", c)
        wire.containers.remove(c)
    wire.docker("network", "rm", net)
    wire.networks.remove(net)
    assert net not in wire.docker("network", "ls").stdout
