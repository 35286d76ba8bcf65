"""The embedded resolver at 127.0.0.11, with real clients (Debian's dig, busybox nslookup)
inside real sandboxes, a real upstream (dnsmasq in a namespace of the test's own) and a
real ``pycnm agent`` process serving the emulated host. See dns_helpers for the picture."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import textwrap
from collections.abc import Iterator

import dns.reversename
import pytest

from netns_fixtures.netns import Namespace
from tests.integration.bridge_helpers import unique
from tests.integration.dns_helpers import (
    FORWARDED_ADDRESS,
    FORWARDED_NAME,
    HOST_ADDRESS,
    UPSTREAM_ADDRESS,
    DnsHost,
    dig,
    make_dns_host,
    nslookup,
    wait_for,
)

pytestmark = pytest.mark.root


@pytest.fixture
def lab(host, netns, store_url, tmp_path) -> Iterator[DnsHost]:
    dns_host = make_dns_host(host("dnshost"), netns("upstream"), store_url, str(tmp_path))
    try:
        dns_host.start_dnsmasq()
        yield dns_host
    finally:
        dns_host.close()


def address_of(lab: DnsHost, sandbox: str, family: int = 4) -> str:
    info = json.loads(lab.pycnm("sandbox", "inspect", sandbox).stdout)[0]
    key = "IPv4Address" if family == 4 else "IPv6Address"
    return info["Interfaces"]["eth0"][key].split("/")[0]


def network(lab: DnsHost, subnet: str, *flags: str) -> str:
    name = unique("net")
    lab.pycnm("network", "create", name, "--subnet", subnet, *flags)
    return name


# --- names --------------------------------------------------------------------------------


def test_every_name_form_resolves_from_dig_and_busybox(lab: DnsHost) -> None:
    lab.start_agent()
    web = network(lab, "10.61.0.0/24", "--ipv6", "--subnet", "fd61::/64")
    api, client = unique("api"), unique("cli")
    lab.sandbox(api, web, alias=["db", "Cache"], endpoint=f"{api}-ep")
    inside = lab.sandbox(client, web)
    resolv = lab.resolv_conf(client)
    assert "nameserver 127.0.0.11" in resolv and "options ndots:0" in resolv
    assert resolv.count("nameserver") == 1
    ip, ip6 = address_of(lab, api), address_of(lab, api, 6)
    forms = [api, f"{api}-ep", "db", "cache", "CACHE", f"{api}.{web}",
             f"{api.upper()}.{web.upper()}", f"db.{web}", f"{api}-ep.{web}"]
    for name in forms:
        got = dig(inside, name)
        assert (got.status, got.addresses) == ("NOERROR", [ip]), (name, got)
    assert dig(inside, api, "AAAA").addresses == [ip6]
    assert dig(inside, "db", "MX").status == "NOERROR"  # the name is ours: no answer, no error
    assert sorted(nslookup(inside, "db")) == sorted([ip, ip6])
    assert nslookup(inside, f"cache.{web}")[:1] in ([ip], [ip6])
    ptr = dig(inside, dns.reversename.from_address(ip).to_text(), "PTR")
    assert [a.split()[-1] for a in ptr.answers] == [f"{api}.{web}."]
    ptr6 = dig(inside, dns.reversename.from_address(ip6).to_text(), "PTR")
    assert [a.split()[-1] for a in ptr6.answers] == [f"{api}.{web}."]
    assert dig(f"pcsb-{api}", client).addresses == [address_of(lab, client)]  # both ways
    assert dig(inside, api, "+tcp").addresses == [ip]  # TCP too


def test_round_robin_over_three_endpoints(lab: DnsHost) -> None:
    lab.start_agent()
    web = network(lab, "10.62.0.0/24")
    backends = [unique("be") for _ in range(3)]
    for name in backends:
        lab.sandbox(name, web, alias=["pool"])
    client = lab.sandbox(unique("cli"), web)
    expected = sorted(address_of(lab, name) for name in backends)
    orders = []
    for _ in range(30):
        got = dig(client, "pool")
        assert sorted(got.addresses) == expected
        orders.append(tuple(got.addresses))
    assert {order[0] for order in orders} == set(expected)  # each one comes first
    assert len(set(orders)) >= 4
    assert sorted(nslookup(client, "POOL")) == expected


def test_isolation_between_networks_and_names_gone_on_detach(lab: DnsHost) -> None:
    lab.start_agent()
    front, back = network(lab, "10.64.0.0/24"), network(lab, "10.65.0.0/24")
    only_front, only_back, both = unique("f"), unique("b"), unique("fb")
    front_ns = lab.sandbox(only_front, front)
    lab.sandbox(only_back, back)
    both_ns = lab.sandbox(both, front, back)
    for name in (only_back, f"{only_back}.{back}", f"{both}.{back}"):
        got = dig(front_ns, name)
        assert got.status == "NXDOMAIN" and not got.answers, (name, got)
    assert lab.upstream_queries(only_back)  # not ours: it went upstream, which knew nothing
    assert dig(front_ns, both).addresses == [address_of(lab, both)]
    assert dig(both_ns, only_back).status == "NOERROR"
    assert dig(both_ns, only_front).status == "NOERROR"
    back_address = dig(both_ns, f"{both}.{back}").addresses
    assert back_address and ipaddress.ip_address(back_address[0]) in \
        ipaddress.ip_network("10.65.0.0/24")
    lab.pycnm("detach", front, both)  # returns once the resolver has applied it
    assert dig(front_ns, both).status == "NXDOMAIN"
    lab.pycnm("sandbox", "rm", only_back)
    assert dig(both_ns, only_back).status == "NXDOMAIN"


# --- forwarding ---------------------------------------------------------------------------


def test_other_names_are_forwarded_from_the_host_over_udp_and_tcp(lab: DnsHost) -> None:
    lab.start_agent()
    web = network(lab, "10.66.0.0/24")
    client = lab.sandbox(unique("cli"), web)
    got = dig(client, FORWARDED_NAME)
    assert (got.status, got.addresses) == ("NOERROR", [FORWARDED_ADDRESS])
    # Dialled from the host's namespace (its address), not from the sandbox.
    assert set(lab.upstream_queries(FORWARDED_NAME)) == {HOST_ADDRESS}
    assert dig(client, FORWARDED_NAME, "A", "+tcp").addresses == [FORWARDED_ADDRESS]
    assert dig(client, f"nowhere-{unique()}.test").status == "NXDOMAIN"
    # Too big for a plain UDP answer: truncated as the upstream says, whole over TCP.
    small = dig(client, "big.example.test", "TXT", "+noedns", "+ignore")
    assert "tc" in small.flags
    whole = dig(client, "big.example.test", "TXT", "+tcp")
    assert whole.status == "NOERROR" and whole.answers[0].count('"') == 8
    assert busybox_forwarded(client) == [FORWARDED_ADDRESS]


def busybox_forwarded(netns: str) -> list[str]:
    return [a for a in nslookup(netns, FORWARDED_NAME) if "." in a]


def test_a_dead_upstream_gives_servfail_within_the_timeout(lab: DnsHost) -> None:
    lab.set_host_servers("198.18.53.3", "198.18.53.4")  # nobody there
    lab.start_agent()  # --dns-timeout 2: both servers together
    client = lab.sandbox(unique("cli"), network(lab, "10.67.0.0/24"))
    got = dig(client, FORWARDED_NAME, timeout=6)
    assert got.status == "SERVFAIL" and got.seconds < 2 + 1.5, got
    # A server that answers, after a dead one: the answer comes from it.
    lab.set_host_servers("198.18.53.3", UPSTREAM_ADDRESS)
    wait_for(lambda: dig(client, FORWARDED_NAME, timeout=6).addresses == [FORWARDED_ADDRESS],
             15, "the resolver to read the new servers and fail over")
    lab.dnsmasq.terminate()  # type: ignore[union-attr]
    lab.dnsmasq.wait(timeout=10)  # type: ignore[union-attr]
    got = dig(client, "gone.example.test", timeout=6)
    assert got.status == "SERVFAIL" and got.seconds < 2 + 1.5, got


def test_internal_only_sandboxes_forward_nothing(lab: DnsHost) -> None:
    lab.start_agent()
    inner = network(lab, "10.68.0.0/24", "--internal")
    peer, client = unique("peer"), unique("cli")
    lab.sandbox(peer, inner, alias=["store"])
    inside = lab.sandbox(client, inner)
    secret = f"{unique('leak')}.example.test"
    got = dig(inside, secret)
    assert got.status == "SERVFAIL" and got.seconds < 1.5
    assert dig(inside, secret, "A", "+tcp").status == "SERVFAIL"
    assert dig(inside, "store").addresses == [address_of(lab, peer)]  # local names still
    assert lab.upstream_queries(secret) == []


def test_dns_servers_of_a_sandbox_are_dialled_from_inside_it(lab: DnsHost) -> None:
    lab.start_agent()
    web = network(lab, "10.69.0.0/24")
    server, client, peer = unique("dnsbox"), unique("cli"), unique("peer")
    server_ns = lab.sandbox(server, web, ip="10.69.0.53")
    lab.sandbox(peer, web)
    log = f"{lab.logdir}/inner-dnsmasq.log"
    inner = Namespace(server_ns, create=False)
    proc = inner.popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                        "--bind-interfaces", "--listen-address=10.69.0.53",
                        "--address=/inside.test/203.0.113.9", "--address=/#/",
                        "--log-queries", f"--log-facility={log}", "--pid-file=",
                        "--user=root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _read(log).count("started") > 0, 10, "the sandbox's dnsmasq")
        lab.pycnm("sandbox", "create", client, "--dns", "10.69.0.53")
        lab.pycnm("attach", web, client)
        inside = f"pcsb-{client}"
        assert "nameserver 127.0.0.11" in lab.resolv_conf(client)
        assert dig(inside, "www.inside.test").addresses == ["203.0.113.9"]
        assert f"from {address_of(lab, client)}" in _read(log)  # the sandbox's own address
        assert dig(inside, peer).addresses == [address_of(lab, peer)]  # local names first
        assert lab.upstream_queries("www.inside.test") == []  # never the host's server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


# --- the long-running process: absent, started, killed, stopped --------------------------


def dns_table(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "ip",
                           "pycnm-dns"], capture_output=True, text=True, timeout=30).stdout


def test_agent_start_migrates_restart_keeps_names_stop_gives_files_back(lab: DnsHost) -> None:
    web = network(lab, "10.70.0.0/24")
    first, second = unique("one"), unique("two")
    first_ns = lab.sandbox(first, web, alias=["early"])
    lab.sandbox(second, web)
    # No long-running process: today's files, no resolver, no NAT table.
    assert "127.0.0.11" not in lab.resolv_conf(first)
    assert dns_table(first_ns) == ""
    with open(f"/etc/netns/{first_ns}/hosts") as handle:
        assert first in handle.read()
    lab.start_agent()  # takes the existing sandboxes over
    assert "nameserver 127.0.0.11" in lab.resolv_conf(first)
    assert dig(first_ns, "early").addresses == [address_of(lab, first)]
    assert dig(first_ns, second).addresses == [address_of(lab, second)]
    table = dns_table(first_ns)
    assert "dnat to 127.0.0.11:" in table and "snat to :53" in table
    # Killed: nothing answers until it is back; back, every name answers, same ports.
    lab.stop_agent(signal.SIGKILL)
    assert dig(first_ns, "early", timeout=1).status == "TIMEOUT"
    lab.start_agent()
    assert dig(first_ns, "early").addresses == [address_of(lab, first)]
    assert dig(f"pcsb-{second}", first).addresses == [address_of(lab, first)]
    assert dns_table(first_ns) == table
    third = unique("three")
    lab.sandbox(third, web)  # made while it runs: served at once
    assert dig(f"pcsb-{third}", "early").addresses == [address_of(lab, first)]
    # Stopped: every sandbox gets its plain files back.
    assert lab.stop_agent(signal.SIGTERM) == 0
    for name in (first, second, third):
        assert "127.0.0.11" not in lab.resolv_conf(name)
        assert dns_table(f"pcsb-{name}") == ""


def test_sandbox_modes_and_names(lab: DnsHost) -> None:
    lab.start_agent()
    web = network(lab, "10.71.0.0/24")
    owner, sharer, other = unique("own"), unique("side"), unique("oth")
    owner_ns = lab.sandbox(owner, web)
    lab.pycnm("sandbox", "create", sharer, "--mode", f"container:{owner}")
    other_ns = lab.sandbox(other, web)
    lab.pycnm("sandbox", "create", unique("none"), "--mode", "none")
    ip = address_of(lab, owner)
    assert dig(other_ns, sharer).addresses == [ip]  # a sharer's name is the owner's address
    assert dig(owner_ns, other).addresses == [address_of(lab, other)]
    # The sharer runs in the owner's namespace with the owner's files and resolver.
    out = lab.pycnm("sandbox", "exec", sharer, "--", "dig", "+short", other).stdout
    assert out.split() == [address_of(lab, other)]
    lone = [n for n in json.loads(lab.pycnm("--json", "sandbox", "ls").stdout)
            if n["Mode"] == "none"][0]["Name"]
    assert "127.0.0.11" not in lab.resolv_conf(lone)  # nothing to resolve: not served


def test_bad_aliases_are_refused_with_one_sentence(lab: DnsHost) -> None:
    web = network(lab, "10.72.0.0/24")
    name = unique("s")
    lab.pycnm("sandbox", "create", name)
    for bad in ("bad_name", "-lead", "a..b", "x" * 64, "db\nnameserver 1.2.3.4"):
        result = lab.pycnm("attach", web, name, f"--alias={bad}", check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "alias" in lines[0], lines
    assert json.loads(lab.pycnm("--json", "endpoint", "ls").stdout) == []


# --- robustness ---------------------------------------------------------------------------

ABUSE = textwrap.dedent("""
    import random, socket, struct, sys, threading, time
    random.seed(11)
    target = ("127.0.0.11", 53)

    def query(name, qid=0x4242, rdtype=1):
        labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
        return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\\0" + \\
            struct.pack(">HH", rdtype, 1)

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    good = query(sys.argv[1])
    junk = [bytes(random.getrandbits(8) for _ in range(random.randrange(0, 600)))
            for _ in range(300)]
    junk += [good[:n] for n in range(len(good))]                        # truncated
    junk += [good[:12] + b"\\x3f" + b"a" * 63 + b"\\x40" + b"b" * 64 + b"\\0\\0\\1\\0\\1"]
    junk += [good[:12] + b"\\xc0\\x0c\\0\\1\\0\\1"]                          # pointer loop
    junk += [good[:12] + (b"\\x3f" + b"c" * 63) * 5 + b"\\0\\0\\1\\0\\1"]    # 320 bytes
    junk += [bytes([good[0], good[1], 0x81]) + good[3:]]                 # a response
    junk += [b"\\xff" * 65000]
    for packet in junk:
        s.sendto(packet, target)
    for _ in range(400):
        try:
            s.recv(65535)
        except socket.timeout:
            break
    for _ in range(5):
        t = socket.create_connection(target, timeout=2)
        t.sendall(random.choice([b"\\x00\\x40" + b"z" * 10, b"\\xff\\xff" + good, b"\\x00"]))
        t.close()

    # A burst: 10,000 queries sent as fast as one socket can, answers counted.
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    b.connect(target)
    got = set()
    done = threading.Event()

    def receive():
        b.settimeout(5)
        while len(got) < 10000:
            try:
                data = b.recv(4096)
            except socket.timeout:
                break
            got.add(data[:2])
        done.set()

    reader = threading.Thread(target=receive)
    reader.start()
    for i in range(10000):
        b.send(struct.pack(">H", i) + good[2:])
    reader.join(30)
    print(len(got))
