"""The ipvlan driver through Docker: ``docker network create -d pycnm -o driver=ipvlan``.

This machine's kernel has no ipvlan, so this runs under Debian's kernel in the VM, with
its own dockerd (Debian's 20.10, the one the VM's read-only root has), its own ``pycnm
plugin serve`` on the VM's own /run/docker/plugins, and the macvlan Docker tests'
emulated LAN: a veth of the root namespace (the parent) into a "switch" namespace with a
server on it.

Why containerd is started first: dockerd 20.10 gives the containerd it starts itself 15
seconds to answer (a constant in its supervisor), and under the VM's emulation on a busy
machine containerd can take longer; started by us and awaited without that limit, it is
handed to dockerd with ``--containerd``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netns_fixtures.docker import (
    DOCKER,
    DOCKERD,
    DockerEngine,
    EngineInstall,
    import_image,
    start_engine,
    stop_engine,
)
from netns_fixtures.vm import time_factor
from tests.e2e import test_docker_macvlan
from tests.e2e.plugin_process import SOCKET, Plugin, answers
from tests.e2e.test_docker_macvlan import LAN, RANGE, ROUTER, SERVER, Wire, server_learns

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.kernel("ipvlan")]
wire = test_docker_macvlan.wire  # the emulated LAN (a fixture)


@pytest.fixture(scope="module")
def plugin(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Plugin]:
    """Our own plugin process for this module, on the VM's own socket folder (the e2e
    package's plugin belongs to the package's engines, not to this module's)."""
    if answers(SOCKET):
        pytest.fail(f"another plugin already serves {SOCKET}: stop it first")
    workdir = tmp_path_factory.mktemp("pycnm-ipvlan-plugin")
    with Plugin(f"sqlite://{workdir}/state.db", workdir / "plugin.log").serving() as served:
        yield served


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[DockerEngine]:
    """Debian's dockerd on a containerd of our own (see the module notes)."""
    work = tempfile.mkdtemp(prefix="pycnm-dockerd-vm-")
    sock = os.path.join(work, "containerd.sock")
    log = open(os.path.join(work, "containerd.log"), "ab")  # noqa: SIM115 - closed below
    containerd = subprocess.Popen(
        ["containerd", "--address", sock, "--root", os.path.join(work, "containerd-root"),
         "--state", os.path.join(work, "containerd-state")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    engine = None
    try:
        deadline = time.monotonic() + 60 * time_factor()
        while not os.path.exists(sock):
            assert containerd.poll() is None, "containerd exited at start"
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.2)
        # Debian 12's engine as it is (the VM cannot see /var/cache, where setup.sh puts
        # Debian 13's engine and compose: no compose is needed here).
        install = EngineInstall("20.10", DOCKERD, DOCKER, cli_plugins=None)
        engine = start_engine(work, install, extra_args=["--containerd", sock])
        import_image(engine, work)
        yield engine
    finally:
        if engine is not None:
            stop_engine(engine)
        containerd.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            containerd.wait(timeout=30)
        if containerd.poll() is None:
            containerd.kill()
            containerd.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


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
        # Its interface has the parent's MAC too (a macvlan child would have 02:42:...).
        assert mac in wire.docker("exec", c, "ip", "link", "show", "eth0").stdout
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
