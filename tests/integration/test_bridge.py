"""The bridge driver with real namespaces and real packets.

Each test runs a Controller whose "host" is a throwaway namespace (``host_ns``), wired by a
veth to an "outside" namespace that plays the internet; nothing touches the machine's own
root namespace, and every test's traffic stays inside namespaces it made.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cnm.controller import Controller
from cnm.driverapi import OPT_PORTMAP
from cnm.errors import InvalidOption
from cnm.osl import reaper
from tests.integration.bridge_helpers import TcpServer, ping, ping_eventually, tcp_hello, unique

pytestmark = pytest.mark.root

HOST_OUT = "198.18.7.1"
OUTSIDE = "198.18.7.2"


@dataclass
class Lab:
    ctl: Controller
    host: object  # netns_fixtures Namespace
    outside: object
    store_url: str

    def sandbox(self, **kwargs: object):
        return self.ctl.new_sandbox(unique("sb"), **kwargs)

    def attach(self, net, sb, **kwargs: object):
        ep = net.create_endpoint(sb.name, **kwargs)
        ep.join(sb)
        return ep


def ip_of(ep) -> str:
    return str(ipaddress.ip_interface(ep.record.address).ip)


@pytest.fixture
def lab(netns, store_url) -> Iterator[Lab]:
    from netns_fixtures.netns import veth

    host = netns("host")
    outside = netns("out")
    veth(host, unique("pto"), outside, "eth0", f"{HOST_OUT}/24", f"{OUTSIDE}/24")
    ctl = Controller(store_url, host_ns=host.path)
    try:
        yield Lab(ctl, host, outside, store_url)
    finally:
        ctl.cleanup_all()
        ctl.close()


def test_two_sandboxes_reach_each_other_and_the_gateway(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.61.0.0/24")
    a, b = lab.sandbox(), lab.sandbox()
    lab.attach(net, a)
    ep_b = lab.attach(net, b)
    assert ping_eventually(a.netns_name, ip_of(ep_b))
    assert ping_eventually(a.netns_name, "10.61.0.1")
    with TcpServer(b.netns_name, "0.0.0.0", 7001):
        assert tcp_hello(a.netns_name, ip_of(ep_b), 7001) == "from 10.61.0.2"


def test_masquerade_shows_the_hosts_address_to_the_far_end(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.62.0.0/24")
    a = lab.sandbox()
    lab.attach(net, a)
    with TcpServer(lab.outside.name, OUTSIDE, 7002):
        assert tcp_hello(a.netns_name, OUTSIDE, 7002) == f"from {HOST_OUT}"


def test_without_masquerade_the_far_end_sees_the_sandbox(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.63.0.0/24",
                              options={"com.docker.network.bridge.enable_ip_masquerade": "false"})
    a = lab.sandbox()
    lab.attach(net, a)
    lab.outside.run(["ip", "route", "add", "10.63.0.0/24", "via", HOST_OUT])
    with TcpServer(lab.outside.name, OUTSIDE, 7003):
        assert tcp_hello(a.netns_name, OUTSIDE, 7003) == "from 10.63.0.2"


def test_icc_off_blocks_sandbox_to_sandbox_but_not_the_gateway(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.64.0.0/24", options={"icc": "false"})
    a, b = lab.sandbox(), lab.sandbox()
    lab.attach(net, a)
    ep_b = lab.attach(net, b)
    assert ping_eventually(a.netns_name, "10.64.0.1")
    assert not ping(a.netns_name, ip_of(ep_b), count=2)
    with TcpServer(b.netns_name, "0.0.0.0", 7004, timeout=6):
        assert tcp_hello(a.netns_name, ip_of(ep_b), 7004, timeout=2) is None


def test_internal_network_cannot_leave(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.65.0.0/24", internal=True)
    a, b = lab.sandbox(), lab.sandbox()
    ep_a = lab.attach(net, a)
    ep_b = lab.attach(net, b)
    assert ping_eventually(a.netns_name, ip_of(ep_b))
    assert a.run(["ip", "route", "show", "default"]).stdout.strip() == ""
    # Even a route added by hand inside the sandbox must not get out.
    a.run(["ip", "route", "add", "default", "via", "10.65.0.1"], check=True)
    lab.outside.run(["ip", "route", "add", "10.65.0.0/24", "via", HOST_OUT])
    assert not ping(a.netns_name, OUTSIDE, count=2)
    assert not ping(lab.outside.name, ip_of(ep_a), count=1)


def test_published_port_is_reachable_from_outside(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.66.0.0/24")
    a = lab.sandbox()
    ports = [{"Proto": 6, "Port": 80, "HostPort": 18080, "HostIP": ""},
             {"Proto": 17, "Port": 53, "HostPort": 5353, "HostIP": ""}]
    ep = lab.attach(net, a, options={OPT_PORTMAP: ports})
    assert ep.operational_info()[OPT_PORTMAP][0]["HostPort"] == 18080
    published = {("tcp", 18080, "10.66.0.2", 80), ("udp", 5353, "10.66.0.2", 53)}
    assert set(dnat_rules(lab.host)) == published
    with TcpServer(a.netns_name, "0.0.0.0", 80):
        assert tcp_hello(lab.outside.name, HOST_OUT, 18080) == f"from {OUTSIDE}"
    ep.leave()  # ports are withdrawn with the endpoint's way out: the rules themselves
    assert dnat_rules(lab.host) == []
    assert "table inet pycnm" in lab.host.run(["nft", "list", "tables"]).stdout  # net stays


HOST_OUT_V6 = "fd00:7::1"
OUTSIDE_V6 = "fd00:7::2"


def published(ep) -> list[tuple[str, int]]:
    return [(b["HostIP"], b["HostPort"]) for b in ep.operational_info()[OPT_PORTMAP]]


def test_every_ipv4_and_every_ipv6_address_publish_one_port_on_both_families(lab: Lab) -> None:
    """Docker writes "every address" of a dual-stack host as two bindings, 0.0.0.0 and ::
    (`-p 0.0.0.0:18081:80 -p [::]:18081:80`): one port, reached over either family."""
    net = lab.ctl.new_network(unique("n"), subnet=["10.79.0.0/24", "fd00:79::/64"], ipv6=True)
    a = lab.sandbox()
    pair = [{"Proto": 6, "Port": 80, "HostPort": 18081, "HostIP": "0.0.0.0"},
            {"Proto": 6, "Port": 80, "HostPort": 18081, "HostIP": "::"}]
    ep = lab.attach(net, a, options={OPT_PORTMAP: pair})
    assert published(ep) == [("0.0.0.0", 18081), ("::", 18081)]
    v6 = str(ipaddress.ip_interface(ep.record.address_v6).ip)
    assert set(dnat_rules(lab.host)) == {("tcp", 18081, ip_of(ep), 80), ("tcp", 18081, v6, 80)}
    route = lab.host.run(["ip", "-j", "route", "get", OUTSIDE], check=True).stdout
    out_link = json.loads(route)[0]["dev"]
    lab.host.run(["ip", "-6", "addr", "add", f"{HOST_OUT_V6}/64", "dev", out_link, "nodad"],
                 check=True)
    lab.outside.run(["ip", "-6", "addr", "add", f"{OUTSIDE_V6}/64", "dev", "eth0", "nodad"],
                    check=True)
    with TcpServer(a.netns_name, "::", 80, connections=2):  # answers both families
        over_v4 = tcp_hello(lab.outside.name, HOST_OUT, 18081)
        over_v6 = tcp_hello(lab.outside.name, HOST_OUT_V6, 18081)
    assert over_v4 is not None and over_v4.endswith(OUTSIDE), over_v4
    assert over_v6 == f"from {OUTSIDE_V6}"


def test_on_an_ipv4_network_the_ipv6_half_of_every_address_is_left_out(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.80.0.0/24")
    a, b = lab.sandbox(), lab.sandbox()
    pair = [{"Proto": 6, "Port": 80, "HostPort": 18082, "HostIP": "0.0.0.0"},
            {"Proto": 6, "Port": 80, "HostPort": 18082, "HostIP": "::"}]
    ep = lab.attach(net, a, options={OPT_PORTMAP: pair})
    assert published(ep) == [("0.0.0.0", 18082)]
    assert dnat_rules(lab.host) == [("tcp", 18082, ip_of(ep), 80)]
    with TcpServer(a.netns_name, "0.0.0.0", 80):
        assert tcp_hello(lab.outside.name, HOST_OUT, 18082) == f"from {OUTSIDE}"
    # Every IPv6 address alone: there is nothing to forward it to; nothing is published.
    lone = [{"Proto": 6, "Port": 80, "HostPort": 18083, "HostIP": "::"}]
    with pytest.raises(InvalidOption, match="HostIP :: is IPv6 but endpoint .* has no IPv6"):
        lab.attach(net, b, options={OPT_PORTMAP: lone})
    assert dnat_rules(lab.host) == [("tcp", 18082, ip_of(ep), 80)]


def dnat_rules(host) -> list[tuple[str, int, str, int]]:
    """(proto, host port, address, port) of every DNAT rule in pycnm's prerouting chain."""
    listed = json.loads(host.run(["nft", "-j", "list", "chain", "inet", "pycnm",
                                  "prerouting"]).stdout)["nftables"]
    found = []
    for item in listed:
        exprs = item.get("rule", {}).get("expr", [])
        ports = [(e["match"]["left"]["payload"]["protocol"], e["match"]["right"])
                 for e in exprs if "payload" in e.get("match", {}).get("left", {})
                 and e["match"]["left"]["payload"].get("field") == "dport"]
        targets = [(e["dnat"]["addr"], e["dnat"]["port"]) for e in exprs if "dnat" in e]
        found += [(proto, dport, addr, port) for (proto, dport) in ports
                  for (addr, port) in targets]
    return found


