"""Labs: the example topologies come up, pass their checks, are drawn from the live kernel
and go down leaving nothing; a lab killed half-way is removed by ``lab down``; bad
topology files are refused, with file, line and field, before anything is made.

Every lab here is built under a unique name (``name=``), so a learner's lab of the same
file on this machine is never touched; the ``lab`` fixture takes each one down in
``finally``.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.osl.netns import list_named_netns
from netns_fixtures.lab import LabFileError, load, load_text
from netns_fixtures.lab import find as find_lab
from netns_fixtures.lab.realise import leftovers
from netns_fixtures.lab.state import LabState, labs_dir, processes_with

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
LABS = REPO / "labs"
F_SETPIPE_SZ = 1031  # fcntl: set a pipe's capacity (Linux)


def unique_lab() -> str:
    return "t" + secrets.token_hex(4)


def lab_objects(name: str) -> list[str]:
    """Every namespace, /etc/netns folder, process and state folder of lab ``name``."""
    found = [f"namespace {ns}" for ns in list_named_netns()
             if ns.startswith((f"pclab-{name}-", f"pcsb-{name}-")) or f"-pclab-{name}-" in ns]
    if os.path.isdir("/etc/netns"):
        found += [f"/etc/netns/{e}" for e in os.listdir("/etc/netns") if f"{name}-" in e]
    found += [f"process {pid}" for pid in processes_with(f"pclab-{name}-")]
    found += [f"process {pid}" for pid in processes_with(str(labs_dir() / name))]
    if (labs_dir() / name).exists():
        found.append(f"folder {labs_dir() / name}")
    return found


def pycnm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cnm.cli", *args], capture_output=True,
                            text=True, timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"pycnm {' '.join(args)} exited {result.returncode}: "
                             f"{result.stdout}{result.stderr}")
    return result


@pytest.fixture
def named() -> Iterator[list[str]]:
    """Lab names a test builds through the CLI; removed after it, pass or fail."""
    made: list[str] = []
    try:
        yield made
    finally:
        for name in made:
            pycnm("lab", "down", name, check=False)


# --- the examples -----------------------------------------------------------------------------

EXAMPLES = [
    pytest.param("01-bridge", ["host1", "c1", "c2", "outside", "pcbr-", "10.1.0.1/24",
                               "10.1.0.2/24", "203.0.113.1/24", "masquerade", "dnat"],
                 id="bridge"),
    pytest.param("02-two-networks", ["multi", "router", "ip_forward on", "ip_forward off",
                                     "10.2.0.0/24 via 10.1.0.254", "10.2.0.10/24"],
                 id="two-networks"),
    pytest.param("03-overlay", ["pcvx-4096", "VNI 4096", "local 172.31.1.2",
                                "10.0.0.4/24", "VXLAN tunnel", "10.0.0.4 at 02:42:0a:00:00:04"],
                 id="overlay", marks=pytest.mark.etcd),
    pytest.param("04-macvlan", ["macvlan bridge", "br0", "192.168.50.21/24", "srv", "gw"],
                 id="macvlan"),
    pytest.param("09-network-modes", ["host1 +tools", "sandbox app +side", "sandbox batch",
                                      "(no interfaces)", "10.9.0.2/24"], id="network-modes"),
    pytest.param("10-overlay-internals", ["pcov-4096-pclab-", "10.20.3.2/24",
                                          "local 10.20.3.2", "VXLAN tunnel VNI 4096"],
                 id="overlay-internals", marks=pytest.mark.etcd),
    pytest.param("08-port-mapping", ["198.51.100.1/24", "dport 9000 dnat ip to 10.8.0.3:5000",
                                     "ip daddr 198.51.100.1 tcp dport 5001 dnat",
                                     "ip saddr 10.8.0.2 ip daddr 10.8.0.2 tcp dport 80 "
                                     "masquerade"], id="port-mapping"),
    pytest.param("05-service-discovery", ["10.0.0.4/24", "10.2.0.3/24", "VNI 4096"],
                 id="service-discovery", marks=pytest.mark.etcd),
    pytest.param("06-load-balancing", ["10.6.0.11/24", "10.6.0.20/24", "pcig-"],
                 id="load-balancing"),
]


@pytest.mark.parametrize(("folder", "drawn"), EXAMPLES)
def test_example_lab_checks_draws_and_leaves_nothing(lab, tmp_path: Path, folder: str,
                                                     drawn: list[str]) -> None:
    name = unique_lab()
    handle = lab(LABS / folder / "lab.yaml", name=name)
    assert (LABS / folder / "GUIDE.md").is_file()
    outcomes = handle.check()
    from netns_fixtures.lab.check import table

    assert outcomes and all(o.passed for o in outcomes), table(outcomes)
    files = handle.graph(tmp_path)
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = html.unescape(files.svg.read_text())  # graphviz writes '-' as &#45;
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for ns in [handle.netns(n) for n in handle.topology.node_names()]:
        assert ns in svg, f"{ns} missing from the picture"
    for text in drawn:
        assert text in svg, f"{text!r} missing from the picture"
    handle.down()
    assert lab_objects(name) == []


@pytest.mark.etcd
def test_overlay_capture_shows_the_encapsulation(lab, tmp_path: Path) -> None:
    handle = lab(LABS / "03-overlay" / "lab.yaml", name=unique_lab())
    pcap = tmp_path / "r1-eth2.pcap"
    with handle.capture("r1", "eth2", count=40, seconds=8, pcap=pcap,
                        bpf="udp port 4789") as cap:
        assert handle.exec("c1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.0.4"]
                           ).returncode == 0
    wanted = re.compile(r"172\.31\.1\.2:\d+ > 192\.168\.1\.2:4789 VXLAN vni 4096 \| "
                        r"02:42:0a:00:00:02 > 02:42:0a:00:00:04 \| "
                        r"10\.0\.0\.2 > 10\.0\.0\.4 ICMP echo-request")
    assert any(wanted.search(line) for line in cap.lines), "\n".join(cap.lines)
    assert any("10.0.0.4 > 10.0.0.2 ICMP echo-reply" in line for line in cap.lines)
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    packets = rdpcap(str(pcap))
    assert len(packets) == cap.packets and any(p.haslayer(VXLAN) for p in packets)


# --- the command line -------------------------------------------------------------------------


def test_cli_up_ls_exec_check_graph_down(named: list[str], tmp_path: Path) -> None:
    name = unique_lab()
    named.append(name)
    source = LABS / "02-two-networks" / "lab.yaml"
    out = pycnm("lab", "up", str(source), "--name", name).stdout
    assert re.search(r"\[ 1/\d+\] host host1: namespace pclab-" + name + "-host1", out)
    assert f"lab {name} is up" in out
    assert "already up" in pycnm("lab", "up", str(source), "--name", name).stdout
    assert re.search(rf"^{name}\s+up\s+7\s", pycnm("lab", "ls").stdout, re.M)
    routes = pycnm("lab", "exec", "--lab", name, "alice", "--", "ip", "route").stdout
    assert "10.2.0.0/24 via 10.1.0.10" in routes
    failed = pycnm("lab", "exec", "--lab", name, "alice", "--", "false", check=False)
    assert failed.returncode == 1
    check = pycnm("lab", "check", name).stdout
    assert "7/7 passed" in check and "FAIL " not in check and re.search(r"RESULT", check)
    graph = pycnm("lab", "graph", name, "-o", str(tmp_path)).stdout
    assert str(tmp_path / f"{name}.png") in graph and (tmp_path / f"{name}.svg").is_file()
    # A lab whose matrix is wrong fails its check with a non-zero exit.
    wrong_name = unique_lab()
    named.append(wrong_name)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((LABS / "01-bridge" / "lab.yaml").read_text().replace(
        "{from: outside, to: c1, expect: blocked}", "{from: outside, to: c1}"))
    pycnm("lab", "up", str(wrong), "--name", wrong_name)
    result = pycnm("lab", "check", wrong_name, check=False)
    assert result.returncode == 1 and "FAIL" in result.stdout and "1 FAILED" in result.stdout
    for lab_name in (name, wrong_name):
        assert f"lab {lab_name} removed" in pycnm("lab", "down", lab_name).stdout
        assert "nothing to remove" in pycnm("lab", "down", lab_name).stdout
        assert lab_objects(lab_name) == []


# --- crash safety -----------------------------------------------------------------------------


def many_sandboxes(base: str, host: str, network: str, count: int) -> str:
    """``base`` with ``count`` more sandboxes on ``host``, joined to ``network``, and no
    matrix: a build long enough to be killed in the middle."""
    text = base.split("\nexpect:")[0] + "\n"
    if "\nsandboxes:" not in text:
        text += "sandboxes:\n"
    for i in range(count):
        text += f"  - {{name: s{i}, host: {host}, networks: [{network}]}}\n"
    return text


CRASHES = [
    pytest.param("02-two-networks", "host1", "red", id="bridge"),
    pytest.param("03-overlay", "h1", "ov", id="overlay", marks=pytest.mark.etcd),
]


@pytest.mark.parametrize(("folder", "host", "network"), CRASHES)
def test_lab_killed_half_way_is_removed_by_down(named: list[str], tmp_path: Path,
                                                folder: str, host: str, network: str) -> None:
    name = unique_lab()
    named.append(name)
    topology = tmp_path / "big.yaml"
    topology.write_text(many_sandboxes((LABS / folder / "lab.yaml").read_text(), host,
                                       network, 80))
    # A small pipe: once it holds ~50 progress lines, the build blocks on its next line,
    # so when we read the 3rd sandbox's line it cannot have finished the 80.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([sys.executable, "-m", "cnm.cli", "lab", "up", str(topology),
                             "--name", name], stdout=write_end, stderr=subprocess.DEVNULL,
                            cwd=REPO)
    os.close(write_end)
    seen: list[str] = []
    try:
        with os.fdopen(read_end, "r") as lines:
            for line in lines:
                seen.append(line)
                if re.search(r"\] sandbox s2 on ", line):
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    state = LabState.load(name)
    assert state is not None and state.status == "building"
    assert leftovers(name) and any(ns.startswith(f"pcsb-{name}-") for ns in list_named_netns())
    if folder == "03-overlay":
        assert processes_with(str(labs_dir() / name / "etcd" / "data"))
    out = pycnm("lab", "down", name).stdout
    assert f"lab {name} removed" in out
    assert lab_objects(name) == [], out


# --- many sandboxes: built on two cores -------------------------------------------------------


def one_bridge(name: str, count: int) -> str:
    """A lab of ``count`` sandboxes on one bridge network (as bench/bench_lab.py's)."""
    lines = [f"name: {name}", "hosts:", "  - name: host1", "networks:",
             "  - {name: sw, driver: bridge, host: host1, subnet: 10.30.0.0/16}",
             "sandboxes:"]
    lines += [f"  - {{name: s{i}, host: host1, networks: [sw]}}" for i in range(count)]
    return "\n".join(lines) + "\n"


def test_many_sandboxes_are_built_on_two_cores_as_one_after_the_other(
        named: list[str], tmp_path: Path) -> None:
    """From 16 sandboxes in a row, every other one is built by a forked process
    (netns_fixtures.lab.split): the progress, the addresses and the DNS files are those of
    a build one after the other, traffic crosses between sandboxes of both processes, and
    down leaves nothing."""
    name = unique_lab()
    named.append(name)
    topology = tmp_path / "many.yaml"
    topology.write_text(one_bridge(name, 20))
    out = pycnm("lab", "up", str(topology)).stdout
    lines = re.findall(r"^\[\s*(\d+)/22\] sandbox s(\d+) on host1: .*eth0 ([\d.]+)/16 on sw$",
                       out, re.M)
    assert [(int(n), int(s), ip) for n, s, ip in lines] == [
        (i + 3, i, f"10.30.0.{i + 2}") for i in range(20)], out
    for i in (0, 1, 19):  # built here, in the fork, here
        ns = f"pcsb-{name}-s{i}"
        addresses = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "eth0"],
                                   capture_output=True, text=True, check=True).stdout
        assert f"10.30.0.{i + 2}/16" in addresses
        hosts = Path(f"/etc/netns/{ns}/hosts").read_text()
        assert f"10.30.0.{i + 2}\t{name}-s{i}" in hosts
    for source, target in (("s0", "10.30.0.3"), ("s1", "10.30.0.21")):
        ping = pycnm("lab", "exec", "--lab", name, source, "--", "ping", "-c", "1", "-W", "5",
                     target, check=False)
        assert ping.returncode == 0 and "1 received" in ping.stdout, ping.stdout
    assert f"lab {name} removed" in pycnm("lab", "down", name).stdout
    assert lab_objects(name) == []


