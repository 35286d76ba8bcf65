"""The overlay driver across emulated hosts, with real packets and a real etcd.

Two hosts in different underlay networks (172.31.1.0/24 and 192.168.1.0/24) joined by a
router namespace; each runs its own ``pycnm agent`` process; the overlay is 10.0.0.0/24
and C2 is 10.0.0.4. See overlay_lab for the picture and the clean-up guarantees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.bridge_helpers import TcpServer, in_ns, ping, ping_eventually, tcp_hello
from tests.integration.overlay_lab import REPO, Host, OverlayLab, overlay_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

UNDERLAYS = {"1": "172.31.1.0/24", "2": "192.168.1.0/24", "3": "172.31.3.0/24"}
SUBNET = "10.0.0.0/24"
C2_IP = "10.0.0.4"
LEASE_TTL = 2.0


@pytest.fixture
def lab(etcd_server) -> Iterator[OverlayLab]:
    with overlay_lab(etcd_server.url, lease_ttl=LEASE_TTL) as lab:
        yield lab


@dataclass
class Pair:
    lab: OverlayLab
    h1: Host
    h2: Host
    overlay: str
    net: str
    vni: int

    def sandbox(self, host: Host, key: str, ip: str | None = None) -> tuple[str, str]:
        """A sandbox on ``host`` attached to the overlay; (netns name, address)."""
        name = f"{key}{self.lab.tag}"
        self.lab.pycnm(host, "sandbox", "create", name)
        self.lab.pycnm(host, "attach", self.net, name, *(["--ip", ip] if ip else []))
        info = self.lab.pycnm_json(host, "sandbox", "inspect", name)[0]
        address = info["Interfaces"]["eth0"]["IPv4Address"].split("/")[0]
        return f"pcsb-{name}", address


def create_overlay(lab: OverlayLab, host: Host, overlay: str, net: str, *extra: str,
                   check: bool = True) -> subprocess.CompletedProcess:
    return lab.pycnm(host, "network", "create", "-d", "overlay", "--subnet", SUBNET,
                     "-o", f"overlay={overlay}", *extra, net, check=check)


@pytest.fixture
def pair(lab: OverlayLab) -> Pair:
    h1, h2 = lab.add_host("1", UNDERLAYS["1"]), lab.add_host("2", UNDERLAYS["2"])
    lab.start_agent(h1)
    lab.start_agent(h2)
    overlay, net = f"ov{lab.tag}", "ovnet"
    create_overlay(lab, h1, overlay, net)
    create_overlay(lab, h2, overlay, net)
    return Pair(lab, h1, h2, overlay, net, lab.vni_of(overlay))


def has_remote(lab: OverlayLab, host: Host, vni: int, ip: str) -> bool:
    return any(i == ip for i, _ in lab.vtep_entries(host, vni).neigh)


# --- reachability ---------------------------------------------------------------------


def test_c1_and_c2_on_two_hosts_ping_and_talk_tcp(pair: Pair) -> None:
    lab = pair.lab
    c1, ip1 = pair.sandbox(pair.h1, "c1")
    c2, ip2 = pair.sandbox(pair.h2, "c2", ip=C2_IP)
    assert ip2 == C2_IP and ip1 != ip2
    for host in (pair.h1, pair.h2):  # one VNI for the overlay, shown on every host
        options = lab.pycnm_json(host, "network", "inspect", pair.net)[0]["Options"]
        assert options["com.docker.network.driver.overlay.vxlanid_list"] == str(pair.vni)
    wait_for(lambda: has_remote(lab, pair.h1, pair.vni, C2_IP), 10, what="h1 to learn C2")
    entries = lab.vtep_entries(pair.h1, pair.vni)
    assert entries.flood == {pair.h2.underlay}  # head-end replication to h2 only
    assert ping_eventually(c1, C2_IP)
    assert ping_eventually(c2, ip1)
    with TcpServer(c2, "0.0.0.0", 7101):
        assert tcp_hello(c1, C2_IP, 7101) == f"from {ip1}"
    assert mtu(c1) == mtu(c2) == 1450  # the underlay's 1500 minus VXLAN's 50
    # A full-size packet crosses without fragmentation (don't-fragment set).
    big = ["ping", "-M", "do", "-s", str(1450 - 28), "-c", "1", "-W", "2", C2_IP]
    assert in_ns(c1, big).returncode == 0
    too_big = ["ping", "-M", "do", "-s", str(1450 - 27), "-c", "1", "-W", "2", C2_IP]
    assert "message too long" in in_ns(c1, too_big).stderr.lower()


def mtu(netns_name: str) -> int:
    out = subprocess.run(["ip", "-n", netns_name, "-o", "link", "show", "eth0"],
                         capture_output=True, text=True, timeout=10).stdout
    return int(out.split(" mtu ")[1].split()[0])


def test_underlay_carries_vxlan_with_the_vni_and_the_inner_icmp(pair: Pair) -> None:
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN

    lab = pair.lab
    c1, ip1 = pair.sandbox(pair.h1, "c1")
    pair.sandbox(pair.h2, "c2", ip=C2_IP)
    wait_for(lambda: has_remote(lab, pair.h1, pair.vni, C2_IP), 10, what="h1 to learn C2")
    packets = capture(lab, pair.h2.router_if, lambda: ping(c1, C2_IP, count=3))
    inner = [
        p for p in packets
        if p.haslayer(VXLAN) and p[VXLAN].vni == pair.vni and p[VXLAN].haslayer(ICMP)
    ]
    assert inner, f"no VXLAN-wrapped ICMP in {[p.summary() for p in packets]}"
    request = next(p for p in inner if p[VXLAN][ICMP].type == 8)
    assert request[IP].src == pair.h1.underlay and request[IP].dst == pair.h2.underlay
    assert request[UDP].dport == 4789
    assert (request[VXLAN][IP].src, request[VXLAN][IP].dst) == (ip1, C2_IP)
    assert any(p[VXLAN][ICMP].type == 0 for p in inner)  # and the reply came back wrapped


def capture(lab: OverlayLab, iface: str, action, count: int = 12, timeout: float = 8) -> list:
    """Packets to or from UDP 4789 seen on the router's ``iface`` while ``action`` runs."""
    import threading

    from scapy.arch.linux import L2ListenSocket
    from scapy.layers.inet import UDP
    from scapy.sendrecv import AsyncSniffer

    from cnm.osl.netns import in_netns, named_netns_path

    sock = in_netns(named_netns_path(lab.router), lambda: L2ListenSocket(iface=iface))
    ready = threading.Event()
    sniffer = AsyncSniffer(
        opened_socket=sock, count=count, started_callback=ready.set,  # count 0: no limit
        lfilter=lambda p: p.haslayer(UDP) and 4789 in (p[UDP].dport, p[UDP].sport),
    )
    sniffer.start()
    try:
        ready.wait(5)
        action()
        sniffer.join(timeout)  # until ``count`` packets, or the timeout
    finally:
        if sniffer.running:
            sniffer.stop()
        sock.close()
    return list(sniffer.results or [])


