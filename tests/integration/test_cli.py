"""The ``pycnm`` command line, run as a user would: a subprocess per command.

Every test runs twice: with the CLI doing the work itself ("alone"), and with a ``pycnm
agent`` serving the same store and host namespace, to which the CLI hands the commands it
may ("daemon", an agent without DNS): the same output, errors and exit codes are
expected from both. The CLI is
started as the installed ``pycnm`` command is: bin/pycnm (Python without site's hooks
until the CLI needs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from cnm.store import open_store
from tests.integration.bridge_helpers import ping_eventually, unique
from tests.integration.cli_agent import REPO, running_agent

pytestmark = pytest.mark.root

Pycnm = Callable[..., subprocess.CompletedProcess]
LAUNCHER = str(REPO / "bin" / "pycnm")


@pytest.fixture(params=["alone", "daemon"])
def pycnm(request, netns, store_url, tmp_path) -> Iterator[Pycnm]:
    host = netns("host")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [LAUNCHER, "--store", store_url, "--host-ns", host.name, *args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYCNM_PYTHON": sys.executable, "PYTHONPATH": str(REPO)},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pycnm {' '.join(args)} failed: {result.stderr}")
        return result

    run.host = host  # type: ignore[attr-defined]
    run.store_url = store_url  # type: ignore[attr-defined]
    with contextlib.ExitStack() as stack:
        if request.param == "daemon":
            # No DNS: an agent's resolver rewrites resolv.conf; these tests compare the CLI
            # with and without a daemon, not with and without a resolver.
            run.agent = stack.enter_context(  # type: ignore[attr-defined]
                running_agent(store_url, host.name, tmp_path, "--no-dns"))
        try:
            yield run
        finally:
            run("cleanup", check=False)


def test_network_sandbox_attach_life_cycle(pycnm: Pycnm) -> None:
    net, a, b = unique("n"), unique("s"), unique("s")
    nid = pycnm("network", "create", net, "--subnet", "10.90.0.0/24", "--gateway", "10.90.0.254",
                "--ip-range", "10.90.0.128/25", "--aux-address", "router=10.90.0.200",
                "-o", "com.docker.network.bridge.enable_icc=true").stdout.strip()
    assert len(nid) == 64
    table = pycnm("network", "ls").stdout
    assert net in table and "10.90.0.0/24" in table and "NETWORK ID" in table
    listed = json.loads(pycnm("--json", "network", "ls").stdout)
    assert [n["Name"] for n in listed] == [net]
    info = json.loads(pycnm("network", "inspect", net).stdout)[0]
    assert info["IPAM"]["Config"][0] == {
        "Subnet": "10.90.0.0/24", "Gateway": "10.90.0.254", "IPRange": "10.90.0.128/25",
        "AuxiliaryAddresses": {"router": "10.90.0.200"},
    }
    assert info["Options"]["com.docker.network.bridge.name"] == f"pcbr-{nid[:10]}"
    pycnm("sandbox", "create", a)
    pycnm("sandbox", "create", b)
    assert pycnm("attach", net, a).stdout.split()[:3] == [a, "eth0", "10.90.0.128/24"]
    assert pycnm("attach", net, b, "--ip", "10.90.0.7").stdout.split()[2] == "10.90.0.7/24"
    assert ping_eventually(f"pcsb-{a}", "10.90.0.7")
    out = pycnm("sandbox", "exec", a, "--", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "10.90.0.128/24" in out
    hosts = pycnm("sandbox", "exec", a, "--", "cat", "/etc/hosts").stdout
    assert f"10.90.0.128\t{a}" in hosts
    eps = json.loads(pycnm("--json", "endpoint", "ls", "--network", net).stdout)
    assert sorted(e["IPv4Address"] for e in eps) == ["10.90.0.128/24", "10.90.0.7/24"]
    pycnm("detach", net, b)
    assert len(json.loads(pycnm("--json", "endpoint", "ls").stdout)) == 1
    busy = pycnm("network", "rm", net, check=False)
    assert busy.returncode != 0 and "endpoint" in busy.stderr
    pycnm("sandbox", "rm", a, b)
    pycnm("network", "rm", net)
    assert json.loads(pycnm("--json", "network", "ls").stdout) == []
    assert "pcbr-" not in pycnm.host.run(["ip", "-o", "link"]).stdout  # type: ignore[attr-defined]


# (argv, words in the one line, exit code: 2 for a value pycnm cannot accept, 1 otherwise)
ERRORS: list[tuple[tuple[str, ...], str, int]] = [
    (("network", "create", "x1", "--subnet", "300.1.0.0/24"), "300.1.0.0/24", 2),
    (("network", "create", "x2", "-o", "novalue"), "KEY=VALUE", 2),
    (("network", "create", "x3", "-o", "mtu=huge"), "huge", 2),
    (("network", "create", "x4", "-d", "nosuch"), "nosuch", 2),
    (("network", "create", "bad/name"), "network name", 2),
    (("network", "create", "x5", "--ipv6", "--subnet", "fd00::/64", "--gateway", "10.1.0.1"),
     "gateway", 2),
    (("network", "rm", "ghost"), "ghost", 1),
    (("network", "inspect", "ghost"), "ghost", 1),
    (("sandbox", "rm", "ghost"), "ghost", 1),
    (("sandbox", "inspect", "ghost"), "ghost", 1),
    (("sandbox", "exec", "ghost", "--", "true"), "ghost", 1),
    (("sandbox", "create", "x6", "--mode", "bogus"), "bogus", 2),
    (("sandbox", "create", "x7", "--add-host", "novalue"), "NAME=IP", 2),
    (("sandbox", "create", "x8", "--dns", "dns.example"), "DNS server", 2),
    (("sandbox", "create", "x9", "--netns", "/nonexistent/ns"), "not a network namespace", 1),
    (("attach", "ghost", "ghost"), "ghost", 1),
    (("detach", "ghost", "ghost"), "ghost", 1),
    (("endpoint", "create", "ghost"), "ghost", 1),
    (("endpoint", "rm", "ghost"), "ghost", 1),
    (("endpoint", "ls", "--network", "ghost"), "ghost", 1),
]


@pytest.mark.parametrize(("args", "mentions", "code"), ERRORS,
                         ids=[" ".join(e[0][:2]) + f"-{i}" for i, e in enumerate(ERRORS)])
def test_errors_are_one_line_with_their_exit_code(pycnm: Pycnm, args: tuple[str, ...],
                                                  mentions: str, code: int) -> None:
    before = store_keys(pycnm)
    result = pycnm(*args, check=False)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and mentions in lines[0], \
        result.stderr
    assert result.stdout == ""
    assert store_keys(pycnm) == before  # nothing half-made


def store_keys(pycnm: Pycnm) -> list[str]:
    """The store's keys but those a running agent keeps for itself (its host's lease, its
    resolver's and its load balancers' state), which come and go on their own."""
    store = open_store(pycnm.store_url)  # type: ignore[attr-defined]
    try:
        return sorted(e.key for e in store.list("")
                      if not e.key.startswith("global/drivers/overlay/hosts/")
                      and "/dns/" not in e.key and not e.key.endswith("/lb/agent"))
    finally:
        store.close()


def test_rm_of_several_removes_each_it_can_and_names_each_it_cannot(pycnm: Pycnm) -> None:
    """As ``docker network rm a b``: an error for one name does not keep the others."""
    net, other, a, b = unique("n"), unique("n"), unique("s"), unique("s")
    pycnm("network", "create", net, "--subnet", "10.93.0.0/24")
    pycnm("network", "create", other, "--subnet", "10.94.0.0/24")
    pycnm("service", "create", "sv1", "--network", net, "--port", "80/tcp")
    pycnm("service", "create", "sv2", "--network", net, "--port", "81/tcp")
    pycnm("endpoint", "create", net, "e1")
    pycnm("endpoint", "create", net, "e2")
    pycnm("sandbox", "create", a)
    pycnm("sandbox", "create", b)
    for kind, names in (("service", ["sv1", "sv2"]), ("endpoint", ["e1", f"{net}/e2"]),
                        ("sandbox", [a, b]), ("network", [net, other])):
        result = pycnm(kind, "rm", "nosuch1", names[0], "nosuch2", names[1], check=False)
        assert result.returncode == 1, result.stderr
        assert result.stdout.split() == names, result.stdout
        errors = result.stderr.splitlines()
        assert len(errors) == 2 and all(e.startswith("Error: ") for e in errors), errors
        assert "'nosuch1'" in errors[0] and "'nosuch2'" in errors[1], errors
        assert json.loads(pycnm("--json", kind, "ls").stdout) == [], kind


@pytest.mark.parametrize("args", [(), ("network",), ("network", "frobnicate"),
                                  ("sandbox", "create"), ("--json",)])
def test_usage_errors_exit_2_with_usage(pycnm: Pycnm, args: tuple[str, ...]) -> None:
    result = pycnm(*args, check=False)
    assert result.returncode == 2 and "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_cleanup_removes_every_kernel_object(pycnm: Pycnm) -> None:
    net, a = unique("n"), unique("s")
    pycnm("network", "create", net, "--subnet", "10.91.0.0/24")
    pycnm("sandbox", "create", a)
    pycnm("attach", net, a, "-p", "8080:80")
    host = pycnm.host  # type: ignore[attr-defined]
    assert "pycnm" in host.run(["nft", "list", "tables"]).stdout
    # The orderly way: the drivers undo what they made, so no sweep by name is needed.
    assert pycnm("cleanup").stdout == ""
    assert "pcbr-" not in host.run(["ip", "-o", "link"]).stdout
    assert "pcv-" not in host.run(["ip", "-o", "link"]).stdout
    assert host.run(["nft", "list", "tables"]).stdout.strip() == ""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"pcsb-{a}" not in spaces
    assert json.loads(pycnm("--json", "sandbox", "ls").stdout) == []


def test_cleanup_kernel_only_says_what_it_swept_and_reconcile_rebuilds_it(pycnm: Pycnm) -> None:
    net, a = unique("n"), unique("s")
    nid = pycnm("network", "create", net, "--subnet", "10.92.0.0/24").stdout.strip()
    pycnm("sandbox", "create", a)
    pycnm("attach", net, a, "-p", "8081:80")
    eid = json.loads(pycnm("--json", "endpoint", "ls").stdout)[0]["EndpointID"]
    host = pycnm.host  # type: ignore[attr-defined]
    swept = pycnm("cleanup", "--kernel-only").stdout.splitlines()
    assert {f"link pcbr-{nid[:10]}", f"link pcv-{eid[:11]}", "nft table inet pycnm"} <= set(swept)
    assert "pcbr-" not in host.run(["ip", "-o", "link"]).stdout
    # The store kept its records: reconcile puts the kernel back as they say.
    assert [n["Name"] for n in json.loads(pycnm("--json", "network", "ls").stdout)] == [net]
    assert pycnm("reconcile").returncode == 0
    assert f"pcbr-{nid[:10]}" in host.run(["ip", "-o", "link"]).stdout
    assert "dport 8081" in host.run(["nft", "list", "table", "inet", "pycnm"]).stdout
    assert ping_eventually(f"pcsb-{a}", "10.92.0.1")


NETWORK_KEYS = {"Name", "Id", "Created", "Scope", "Driver", "EnableIPv4", "EnableIPv6",
                "Internal", "IPAM", "Options", "Labels", "Endpoints"}
ENDPOINT_KEYS = {"Name", "EndpointID", "NetworkID", "MacAddress", "IPv4Address", "Aliases",
                 "Services", "IPv6Address", "SandboxID", "Interface"}
SANDBOX_KEYS = {"Name", "Id", "Mode", "SandboxKey", "NetnsName", "Hostname", "Created",
                "Gateway", "Interfaces", "SharedBy", "DNS"}


def test_every_command_prints_an_id_or_a_table_and_json_has_dockers_shape(
        pycnm: Pycnm) -> None:
    net, other, a = unique("n"), unique("n"), unique("s")
    created = json.loads(pycnm("--json", "network", "create", net, "--subnet",
                               "10.93.0.0/24", "--label", "team=red").stdout)
    assert set(created) == NETWORK_KEYS and created["Labels"] == {"team": "red"}
    assert created["IPAM"]["Config"] == [{"Subnet": "10.93.0.0/24", "Gateway": "10.93.0.1"}]
    oid = pycnm("network", "create", other, "--subnet", "10.94.0.0/24", "--internal").stdout
    assert len(oid.strip()) == 64 and set(oid.strip()) <= set("0123456789abcdef")
    both = json.loads(pycnm("network", "inspect", net, other).stdout)
    assert [n["Name"] for n in both] == [net, other] and both[1]["Internal"] is True
    table = pycnm("network", "ls").stdout.splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SUBNETS", "ENDPOINTS"]
    assert any(line.split()[1:5] == [net, "bridge", "10.93.0.0/24", "0"] for line in table)

    sandbox = json.loads(pycnm("--json", "sandbox", "create", a).stdout)
    assert set(sandbox) == SANDBOX_KEYS and sandbox["NetnsName"] == f"pcsb-{a}"
    attached = json.loads(pycnm("--json", "attach", net, a, "--ip", "10.93.0.9",
                                "--mac-address", "02:42:0a:5d:00:09").stdout)
    assert set(attached) == ENDPOINT_KEYS
    assert (attached["IPv4Address"], attached["MacAddress"], attached["Interface"]) == (
        "10.93.0.9/24", "02:42:0a:5d:00:09", "eth0")
    assert attached["SandboxID"] == sandbox["Id"]
    standalone = json.loads(pycnm("--json", "endpoint", "create", other, "spare").stdout)
    assert set(standalone) == ENDPOINT_KEYS and standalone["SandboxID"] == ""
    eps = json.loads(pycnm("--json", "endpoint", "ls").stdout)
    assert sorted(e["Name"] for e in eps) == sorted([a, "spare"])
    only = json.loads(pycnm("--json", "endpoint", "ls", "--network", other).stdout)
    assert [e["Name"] for e in only] == ["spare"]
    rows = pycnm("endpoint", "ls").stdout.splitlines()
    assert rows[0].split()[:4] == ["ENDPOINT", "ID", "NAME", "NETWORK"] and len(rows) == 3
    shown = json.loads(pycnm("sandbox", "inspect", a).stdout)[0]
    assert shown["Interfaces"]["eth0"]["IPv4Address"] == "10.93.0.9/24"
    assert shown["Gateway"] == attached["EndpointID"]
    assert a in pycnm("sandbox", "ls").stdout.splitlines()[1]
    # Removal, each printing what it removed.
    assert pycnm("endpoint", "rm", f"{other}/spare").stdout.split() == [f"{other}/spare"]
    assert pycnm("detach", net, a).stdout == ""
    assert pycnm("sandbox", "rm", a).stdout.split() == [a]
    assert pycnm("network", "rm", net, other).stdout.split() == [net, other]
    assert json.loads(pycnm("--json", "network", "ls").stdout) == []


def test_sandbox_flags_become_its_files(pycnm: Pycnm) -> None:
    a = unique("s")
    pycnm("sandbox", "create", a, "--hostname", "web-1", "--dns", "10.95.0.53",
          "--dns", "fd00::53", "--dns-search", "corp.example.", "--dns-option", "ndots:2",
          "--dns-option", "rotate", "--add-host", "db=10.95.0.4")
    resolv = pycnm("sandbox", "exec", a, "--", "cat", "/etc/resolv.conf").stdout
    assert resolv.splitlines()[1:] == ["nameserver 10.95.0.53", "nameserver fd00::53",
                                       "search corp.example.", "options ndots:2 rotate"]
    hosts = pycnm("sandbox", "exec", a, "--", "cat", "/etc/hosts").stdout
    assert "10.95.0.4\tdb" in hosts.splitlines()
    assert pycnm("sandbox", "exec", a, "--", "cat", "/etc/hostname").stdout == "web-1\n"
    info = json.loads(pycnm("sandbox", "inspect", a).stdout)[0]
    assert info["Hostname"] == "web-1" and info["DNS"]["Options"] == ["ndots:2", "rotate"]


def test_sandbox_exec_passes_the_commands_exit_code_and_output(pycnm: Pycnm) -> None:
    a = unique("s")
    pycnm("sandbox", "create", a)
    result = pycnm("sandbox", "exec", a, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                   check=False)
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    links = pycnm("sandbox", "exec", a, "--", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    missing = pycnm("sandbox", "exec", a, check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: give the command")


def test_busy_objects_are_refused_until_forced(pycnm: Pycnm) -> None:
    net, a = unique("n"), unique("s")
    nid = pycnm("network", "create", net, "--subnet", "10.96.0.0/24").stdout.strip()
    pycnm("sandbox", "create", a)
    pycnm("attach", net, a)
    busy = pycnm("network", "rm", net, check=False)
    assert busy.returncode == 1 and "detach them first" in busy.stderr
    attached = pycnm("endpoint", "rm", f"{net}/{a}", check=False)
    assert attached.returncode == 1 and "detach it first" in attached.stderr
    twice = pycnm("attach", net, a, check=False)
    assert twice.returncode == 1 and "already" in twice.stderr
    pycnm("endpoint", "rm", "-f", f"{net}/{a}")
    assert "eth0" not in pycnm("sandbox", "exec", a, "--", "ip", "-o", "link").stdout
    pycnm("attach", net, a)
    pycnm("network", "rm", "-f", net)
    host = pycnm.host  # type: ignore[attr-defined]
    assert f"pcbr-{nid[:10]}" not in host.run(["ip", "-o", "link"]).stdout
    assert json.loads(pycnm("sandbox", "inspect", a).stdout)[0]["Interfaces"] == {}
    not_attached = pycnm("detach", unique("n"), a, check=False)
    assert not_attached.returncode == 1 and not_attached.stderr.startswith("Error: ")


def test_reconcile_says_what_it_cannot_repair_and_exits_1(pycnm: Pycnm, netns) -> None:
    holder = netns("holder")
    sleeper = holder.popen(["sleep", "600"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    a, b = unique("s"), unique("s")
    try:
        pycnm("sandbox", "create", a, "--netns", f"/proc/{sleeper.pid}/ns/net")
        pycnm("sandbox", "create", b)
        assert pycnm("reconcile").stdout == ""
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    result = pycnm("reconcile", check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"sandbox {a}: its namespace /proc/{sleeper.pid}/ns/net is gone (did the process "
        f"exit?); remove it with 'pycnm sandbox rm {a}'"]
    subprocess.run(["ip", "netns", "delete", f"pcsb-{b}"], check=True)
    pycnm("sandbox", "rm", a)
    assert pycnm("reconcile").returncode == 0  # b's lost namespace is made again
    assert f"pcsb-{b}" in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True).stdout


def test_not_found_with_a_cluster_store_names_the_local_store_it_looked_in(
        etcd_server, netns, tmp_path) -> None:
    """With etcd, a host's own records live in its local store: a lookup in the wrong one
    (a forgotten --local-store) says which store and host it searched."""
    host, hid, net = netns("host"), unique("h"), unique("n")
    right, wrong = f"sqlite://{tmp_path}/local.db", f"sqlite://{tmp_path}/other.db"

    def run(local: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [LAUNCHER, "--store", etcd_server.url, "--local-store", local, "--host-ns",
             host.name, "--host-id", hid, *args], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYCNM_PYTHON": sys.executable, "PYTHONPATH": str(REPO)})

    assert run(right, "network", "create", net, "--subnet", "10.95.0.0/24").returncode == 0
    try:
        for args, what in ((("network", "inspect", net), "network"),
                           (("sandbox", "rm", "ghost"), "sandbox"),
                           (("endpoint", "rm", "ghost"), "endpoint")):
            result = run(wrong, *args)
            assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
            assert f"no {what} named or with id" in result.stderr
            assert f"among host {hid}'s records in local store {wrong}" in result.stderr, \
                result.stderr
        assert run(right, "network", "inspect", net).returncode == 0
    finally:
        run(right, "network", "rm", net)
