"""pycnm as a managed (v2) plugin, built by scripts/managed-plugin.sh, on each engine.

Managed plugins are where users of other network plugins hit trouble (docker-net-dhcp
#10: socket not found on enable; moby #29471: not registered again after a daemon
restart). Here: the script builds the plugin folder (rootfs from Debian's packages, cached
per machine; no registry, no pull) and runs ``docker plugin create``; then enable, a
network, containers that ping by name, the SandboxKey seen from inside the plugin,
disable/enable keeping the networks, and a dockerd restart that brings the plugin and
the containers back. Its store lives on a host folder (the ``state`` mount), which
outlives the plugin. Traffic stays between the test's containers.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_fixtures.docker import TRIXIE, restart_engine
from tests.e2e.docker_client import NO_DNS_OUT, Docker, pycnm_links, wait_until
from tests.e2e.plugin_process import REPO, forget_everything

pytestmark = [pytest.mark.docker, pytest.mark.root]

SCRIPT = REPO / "scripts" / "managed-plugin.sh"


class Managed:
    """One managed plugin on one engine, and what the test made with it."""

    def __init__(self, docker: Docker, workdir: Path) -> None:
        self.docker = docker
        self.name = f"pt{secrets.token_hex(3)}/pycnm:test"
        self.folder = workdir / "plugin"
        self.state = workdir / "state"
        self.containers: list[str] = []
        self.networks: list[str] = []

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.state}/state.db"

    def build(self) -> None:
        env = {**self.docker.engine.env, "DOCKER": self.docker.client}
        result = subprocess.run(
            ["bash", str(SCRIPT), "--name", self.name, "--dir", str(self.folder),
             "--netns-dir", self.docker.engine.netns_dir],
            capture_output=True, text=True, timeout=900, env=env)
        assert result.returncode == 0, result.stderr

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.docker.run("plugin", "inspect", self.name))[0]

    def container(self, network: str) -> str:
        name = f"{self.name.split('/')[0]}-c{len(self.containers)}"
        self.containers.append(name)
        self.docker.run("run", "-d", "--name", name, "--network", network, *NO_DNS_OUT,
                        "--restart", "always", self.docker.image, "sleep", "600")
        return name

    def plugin_pid(self) -> int:
        """The plugin's process, as the engine's containerd lists its task."""
        engine = self.docker.engine
        ctr = os.path.join(TRIXIE, "usr/bin/ctr") if engine.version == "26.1" else "/usr/bin/ctr"
        listed = subprocess.run(
            [ctr, "--address", os.path.join(engine.exec_root, "containerd", "containerd.sock"),
             "--namespace", engine.containerd_namespace + "-plugins", "tasks", "ls"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        plugin_id = self.inspect()["Id"]
        return next(int(line.split()[1]) for line in listed.splitlines()
                    if line.startswith(plugin_id))

    def in_plugin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the plugin's mount namespace (its rootfs and mounts)."""
        return subprocess.run(["nsenter", "-t", str(self.plugin_pid()), "-m", *argv],
                              capture_output=True, text=True, timeout=60)

    def remove(self) -> None:
        run = self.docker.run
        if self.containers:
            run("rm", "-f", *self.containers, check=False, timeout=120)
        for network in self.networks:
            run("network", "rm", network, check=False)
        run("plugin", "disable", "-f", self.name, check=False)
        run("plugin", "rm", "-f", self.name, check=False)
        if (self.state / "state.db").exists():  # what a failed test left in the kernel
            forget_everything(self.store_url)


@pytest.fixture
def managed(docker: Docker, tmp_path: Path) -> Iterator[Managed]:
    made = Managed(docker, tmp_path)
    made.state.mkdir()
    try:
        made.build()
        yield made
    finally:
        made.remove()


def test_managed_plugin_enable_network_disable_enable_and_dockerd_restart(
        managed: Managed, docker: Docker) -> None:
    config = managed.inspect()["Config"]
    assert sorted(config["Interface"]["Types"]) == ["docker.ipamdriver/1.0",
                                                    "docker.networkdriver/1.0"]
    assert config["Network"]["Type"] == "host"
    assert config["Linux"]["Capabilities"] == ["CAP_NET_ADMIN"]
    mounts = {m["Name"]: m for m in config["Mounts"]}
    assert mounts["netns"]["Destination"] == docker.engine.netns_dir
    assert mounts["state"]["Settable"] == ["source"]
    assert {e["Name"] for e in config["Env"] if e.get("Settable")} >= {
        "PYCNM_STORE", "PYCNM_HOST_ID", "PYCNM_LOG_LEVEL"}

    docker.run("plugin", "set", managed.name, f"state.source={managed.state}")
    docker.run("plugin", "enable", managed.name)
    net = f"{managed.name.split('/')[0]}-net"
    managed.networks.append(net)
    docker.run("network", "create", "-d", managed.name, "--subnet", "10.121.0.0/24", net)
    c0, c1 = managed.container(net), managed.container(net)
    assert docker.ping(c0, c1) and docker.ping(c1, c0)
    # The plugin sees the container's namespace where Join's SandboxKey points.
    key = docker.inspect(c0)[0]["NetworkSettings"]["SandboxKey"]
    assert key.startswith(docker.engine.netns_dir + "/")
    seen = managed.in_plugin("stat", "-f", "-c", "%T", key)
    assert seen.stdout.strip() == "nsfs", seen.stderr
    # Docker gives plugins a read-only /proc/sys (docs/docker.md says what that means).
    inside = Path(f"/proc/{managed.plugin_pid()}/mounts").read_text().splitlines()
    assert any(m.split()[1] == "/proc/sys" and "ro" in m.split()[3].split(",")
               for m in inside), inside
    # Its store is the host folder's.
    assert (managed.state / "state.db").exists()
    nid = docker.network(net)["Id"]
    assert any(nid in key for key, _ in store_keys(managed.store_url))

    # Disabled (forced: a network uses it), the network stays and the kernel still
    # forwards; enabled again, new containers join.
    docker.run("plugin", "disable", "-f", managed.name)
    assert net in docker.run("network", "ls", "--format", "{{.Name}}").split()
    assert docker.ping(c0, docker.address(c1, net))
    docker.run("plugin", "enable", managed.name)
    c2 = managed.container(net)
    assert docker.ping(c2, c0) and docker.ping(c0, c2)

    # dockerd restarts: the plugin is enabled again by dockerd itself, before the
    # containers with restart policies come back.
    offset = docker.engine.log_size()
    restart_engine(docker.engine)
    assert managed.inspect()["Enabled"] is True
    wait_until(lambda: all(i["State"]["Running"] for i in docker.inspect(c0, c1, c2)), 90,
               "the containers to come back")
    assert "Unable to locate plugin" not in docker.engine.log_since(offset)
    assert docker.ping(c0, c1) and docker.ping(c2, c1)
    c3 = managed.container(net)
    assert docker.ping(c3, c0)

    # Everything removed: nothing left in the plugin's store or the kernel.
    docker.run("rm", "-f", *managed.containers)
    managed.containers.clear()
    docker.run("network", "rm", net)
    managed.networks.clear()
    assert not [k for k, _ in store_keys(managed.store_url) if nid in k]
    assert "pcbr-" + nid[:10] not in pycnm_links()


def store_keys(url: str) -> list[tuple[str, Any]]:
    from cnm.store import open_store

    store = open_store(url)
    try:
        return [(e.key, e.value) for e in store.list("")]
    finally:
        store.close()

