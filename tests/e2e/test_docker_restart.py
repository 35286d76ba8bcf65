"""dockerd restarts and start-up order, on each engine (20.10 and 26.1).

What users of network plugins report most (weave #3009 and #2222, contiv #267, moby
#20363): containers failing or state lost after a dockerd restart or a reboot. Here the
package's dockerd is restarted under running containers (netns_fixtures.docker's
``restart_engine``, ``stop_daemon``/``start_daemon``), with the package's plugin up, with
``--live-restore``, and with the plugin down while dockerd starts; and the systemd unit's
order (plugin first, ready when it says READY=1) is played with the unit's own command.

Every test leaves the engine as it found it (flags, plugin running) in ``finally``.
Traffic: between the tests' containers, and from an "outside" namespace wired to the root
namespace by a veth (TEST-NET-2, ``ip route get`` checked) to published ports.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_fixtures.docker import DockerEngine, restart_engine, start_daemon, stop_daemon
from tests.e2e.docker_client import (
    NO_DNS_OUT,
    Docker,
    Names,
    dnat_targets,
    docker_endpoints,
    links,
    pycnm_links,
    read_from_outside,
    store_endpoints,
    wait_until,
    wired_outside,
)
from tests.e2e.plugin_process import REPO, SOCKET, Plugin, answers

pytestmark = [pytest.mark.docker, pytest.mark.root]

UNIT = REPO / "plugin_server" / "pycnm-plugin.service"
SERVER = "while true; do echo hello-after-restart | nc -l -p 80; done"
# busybox's sleep as PID 1 ignores SIGTERM: without this, each stop waits 10 s for SIGKILL.
QUICK_STOP = ("--stop-timeout", "1")
GAVE_UP = "failed to start container"  # in dockerd's log when it gives a restored one up


@contextlib.contextmanager
def engine_flags(engine: DockerEngine, flags: list[str]) -> Iterator[None]:
    """dockerd restarted with ``flags`` for the body, and with its own again afterwards."""
    before = list(engine.extra_args)
    restart_engine(engine, extra_args=before + flags)
    try:
        yield
    finally:
        if not engine.running():
            start_daemon(engine)
        restart_engine(engine, extra_args=before)


@contextlib.contextmanager
def plugin_restored(plugin: Plugin) -> Iterator[None]:
    """Whatever the body does to the package's plugin, it serves again afterwards."""
    try:
        yield
    finally:
        if not plugin.running() and not answers(SOCKET):
            plugin.start()


def running(docker: Docker, *containers: str) -> bool:
    return all(i["State"]["Running"] for i in docker.inspect(*containers))


def wait_running(docker: Docker, *containers: str, timeout: float = 90) -> None:
    wait_until(lambda: running(docker, *containers), timeout,
               f"containers {', '.join(containers)} to run")


