"""Sandbox modes (Docker's --network host|none|container:OTHER), through the CLI as a user
runs it, the Python API and a lab file: each mode's behaviour shown with real packets and
the kernel's own view, and each refusal as one sentence that leaves nothing made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from cnm.errors import Busy, Conflict, InvalidOption, NotFound
from cnm.osl.netns import list_named_netns, netns_exists
from tests.integration.bridge_helpers import in_ns, ping_eventually, unique

pytestmark = pytest.mark.root

Pycnm = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def emulated(host):
    """An emulated machine with an address of its own and a file of its own in
    /etc/netns (what `ip netns exec` shows as its /etc): host mode must touch neither."""
    machine = host("machine")
    machine.run(["ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth8"])
    machine.run(["ip", "addr", "add", "198.18.9.1/24", "dev", "eth9"])
    machine.run(["ip", "link", "set", "eth9", "up"])
    folder = f"/etc/netns/{machine.name}"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/hosts", "w") as handle:
        handle.write("198.18.9.1\tthe-machine\n")
    try:
        yield machine
    finally:
        for entry in os.listdir(folder):
            os.unlink(os.path.join(folder, entry))
        os.rmdir(folder)


@pytest.fixture
def pycnm(emulated, store_url) -> Iterator[Pycnm]:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "cnm.cli", "--store", store_url, "--host-ns", emulated.name,
             *args], capture_output=True, text=True, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pycnm {' '.join(args)} failed: {result.stderr}")
        return result

    run.host = emulated  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        run("cleanup", check=False)


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """A refusal: non-zero exit, one line on stderr naming what is wrong, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def inspect(pycnm: Pycnm, name: str) -> dict:
    return json.loads(pycnm("sandbox", "inspect", name).stdout)[0]


def links_of(netns_name: str) -> list[str]:
    out = in_ns(netns_name, ["ip", "-o", "link", "show"]).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


# --- host -----------------------------------------------------------------------------------


def test_host_mode_is_the_hosts_namespace_never_attached_never_deleted(pycnm: Pycnm) -> None:
    machine = pycnm.host
    net, hs = unique("n"), unique("h")
    pycnm("network", "create", net, "--subnet", "10.91.0.0/24")
    pycnm("sandbox", "create", hs, "--mode", "host")
    info = inspect(pycnm, hs)
    assert info["Mode"] == "host" and info["SandboxKey"] == machine.path
    assert info["NetnsName"] == machine.name and info["Interfaces"] == {}
    assert f"pcsb-{hs}" not in list_named_netns()
    # Commands run in the host's namespace with the host's own files.
    out = pycnm("sandbox", "exec", hs, "--", "ip", "-o", "-4", "addr", "show", "eth9").stdout
    assert "198.18.9.1/24" in out
    assert "the-machine" in pycnm("sandbox", "exec", hs, "--", "cat", "/etc/hosts").stdout
    before = links_of(machine.name)
    line = refused(pycnm("attach", net, hs, check=False), "host", "cannot be attached")
    assert "mode host" in line
    assert json.loads(pycnm("--json", "endpoint", "ls").stdout) == []
    assert links_of(machine.name) == before  # no veth made and left
    # Options that would change the host are refused before anything is made.
    refused(pycnm("sandbox", "create", unique("h"), "--mode", "host", "--ip-forward",
                  check=False), "IP forwarding", "mode host")
    refused(pycnm("sandbox", "create", unique("h"), "--mode", "host", "--dns", "10.0.0.53",
                  check=False), "DNS servers", "mode host")
    pycnm("sandbox", "rm", hs)
    assert netns_exists(machine.path) and links_of(machine.name) == before
    with open(f"/etc/netns/{machine.name}/hosts") as handle:
        assert "the-machine" in handle.read()
    assert refused(pycnm("sandbox", "inspect", hs, check=False), hs)


# --- none -----------------------------------------------------------------------------------


def test_none_mode_has_loopback_only_and_refuses_networks(pycnm: Pycnm) -> None:
    net, sb = unique("n"), unique("z")
    pycnm("network", "create", net, "--subnet", "10.92.0.0/24")
    pycnm("sandbox", "create", sb, "--mode", "none", "--hostname", "quiet")
    assert inspect(pycnm, sb)["Mode"] == "none"
    ns = f"pcsb-{sb}"
    assert links_of(ns) == ["lo"]
    assert "UP" in in_ns(ns, ["ip", "-o", "link", "show", "lo"]).stdout
    assert in_ns(ns, ["ping", "-c", "1", "-W", "1", "127.0.0.1"]).returncode == 0
    assert in_ns(ns, ["ip", "-4", "route", "show"]).stdout.strip() == ""
    assert pycnm("sandbox", "exec", sb, "--", "cat", "/etc/hostname").stdout == "quiet\n"
    refused(pycnm("attach", net, sb, check=False), "mode none", "cannot be attached")
    assert json.loads(pycnm("--json", "endpoint", "ls").stdout) == []
    assert links_of(ns) == ["lo"]
    pycnm("sandbox", "rm", sb)
    assert ns not in list_named_netns()