def test_an_ipv4_only_overlay_floods_nothing_across_the_underlay(pair: Pair) -> None:
    """br0 and the VTEP of an IPv4-only overlay have no IPv6 address, and endpoints
    joining on both hosts put no broadcast or multicast frame on the underlay (ARP is
    answered by each host's own VTEP; nothing sends IPv6). Watched for a window after
    the last join long enough for IPv6's DAD, MLD reports and router solicitations."""
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN

    lab = pair.lab
    for host in (pair.h1, pair.h2):
        ns = lab.overlay_netns(host, pair.vni)
        v6 = subprocess.run(["ip", "-n", ns, "-6", "-o", "addr", "show"], capture_output=True,
                            text=True, timeout=10).stdout.split("\n")
        assert [line.split()[1] for line in v6 if line.strip()] == ["lo"], (ns, v6)

    def attach_and_talk() -> None:
        c1, _ = pair.sandbox(pair.h1, "c1")
        pair.sandbox(pair.h2, "c2", ip=C2_IP)
        pair.sandbox(pair.h2, "c3")
        wait_for(lambda: has_remote(lab, pair.h1, pair.vni, C2_IP), 10, what="h1 to learn C2")
        assert ping_eventually(c1, C2_IP)

    packets = capture(lab, pair.h2.router_if, attach_and_talk, count=0, timeout=3.0)
    vxlan = [p for p in packets if p.haslayer(VXLAN) and p[VXLAN].vni == pair.vni]
    assert vxlan, "the ping crossed the underlay, so the capture must have seen it"
    flooded = [p[VXLAN].summary() for p in vxlan if int(p[VXLAN].payload.dst[:2], 16) & 1]
    assert flooded == [], f"broadcast/multicast frames crossed the underlay: {flooded}"
    assert all(p[UDP].dport == 4789 for p in vxlan)


