"""Choosing host ports for the bridge driver: which bindings share a host address (no
kernel; the traffic through published ports is tested in tests/integration/test_bridge)."""

from __future__ import annotations

import pytest

from cnm.errors import Conflict
from drivers.bridge.ports import choose_host_ports, overlaps, parse_portmap


def chosen(*host_ips: str, taken: set[tuple[str, str, int]] | None = None) -> list[int]:
    wanted = parse_portmap([{"Proto": 6, "Port": 80, "HostIP": ip, "HostPort": 8080}
                            for ip in host_ips])
    return [b.host_port for b in choose_host_ports(wanted, taken or set())]


def test_every_ipv4_and_every_ipv6_address_are_one_port_on_both_families() -> None:
    # what Docker writes for "every address" on a dual-stack host
    assert chosen("0.0.0.0", "::") == [8080, 8080]
    assert chosen("127.0.0.1", "::1") == [8080, 8080]
    assert chosen("::", taken={("tcp", "0.0.0.0", 8080)}) == [8080]


@pytest.mark.parametrize("first, second", [
    ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("", "0.0.0.0"), ("", "::"), ("0.0.0.0", ""),
    ("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("::", "fd00::1"),
    ("127.0.0.1", "127.0.0.1"),
])
def test_a_host_address_published_twice_is_refused(first: str, second: str) -> None:
    with pytest.raises(Conflict, match="host port 8080/tcp is already published"):
        chosen(first, second)
    with pytest.raises(Conflict):
        chosen(second, taken={("tcp", first, 8080)})


def test_which_host_addresses_overlap() -> None:
    assert overlaps("", "fd00::1") and overlaps("0.0.0.0", "10.0.0.1")
    assert overlaps("::", "::1") and overlaps("10.0.0.1", "10.0.0.1")
    assert not overlaps("0.0.0.0", "::") and not overlaps("10.0.0.1", "10.0.0.2")
    assert not overlaps("::", "10.0.0.1") and not overlaps("fd00::1", "fd00::2")


def test_another_protocol_or_port_is_free() -> None:
    assert chosen("0.0.0.0", taken={("udp", "0.0.0.0", 8080), ("tcp", "0.0.0.0", 8081)}) == [
        8080]
