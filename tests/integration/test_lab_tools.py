"""Tools on a running lab: links down and up (and ``lab check`` saying what broke),
``inspect`` from the live kernel, ``pingall``, ``iperf``, ``apply`` (a lab changed in place
three ways, the untouched parts keeping their namespaces and addresses) and netem
(measured with real pings where the kernel has it, refused in one sentence where not).

Every lab is built under a unique name (``unique_lab``), so parallel runs never collide.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from cnm.osl.netns import list_named_netns
from netns_fixtures.lab import find
from netns_fixtures.lab.check import table
from tests.integration.test_labs import LABS, REPO, lab_objects, pycnm, unique_lab

pytestmark = pytest.mark.root

BRIDGE_LAB = LABS / "01-bridge" / "lab.yaml"


def inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def passed(outcomes: list) -> bool:
    return bool(outcomes) and all(o.passed for o in outcomes)


# --- links down and up ----------------------------------------------------------------------


def test_link_down_breaks_checks_and_check_says_why(lab) -> None:
    name = unique_lab()
    handle = lab(BRIDGE_LAB, name=name)
    pycnm("lab", "link", "--lab", name, "host1:eth0", "down")
    result = pycnm("lab", "check", name, check=False)
    assert result.returncode == 1, result.stdout
    # c1 -> outside and outside -> host1 cross that link; c1 <-> c2 does not.
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if re.match(r"^\d+\s", line)}
    assert "FAIL" in rows["4"] and "FAIL" in rows["5"] and "PASS" in rows["1"], result.stdout
    assert "host1:eth0 is down: 'pycnm lab link host1:eth0 up' brings it back" in result.stdout
    assert "outside:eth0 has no carrier: its peer host1:eth0 is down" in result.stdout
    assert handle.inspect(networks=False)["links"][0]["state"] == "down"
    pycnm("lab", "link", "--lab", name, "host1:eth0", "up")
    assert passed(handle.check()), table(handle.check())
    assert handle.problems() == []


def test_check_on_a_lab_missing_a_namespace_names_it(lab) -> None:
    """A namespace deleted behind the lab's back (``ip netns del``, another tool's sweep)
    is a FAIL row and a line under "what is broken", never an internal error."""
    name = unique_lab()
    lab(BRIDGE_LAB, name=name)
    subprocess.run(["ip", "netns", "delete", f"pcsb-{name}-c1"], check=True)
    result = pycnm("lab", "check", name, check=False)
    assert result.returncode == 1 and "internal error" not in result.stderr, result.stderr
    gone = f"c1's namespace pcsb-{name}-c1 is gone (deleted outside pycnm): 'pycnm lab down {name}'"
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if re.match(r"^\d+\s", line)}
    # Every check of lab 1 has c1 at one end (check 5 as the server behind host1:8080):
    # none probes, each fails saying why (even 6, which expects "blocked").
    assert all("FAIL" in rows[i] and "namespace" in rows[i] for i in "123456"), result.stdout
    broken = result.stdout.split("what is broken:")[1]
    assert broken.count(gone) == 1 and "is missing" not in broken, result.stdout


def test_check_json_prints_only_json(lab) -> None:
    name = unique_lab()
    lab(BRIDGE_LAB, name=name)
    for argv in (("--json", "lab", "check", name), ("lab", "check", name, "--json")):
        result = pycnm(*argv)
        rows = json.loads(result.stdout)  # the progress lines go to stderr
        assert [r["index"] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert all(r["passed"] for r in rows), rows
        assert "1. c1 -> c2: PASS" in result.stderr


def test_every_lab_command_that_changes_a_lab_prints_only_json_with_json(
        tmp_path: Path) -> None:
    """up, link, graph, apply and down with --json: stdout is one JSON document (what a
    script parses), the progress lines go to stderr."""
    name = unique_lab()
    try:
        # A relative path (pycnm runs in the repository): recorded whole, so that
        # `lab ls` in another folder names the file.
        result = pycnm("lab", "up", "labs/01-bridge/lab.yaml", "--name", name, "--json")
        built = json.loads(result.stdout)
        assert f"lab {name} is up" in result.stderr
        assert (built["Name"], built["Status"]) == (name, "up")
        assert f"pcsb-{name}-c1" in built["Namespaces"] and built["File"] == str(BRIDGE_LAB)
        for state in ("down", "up"):
            link = json.loads(pycnm("--json", "lab", "link", "--lab", name, "c1:eth0",
                                    state).stdout)
            assert link == {"Lab": name, "Node": "c1", "Interface": "eth0", "State": state}
        drawn = json.loads(pycnm("lab", "graph", name, "-o", str(tmp_path), "--json").stdout)
        assert drawn["Namespaces"] == 4 and Path(drawn["Svg"]).parent == tmp_path
        assert Path(drawn["Svg"]).read_text().startswith(("<?xml", "<svg"))
        edited = tmp_path / "lab.yaml"
        edited.write_text(BRIDGE_LAB.read_text())  # the same lab: nothing to change
        plan = json.loads(pycnm("lab", "apply", str(edited), "--lab", name, "--dry-run",
                                "--json").stdout)
        assert plan == {"Name": name, "DryRun": True, "Changes": []}
        result = pycnm("lab", "down", name, "--json")
        gone = json.loads(result.stdout)
        assert gone["Name"] == name and f"namespace pclab-{name}-host1" in gone["Removed"]
        assert lab_objects(name) == []
    finally:
        pycnm("lab", "down", name, check=False)


def test_link_refuses_bad_input_in_one_sentence(lab) -> None:
    name = unique_lab()
    lab(BRIDGE_LAB, name=name)
    for end, message in (("nosuch:eth0", "has no node 'nosuch'"),
                         ("c1:eth9", "c1 has no interface 'eth9'"),
                         ("c1:../x", "is not an interface name"),
                         ("c1", "must be NODE:IFACE")):
        result = pycnm("lab", "link", "--lab", name, end, "down", check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    # The same check keeps a capture's interface from naming a file elsewhere.
    result = pycnm("lab", "capture", "--lab", name, "c1", "../../tmp/x", check=False)
    assert result.returncode == 2 and "is not an interface name" in result.stderr
    assert not (REPO / f"{name}-c1-../../tmp/x.pcap").exists()


@pytest.mark.parametrize("flags", [["-c", "0"], ["-c", "-3"], ["-t", "0"], ["-t", "-1"],
                                   ["-t", "inf"], ["-t", "nan"]])
def test_capture_refuses_a_count_or_time_it_cannot_keep(lab, tmp_path: Path,
                                                        flags: list[str]) -> None:
    name = unique_lab()
    lab(BRIDGE_LAB, name=name)
    pcap = tmp_path / "x.pcap"
    result = pycnm("lab", "capture", "--lab", name, "c1", "eth0", "-w", str(pcap), *flags,
                   check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "capture" in result.stderr, result.stderr
    assert not pcap.exists()


# --- inspect, pingall, iperf --------------------------------------------------------------


def test_inspect_reports_the_kernel_not_the_file(lab) -> None:
    name = unique_lab()
    handle = lab(BRIDGE_LAB, name=name)
    data = json.loads(pycnm("lab", "inspect", name, "--json").stdout)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert set(nodes) == {"host1", "outside", "c1", "c2"} and data["missing"] == []
    c1 = {i["name"]: i for i in nodes["c1"]["interfaces"]}["eth0"]
    assert c1["addresses"] == ["10.1.0.2/24"] and c1["state"] == "up"
    assert c1["peer"].startswith("host1:pcv-") and c1["mtu"] == 1500
    host_ifaces = {i["name"]: i for i in nodes["host1"]["interfaces"]}
    assert host_ifaces["eth0"]["peer"] == "outside:eth0"
    bridge = next(i for i in host_ifaces.values() if i["kind"] == "bridge")
    assert bridge["addresses"] == ["10.1.0.1/24"]
    web = data["networks"][0]
    assert (web["name"], web["driver"], web["gateway"]) == ("web", "bridge", "10.1.0.1")
    assert {e["name"]: e["address"] for e in web["endpoints"]} == {
        "c1": "10.1.0.2/24", "c2": "10.1.0.3/24"}
    # What the kernel has, even where it differs from the file.
    handle.exec("c2", ["ip", "addr", "add", "10.1.0.77/24", "dev", "eth0"], check=True)
    again = json.loads(pycnm("--json", "lab", "inspect", name).stdout)
    c2 = {n["name"]: n for n in again["nodes"]}["c2"]["interfaces"][0]
    assert "10.1.0.77/24" in c2["addresses"]
    text = pycnm("lab", "inspect", name).stdout
    assert "c1: sandbox on host1 (pcsb-" in text and "host1:eth0 <-> outside:eth0: up" in text


def test_pingall_is_a_matrix_of_real_pings(lab) -> None:
    name = unique_lab()
    handle = lab(LABS / "02-two-networks" / "lab.yaml", name=name)
    result = pycnm("lab", "pingall", name, check=False)
    lines = dict(line.split(" -> ") for line in result.stdout.splitlines() if " -> " in line)
    # alice reaches multi (same network) and carol (red), not bob or dave (blue: multi
    # does not forward; alice has no route through router).
    alice = lines["alice"].split()
    assert "multi" in alice and "carol" in alice and "X" in alice
    assert result.returncode == 1 and "% dropped" in result.stdout
    data = json.loads(pycnm("lab", "pingall", name, "--json", check=False).stdout)
    pairs = {(p["from"], p["to"]): p for p in data}
    assert pairs[("carol", "dave")]["reached"] and not pairs[("alice", "bob")]["reached"]
    assert pairs[("multi", "bob")]["address"] == "10.2.0.2"  # on the network they share
    handle.exec("dave", ["ip", "link", "set", "eth0", "down"], check=True)
    data = json.loads(pycnm("lab", "pingall", name, "--json", check=False).stdout)
    assert not any(p["reached"] for p in data if "dave" in (p["from"], p["to"]))


def test_iperf_measures_throughput_in_bounded_time(lab) -> None:
    name = unique_lab()
    lab(BRIDGE_LAB, name=name)
    data = json.loads(pycnm("lab", "iperf", "--lab", name, "c1", "c2", "-t", "1", "--json",
                            timeout=60).stdout)
    assert data["address"] == "10.1.0.3" and 0.5 <= data["seconds"] <= 3
    assert data["received_bps"] > 1e6, data  # veths on one host: far more than 1 Mbit/s
    out = pycnm("lab", "iperf", "--lab", name, "c2", "c1", "-t", "1").stdout
    assert re.search(r"c2 -> c1 \(10\.1\.0\.2\): sent [\d.]+ [GMk]bit/s", out), out
    bad = pycnm("lab", "iperf", "--lab", name, "c1", "c2", "-t", "600", check=False)
    assert bad.returncode == 2 and "seconds between 1 and 60, not 600" in bad.stderr
    assert bad.stdout == ""  # no "iperf3 from ..." line for a run that never starts
    for src, dst in (("c1", "nosuch"), ("nosuch", "c2")):  # a typo is named as one
        bad = pycnm("lab", "iperf", "--lab", name, src, dst, check=False)
        assert bad.returncode == 1 and f"lab {name} has no node 'nosuch'" in bad.stderr, \
            bad.stderr
        assert bad.stdout == ""


# --- apply: a running lab changed in place ---------------------------------------------------

BASE = """
name: LABNAME
hosts:
  - name: host1
    routes: [{to: default, via: 203.0.113.2}]
  - {name: outside, kind: server}