def assert_no_orphans(docker: Docker, plugin: Plugin, networks: list[str],
                      gone: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """pycnm holds exactly the endpoints Docker has on ``networks`` (store and veths), and
    nothing of the endpoint ids in ``gone`` (store, links)."""
    for name in networks:
        nid = docker.network(name)["Id"]
        theirs = set(docker_endpoints(docker, name).values())
        assert store_endpoints(plugin.store_url, nid) == theirs, name
        ours = pycnm_links()
        assert {"pcv-" + e[:11] for e in theirs} <= ours
    leftovers = {n for n in pycnm_links() for e in gone if n[4:] == e[:11]}
    assert not leftovers, f"links of endpoints Docker no longer has: {leftovers}"


def test_restart_policy_containers_come_back_after_a_dockerd_restart(
        docker: Docker, plugin: Plugin, names: Names, outside: Callable[..., Any]) -> None:
    """Three containers with ``--restart always`` on two pycnm networks (one on both, one
    publishing a port): after a dockerd restart they run again, talk by name across both
    networks, the port answers, and pycnm holds no endpoint, link or rule of the old
    containers' endpoints."""
    front, back = names.network("front"), names.network("back")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.101.0.0/24", front)
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.102.0.0/24", back)
    web, app, db = names.container("web"), names.container("app"), names.container("db")
    port = 20000 + secrets.randbelow(9000)
    always = ("--restart", "always", *QUICK_STOP, *NO_DNS_OUT)
    docker.run("run", "-d", "--name", web, "--network", front, *always, "-p", f"{port}:80",
               docker.image, "sh", "-c", SERVER)
    docker.run("run", "-d", "--name", app, "--network", front, *always, docker.image,
               "sleep", "600")
    docker.run("network", "connect", back, app)
    docker.run("run", "-d", "--name", db, "--network", back, *always, docker.image,
               "sleep", "600")
    assert docker.ping(app, web) and docker.ping(app, db)
    far, root_ip = wired_outside(outside)
    assert read_from_outside(far, root_ip, port).strip() == b"hello-after-restart"
    before = {**docker_endpoints(docker, front), **{f"{k}@back": v for k, v in
                                                    docker_endpoints(docker, back).items()}}

    restart_engine(docker.engine)

    wait_running(docker, web, app, db)
    assert docker.ping(app, web) and docker.ping(app, db) and docker.ping(db, app)
    assert read_from_outside(far, root_ip, port).strip() == b"hello-after-restart"
    assert dnat_targets(port) == [docker.address(web, front)]  # one rule, the new address
    after = {**docker_endpoints(docker, front), **{f"{k}@back": v for k, v in
                                                   docker_endpoints(docker, back).items()}}
    assert set(after) == set(before)
    assert_no_orphans(docker, plugin, [front, back], gone=set(before.values()) -
                      set(after.values()))


def test_live_restore_keeps_containers_and_endpoints_through_a_restart(
        docker: Docker, plugin: Plugin, names: Names, outside: Callable[..., Any]) -> None:
    """With ``--live-restore`` the containers keep running while dockerd is down (they
    still talk, the published port still answers), and afterwards Docker and pycnm still
    have the very same endpoints."""
    engine = docker.engine
    with engine_flags(engine, ["--live-restore"]):
        net = names.network("live")
        docker.run("network", "create", "-d", "pycnm", "--subnet", "10.103.0.0/24", net)
        c1, c2 = names.container("c1"), names.container("c2")
        port = 20000 + secrets.randbelow(9000)
        docker.run("run", "-d", "--name", c1, "--network", net, *NO_DNS_OUT,
                   "--restart", "always", *QUICK_STOP, "-p", f"{port}:80", docker.image,
                   "sh", "-c", SERVER)
        docker.run("run", "-d", "--name", c2, "--network", net, *NO_DNS_OUT,
                   "--restart", "always", *QUICK_STOP, docker.image, "sleep", "600")
        assert docker.ping(c1, c2)
        far, root_ip = wired_outside(outside)
        pids = {c: i["State"]["Pid"] for c, i in zip((c1, c2), docker.inspect(c1, c2),
                                                      strict=True)}
        endpoints = docker_endpoints(docker, net)
        c2_ip = docker.address(c2, net)
        stop_daemon(engine)
        try:
            # dockerd is gone; the containers and their network are not.
            assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())
            assert nsenter_ping(pids[c1], c2_ip)
            assert read_from_outside(far, root_ip, port).strip() == b"hello-after-restart"
        finally:
            start_daemon(engine)
        assert {c: i["State"]["Pid"] for c, i in zip((c1, c2), docker.inspect(c1, c2),
                                                      strict=True)} == pids
        assert docker_endpoints(docker, net) == endpoints
        assert docker.ping(c1, c2) and docker.ping(c2, c1)
        assert_no_orphans(docker, plugin, [net])
        assert dnat_targets(port) == [docker.address(c1, net)]


def nsenter_ping(pid: int, address: str) -> bool:
    """A bounded ping from inside a container's network namespace, dockerd or not."""
    result = subprocess.run(["nsenter", "-t", str(pid), "-n", "ping", "-c", "3", "-i", "0.2",
                             "-W", "2", address], capture_output=True, timeout=30)
    return result.returncode == 0


def test_dockerd_started_while_the_plugin_is_down(docker: Docker, plugin: Plugin,
                                                  names: Names) -> None:
    """Docker looks for a missing legacy plugin with back-off (1, 2, 4, 8 s: about 15 s)
    for each container it restores, one container after the other, before its API
    answers. A plugin that appears within that window gets its containers started; a
    container whose window passed stays stopped (its restart policy does not retry a
    failed start), and starts by hand once the plugin is there."""
    net = names.network("late")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.104.0.0/24", net)
    first, second = names.container("a"), names.container("b")
    for name in (first, second):
        docker.run("run", "-d", "--name", name, "--network", net, *NO_DNS_OUT,
                   "--restart", "always", *QUICK_STOP, docker.image, "sleep", "600")
    engine = docker.engine
    with plugin_restored(plugin):
        stop_daemon(engine)
        plugin.stop()
        offset = engine.log_size()
        started = time.monotonic()
        start_daemon(engine, wait=False)
        # One container's window passes with no plugin (Docker gives up on it)...
        wait_until(lambda: GAVE_UP in engine.log_since(offset), 60,
                   "dockerd to give up on the first container",
                   lambda: engine.log_since(offset)[-4000:])
        given_up = time.monotonic() - started
        # ...the plugin appears while Docker waits for the other one.
        wait_until(lambda: engine.log_since(offset).count("Unable to locate plugin: pycnm")
                   > waits_before_giving_up(engine.log_since(offset)), 30,
                   "dockerd to look for the plugin again")
        plugin.start()
        engine.wait_ready()
    log = engine.log_since(offset)
    assert "retrying in 1s" in log and "retrying in 8s" in log
    assert 14 <= given_up <= 40, f"Docker gave up after {given_up:.1f} s"
    failed = [c for c in (first, second) if full_id(docker, c) in failed_starts(log)]
    assert len(failed) == 1, log[-3000:]
    ok = next(c for c in (first, second) if c not in failed)
    wait_running(docker, ok)
    assert not running(docker, failed[0])
    docker.run("start", failed[0])
    assert docker.ping(ok, failed[0]) and docker.ping(failed[0], ok)
    assert_no_orphans(docker, plugin, [net])


