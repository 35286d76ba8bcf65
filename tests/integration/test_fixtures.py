"""The test fixtures themselves: namespaces wire up and carry traffic, everything a test
made is removed even when it fails, the leak check names a leaked pycnm-style link (per
test and per session), and the session's dockerd runs the busybox image.

Traffic stays inside namespaces made here (TEST-NET and RFC 2544 addresses); the one
root-namespace route used is checked with ``ip route get`` before anything is sent.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netns_fixtures.leaks import fixture_kernel_objects, pycnm_kernel_objects
from netns_fixtures.netns import (
    FIXTURE_PREFIX,
    CommandFailed,
    Host,
    Namespace,
    bridge,
    delete_link,
    unique_name,
    veth,
)

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def _run_pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``source`` in a child process (the plugin loaded as in the suite)."""
    test_file = tmp_path / "test_child.py"
    test_file.write_text(textwrap.dedent(source))
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
            str(test_file)]
    if not any(ep.name == "netns_fixtures"
               for ep in importlib.metadata.entry_points(group="pytest11")):
        argv[3:3] = ["-p", "netns_fixtures.plugin"]  # a checkout that is not installed
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYCNM_LEAK_CHECK": "1",
           "PT_OUT": str(tmp_path / "made.json")}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env=env)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


# --- namespaces, wiring, traffic ---------------------------------------------------------


def test_two_namespaces_on_a_veth_ping_and_talk_tcp(netns: Callable[..., Namespace]) -> None:
    a, b = netns("a"), netns("b")
    veth(a, "eth0", b, "eth0", "192.0.2.1/24", "192.0.2.2/24")
    veth(a, "v6", b, "v6", "2001:db8::1/64", "2001:db8::2/64")

    assert a.ping("192.0.2.2") and b.ping("192.0.2.1")
    assert a.ping("2001:db8::2")
    assert not a.ping("192.0.2.99", timeout=1)  # nobody there: a bounded failure
    with b.tcp_server(7001, reply=b"hello {peer}"):
        assert a.tcp_connect("192.0.2.2", 7001) == b"hello 192.0.2.1"
    with b.tcp_server(7002, reply=None, address="::", connections=2) as echo:
        assert a.tcp_connect("2001:db8::2", 7002, b"ping over v6") == b"ping over v6"
        assert a.tcp_connect("192.0.2.2", 7002, b"and v4") == b"and v4"  # dual-stack
    assert echo.peers == ["2001:db8::1", "::ffff:192.0.2.1"]
    assert a.tcp_connect("192.0.2.2", 7003, b"x", timeout=1) == b""  # refused: no bytes

    assert "192.0.2.1/24" in a.addresses() and a.addresses("eth0")[0] == "192.0.2.1/24"
    assert {"lo", "eth0", "v6"} <= set(a.links())
    assert "192.0.2.2" in a.neighbours()
    with a.ipr() as ipr:
        assert ipr.link_lookup(ifname="eth0")


def test_namespace_is_named_listed_and_deleted_idempotently() -> None:
    name = unique_name()
    assert name.startswith(FIXTURE_PREFIX) and len(name) == 8 and name != unique_name()
    with Namespace(name) as ns:
        assert name in _namespaces() and ns.path == f"/run/netns/{name}"
        assert ns.run(["ip", "-o", "link", "show", "lo"]).stdout.count("UP") >= 1
    assert name not in _namespaces()
    ns.delete()  # gone already: still success


def test_run_reports_failures_with_stderr(netns: Callable[..., Namespace]) -> None:
    ns = netns()
    with pytest.raises(CommandFailed, match="does not exist") as failed:
        ns.run(["ip", "link", "show", "nosuchdev"])
    assert isinstance(failed.value, subprocess.CalledProcessError)
    assert ns.run(["ip", "link", "show", "nosuchdev"], check=False).returncode != 0
    with pytest.raises(TypeError):
        ns.run("ip link")  # type: ignore[arg-type] - never a shell string


def test_popen_servers_stop_with_their_namespace(netns: Callable[..., Namespace]) -> None:
    ns = netns()
    proc = ns.popen(["sleep", "60"])
    assert proc.poll() is None
    ns.delete()
    assert proc.poll() is not None


def test_hosts_on_a_switch_and_an_outside_namespace(
        netns: Callable[..., Namespace], host: Callable[..., Host],
        outside: Callable[..., Any]) -> None:
    switch = netns("switch")
    bridge(switch, "br0")
    h1 = host("h1", uplink=switch, address="198.51.100.1/24", bridge="br0")
    h2 = host("h2", uplink=switch, address="198.51.100.2/24", bridge="br0")
    assert h1.uplink == "eth0" and h1.address == "198.51.100.1/24"
    assert h1.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert h1.ping("198.51.100.2") and h2.ping("198.51.100.1")

    far = outside(h1)  # "the internet" of h1: a random /30 of 198.18.0.0/15
    assert ipaddress.ip_address(far.address) in ipaddress.ip_network("198.18.0.0/15")
    assert f"default via {far.address}" in h1.run(["ip", "route"]).stdout
    assert far.ping(far.host_address) and h1.ping(far.address)
    assert far.run(["ip", "route", "show", "default"]).stdout == ""  # answers, routes none


