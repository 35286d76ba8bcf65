"""The OS layer's netlink requests against a real kernel: batches of requests sent in one
datagram (cnm.osl.rtnl), what is tolerated, what is reported and how."""

from __future__ import annotations

import ipaddress
import os
import re

import pytest

from cnm.errors import Conflict, KernelError
from cnm.osl import links
from cnm.osl.netns import iproute

pytestmark = pytest.mark.root


def test_configure_sends_one_batch_and_tolerates_what_is_already_done(netns) -> None:
    ns = netns("osl")
    with iproute(ns.path) as ipr:
        index = links.create_veth(ipr, "ptvA", "ptvB")
        first = ipaddress.ip_interface("198.18.40.2/24")
        links.configure(
            ipr, index, addresses=[first, first, ipaddress.ip_interface("fd00:40::2/64")],
            mtu=1400, routes=[links.route_request(ipaddress.ip_network("198.18.41.0/24"),
                                                  gateway=ipaddress.ip_address("198.18.40.1"),
                                                  oif=index)],
        )
        # Again, as a retry would: every request is already done, and that is success.
        links.configure(ipr, index, addresses=[first], routes=[links.route_request(
            ipaddress.ip_network("198.18.41.0/24"), gateway=ipaddress.ip_address("198.18.40.1"),
            oif=index)])
    shown = ns.run(["ip", "link", "show", "ptvA"]).stdout
    assert "mtu 1400" in shown and re.search(r"[<,]UP[,>]", shown)
    assert sorted(ns.addresses("ptvA")) == ["198.18.40.2/24", "fd00:40::2/64"]
    assert "198.18.41.0/24 via 198.18.40.1 dev ptvA" in ns.run(["ip", "route"]).stdout


def test_a_refused_request_in_a_batch_is_named_and_the_others_still_ran(netns) -> None:
    ns = netns("osl")
    with iproute(ns.path) as ipr:
        index = links.create_veth(ipr, "ptvA", "ptvB")
        unreachable = links.route_request(ipaddress.ip_network("198.18.43.0/24"),
                                          gateway=ipaddress.ip_address("203.0.113.9"),
                                          oif=index)
        with pytest.raises(KernelError, match=r"add route 198\.18\.43\.0/24 via 203\.0\.113\.9"):
            links.configure(ipr, index, addresses=[ipaddress.ip_interface("198.18.42.2/24")],
                            routes=[unreachable])
    assert ns.addresses("ptvA") == ["198.18.42.2/24"]


def test_a_veth_name_taken_is_a_conflict_and_the_host_end_has_no_ipv6(netns) -> None:
    ns, inside = netns("osl"), netns("inside")
    fd = os.open(inside.path, os.O_RDONLY)
    try:
        with iproute(ns.path) as ipr:
            links.create_veth(ipr, "ptvA", "eth0", peer_netns_fd=fd, peer_mac="02:42:c6:12:2c:02")
            with pytest.raises(Conflict, match="interface ptvA already exists"):
                links.create_veth(ipr, "ptvA", "eth1", peer_netns_fd=fd)
    finally:
        os.close(fd)
    assert "02:42:c6:12:2c:02" in inside.run(["ip", "link", "show", "eth0"]).stdout
    assert "eth1" not in inside.links()
    assert re.search(r"[<,]UP[,>]", ns.run(["ip", "link", "show", "ptvA"]).stdout)
    assert ns.run(["ip", "-6", "-o", "addr", "show", "dev", "ptvA"]).stdout == ""


def test_a_pool_reuses_its_handles_drops_one_that_failed_and_closes_the_rest(netns) -> None:
    from cnm.osl.netns import NetlinkPool

    ns = netns("osl")
    pool = NetlinkPool(ns.path)
    with pool.handle() as first:
        links.create_veth(first, "ptvA", "ptvB")
    with pool.handle() as again:
        assert again is first  # no new thread hop or sockets
        assert links.link_index(again, "ptvA") is not None
    with pytest.raises(Conflict), pool.handle() as failing:
        links.create_veth(failing, "ptvA", "ptvC")
    assert failing.rtnl.sock.fileno() == -1  # an operation that failed: never reused
    with pool.handle() as fresh:
        assert fresh is not failing
    pool.close()
    assert fresh.rtnl.sock.fileno() == -1 and fresh.ioctl.fileno() == -1