""")


def test_malformed_truncated_huge_packets_and_a_burst_leave_it_answering(
        lab: DnsHost) -> None:
    lab.start_agent()
    web = network(lab, "10.73.0.0/24")
    target, client = unique("tgt"), unique("cli")
    lab.sandbox(target, web)
    inside = lab.sandbox(client, web)
    run = subprocess.run(["ip", "netns", "exec", inside, "python3", "-c", ABUSE, target],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answered = int(run.stdout.split()[-1])
    assert answered >= 9900, f"only {answered} of 10,000 burst queries answered"
    assert dig(inside, target).addresses == [address_of(lab, target)]
    assert dig(inside, FORWARDED_NAME).addresses == [FORWARDED_ADDRESS]
    assert lab.agent is not None and lab.agent.poll() is None
    assert "Traceback" not in lab.output()


def test_names_from_another_feature_resolve_through_a_source(lab: DnsHost) -> None:
    """What a load-balanced service will do: add names (a virtual IP) from records of its
    own; a change under its prefix updates every sandbox's answers."""
    from cnm.controller import Controller
    from cnm.dns.registry import NameEntry, Records
    from cnm.dns.service import DnsService

    web = network(lab, "10.74.0.0/24")
    client = lab.sandbox(unique("cli"), web)

    def services(local, records: Records) -> list[NameEntry]:
        nid = next(n["id"] for n in records.networks if n["name"] == web)
        return [NameEntry(nid, (e.key.rsplit("/", 1)[1], f"tasks.{e.key.rsplit('/', 1)[1]}"),
                          (ipaddress.ip_address(e.value["vip"]),))
                for e in local.list("services/")]

    with Controller(lab.store_url, host_ns=lab.host.path, reconcile=False) as ctl:
        service = DnsService(ctl, {"dns_timeout": 2})
        service.add_source("services/", services)
        assert service.start()
        try:
            wait_for(service.connected.is_set, 30, "the resolver")
            assert dig(client, "demo").status == "NXDOMAIN"
            ctl.local.put("services/demo", {"vip": "10.74.0.200"})
            wait_for(lambda: dig(client, "demo").addresses == ["10.74.0.200"], 10,
                     "the service's name")
            assert dig(client, f"tasks.demo.{web}").addresses == ["10.74.0.200"]
            ctl.local.delete("services/demo")
            wait_for(lambda: dig(client, "demo").status == "NXDOMAIN", 10, "it to go")
        finally:
            service.stop()
    assert "127.0.0.11" not in lab.resolv_conf(client.removeprefix("pcsb-"))
