"""docker compose v2 (Debian 13's compose 2.26 as each engine's client CLI plugin) with a
project on two pycnm networks, on each engine.

The project uses what compose users put in their files: ``driver_opts``, ``ipam`` config
with subnet/gateway/ip_range, ``internal``, ``enable_ipv6`` with an IPv6 subnet, services
with ``aliases`` and ``ipv4_address``/``ipv6_address``, and a published port. ``up``, then
traffic by name and by alias, then ``down`` leaves nothing in Docker, in pycnm's store or
in the kernel; and ``up`` again after the plugin was restarted. Traffic stays between the
project's containers and an "outside" namespace wired to the root namespace (TEST-NET-2).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.docker_client import (
    Docker,
    dnat_targets,
    docker_endpoints,
    pycnm_links,
    read_from_outside,
    store_endpoints,
    wait_until,
    wired_outside,
)
from tests.e2e.plugin_process import Plugin

pytestmark = [pytest.mark.docker, pytest.mark.root]

FRONT, BACK = "10.111.0.0/24", "10.112.0.0/24"
BACK_V6 = "fd00:112::/64"


def project_file(image: str, port: int) -> dict[str, Any]:
    server = "while true; do echo hello-from-compose | nc -l -p 80; done"
    common = {"image": image, "pull_policy": "never", "dns": ["127.0.0.1"]}
    return {
        "services": {
            "web": {**common, "command": ["sh", "-c", server], "ports": [f"{port}:80"],
                    "networks": {"front": {"aliases": ["www"], "ipv4_address": "10.111.0.10"}}},
            "app": {**common, "command": ["sleep", "600"],
                    "networks": {"front": {}, "back": {"aliases": ["api"]}}},
            "db": {**common, "command": ["sleep", "600"],
                   "networks": {"back": {"ipv4_address": "10.112.0.20",
                                         "ipv6_address": "fd00:112::20"}}},
        },
        "networks": {
            "front": {"driver": "pycnm", "driver_opts": {"mtu": "1400", "icc": "true"},
                      "ipam": {"config": [{"subnet": FRONT, "gateway": "10.111.0.1",
                                           "ip_range": "10.111.0.128/25"}]}},
            "back": {"driver": "pycnm", "internal": True, "enable_ipv6": True,
                     "ipam": {"config": [{"subnet": BACK}, {"subnet": BACK_V6}]}},
        },
    }


class Compose:
    """``docker compose`` of the engine's own client on one project."""

    def __init__(self, docker: Docker, directory: Path, project: str) -> None:
        self.docker, self.directory, self.project = docker, directory, project

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        result = subprocess.run(
            [self.docker.client, "compose", "-p", self.project, "-f",
             str(self.directory / "compose.yaml"), *args],
            capture_output=True, text=True, timeout=timeout, env=self.docker.engine.env,
            cwd=self.directory)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def network(self, name: str) -> str:
        return f"{self.project}_{name}"


@pytest.fixture
def compose(docker: Docker, plugin: Plugin, tmp_path: Path) -> Iterator[Compose]:
    project = f"pt{secrets.token_hex(3)}"
    made = Compose(docker, tmp_path, project)
    try:
        yield made
    finally:
        made("down", "--remove-orphans", "--timeout", "1", check=False)


def test_compose_project_on_two_pycnm_networks(
        compose: Compose, docker: Docker, plugin: Plugin, outside: Callable[..., Any]) -> None:
    port = 20000 + secrets.randbelow(9000)
    (compose.directory / "compose.yaml").write_text(yaml.safe_dump(project_file(docker.image,
                                                                                port)))
    version = subprocess.run([docker.client, "compose", "version"], capture_output=True,
                             text=True, timeout=60, env=docker.engine.env).stdout
    assert re.search(r"Docker Compose version v?2\.", version), version
    far, root_ip = wired_outside(outside)
    up_talk_down(compose, docker, plugin, port, lambda: read_from_outside(far, root_ip, port))
    plugin.stop()  # a plugin restart between two ups: its store carries everything over
    plugin.start()
    up_talk_down(compose, docker, plugin, port, lambda: read_from_outside(far, root_ip, port))


def up_talk_down(compose: Compose, docker: Docker, plugin: Plugin, port: int,
                 from_outside: Callable[[], bytes]) -> None:
    """``up``: what the file asked for is there and talks; ``down``: nothing is left."""
    compose("up", "-d")
    web, app, db = (compose.container(s) for s in ("web", "app", "db"))
    front, back = compose.network("front"), compose.network("back")
    ids = {n: docker.network(n)["Id"] for n in (front, back)}
    assert docker.network(front)["IPAM"]["Config"] == [
        {"Subnet": FRONT, "Gateway": "10.111.0.1", "IPRange": "10.111.0.128/25"}]
    assert docker.network(back)["Internal"] and docker.network(back)["EnableIPv6"]
    assert docker.address(web, front) == "10.111.0.10"
    assert docker.address(db, back) == "10.112.0.20"
    assert docker.address(db, back, v6=True) == "fd00:112::20"
    assert "mtu 1400" in docker.run("exec", web, "ip", "link", "show", "eth0")
    # By name, by alias, across both networks; the internal one has no way out.
    assert docker.ping(app, "web") and docker.ping(app, "www") and docker.ping(app, "db")
    assert docker.ping(db, "api") and docker.ping(db, "fd00:112::20")
    assert "default" not in docker.run("exec", db, "ip", "route")
    assert not docker.ping(db, "10.111.0.10", attempts=1)  # networks are isolated
    assert from_outside().strip() == b"hello-from-compose"
    assert dnat_targets(port) == ["10.111.0.10"]
    endpoints = {e for n in (front, back) for e in docker_endpoints(docker, n).values()}
    assert len(endpoints) == 4  # web, app twice, db

    compose("down", "--timeout", "1")
    listed = docker.run("network", "ls", "--format", "{{.Name}}").split()
    assert front not in listed and back not in listed
    assert docker.run("ps", "-a", "--filter", f"name={compose.project}", "-q") == ""
    for nid in ids.values():
        assert store_endpoints(plugin.store_url, nid) == set()
    keys = [key for key, _ in plugin.store_snapshot()]
    assert not [k for k in keys for nid in ids.values() if nid in k]
    ours = {"pcbr-" + nid[:10] for nid in ids.values()} | {"pcv-" + e[:11] for e in endpoints}
    # veths go in the background (cnm.osl.reaper): a bounded wait.
    wait_until(lambda: not pycnm_links() & ours, 15, "the project's links to go",
               lambda: str(pycnm_links() & ours))
    assert dnat_targets(port) == []