def test_a_third_host_joining_later_reaches_both(pair: Pair) -> None:
    lab = pair.lab
    c1, ip1 = pair.sandbox(pair.h1, "c1")
    c2, _ = pair.sandbox(pair.h2, "c2", ip=C2_IP)
    h3 = lab.add_host("3", UNDERLAYS["3"])
    lab.start_agent(h3)
    create_overlay(lab, h3, pair.overlay, pair.net, "-o", "mtu=1400")
    c3, ip3 = pair.sandbox(h3, "c3")
    assert mtu(c3) == 1400
    assert len({ip1, C2_IP, ip3}) == 3
    wait_for(lambda: has_remote(lab, h3, pair.vni, C2_IP) and has_remote(lab, h3, pair.vni, ip1),
             10, what="h3 to learn C1 and C2")
    assert ping_eventually(c3, ip1)
    assert ping_eventually(c3, C2_IP)
    wait_for(lambda: has_remote(lab, pair.h1, pair.vni, ip3), 10, what="h1 to learn C3")
    assert ping_eventually(c1, ip3)
    assert ping_eventually(c2, ip3)
    assert lab.vtep_entries(h3, pair.vni).flood == {pair.h1.underlay, pair.h2.underlay}


def test_the_same_overlay_with_another_subnet_or_vni_is_refused(pair: Pair) -> None:
    lab = pair.lab
    h3 = lab.add_host("3", UNDERLAYS["3"])
    result = lab.pycnm(h3, "network", "create", "-d", "overlay", "--subnet", "10.9.0.0/24",
                       "-o", f"overlay={pair.overlay}", "other", check=False)
    assert result.returncode != 0
    assert f"overlay {pair.overlay} already exists with subnet(s) {SUBNET}" in result.stderr
    result = create_overlay(lab, h3, pair.overlay, "other", "-o", f"vni={pair.vni + 1}",
                            check=False)
    assert result.returncode != 0 and f"with VNI {pair.vni}" in result.stderr
    assert lab.pycnm_json(h3, "network", "ls") == []  # nothing half-made remains


# --- addresses ------------------------------------------------------------------------


def test_no_address_is_handed_out_twice_when_hosts_allocate_at_once(pair: Pair) -> None:
    lab, count = pair.lab, 15
    start_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.overlay_alloc", "--store",
             lab.store_url, "--local-store", lab.local_url, "--host-ns", host.name,
             "--network", pair.net,
             "--count", str(count), "--start-at", str(start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        for host in (pair.h1, pair.h2)
    ]
    lab.processes.extend(procs)
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    addresses = [a for r in results for a in r]
    assert len(addresses) == 2 * count
    assert len(set(addresses)) == len(addresses), "an address was handed out twice"


def test_a_join_detached_at_once_leaves_no_published_record_and_a_join_is_published(
        pair: Pair) -> None:
    """The publication runs after the join returns (drivers/overlay/publisher.py): a detach
    right after the join must still find, and withdraw, what the join publishes."""
    lab = pair.lab
    ctl = lab.controller(pair.h1, reconcile=False)
    prefix = f"global/drivers/overlay/overlays/{pair.overlay}/endpoints/"
    try:
        net = ctl.network(pair.net)
        publisher = ctl.driver("overlay")._publisher
        left = []
        for i in range(15):
            sb = ctl.new_sandbox(f"q{i}{lab.tag}")
            ep = net.create_endpoint(sb.name)
            # A slow cluster: the join's put waits behind this one, so the detach comes
            # before it unless the detach waits for it.
            publisher.submit("a slow write", lambda: time.sleep(0.05))
            ep.join(sb)
            ep.leave()
            left.append((ep.id, ep.record.address.split("/")[0]))
        published = {e.key.rsplit("/", 1)[1] for e in ctl.store.list(prefix)}
        assert not published & {eid for eid, _ in left}, \
            "a detached endpoint's record stayed in etcd"
        sb = ctl.new_sandbox(f"qj{lab.tag}")
        ep = net.create_endpoint(sb.name)
        ep.join(sb)
        ctl.driver("overlay").flush()
        record = ctl.store.get(prefix + ep.id)
        assert record is not None and record.value["ip"] == ep.record.address.split("/")[0]
        wait_for(lambda: has_remote(lab, pair.h2, pair.vni, record.value["ip"]), 10,
                 what="h2 to learn the joined endpoint")
        # h2's agent applies the watch's events in order: it has seen every detach too.
        learnt = {ip for ip, _ in lab.vtep_entries(pair.h2, pair.vni).neigh}
        assert not learnt & {ip for _, ip in left}
    finally:
        for sandbox in ctl.sandboxes():
            sandbox.delete()
        ctl.close()


