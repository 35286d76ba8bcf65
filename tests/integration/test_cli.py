"""The ``pycnm`` command line, run as a user would: a subprocess per command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.integration.bridge_helpers import ping_eventually, unique

pytestmark = pytest.mark.root

Pycnm = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def pycnm(netns, store_url) -> Iterator[Pycnm]:
    host = netns("host")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "cnm.cli", "--store", store_url, "--host-ns", host.name,
             *args], capture_output=True, text=True, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pycnm {' '.join(args)} failed: {result.stderr}")
        return result

    run.host = host  # type: ignore[attr-defined]
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


@pytest.mark.parametrize(("args", "mentions"), [
    (("network", "create", "x1", "--subnet", "300.1.0.0/24"), "300.1.0.0/24"),
    (("network", "create", "x2", "-o", "novalue"), "KEY=VALUE"),
    (("network", "create", "x3", "-o", "mtu=huge"), "huge"),
    (("network", "rm", "ghost"), "ghost"),
    (("sandbox", "rm", "ghost"), "ghost"),
    (("attach", "ghost", "ghost"), "ghost"),
    (("endpoint", "create", "ghost"), "ghost"),
])
def test_errors_are_one_line_and_non_zero(pycnm: Pycnm, args: tuple[str, ...],
                                          mentions: str) -> None:
    result = pycnm(*args, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and mentions in lines[0]
    assert json.loads(pycnm("--json", "network", "ls").stdout) == []


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