def test_sandbox_on_two_networks_does_not_route_between_them(lab: Lab) -> None:
    net_a = lab.ctl.new_network(unique("n"), subnet="10.67.1.0/24")
    net_b = lab.ctl.new_network(unique("n"), subnet="10.67.2.0/24")
    multi, left, right = lab.sandbox(), lab.sandbox(), lab.sandbox()
    ep_ma = lab.attach(net_a, multi)
    lab.attach(net_b, multi)
    lab.attach(net_a, left)
    ep_r = lab.attach(net_b, right)
    assert [i for i in multi.inspect()["Interfaces"]] == ["eth0", "eth1"]
    assert ping_eventually(multi.netns_name, ip_of(ep_r))
    # Through the host: networks are isolated from each other.
    assert not ping(left.netns_name, ip_of(ep_r), count=2)
    # Through the two-legged sandbox: it does not forward.
    left.run(["ip", "route", "add", "10.67.2.0/24", "via", ip_of(ep_ma)], check=True)
    right.run(["ip", "route", "add", "10.67.1.0/24", "via", "10.67.2.2"], check=True)
    assert not ping(left.netns_name, ip_of(ep_r), count=2)


def test_a_router_sandbox_does_route_when_asked(lab: Lab) -> None:
    net_a = lab.ctl.new_network(unique("n"), subnet="10.68.1.0/24")
    net_b = lab.ctl.new_network(unique("n"), subnet="10.68.2.0/24")
    router = lab.sandbox(ip_forward=True)
    left, right = lab.sandbox(), lab.sandbox()
    ep_ra = lab.attach(net_a, router)
    ep_rb = lab.attach(net_b, router)
    lab.attach(net_a, left)
    ep_r = lab.attach(net_b, right)
    left.run(["ip", "route", "add", "10.68.2.0/24", "via", ip_of(ep_ra)], check=True)
    right.run(["ip", "route", "add", "10.68.1.0/24", "via", ip_of(ep_rb)], check=True)
    assert ping_eventually(left.netns_name, ip_of(ep_r))