# --- entries go away --------------------------------------------------------------------


def test_removing_c2_removes_its_entries_on_h1(pair: Pair) -> None:
    lab = pair.lab
    c1, _ = pair.sandbox(pair.h1, "c1")
    pair.sandbox(pair.h2, "c2", ip=C2_IP)
    wait_for(lambda: has_remote(lab, pair.h1, pair.vni, C2_IP), 10, what="h1 to learn C2")
    mac = next(m for i, m in lab.vtep_entries(pair.h1, pair.vni).neigh if i == C2_IP)
    lab.pycnm(pair.h2, "sandbox", "rm", f"c2{lab.tag}")
    wait_for(lambda: not lab.vtep_entries(pair.h1, pair.vni).neigh, 10,
             what="C2's neighbour entry to leave h1")
    entries = lab.vtep_entries(pair.h1, pair.vni)
    assert mac not in {m for m, _ in entries.fdb}
    assert entries.flood == set()  # h2 holds no endpoint any more: no replication to it
    assert not ping(c1, C2_IP)


def test_a_killed_hosts_entries_go_when_its_lease_expires(pair: Pair) -> None:
    lab = pair.lab
    pair.sandbox(pair.h1, "c1")
    pair.sandbox(pair.h2, "c2", ip=C2_IP)
    wait_for(lambda: has_remote(lab, pair.h1, pair.vni, C2_IP), 10, what="h1 to learn C2")
    killed_at = time.monotonic()
    lab.stop_agent(pair.h2, sig=9)
    wait_for(lambda: not has_remote(lab, pair.h1, pair.vni, C2_IP), LEASE_TTL + 10,
             what="h2's entries to expire on h1")
    gone_after = time.monotonic() - killed_at
    # The host's registration (its flood entry) and its endpoints leave with the same
    # lease, as separate watch events: the flood entry may go a moment after the others.
    wait_for(lambda: lab.vtep_entries(pair.h1, pair.vni).flood == set(), 10,
             what="h2's flood entry to leave h1")
    assert gone_after >= LEASE_TTL * 0.5, f"entries went after {gone_after:.1f} s, before " \
        "the lease could have expired"


def test_the_agent_exits_cleanly_on_sigterm_and_leaves_the_data_plane(pair: Pair) -> None:
    lab = pair.lab
    c1, _ = pair.sandbox(pair.h1, "c1")
    pair.sandbox(pair.h2, "c2", ip=C2_IP)
    wait_for(lambda: has_remote(lab, pair.h1, pair.vni, C2_IP), 10, what="h1 to learn C2")
    assert lab.stop_agent(pair.h1) == 0
    assert "pycnm agent: stopped" in lab.agent_output(pair.h1)
    assert has_remote(lab, pair.h1, pair.vni, C2_IP)
    assert ping_eventually(c1, C2_IP)