# --- container:OTHER --------------------------------------------------------------------------


def test_container_mode_shares_namespace_interfaces_and_files(pycnm: Pycnm) -> None:
    net, owner, peer, sharer, second = (unique("n"), unique("o"), unique("p"), unique("s"),
                                        unique("s"))
    pycnm("network", "create", net, "--subnet", "10.93.0.0/24")
    pycnm("sandbox", "create", owner, "--hostname", "pod")
    pycnm("sandbox", "create", peer)
    pycnm("attach", net, peer, "--ip", "10.93.0.9")
    pycnm("sandbox", "create", sharer, "--mode", f"container:{owner}")
    # Attached after the sharer was made: the sharer sees it (one namespace).
    pycnm("attach", net, owner, "--ip", "10.93.0.5")
    info = inspect(pycnm, sharer)
    assert info["Mode"] == f"container:{owner}" and info["NetnsName"] == f"pcsb-{owner}"
    assert info["Interfaces"]["eth0"]["IPv4Address"] == "10.93.0.5/24"
    assert info["Hostname"] == "pod"
    assert inspect(pycnm, owner)["SharedBy"] == [sharer]
    out = pycnm("sandbox", "exec", sharer, "--", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "10.93.0.5/24" in out
    assert pycnm("sandbox", "exec", sharer, "--", "cat", "/etc/hostname").stdout == "pod\n"
    assert ping_eventually(f"pcsb-{peer}", "10.93.0.5")
    ping = pycnm("sandbox", "exec", sharer, "--", "ping", "-c", "1", "-W", "2", "10.93.0.9",
                 check=False)
    assert ping.returncode == 0, ping.stdout
    # Sharing a sharer shares its owner's namespace.
    pycnm("sandbox", "create", second, "--mode", f"container:{sharer}")
    assert inspect(pycnm, second)["Mode"] == f"container:{owner}"
    assert sorted(inspect(pycnm, owner)["SharedBy"]) == sorted([sharer, second])
    # Removing a sharer leaves the namespace working for the rest.
    pycnm("sandbox", "rm", second)
    assert inspect(pycnm, owner)["SharedBy"] == [sharer]
    assert ping_eventually(f"pcsb-{peer}", "10.93.0.5")


def test_container_mode_refusals_leave_nothing(pycnm: Pycnm) -> None:
    net, owner, sharer = unique("n"), unique("o"), unique("s")
    pycnm("network", "create", net, "--subnet", "10.94.0.0/24")
    pycnm("sandbox", "create", owner)
    pycnm("attach", net, owner)
    # Sharing a sandbox that does not exist.
    ghost = unique("g")
    line = refused(pycnm("sandbox", "create", sharer, "--mode", f"container:{ghost}",
                         check=False), ghost, "no sandbox")
    assert "container:" in line
    assert pycnm("sandbox", "inspect", sharer, check=False).returncode != 0
    # Options that belong to the owner's namespace.
    for flags, word in ((["--hostname", "x"], "hostname"), (["--dns", "10.0.0.53"], "DNS"),
                        (["--add-host", "a=10.0.0.1"], "extra hosts"),
                        (["--netns", "/proc/1/ns/net"], "namespace path")):
        refused(pycnm("sandbox", "create", sharer, "--mode", f"container:{owner}", *flags,
                      check=False), word, f"container:{owner}")
    refused(pycnm("sandbox", "create", sharer, "--mode", "container:", check=False),
            "mode", "container:OTHER")
    pycnm("sandbox", "create", sharer, "--mode", f"container:{owner}")
    # Attaching through a sharer.
    other = unique("n")
    pycnm("network", "create", other, "--subnet", "10.95.0.0/24")
    line = refused(pycnm("attach", other, sharer, check=False), sharer, owner)
    assert f"attach {owner} instead" in line
    assert [e["Name"] for e in json.loads(pycnm("--json", "endpoint", "ls").stdout)] == [owner]
    # Removing a sandbox that others share: refused, and it keeps working.
    line = refused(pycnm("sandbox", "rm", owner, check=False), owner, sharer)
    assert "remove them first" in line
    assert f"pcsb-{owner}" in list_named_netns()
    assert inspect(pycnm, owner)["Interfaces"]["eth0"]["IPv4Address"]
    # Its new sharers are still welcome (the refused removal left no mark).
    third = unique("s")
    pycnm("sandbox", "create", third, "--mode", f"container:{owner}")
    pycnm("sandbox", "rm", sharer, third)
    pycnm("sandbox", "rm", owner)
    assert f"pcsb-{owner}" not in list_named_netns()


# --- the Python API and a lab file --------------------------------------------------------------


def test_modes_through_the_python_api(emulated, store_url) -> None:
    from cnm.controller import Controller

    with Controller(store_url, host_ns=emulated.path) as ctl:
        try:
            net = ctl.new_network(unique("n"), subnet="10.96.0.0/24")
            web = ctl.new_sandbox(unique("w"))
            net.create_endpoint("web").join(web)
            side = ctl.new_sandbox(unique("c"), mode=f"container:{web.name}")
            assert side.netns_path == web.netns_path and side.owner == web
            assert [ep.record.name for ep in side.endpoints()] == ["web"]
            assert side.run(["ip", "-o", "-4", "addr", "show", "eth0"]).stdout.count(
                "10.96.0.") == 1
            hostmode = ctl.new_sandbox(unique("h"), mode="host")
            assert hostmode.netns_path == emulated.path
            bare = ctl.new_sandbox(unique("z"), mode="none")
            for sandbox, word in ((side, "attach"), (hostmode, "host"), (bare, "none")):
                with pytest.raises(Conflict, match=word):
                    net.create_endpoint(unique("e")).join(sandbox)
            with pytest.raises(Busy, match="remove them first"):
                web.delete()
            with pytest.raises(NotFound, match="no sandbox"):
                ctl.new_sandbox(unique("x"), mode="container:nobody")
            with pytest.raises(InvalidOption, match="container:OTHER"):
                ctl.new_sandbox(unique("x"), mode="bridge")
            assert netns_exists(web.netns_path)
        finally:
            ctl.cleanup_all()  # sharers first, then their owner
    assert emulated.exists()


LAB = textwrap.dedent("""
    name: {name}
    hosts:
      - name: h1
    links: []
    networks:
      - {{name: web, driver: bridge, host: h1, subnet: 10.97.0.0/24}}
    sandboxes:
      - {{name: side, host: h1, mode: "container:app"}}
      - {{name: app, host: h1, networks: [{{name: web, ip: 10.97.0.2}}]}}
      - {{name: peer, host: h1, networks: [{{name: web, ip: 10.97.0.3}}]}}
      - {{name: onhost, host: h1, mode: host}}
      - {{name: alone, host: h1, mode: none}}
    expect:
      - {{from: side, to: peer}}
      - {{from: peer, to: side}}
      - {{from: onhost, to: app}}
      - {{from: alone, to: 10.97.0.3, expect: blocked}}
""")


def test_a_lab_with_every_mode(lab, tmp_path) -> None:
    name = "m" + os.urandom(3).hex()
    path = tmp_path / "lab.yaml"
    path.write_text(LAB.format(name=name))
    running = lab(path)
    assert running.netns("side") == running.netns("app") == f"pcsb-{name}-app"
    assert running.netns("onhost") == f"pclab-{name}-h1"
    outcomes = running.check()
    assert [o.passed for o in outcomes] == [True] * 4, [o.detail for o in outcomes]
    with running.controller("h1") as ctl:
        modes = {s.name: s.mode for s in ctl.sandboxes()}
    assert modes == {f"{name}-side": f"container:{name}-app", f"{name}-app": "default",
                     f"{name}-peer": "default", f"{name}-onhost": "host",
                     f"{name}-alone": "none"}


@pytest.mark.parametrize("entry, words", [
    ("{name: s, host: h1, mode: host, networks: [web]}", ["mode host", "networks"]),
    ("{name: s, host: h1, mode: none, ip_forward: true}", ["mode none", "ip_forward"]),
    ("{name: s, host: h1, mode: 'container:ghost'}", ["no sandbox 'ghost'"]),
    ("{name: s, host: h1, mode: 'container:s'}", ["loop"]),
    ("{name: s, host: h1, mode: bridge}", ["not a sandbox mode"]),
    ("{name: s, host: h1}", ["'networks' is required"]),
])
def test_lab_files_with_bad_modes_are_refused(entry: str, words: list[str]) -> None:
    from netns_fixtures.lab import LabFileError, load_text

    text = textwrap.dedent(f"""
        name: bad
        hosts: [{{name: h1}}]
        networks: [{{name: web, driver: bridge, host: h1, subnet: 10.98.0.0/24}}]
        sandboxes:
          - {entry}
    """)
    with pytest.raises(LabFileError) as err:
        load_text(text)
    for word in words:
        assert word in str(err.value)