def test_outside_of_the_root_namespace_is_reached_through_a_test_veth(
        outside: Callable[..., Any]) -> None:
    far = outside(None)
    route = subprocess.run(["ip", "route", "get", far.address], capture_output=True,
                           text=True, check=True).stdout
    assert f" dev {far.host_ifname} " in route, route  # never eth0
    assert far.host_ifname.startswith(FIXTURE_PREFIX)
    assert "default" not in subprocess.run(  # the root's own routes are left alone
        ["ip", "route", "show", "dev", far.host_ifname], capture_output=True, text=True,
        check=True).stdout
    with far.tcp_server(7010, reply=b"from outside"):
        got = subprocess.run(
            [sys.executable, "-c", "import socket,sys; s=socket.create_connection("
             "(sys.argv[1], 7010), timeout=3); s.shutdown(1); print(s.recv(99).decode())",
             far.address], capture_output=True, text=True, timeout=20).stdout
    assert got.strip() == "from outside"


def test_kernel_objects_are_listed_by_prefix_inside_a_namespace(
        netns: Callable[..., Namespace]) -> None:
    ns = netns()
    link = "pcv-" + unique_name()
    ns.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "other0"])
    ns.run(["nft", "add", "table", "inet", "pycnm"])
    inside = pycnm_kernel_objects(ns.name)
    assert f"link {link}" in inside and "nft table inet pycnm" in inside
    assert "link other0" not in inside
    assert f"link {link}" not in pycnm_kernel_objects()  # the root namespace has none
    assert f"namespace {ns.name}" in fixture_kernel_objects()


# --- cleanup and the leak check, seen from a child pytest run ----------------------------


def test_a_failing_test_still_cleans_up(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, """
        import json, os

        def test_boom(netns, host, outside):
            a, h = netns("a"), host("h")
            far, root_far = outside(h), outside(None)
            server = a.tcp_server(7020, reply=b"x", timeout=60)
            with open(os.environ["PT_OUT"], "w") as out:
                json.dump({"namespaces": [a.name, h.name, far.name, root_far.name],
                           "root_link": root_far.host_ifname,
                           "pid": server.proc.pid}, out)
            raise RuntimeError("forced failure")
    """)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "RuntimeError: forced failure" in output and "1 failed" in output
    made = json.loads((tmp_path / "made.json").read_text())
    for name in [*made["namespaces"], made["root_link"]]:
        assert name not in output  # not reported as leaked (others' runs may be, here)
    assert not set(made["namespaces"]) & _namespaces()
    assert made["root_link"] not in _root_links()
    assert not os.path.exists(f"/proc/{made['pid']}/cmdline") or made["pid"] == os.getpid()


def test_leak_check_names_a_leaked_link_and_fails_the_run(tmp_path: Path) -> None:
    stem = unique_name()
    per_test, per_session = f"pcbr-{stem}", f"pcv-{stem}s"
    source = f"""
            import subprocess
            import pytest

            def veth(name):
                subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name",
                                name.replace("pc", "pp", 1)], check=True)

            @pytest.fixture(scope="session")
            def leaky_session():
                veth("{per_session}")  # before the per-test snapshots: only the session sees it
                yield

            @pytest.mark.root  # checked per test: it says it touches the kernel
            def test_leaks():
                veth("{per_test}")

            def test_clean(leaky_session):
                pass
        """
    try:
        result = _run_pytest(tmp_path, source)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "ERROR at teardown of test_leaks" in output, output
        # (other runs sharing the machine may add their objects to the same line)
        assert any("test left kernel objects behind:" in line and f"link {per_test}" in line
                   for line in output.splitlines()), output
        assert "2 passed, 1 error" in output  # test_clean itself is fine ...
        report = output.split("pycnm left kernel objects behind: the run FAILS")[1]
        assert f"link {per_test}" in report and "first seen after" in report
        assert f"link {per_session}" in report  # ... but the session fails on its leak
        delete_link(None, per_test)
        delete_link(None, per_session)

        # The session check alone fails a run whose every test passed.
        result = _run_pytest(tmp_path, source, "-k", "test_clean")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "1 passed, 1 deselected" in output and "error" not in output, output
        report = output.split("pycnm left kernel objects behind: the run FAILS")[1]
        assert f"link {per_session}" in report and per_test not in report
    finally:
        delete_link(None, per_test)
        delete_link(None, per_session)
    assert not {per_test, per_session} & _root_links()


# --- the session's dockerd ---------------------------------------------------------------


@pytest.mark.docker
def test_docker_runs_the_busybox_image(docker_engine: Any) -> None:
    assert docker_engine.host.startswith("unix://")
    out = docker_engine.docker("run", "--rm", "--network", "none", docker_engine.image,
                               "echo", "hi").stdout
    assert out == "hi\n"
    links = docker_engine.docker("run", "--rm", "--network", "none", docker_engine.image,
                                 "ip", "-o", "link").stdout
    assert "lo" in links and "eth0" not in links
    # (Never ``docker run`` a missing image here: dockerd would try to pull it.)
    with pytest.raises(CommandFailed, match="No such image"):
        docker_engine.docker("image", "inspect", "no-such-image:here", timeout=60)