def waits_before_giving_up(log: str) -> int:
    """How many "Unable to locate plugin" lines the log had when Docker gave up."""
    head = log.split(GAVE_UP, 1)[0]
    return head.count("Unable to locate plugin: pycnm")


def full_id(docker: Docker, container: str) -> str:
    return docker.inspect(container)[0]["Id"]


def failed_starts(log: str) -> set[str]:
    return {line.split("container=", 1)[1].split()[0] for line in log.splitlines()
            if GAVE_UP in line and "container=" in line}


# --- the systemd unit's order ----------------------------------------------------------------


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign] # keys keep their case
    parser.read(UNIT)
    return parser


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    """A NOTIFY_SOCKET as systemd offers a Type=notify service."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


def test_the_units_order_plugin_ready_first_then_dockerd(
        docker: Docker, plugin: Plugin, names: Names, tmp_path: Path) -> None:
    """plugin_server/pycnm-plugin.service runs before docker.service and is Type=notify:
    its own ExecStart (with the test's store) is started, READY=1 is awaited as systemd
    awaits it, then dockerd starts; the containers with restart policies come up at once,
    dockerd never has to wait for the plugin."""
    unit = unit_sections()
    assert "docker.service" in unit["Unit"]["Before"].split()
    assert unit["Service"]["Type"] == "notify"
    assert "docker.service" in unit["Install"]["WantedBy"].split()
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/pycnm") and argv[1:3] == ["plugin", "serve"]
    assert argv[argv.index("--socket") + 1] == SOCKET
    net = names.network("unit")
    docker.run("network", "create", "-d", "pycnm", "--subnet", "10.105.0.0/24", net)
    c1, c2 = names.container("c1"), names.container("c2")
    for name in (c1, c2):
        docker.run("run", "-d", "--name", name, "--network", net, *NO_DNS_OUT,
                   "--restart", "always", *QUICK_STOP, docker.image, "sleep", "600")
    engine = docker.engine
    with plugin_restored(plugin):
        # The machine goes down: docker.service stops before the plugin (reverse order).
        stop_daemon(engine)
        plugin.stop()
        # It comes up: the plugin's unit first, with the environment the unit sets.
        env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(tmp_path / "notify")}
        for assignment in unit["Service"].get("Environment", "").split():
            key, _, value = assignment.partition("=")
            env[key] = value
        env["PYCNM_STORE"] = plugin.store_url  # the tests' store, not the machine's
        log = (tmp_path / "unit.log").open("ab")
        with notify_socket(tmp_path / "notify") as notify:
            served = subprocess.Popen([sys.executable, "-m", "cnm.cli", *argv[1:]], env=env,
                                      cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
            try:
                notify.settimeout(30)
                assert b"READY=1" in notify.recv(4096)
                assert answers(SOCKET)  # ready means serving: what Before= relies on
                offset = engine.log_size()
                start_daemon(engine)  # docker.service, after the plugin
                wait_running(docker, c1, c2, timeout=30)
                assert "Unable to locate plugin" not in engine.log_since(offset)
                assert docker.ping(c1, c2) and docker.ping(c2, c1)
                assert_no_orphans(docker, plugin, [net])
            finally:
                served.send_signal(signal.SIGTERM)  # as systemctl stop does
                assert served.wait(timeout=30) == 0
                log.close()
        assert not os.path.exists(SOCKET)
    assert {n for n in links() if n.startswith("pcv-")} >= {
        "pcv-" + e[:11] for e in docker_endpoints(docker, net).values()}