def test_cleanup_of_one_emulated_host_without_its_store_takes_only_its_own(pair: Pair) -> None:
    """``pycnm --host-ns H cleanup --kernel-only`` needs no store: it sweeps by name, and
    of the namespaces every emulated host shares it takes only H's overlay namespace."""
    lab = pair.lab
    assert lab.stop_agent(pair.h1) == 0  # nothing may rebuild h1's data plane meanwhile
    mine, theirs = (f"pcov-{pair.vni}-{h.name}" for h in (pair.h1, pair.h2))
    assert {mine, theirs} <= set(os.listdir("/run/netns"))
    swept = subprocess.run(
        [sys.executable, "-m", "cnm.cli", "--store", "etcd://127.0.0.1:9", "--host-ns",
         pair.h1.name, "cleanup", "--kernel-only"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert swept.returncode == 0, swept.stderr
    assert f"namespace {mine}" in swept.stdout
    assert mine not in os.listdir("/run/netns") and theirs in os.listdir("/run/netns")


# --- etcd going away ------------------------------------------------------------------------


def test_etcd_down_fails_fast_keeps_forwarding_and_the_hosts_catch_up(tmp_path) -> None:
    from netns_fixtures.etcd import start_etcd

    etcd = start_etcd(tmp_path / "etcd")  # our own: the session's etcd stays up
    try:
        with overlay_lab(etcd.url, lease_ttl=LEASE_TTL) as lab:
            h1, h2 = lab.add_host("1", UNDERLAYS["1"]), lab.add_host("2", UNDERLAYS["2"])
            lab.start_agent(h1)
            lab.start_agent(h2)
            overlay = f"ov{lab.tag}"
            create_overlay(lab, h1, overlay, "ovnet")
            create_overlay(lab, h2, overlay, "ovnet")
            pair = Pair(lab, h1, h2, overlay, "ovnet", lab.vni_of(overlay))
            c1, ip1 = pair.sandbox(h1, "c1")
            c2, _ = pair.sandbox(h2, "c2", ip=C2_IP)
            wait_for(lambda: has_remote(lab, h1, pair.vni, C2_IP), 10, what="h1 to learn C2")

            etcd.stop()
            # The host's own records are local, and so are the addresses of the block h1
            # holds: a sandbox can still be made and attached; its publication waits for
            # the cluster (h1's agent publishes it when etcd is back)...
            _, ip8 = pair.sandbox(h1, "c8")
            # ...but an address from the cluster record (an explicit one in the lower half
            # of the range, never in a block) needs etcd: one sentence, nothing half-made.
            c9 = f"c9{lab.tag}"
            lab.pycnm(h1, "sandbox", "create", c9)
            started = time.monotonic()
            result = lab.pycnm(h1, "attach", "ovnet", c9, "--ip", "10.0.0.9", check=False)
            elapsed = time.monotonic() - started
            assert result.returncode != 0
            assert "etcd" in result.stderr and "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert elapsed < 15, f"the CLI took {elapsed:.1f} s to give up"
            links = subprocess.run(["ip", "-n", f"pcsb-{c9}", "-o", "link"],
                                   capture_output=True, text=True, timeout=10).stdout
            assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
            # The data plane keeps forwarding, ping and TCP, while etcd is down...
            assert ping_eventually(c1, C2_IP)
            with TcpServer(c2, "0.0.0.0", 7102):
                assert tcp_hello(c1, C2_IP, 7102) == f"from {ip1}"
            # ...and when h1's VTEP loses its entries meanwhile, nothing can restore them
            # until etcd is back.
            from drivers.overlay.dataplane import Forwarder

            with Forwarder(lab.overlay_netns(h1, pair.vni), pair.vni) as fwd:
                fwd.sync([])
            assert not ping(c1, C2_IP)

            etcd.start()
            # h1 re-lists and resyncs: C2's entries come back, traffic flows again.
            wait_for(lambda: has_remote(lab, h1, pair.vni, C2_IP), 30,
                     what="h1 to resync after etcd came back")
            assert ping_eventually(c1, C2_IP)
            # h1's agent published C8, attached while etcd was down: h2 learns it.
            wait_for(lambda: has_remote(lab, h2, pair.vni, ip8), 30,
                     what="h2 to learn C8, attached while etcd was down")
            assert ping_eventually(c2, ip8)
            # The watches work again: a new endpoint on h2 reaches h1.
            c3, ip3 = pair.sandbox(h2, "c3")
            wait_for(lambda: has_remote(lab, h1, pair.vni, ip3), 10, what="h1 to learn C3")
            assert ping_eventually(c1, ip3)
            for host in (h1, h2):
                assert host.agent is not None and host.agent.poll() is None
    finally:
        etcd.stop()


def test_dual_stack_overlay_answers_neighbour_solicitations_locally(lab: OverlayLab) -> None:
    h1, h2 = lab.add_host("1", UNDERLAYS["1"]), lab.add_host("2", UNDERLAYS["2"])
    lab.start_agent(h1)
    lab.start_agent(h2)
    overlay = f"ov{lab.tag}"
    for host in (h1, h2):
        create_overlay(lab, host, overlay, "ovnet", "--ipv6", "--subnet", "fd00:10::/64")
    pair = Pair(lab, h1, h2, overlay, "ovnet", lab.vni_of(overlay))
    c1, _ = pair.sandbox(h1, "c1")
    pair.sandbox(h2, "c2", ip=C2_IP)
    info = lab.pycnm_json(h2, "sandbox", "inspect", f"c2{lab.tag}")[0]
    ip6 = info["Interfaces"]["eth0"]["IPv6Address"].split("/")[0]
    assert ip6.startswith("fd00:10::")
    wait_for(lambda: has_remote(lab, h1, pair.vni, ip6), 10, what="h1 to learn C2's IPv6")
    assert ping_eventually(c1, ip6)