def test_a_sandbox_failing_in_the_second_builder_removes_the_lab(
        named: list[str], tmp_path: Path) -> None:
    """A sandbox the forked builder cannot make (its namespace name is taken) fails the
    build, named in the error, and everything is removed again."""
    name = unique_lab()
    named.append(name)
    topology = tmp_path / "many.yaml"
    topology.write_text(one_bridge(name, 20))
    taken = f"pcsb-{name}-s5"  # position 5: the forked builder's
    subprocess.run(["ip", "netns", "add", taken], check=True)
    try:
        result = pycnm("lab", "up", str(topology), check=False)
        assert result.returncode != 0
        assert re.search(rf"sandbox s5 on host1 failed.*{taken}", result.stderr), \
            result.stdout + result.stderr
        assert "removing what was built" in result.stdout
        assert lab_objects(name) == []
    finally:
        subprocess.run(["ip", "netns", "delete", taken], capture_output=True)


def test_a_network_failing_before_a_run_built_on_two_cores_removes_the_lab(
        named: list[str], tmp_path: Path) -> None:
    """A network that fails right before a run of sandboxes built on two cores (its
    bridge name is the host's loopback) is named in the error, no sandbox is made, and
    everything is removed again."""
    name = unique_lab()
    named.append(name)
    topology = tmp_path / "many.yaml"
    topology.write_text(one_bridge(name, 20).replace(
        "subnet: 10.30.0.0/16}", "subnet: 10.30.0.0/16, options: "
        "{com.docker.network.bridge.name: lo}}"))
    result = pycnm("lab", "up", str(topology), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"lab {name}: network sw on host1 failed (interface lo exists and is not a bridge" \
        in result.stdout, result.stdout
    assert "Error: interface lo exists and is not a bridge (device)" in result.stderr
    assert "sandbox" not in result.stdout
    assert lab_objects(name) == []


# --- bad files --------------------------------------------------------------------------------

GOOD = (LABS / "01-bridge" / "lab.yaml").read_text()

# (what to change in lab 1, the text on the offending line, the message after "FILE:LINE: ")
BAD = [
    pytest.param("networks: [{name: web, ip: 10.1.0.3}]", "networks: [bakcend]",
                 "bakcend", "sandboxes[1].networks[0]: unknown network 'bakcend'",
                 id="unknown-network"),
    pytest.param("    gateway: 10.1.0.1", "    gateway: 10.9.0.1", "10.9.0.1",
                 "networks[0].gateway: 10.9.0.1 is not inside the subnet 10.1.0.0/24",
                 id="gateway-outside-subnet"),
    pytest.param("    driver: bridge", "    driver: bridge\n    options: {colour: red}",
                 "colour", "networks[0].options: unknown option 'colour'", id="driver-option"),
    pytest.param("[host1:eth0, outside:eth0]", "[host1:eth0, outsdie:eth0]", "outsdie",
                 "links[0].endpoints[1]: unknown node 'outsdie'", id="link-to-unknown-node"),
    pytest.param("[203.0.113.1/24, 203.0.113.2/24]", "[203.0.113.1, 203.0.113.2/24]",
                 "[203.0.113.1,", "links[0].addresses[0]: '203.0.113.1' needs a prefix length",
                 id="address-without-prefix"),
    pytest.param("    ports: [\"8080:80\"]", "    ports: [\"8080:80\"]\n    prots: 1", "prots",
                 "sandboxes[0].prots: unknown key 'prots'; did you mean 'ports'?",
                 id="unknown-key"),
    pytest.param("{from: c1, to: c2}", "{from: c1, to: c2, proto: tcp}",
                 "proto: tcp}", "expect[0]: a tcp check needs 'port'", id="tcp-without-port"),
    pytest.param("      - {to: default, via: 203.0.113.2}", "      - {to: default, via: 10.7.0.1}",
                 "via: 10.7.0.1", "hosts[0].routes[0].via: 10.7.0.1 is not on any subnet",
                 id="route-via-a-stranger"),
    pytest.param("  - name: c2\n", "  - name: c2\n  - name: c2\n", "name: c2",
                 "sandboxes[1]: 'host' is required", id="missing-field"),
    pytest.param("subnet: 10.1.0.0/24", "subnet: [10.1.0.0/24", "gateway: 10.1.0.1",
                 "YAML syntax: expected ',' or ']', but got ':' (while parsing a flow "
                 "sequence that starts at line {line_of:subnet: [})", id="yaml-syntax"),
    pytest.param("\nhosts:", "\netcd: {tls: true}\nhosts:", "etcd:",
                 "etcd: only an overlay lab runs etcd: this lab has no overlay network",
                 id="etcd-without-overlay"),
]


def lab_kernel_view() -> tuple[list[str], list[str]]:
    """Lab namespaces of any lab, and root-namespace links named like pycnm's: a refused
    file must add neither (other tests on the machine may add other objects meanwhile)."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           timeout=30).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return ([ns for ns in list_named_netns() if ns.startswith("pclab-")],
            sorted(n for n in names if n.startswith("pc")))


@pytest.mark.parametrize(("old", "new", "marker", "message"), BAD)
def test_bad_file_is_refused_with_file_line_and_field(tmp_path: Path, old: str, new: str,
                                                      marker: str, message: str) -> None:
    assert old in GOOD
    name = unique_lab()
    text = GOOD.replace("name: bridge", f"name: {name}", 1).replace(old, new, 1)
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    start = text.index(new) + new.index(marker) if marker in new else text.index(marker)
    line = text.count("\n", 0, start) + 1
    message = re.sub(r"\{line_of:(.+?)\}",
                     lambda m: str(text.count("\n", 0, text.index(m[1])) + 1), message)
    before = lab_kernel_view()
    result = pycnm("lab", "up", str(path), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:{line}: {message}" in result.stderr, result.stderr
    after = lab_kernel_view()
    assert set(after[0]) <= set(before[0]) and set(after[1]) <= set(before[1])
    assert lab_objects(name) == []
    with pytest.raises(LabFileError) as caught:
        load(path)
    assert any(f"{path}:{line}: {message}" in m for m in caught.value.messages)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = GOOD.replace("networks: [{name: web, ip: 10.1.0.3}]", "networks: [bakcend]") \
               .replace("    gateway: 10.1.0.1", "    gateway: 10.9.0.1")
    with pytest.raises(LabFileError) as caught:
        load_text(text, "x.yaml")
    messages = caught.value.messages
    assert len(messages) == 2 and all(re.match(r"x\.yaml:\d+: ", m) for m in messages)
    assert [int(m.split(":")[1]) for m in messages] == sorted(int(m.split(":")[1])
                                                             for m in messages)


# --- the troubleshooting exercise ----------------------------------------------------------


@pytest.mark.etcd
def test_troubleshooting_lab_fails_until_its_three_faults_are_fixed(lab,
                                                                    tmp_path: Path) -> None:
    name = unique_lab()
    source = LABS / "11-troubleshooting" / "lab.yaml"
    handle = lab(source, name=name)
    outcomes = handle.check()
    from netns_fixtures.lab.check import table

    assert [o.index for o in outcomes if not o.passed] == [3, 5, 6, 7], table(outcomes)
    assert handle.problems() == []  # every interface is up: the faults are subtler
    # The GUIDE's live fixes: db's route back, then one MTU on the r1-h2 link.
    handle.exec("db", ["ip", "route", "add", "default", "via", "10.9.9.1"], check=True)
    outcomes = handle.check()
    assert [o.index for o in outcomes if not o.passed] == [3, 5], table(outcomes)
    assert "1500" not in handle.exec("r1", ["ip", "link", "show", "eth2"]).stdout
    handle.exec("r1", ["ip", "link", "set", "dev", "eth2", "mtu", "1500"], check=True)
    outcomes = handle.check()
    assert [o.index for o in outcomes if not o.passed] == [5], table(outcomes)
    # ICC: the network's own setting, changed in the file and applied in place (which
    # also makes the other two fixes permanent); the overlay's sandboxes are untouched.
    kept = {ns: os.stat(f"/run/netns/{ns}").st_ino
            for ns in (handle.netns("c1"), handle.netns("c2"))}
    fixed = tmp_path / "lab.yaml"
    fixed.write_text(source.read_text()
                     .replace("options: {icc: false}", "options: {icc: true}")
                     .replace("mtu: [1500, 1400]", "mtu: 1500")
                     .replace("    kind: server ", "    routes: [{to: default, via: 10.9.9.1}]"
                              "\n    kind: server "))
    plan = pycnm("lab", "apply", str(fixed), "--lab", name, "--dry-run").stdout
    for change in ("- sandbox a1 on h1", "- network apps on h1", "+ network apps on h1",
                   "+ link h2:eth0-r1:eth2", "+ route on db: default via 10.9.9.1"):
        assert change in plan, plan
    # As words: the random lab name in the plan's first line may hold "c1" (t0b5c51c1).
    assert not re.search(r"\b(c1|c2|ov)\b", plan), plan
    pycnm("lab", "apply", str(fixed), "--lab", name)
    handle = find_lab(name)
    outcomes = handle.check()
    assert all(o.passed for o in outcomes), table(outcomes)
    assert {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in kept} == kept


# --- the overlay's insides -------------------------------------------------------------------


@pytest.mark.etcd
def test_overlay_internals_an_endpoint_joining_elsewhere_and_a_traced_packet(
        lab, tmp_path: Path) -> None:
    name = unique_lab()
    source = LABS / "10-overlay-internals" / "lab.yaml"
    handle = lab(source, name=name)
    vtep_ns = f"pcov-4096-pclab-{name}-h1"
    # An etcd watch, as the GUIDE runs it, while c4 joins on h3 through 'lab apply'. It
    # starts at the store's next revision: etcdctl may set its watch up only after the
    # join has written (a fast apply beat it once), and must still see that write.
    etcdctl = ["etcdctl", "--endpoints", handle.store_url.removeprefix("etcd://")]
    etcd_env = {**os.environ, "ETCDCTL_API": "3"}
    status = subprocess.run([*etcdctl, "get", "--prefix", "/pycnm/", "--limit", "1", "-w",
                             "json"], env=etcd_env, capture_output=True, text=True,
                            check=True, timeout=30)
    revision = int(json.loads(status.stdout)["header"]["revision"])
    watch = subprocess.Popen(
        [*etcdctl, "watch", "--rev", str(revision + 1), "--prefix",
         "/pycnm/global/drivers/overlay/overlays/ov/endpoints/"],
        env=etcd_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        edited = tmp_path / "lab.yaml"
        edited.write_text(source.read_text().replace(
            "expect:", "  - {name: c4, host: h3, networks: [{name: ov, ip: 10.0.0.9}]}\n\n"
            "expect:", 1))
        handle.apply(edited, progress=lambda _line: None, detach=False)
        fdb = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "02:42:0a:00:00:09 dst 10.20.3.2" not in fdb:
            fdb = subprocess.run(["bridge", "-n", vtep_ns, "fdb", "show", "dev", "pcvx-4096"],
                                 capture_output=True, text=True, timeout=10).stdout
            time.sleep(0.1)
        assert "02:42:0a:00:00:09 dst 10.20.3.2" in fdb, fdb
        neigh = subprocess.run(["ip", "-n", vtep_ns, "neigh", "show", "dev", "pcvx-4096"],
                               capture_output=True, text=True, timeout=10).stdout
        assert "10.0.0.9 lladdr 02:42:0a:00:00:09 PERMANENT" in neigh, neigh
    finally:
        watch.terminate()
        seen, _ = watch.communicate(timeout=10)
    assert "PUT\n/pycnm/global/drivers/overlay/overlays/ov/endpoints/" in seen, seen
    assert '"ip":"10.0.0.9"' in seen and '"vtep":"10.20.3.2"' in seen, seen
    assert handle.exec("c1", ["ping", "-c", "1", "-W", "2", "10.0.0.9"]).returncode == 0

    # One packet traced: inside c1, on h1's wire, at the router, inside c2, and back.
    hops = {("c1", "eth0"): "icmp", ("h1", "eth0"): "udp port 4789",
            ("r1", "eth2"): "udp port 4789", ("c2", "eth0"): "icmp"}
    # Each stops on its own after 20 packets or 8 s, or half a second after the ping (the
    # overlay also carries IPv6 multicast chatter, so a small count could miss the reply).
    with contextlib.ExitStack() as running:
        captures = {hop: running.enter_context(handle.capture(
            *hop, count=20, seconds=8, bpf=bpf, pcap=tmp_path / f"{hop[0]}-{hop[1]}.pcap"))
            for hop, bpf in hops.items()}
        assert handle.exec("c1", ["ping", "-c", "1", "-W", "2", "10.0.0.3"]).returncode == 0
    lines = {hop: cap.lines for hop, cap in captures.items()}
    inner_request = "10.0.0.2 > 10.0.0.3 ICMP echo-request"
    inner_reply = "10.0.0.3 > 10.0.0.2 ICMP echo-reply"
    for hop in (("c1", "eth0"), ("c2", "eth0")):
        text = "\n".join(lines[hop])
        assert inner_request in text and inner_reply in text and "VXLAN" not in text, text
    for hop in (("h1", "eth0"), ("r1", "eth2")):
        text = "\n".join(lines[hop])
        assert re.search(r"172\.31\.1\.2:\d+ > 192\.168\.1\.2:4789 VXLAN vni 4096 \| "
                         r"02:42:0a:00:00:02 > 02:42:0a:00:00:03 \| " + inner_request,
                         text), text
        assert re.search(r"192\.168\.1\.2:\d+ > 172\.31\.1\.2:4789 VXLAN vni 4096 \| .*"
                         + inner_reply, text), text