links:
  - endpoints: [host1:eth0, outside:eth0]
    addresses: [203.0.113.1/24, 203.0.113.2/24]
networks:
  - {name: web, driver: bridge, host: host1, subnet: 10.1.0.0/24, gateway: 10.1.0.1}
sandboxes:
  - {name: c1, host: host1, networks: [{name: web, ip: 10.1.0.2}], ports: ["8080:80"]}
  - {name: c2, host: host1, networks: [{name: web, ip: 10.1.0.3}]}
expect:
  - {from: c1, to: c2}
  - {from: outside, to: c1, expect: blocked}
"""

# 1: a new network with a sandbox, and a third sandbox on web.
STEP1 = BASE.replace("expect:\n", """  - {name: c3, host: host1, networks: [web]}
  - {name: d1, host: host1, networks: [{name: db, ip: 10.3.0.5}]}
expect:
  - {from: c3, to: c1}
  - {from: d1, to: c1, expect: blocked}
""").replace("networks:\n  - {name: web", """networks:
  - {name: db, driver: bridge, host: host1, subnet: 10.3.0.0/24}
  - {name: web""")
# 2: c2 goes; a new server on a new link of host1.
STEP2 = STEP1.replace("  - {name: c2, host: host1, networks: [{name: web, ip: 10.1.0.3}]}\n",
                      "").replace("  - {from: c1, to: c2}\n", "  - {from: c1, to: srv}\n") \
    .replace("  - {name: outside, kind: server}\n",
             "  - {name: outside, kind: server}\n  - {name: srv, kind: server}\n") \
    .replace("links:\n", """links:
  - endpoints: [host1:eth1, srv:eth0]
    addresses: [198.51.100.1/24, 198.51.100.2/24]
""").replace("    routes: [{to: default, via: 203.0.113.2}]\n", "")
# 3: network db (and d1) go; outside learns a route to web, so it now reaches c1.
STEP3 = STEP2.replace("  - {name: d1, host: host1, networks: [{name: db, ip: 10.3.0.5}]}\n",
                      "").replace("  - {name: db, driver: bridge, host: host1, "
                                  "subnet: 10.3.0.0/24}\n", "") \
    .replace("  - {from: d1, to: c1, expect: blocked}\n", "") \
    .replace("{from: outside, to: c1, expect: blocked}", "{from: outside, to: c1}") \
    .replace("  - {name: outside, kind: server}\n", """  - name: outside
    kind: server
    routes: [{to: 10.1.0.0/24, via: 203.0.113.1}]
""")


def test_apply_changes_a_running_lab_three_ways_touching_nothing_else(
        lab, tmp_path: Path) -> None:
    name = unique_lab()
    path = tmp_path / "lab.yaml"
    path.write_text(BASE.replace('LABNAME', name))
    handle = lab(path, name=name)
    assert passed(handle.check())
    c1, outside = handle.netns("c1"), handle.netns("outside")
    kept = {c1: inode(c1), outside: inode(outside), handle.netns("host1"):
            inode(handle.netns("host1"))}
    mac = handle.exec("c1", ["cat", "/sys/class/net/eth0/address"]).stdout

    def unchanged() -> None:
        for ns, number in kept.items():
            assert inode(ns) == number, f"{ns} was remade"
        assert handle.namespace("c1").addresses("eth0")[0] == "10.1.0.2/24"
        assert handle.exec("c1", ["cat", "/sys/class/net/eth0/address"]).stdout == mac

    # A dry run prints the plan and changes nothing.
    path.write_text(STEP1.replace('LABNAME', name))
    before = lab_objects(name)
    plan = pycnm("lab", "apply", str(path), "--dry-run").stdout
    assert f"lab {name}: 3 changes" in plan, plan
    for line in ("+ network db on host1", "+ sandbox c3 on host1", "+ sandbox d1 on host1"):
        assert line in plan, plan
    assert "c1" not in plan and "- " not in plan
    assert lab_objects(name) == before

    out = pycnm("lab", "apply", str(path)).stdout
    assert "sandbox c3 on host1: pcsb-" in out, out
    handle = find(name)  # the CLI changed it: a fresh handle sees the new topology
    assert {s.name for s in handle.topology.sandboxes} == {"c1", "c2", "c3", "d1"}
    assert passed(handle.check()), table(handle.check())
    unchanged()
    c2 = inode(handle.netns("c2"))

    path.write_text(STEP2.replace('LABNAME', name))
    plan = str(handle.apply(path, dry_run=True))
    assert "- sandbox c2 on host1" in plan and "+ server srv" in plan
    assert "+ link host1:eth1-srv:eth0" in plan and "- route on host1" in plan
    handle.apply(path, progress=lambda _line: None, detach=False)
    assert not os.path.exists(f"/run/netns/pcsb-{name}-c2") and c2
    assert passed(handle.check()), table(handle.check())
    assert handle.exec("host1", ["ip", "route", "show", "default"]).stdout == ""
    unchanged()

    path.write_text(STEP3.replace('LABNAME', name))
    handle.apply(path, progress=lambda _line: None, detach=False)
    assert not any(ns.startswith(f"pcsb-{name}-d1") for ns in list_named_netns())
    with handle.controller("host1") as ctl:
        assert sorted(n.name for n in ctl.networks()) == ["web"]
    outcomes = handle.check()
    assert passed(outcomes), table(outcomes)
    assert any(o.expectation.src == "outside" and o.got == "reach" for o in outcomes)
    unchanged()
    assert "nothing to change" in pycnm("lab", "apply", str(path), "--dry-run").stdout

    handle.down()
    assert lab_objects(name) == []


def test_apply_refuses_a_first_overlay_and_a_bad_file(lab, tmp_path: Path) -> None:
    name = unique_lab()
    path = tmp_path / "lab.yaml"
    path.write_text(BASE.replace('LABNAME', name))
    lab(path, name=name)
    before = lab_objects(name)
    path.write_text(BASE.replace('LABNAME', name).replace(
        "driver: bridge", "driver: overlay").replace(', ports: ["8080:80"]', ""))
    result = pycnm("lab", "apply", str(path), check=False)
    assert result.returncode == 1 and "take it down and up again" in result.stderr
    path.write_text(BASE.replace('LABNAME', name).replace("ip: 10.1.0.3", "ip: 10.9.0.3"))
    result = pycnm("lab", "apply", str(path), check=False)
    assert result.returncode == 2 and "is not in network 'web'" in result.stderr
    assert lab_objects(name) == before


# --- netem ------------------------------------------------------------------------------------

NETEM_LAB = """
name: LABNAME
hosts:
  - {name: a, kind: server}
  - {name: b, kind: server}
links:
  - endpoints: [a:eth0, b:eth0]
    addresses: [10.77.0.1/24, 10.77.0.2/24]
    netem: {delay: 20ms}
expect:
  - {from: a, to: b}
"""


@pytest.mark.parametrize(("flags", "message"), [
    (["--delay", "50"], "netem delay must be a time with a unit (us, ms or s)"),
    (["--loss", "150%"], "netem loss must be between 0% and 100%"),
    (["--rate", "10mbps"], "netem rate must be a rate with a unit (bit, kbit, mbit or gbit)"),
    (["--jitter", "5ms"], "netem jitter varies the delay: give a delay as well"),
    (["--reorder", "5%"], "give a delay as well"),
    (["--delay", "5ms", "--reset"], "--reset removes the impairment"),
])
def test_netem_flags_are_checked_before_the_kernel_is_asked(lab, flags: list[str],
                                                            message: str) -> None:
    name = unique_lab()
    lab(LABS / "01-bridge" / "lab.yaml", name=name)
    result = pycnm("lab", "netem", "--lab", name, "c1", "eth0", *flags, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_netem_in_a_lab_file_is_checked_with_its_line(tmp_path: Path) -> None:
    from netns_fixtures.lab import LabFileError, load

    path = tmp_path / "lab.yaml"
    path.write_text(NETEM_LAB.replace("LABNAME", "x").replace("{delay: 20ms}",
                                                       "{delay: 20ms, lose: 1%}"))
    with pytest.raises(LabFileError) as caught:
        load(path)
    assert caught.value.messages == [
        f"{path}:9: links[0].netem: netem has no setting 'lose' (known: delay, jitter, loss, "
        "rate, corrupt, duplicate, reorder)"]


def test_link_and_netem_leave_nothing(lab) -> None:
    name = unique_lab()
    handle = lab(LABS / "01-bridge" / "lab.yaml", name=name)
    pycnm("lab", "link", "--lab", name, "c2:eth0", "down")
    handle.down()
    assert lab_objects(name) == []
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True
                          ).stdout.count(name) == 0


def test_inspect_and_apply_know_the_sandbox_modes(lab, tmp_path: Path) -> None:
    name = unique_lab()
    source = LABS / "09-network-modes" / "lab.yaml"
    handle = lab(source, name=name)
    data = handle.inspect(networks=False)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert set(nodes) == set(handle.topology.node_names())
    assert nodes["side"]["mode"] == "container:app" and nodes["side"]["uses"] == "app"
    assert nodes["app"]["shared_by"] == ["side"] and nodes["host1"]["shared_by"] == ["tools"]
    assert [i["name"] for i in nodes["batch"]["interfaces"]] == []
    # Remaking app (a new address) remakes side with it; tools and batch stay as they are.
    app_ns = handle.netns("app")
    batch = inode(handle.netns("batch"))
    path = tmp_path / "lab.yaml"
    path.write_text(source.read_text().replace("networks: [{name: web, ip: 10.9.0.2}]",
                                               "networks: [{name: web, ip: 10.9.0.12}]"))
    plan = str(handle.apply(path, dry_run=True))
    assert plan.index("- sandbox side") < plan.index("- sandbox app"), plan
    assert plan.index("+ sandbox app") < plan.index("+ sandbox side"), plan
    assert "tools" not in plan and "batch" not in plan and "peer" not in plan
    handle.apply(path, progress=lambda _line: None, detach=False)
    assert handle.namespace("side").addresses("eth0")[0] == "10.9.0.12/24"
    assert inode(handle.netns("batch")) == batch and handle.netns("app") == app_ns
    assert passed(handle.check()), table(handle.check())