def test_dual_stack_and_mtu(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet=["10.69.0.0/24", "fd00:69::/64"], ipv6=True,
                              options={"mtu": "1400"})
    a, b = lab.sandbox(), lab.sandbox()
    lab.attach(net, a)
    ep_b = lab.attach(net, b)
    v6 = str(ipaddress.ip_interface(ep_b.record.address_v6).ip)
    assert v6.startswith("fd00:69::")
    assert ping_eventually(a.netns_name, v6)
    assert ping_eventually(a.netns_name, "fd00:69::1")
    assert "mtu 1400" in a.run(["ip", "link", "show", "eth0"]).stdout


def test_static_address_and_mac(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.70.0.0/24", ip_range="10.70.0.128/25")
    a, b = lab.sandbox(), lab.sandbox()
    ep_a = lab.attach(net, a)
    ep_b = lab.attach(net, b, ip="10.70.0.9", mac="02:42:aa:bb:cc:dd")
    assert ip_of(ep_a) == "10.70.0.128"
    assert ip_of(ep_b) == "10.70.0.9"
    assert "02:42:aa:bb:cc:dd" in b.run(["ip", "link", "show", "eth0"]).stdout
    assert ping_eventually(a.netns_name, "10.70.0.9")


def test_second_controller_sees_and_deletes_what_the_first_made(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.71.0.0/24")
    a, b = lab.sandbox(), lab.sandbox()
    lab.attach(net, a)
    ep_b = lab.attach(net, b)
    with Controller(lab.store_url, host_ns=lab.host.path) as other:
        assert {n.name for n in other.networks()} == {net.name}
        assert {s.name for s in other.sandboxes()} == {a.name, b.name}
        assert other.sandbox(a.name).inspect()["Interfaces"]["eth0"]["IPv4Address"] == \
            "10.71.0.2/24"
        assert ping_eventually(a.netns_name, ip_of(ep_b))
        for sb in other.sandboxes():
            sb.delete()
        other.network(net.name).delete()
    assert lab.ctl.networks() == [] and lab.ctl.sandboxes() == []
    links = lab.host.run(["ip", "-o", "link"]).stdout
    assert "pcbr-" not in links and "pcv-" not in links
    assert lab.host.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_restart_reconciles_lost_kernel_state(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.72.0.0/24")
    a, b = lab.sandbox(), lab.sandbox()
    lab.attach(net, a)
    ep_b = lab.attach(net, b)
    bridge = net.inspect()["Options"].get("com.docker.network.bridge.name") or \
        f"pcbr-{net.id[:10]}"
    lab.host.run(["ip", "link", "del", bridge], check=True)
    lab.host.run(["nft", "delete", "table", "inet", "pycnm"], check=True)
    assert not ping(a.netns_name, ip_of(ep_b))
    with Controller(lab.store_url, host_ns=lab.host.path) as restarted:
        assert restarted.last_reconcile == []
    assert ping_eventually(a.netns_name, ip_of(ep_b))
    assert "masquerade" in lab.host.run(["nft", "list", "table", "inet", "pycnm"]).stdout


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(10)
print("ready", flush=True)
data, peer = s.recvfrom(100)
s.sendto(b"echo:" + data, peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
for _ in range(5):
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(100)[0].decode())
        break
    except socket.timeout:
        continue
"""


def test_published_udp_port_is_reachable_from_outside(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet="10.73.0.0/24")
    a = lab.sandbox()
    lab.attach(net, a, options={OPT_PORTMAP: [{"Proto": 17, "Port": 53, "HostPort": 5353}]})
    proc = subprocess.Popen(
        ["ip", "netns", "exec", a.netns_name, "python3", "-c", UDP_ECHO, "53"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        answer = lab.outside.run(["python3", "-c", UDP_ASK, HOST_OUT, "5353"], timeout=20)
        assert answer.stdout.strip() == "echo:ping"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_sandbox_adopts_an_existing_namespace(lab: Lab, netns) -> None:
    existing = netns("adopted")
    net = lab.ctl.new_network(unique("n"), subnet="10.74.0.0/24")
    adopted = lab.ctl.new_sandbox(unique("sb"), netns_path=existing.path)
    other = lab.sandbox()
    lab.attach(net, adopted)
    ep = lab.attach(net, other)
    assert existing.ping(ip_of(ep))
    adopted.delete()
    reaper.flush()  # link deletions run in the background
    # pycnm never deletes a namespace it did not make; its interface is gone from it.
    assert os.path.exists(existing.path)
    assert "eth0" not in existing.links()


def test_attaching_to_an_ipv4_network_floods_no_ipv6_to_the_other_sandboxes(lab: Lab) -> None:
    """An interface that comes up with an IPv6 link-local address sends DAD, MLD and
    router solicitations, which the bridge floods to every port: N attaches would cost
    the kernel O(N^2). On an IPv4-only network neither end of the veth gets one, so a
    sandbox already there hears nothing from newcomers (a dual-stack one keeps its own)."""
    import threading
    import time

    from scapy.arch.linux import L2ListenSocket
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import AsyncSniffer

    from cnm.osl.netns import in_netns

    net = lab.ctl.new_network(unique("n"), subnet="10.75.0.0/24")
    listener = lab.sandbox()
    lab.attach(net, listener)
    bridge = net.inspect()["Options"]["com.docker.network.bridge.name"]
    bridge_mac = json.loads(lab.host.run(["ip", "-j", "link", "show", bridge]).stdout)[0]["address"]
    sock = in_netns(listener.netns_path, lambda: L2ListenSocket(iface="eth0", promisc=False))
    ready = threading.Event()
    # The bridge (the gateway) speaks IPv6 for itself, once per network: not counted.
    sniffer = AsyncSniffer(opened_socket=sock, started_callback=ready.set,
                           lfilter=lambda p: p.haslayer(IPv6) and p[Ether].src != bridge_mac)
    sniffer.start()
    try:
        assert ready.wait(5)
        newcomers = [lab.sandbox() for _ in range(3)]
        endpoints = [lab.attach(net, sb) for sb in newcomers]
        # DAD takes a second, a router solicitation follows it: wait past both.
        time.sleep(2.5)
        assert ping_eventually(listener.netns_name, ip_of(endpoints[-1]))
    finally:
        sniffer.stop()
        sock.close()
    heard = [p.summary() for p in sniffer.results or []]
    assert heard == [], f"IPv6 flooded to a sandbox on an IPv4-only network: {heard}"
    assert newcomers[0].run(["ip", "-6", "-o", "addr", "show", "dev", "eth0"]).stdout == ""
    host_end = endpoints[0].operational_info()["HostInterface"]
    assert lab.host.run(["ip", "-6", "-o", "addr", "show", "dev", host_end]).stdout == ""


def test_a_dual_stack_sandbox_keeps_its_ipv6_link_local_address(lab: Lab) -> None:
    net = lab.ctl.new_network(unique("n"), subnet=["10.76.0.0/24", "fd00:76::/64"], ipv6=True)
    a = lab.sandbox()
    lab.attach(net, a)
    out = a.run(["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).stdout
    assert "fe80::" in out


def test_the_gateways_mac_does_not_change_as_sandboxes_come_and_go(lab: Lab) -> None:
    """A Linux bridge takes the lowest MAC of its ports unless it has one of its own; then
    every attach or detach could change the gateway's MAC under the sandboxes' ARP caches."""
    net = lab.ctl.new_network(unique("n"), subnet="10.77.0.0/24")
    bridge = net.inspect()["Options"]["com.docker.network.bridge.name"]
    before = json.loads(lab.host.run(["ip", "-j", "link", "show", bridge]).stdout)[0]["address"]
    attached = [lab.attach(net, lab.sandbox()) for _ in range(3)]
    attached[0].leave()
    reaper.flush()
    after = json.loads(lab.host.run(["ip", "-j", "link", "show", bridge]).stdout)[0]["address"]
    assert after == before


def test_a_process_already_running_in_the_sandbox_sees_its_hosts_file_change(lab: Lab) -> None:
    """``ip netns exec`` bind-mounts /etc/netns/NAME/hosts over /etc/hosts: the file must be
    rewritten in place, or a process started before a join keeps the old one forever."""
    first = lab.ctl.new_network(unique("n"), subnet="10.78.0.0/24")
    second = lab.ctl.new_network(unique("n"), subnet="10.79.0.0/24")
    sb = lab.sandbox()
    lab.attach(first, sb)
    reader = subprocess.Popen(
        ["ip", "netns", "exec", sb.netns_name, "sh", "-c",
         "echo ready; read _; cat /etc/hosts"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "ready\n"
        ep = lab.attach(second, sb)  # while the reader runs with /etc/hosts mounted
        out, _ = reader.communicate("go\n", timeout=20)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(timeout=10)
    assert f"{ip_of(ep)}\t{sb.record.hostname}" in out


def test_a_second_store_cannot_overwrite_the_first_ones_firewall(lab: Lab, tmp_path) -> None:
    """The table is rendered whole from one store: pycnm on another store, in the same
    namespace, is refused (and makes nothing) until the first one's networks are gone."""
    from cnm.errors import Conflict

    first = lab.ctl.new_network(unique("n"), subnet="10.81.0.0/24")
    other = Controller(f"sqlite:///{tmp_path}/other.db", host_ns=lab.host.path)
    try:
        links_before = lab.host.links()
        with pytest.raises(Conflict, match="holds the rules of pycnm's store sqlite://"):
            other.new_network(unique("n"), subnet="10.82.0.0/24")
        assert lab.host.links() == links_before
        assert other.networks() == []
        rules = lab.host.run(["nft", "list", "table", "inet", "pycnm"]).stdout
        assert "10.81.0.0/24" in rules and "10.82.0.0/24" not in rules
        first.delete()
        mine = other.new_network(unique("n"), subnet="10.82.0.0/24")
        rules = lab.host.run(["nft", "list", "table", "inet", "pycnm"]).stdout
        assert "10.82.0.0/24" in rules and "10.81.0.0/24" not in rules
        mine.delete()
    finally:
        other.cleanup_all()
        other.close()
