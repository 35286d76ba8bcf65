"""cnm/osl, the only part of pycnm that talks to the kernel, on real namespaces: namespace
files and how they are opened, links, addresses and routes, moving interfaces in and out
of a sandbox, sysctls, the link reaper and nftables tables.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cnm.errors import Conflict, InvalidOption, KernelError, NotFound
from cnm.osl import links, nft, plumbing, reaper
from cnm.osl import nftjson as j
from cnm.osl.netns import (
    create_named_netns,
    delete_named_netns,
    in_netns,
    iproute,
    list_named_netns,
    named_netns_path,
    netns_exists,
    netns_fd,
    open_netns,
    read_sysctl,
    write_sysctl,
)
from netns_fixtures.netns import Namespace, unique_name

pytestmark = pytest.mark.root

Factory = Callable[..., Namespace]


def inode(path: str) -> int:
    return os.stat(path).st_ino


# --- namespace files ------------------------------------------------------------------------


def test_only_network_namespace_files_are_opened(netns: Factory, tmp_path: Path) -> None:
    ns = netns("a")
    fd = open_netns(ns.path)
    try:
        assert os.fstat(fd).st_ino == inode(ns.path)
    finally:
        os.close(fd)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "file").write_text("")
    done = threading.Event()

    def refuse_all() -> None:
        for path in (str(fifo), str(tmp_path / "file"), str(tmp_path), "/dev/null",
                     "/proc/self/ns/mnt", "/proc/self/ns/uts", str(tmp_path / "none"),
                     "a\0b"):
            with pytest.raises(NotFound):
                open_netns(path)
            assert not netns_exists(path)
        done.set()

    worker = threading.Thread(target=refuse_all, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # opened the FIFO: let it go, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("open_netns blocked on a FIFO")
    assert done.is_set()
    assert netns_exists(ns.path) and netns_exists("/proc/self/ns/net")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/etc", "../x", "x\n", "x\0"])
def test_a_namespace_name_is_never_a_path(name: str) -> None:
    with pytest.raises(InvalidOption):
        named_netns_path(name)


def test_named_namespaces_are_made_once_and_removed_idempotently() -> None:
    name = unique_name()
    try:
        path = create_named_netns(name, loopback_up=True, forwarding=True)
        assert path == named_netns_path(name) and name in list_named_netns()
        assert netns_exists(path)
        assert read_sysctl(path, "net/ipv4/ip_forward") == "1"
        with iproute(path) as ipr:
            assert ipr.link("get", index=1)[0]["flags"] & 1  # lo up
        with pytest.raises(Conflict):
            create_named_netns(name)
    finally:
        delete_named_netns(name)
    assert name not in list_named_netns() and not os.path.exists(named_netns_path(name))
    delete_named_netns(name)  # gone is success


def test_in_netns_runs_the_job_there_and_leaves_the_caller_where_it_was(
        netns: Factory) -> None:
    ns = netns("a")
    here = inode("/proc/thread-self/ns/net")
    assert in_netns(ns.path, lambda: inode("/proc/thread-self/ns/net")) == inode(ns.path)
    assert inode("/proc/thread-self/ns/net") == here
    assert in_netns(None, lambda: 42) == 42
    with pytest.raises(NotFound):
        in_netns(ns.path + "-none", lambda: None)
    with pytest.raises(ZeroDivisionError):  # the job's own error comes back as it is
        in_netns(ns.path, lambda: 1 // 0)


def test_sysctls_are_per_namespace(netns: Factory) -> None:
    a, b = netns("a"), netns("b")
    write_sysctl(a.path, "net/ipv4/ip_forward", "1")
    write_sysctl(b.path, "net/ipv4/ip_forward", "0")
    assert (read_sysctl(a.path, "net/ipv4/ip_forward"),
            read_sysctl(b.path, "net/ipv4/ip_forward")) == ("1", "0")
    plumbing.set_forwarding(b.path, True)
    assert read_sysctl(b.path, "net/ipv6/conf/all/forwarding") == "1"
    with pytest.raises(KernelError) as caught:
        write_sysctl(a.path, "net/ipv4/no_such_key", "1")
    assert "no_such_key" in str(caught.value)


# --- links, addresses, routes ---------------------------------------------------------------


def test_a_bridge_is_made_once_and_anything_else_by_its_name_is_a_conflict(
        netns: Factory) -> None:
    ns = netns("a")
    with iproute(ns.path) as ipr:
        first = links.ensure_bridge(ipr, "pctbr0", mtu=1400)
        assert links.ensure_bridge(ipr, "pctbr0") == first
        info = links.link_info(ipr, "pctbr0")
        assert info is not None
        assert (info["kind"], info["mtu"], info["up"]) == ("bridge", 1400, True)
        assert int(info["mac"].split(":")[0], 16) & 0x03 == 0x02  # local, unicast
        links.create_veth(ipr, "pctv0", "pctp0")
        with pytest.raises(Conflict):
            links.ensure_bridge(ipr, "pctv0")
        assert links.link_info(ipr, "pctnone") is None and links.link_index(ipr, "x") is None
        with pytest.raises(NotFound):
            links.require_index(ipr, "pctnone")


def test_a_veth_born_in_another_namespace_then_moved_and_deleted(netns: Factory) -> None:
    host, sandbox = netns("host"), netns("sandbox")
    with iproute(host.path) as ipr:
        bridge = links.ensure_bridge(ipr, "pctbr1")
        with netns_fd(sandbox.path) as fd:
            links.create_veth(ipr, "pctv1", "eth0", master=bridge,
                              peer_mac="02:42:0a:00:00:07", peer_netns_fd=fd, mtu=1300)
        info = links.link_info(ipr, "pctv1")
        assert info is not None and info["master"] == bridge and info["mtu"] == 1300
        assert links.addresses(ipr, info["index"]) == []  # no IPv6 link-local on a port
    with iproute(sandbox.path) as inside:
        peer = links.link_info(inside, "eth0")
        assert peer is not None and peer["mac"] == "02:42:0a:00:00:07"
    plumbing.unplug(sandbox.path, "eth0", host.path, "pctback")
    assert not plumbing.interface_exists(sandbox.path, "eth0")
    assert plumbing.interface_exists(host.path, "pctback")
    plumbing.move_into(host.path, sandbox.path, "pctback", "eth3")
    assert plumbing.interface_exists(sandbox.path, "eth3")
    with iproute(host.path) as ipr:
        links.delete_link(ipr, "pctv1")  # the peer goes with it, wherever it is
        links.delete_link(ipr, "pctv1")  # gone is success
    assert not plumbing.interface_exists(sandbox.path, "eth3")


def test_moving_onto_a_taken_name_is_a_conflict(netns: Factory) -> None:
    host, sandbox = netns("host"), netns("sandbox")
    with iproute(host.path) as ipr:
        links.create_veth(ipr, "pctv2", "pctp2")
    with iproute(sandbox.path) as inside:
        links.create_veth(inside, "eth0", "pctq2")
    with pytest.raises(Conflict) as caught:
        plumbing.move_into(host.path, sandbox.path, "pctp2", "eth0")
    assert "eth0" in str(caught.value)
    assert plumbing.interface_exists(host.path, "pctp2")  # nothing moved


def test_an_interface_configured_inside_gets_addresses_routes_and_gateways(
        netns: Factory) -> None:
    host, sandbox = netns("host"), netns("sandbox")
    with iproute(host.path) as ipr, netns_fd(sandbox.path) as fd:
        links.create_veth(ipr, "pctv3", "eth0", peer_netns_fd=fd)
    plumbing.configure_inside(
        sandbox.path, "eth0",
        addresses=[ipaddress.ip_interface("10.97.0.2/24"),
                   ipaddress.ip_interface("fd00:97::2/64")],
        routes=[("10.98.0.0/16", 0, "10.97.0.254"), ("10.99.0.0/16", 1, None)],
        gateway=ipaddress.IPv4Address("10.97.0.1"),
        gateway_v6=ipaddress.IPv6Address("fd00:97::1"))
    routes = sandbox.run(["ip", "route"]).stdout
    assert "default via 10.97.0.1 dev eth0" in routes
    assert "10.98.0.0/16 via 10.97.0.254 dev eth0" in routes
    assert "10.99.0.0/16 dev eth0" in routes
    assert "default via fd00:97::1 dev eth0" in sandbox.run(["ip", "-6", "route"]).stdout
    with iproute(sandbox.path) as inside:
        index = links.require_index(inside, "eth0")
        have = set(map(str, links.addresses(inside, index)))
        assert {"10.97.0.2/24", "fd00:97::2/64"} <= have
        # The same address again is success; a prefix pycnm holds is one IPAM avoids.
        links.add_address(inside, index, ipaddress.ip_interface("10.97.0.2/24"))
        assert ipaddress.ip_network("10.97.0.0/24") in links.routed_prefixes(inside)
        assert ipaddress.ip_network("0.0.0.0/0") not in links.routed_prefixes(inside)
        links.replace_route(inside, ipaddress.ip_network("10.98.0.0/16"),
                            gateway=ipaddress.ip_address("10.97.0.253"))
        assert "10.98.0.0/16 via 10.97.0.253" in sandbox.run(["ip", "route"]).stdout
        links.delete_route(inside, ipaddress.ip_network("10.98.0.0/16"))
        links.delete_route(inside, ipaddress.ip_network("10.98.0.0/16"))  # gone: success
        assert "10.98.0.0/16" not in sandbox.run(["ip", "route"]).stdout
    plumbing.set_default_routes(sandbox.path, "eth0", ipaddress.IPv4Address("10.97.0.9"),
                                None)
    assert "default via 10.97.0.9 dev eth0" in sandbox.run(["ip", "route"]).stdout


def test_an_ipv4_only_interface_stays_silent_in_ipv6(netns: Factory) -> None:
    host, sandbox = netns("host"), netns("sandbox")
    with iproute(host.path) as ipr, netns_fd(sandbox.path) as fd:
        links.create_veth(ipr, "pctv4", "eth0", peer_netns_fd=fd)
    plumbing.configure_inside(sandbox.path, "eth0",
                              addresses=[ipaddress.ip_interface("10.97.1.2/24")])
    assert "inet6" not in sandbox.run(["ip", "addr", "show", "eth0"]).stdout


def test_the_reaper_deletes_in_the_background_and_flush_waits(netns: Factory) -> None:
    ns = netns("a")
    with iproute(ns.path) as ipr:
        for i in range(5):
            links.create_veth(ipr, f"pctr{i}", f"pctrp{i}")
    for i in range(5):
        reaper.delete_later(ns.path, f"pctr{i}")
    reaper.delete_later(ns.path, "pctnone")  # absent: nothing queued, no error
    reaper.flush()
    assert "pctr" not in ns.run(["ip", "-o", "link"]).stdout


# --- nftables: our table only ---------------------------------------------------------------

SENTINEL = """table ip hsentinel {
    chain output {
        type filter hook output priority 0; policy accept;
        meta mark 0x00c0ffee counter drop
    }
}
"""


def test_pycnm_loads_and_removes_only_its_own_table(netns: Factory) -> None:
    ns = netns("a")
    ns.run(["nft", "-f", "-"], input=SENTINEL)
    sentinel = ns.run(["nft", "list", "table", "ip", "hsentinel"]).stdout
    chains = [j.Chain("prerouting", j.nat_hook("prerouting"), [
        j.rule(j.match_addr("daddr", ipaddress.ip_address("198.18.5.1")),
               j.match_port("tcp", "dport", 8080),
               j.dnat(ipaddress.ip_address("10.97.2.2"), 80))])]
    nft.replace_table(ns.path, "inet", "pctest", chains, what="test rules")
    nft.replace_table(ns.path, "inet", "pctest", chains, what="test rules")  # same again
    assert ("inet", "pctest") in nft.list_tables(ns.path)
    listed = nft.list_table(ns.path, "inet", "pctest")
    assert sum("rule" in item for item in listed) == 1
    assert "dnat ip to 10.97.2.2:80" in ns.run(["nft", "list", "table", "inet",
                                                 "pctest"]).stdout
    nft.delete_table(ns.path, "inet", "pctest")
    nft.delete_table(ns.path, "inet", "pctest")  # gone is success
    assert nft.list_table(ns.path, "inet", "pctest") == []
    assert ns.run(["nft", "list", "table", "ip", "hsentinel"]).stdout == sentinel


def test_a_ruleset_nft_refuses_is_one_sentence_and_nothing_is_loaded(netns: Factory) -> None:
    ns = netns("a")
    before = ns.run(["nft", "-j", "list", "ruleset"]).stdout
    bad = j.replace_table("inet", "pctest", [j.Chain("c", j.nat_hook("prerouting"), [
        j.rule({"jump": {"target": "nosuchchain"}})])])
    with pytest.raises(KernelError) as caught:
        nft.load(ns.path, bad, what="test rules")
    message = str(caught.value)
    assert message.startswith("test rules: nft refused the rules") and "\n" not in message
    assert ns.run(["nft", "-j", "list", "ruleset"]).stdout == before  # atomic: nothing


def test_a_table_belongs_to_one_store_at_a_time(netns: Factory) -> None:
    ns = netns("a")
    chains = [j.Chain("forward", j.filter_hook("forward"), [])]
    with nft.ruleset_lock(ns.path):
        nft.claim_table(ns.path, "inet", "pctest", "store-a host h")
        nft.replace_table(ns.path, "inet", "pctest", chains, what="test rules")
        assert nft.other_owner(ns.path, "inet", "pctest", "store-a host h") is None
        assert nft.other_owner(ns.path, "inet", "pctest", "store-b host h") == "store-a host h"
        with pytest.raises(Conflict) as caught:
            nft.claim_table(ns.path, "inet", "pctest", "store-b host h")
        assert "store-a host h" in str(caught.value)
        nft.delete_table(ns.path, "inet", "pctest")
        nft.release_table(ns.path)
        nft.claim_table(ns.path, "inet", "pctest", "store-b host h")  # free once gone
        nft.release_table(ns.path)
    assert json.loads(ns.run(["nft", "-j", "list", "tables"]).stdout)["nftables"][1:] == []


def test_a_fresh_table_is_created_and_one_there_after_all_is_replaced(netns: Factory) -> None:
    ns = netns("a")
    old = [j.Chain("forward", j.filter_hook("forward"), [
        j.rule(j.match_port("tcp", "dport", 7), {"drop": None})])]
    new = [j.Chain("forward", j.filter_hook("forward"), [
        j.rule(j.match_port("tcp", "dport", 9), {"drop": None})])]
    with nft.ruleset_lock(ns.path):
        assert nft.claim_table(ns.path, "inet", "pctest", "store-a host h")  # none recorded
        assert not nft.claim_table(ns.path, "inet", "pctest", "store-a host h")
        nft.replace_table(ns.path, "inet", "pctest", old, what="test rules", fresh=True)
        assert "dport 7" in ns.run(["nft", "list", "table", "inet", "pctest"]).stdout
        # "fresh" but there (a leftover): the create fails whole, the replace follows
        nft.replace_table(ns.path, "inet", "pctest", new, what="test rules", fresh=True)
        listed = ns.run(["nft", "list", "table", "inet", "pctest"]).stdout
        assert "dport 9" in listed and "dport 7" not in listed
        assert listed.count("chain forward") == 1
        nft.delete_table(ns.path, "inet", "pctest")
        nft.release_table(ns.path)
