"""Macvlan option parsing and the parent-sharing rules, without root or a kernel."""

from __future__ import annotations

import ipaddress

import pytest

from cnm.driverapi import DriverContext
from cnm.errors import Conflict, InvalidOption
from cnm.store.memory import MemoryStore
from drivers.macvlan import MacvlanDriver, mac_from_ip, macvlan_name, shim_name
from drivers.macvlan.options import parse, resolve_shim_address, split_vlan


def test_docker_names_and_aliases() -> None:
    opts = parse({"parent": "eth1", "macvlan_mode": "VEPA",
                  "com.docker.network.driver.mtu": "1400"})
    assert (opts.parent, opts.mode, opts.mtu, opts.host_shim) == ("eth1", "vepa", 1400, None)
    assert parse({"parent": "eth1", "mode": "private", "mtu": "0"}).mtu is None
    assert parse({"parent": "eth1"}).mode == "bridge"


@pytest.mark.parametrize(("options", "mentions"), [
    ({}, "parent"),
    ({"parent": "bad/name"}, "bad/name"),
    ({"parent": "pcsh-0123456789"}, "pycnm made"),
    ({"parent": "eth1", "mode": "sideways"}, "sideways"),
    ({"parent": "eth1", "mtu": "jumbo"}, "jumbo"),
    ({"parent": "eth1", "mode": "private", "host_shim": "host"}, "private"),
    ({"parent": "eth1", "mode": "passthru", "host_shim": "host"}, "passthru"),
    ({"parent": "eth1", "colour": "blue"}, "colour"),
])
def test_bad_options(options: dict[str, str], mentions: str) -> None:
    with pytest.raises(InvalidOption, match=mentions):
        parse(options)


def test_vlan_names() -> None:
    assert split_vlan("eth0.10") == ("eth0", 10)
    assert split_vlan("br.lan") is None
    assert split_vlan("eth0") is None
    with pytest.raises(InvalidOption, match="4094"):
        split_vlan("eth0.5000")


def test_shim_address_must_be_an_aux_address() -> None:
    aux = {"host": ipaddress.ip_address("10.0.0.250")}
    subnets = [ipaddress.ip_network("10.0.0.0/24")]
    assert str(resolve_shim_address("host", aux, subnets)) == "10.0.0.250"
    assert str(resolve_shim_address("10.0.0.250", aux, subnets)) == "10.0.0.250"
    with pytest.raises(InvalidOption, match="--aux-address"):
        resolve_shim_address("10.0.0.9", aux, subnets)
    with pytest.raises(InvalidOption, match="not inside"):
        resolve_shim_address("10.9.0.9", aux, subnets)
    with pytest.raises(InvalidOption, match="no aux-address"):
        resolve_shim_address("router", aux, subnets)


def test_names_and_macs_fit_the_kernel() -> None:
    assert len(macvlan_name("f" * 64)) == len(shim_name("f" * 64)) == 15
    assert mac_from_ip(ipaddress.IPv4Address("192.0.2.21")) == "02:42:c0:00:02:15"
    assert int(mac_from_ip(None)[:2], 16) & 1 == 0  # unicast


@pytest.mark.parametrize(("held", "asked", "ok"), [
    ("bridge", "bridge", True),
    ("vepa", "vepa", True),
    ("bridge", "private", False),
    ("bridge", "passthru", False),
    ("passthru", "bridge", False),
])
def test_sharing_a_parent(held: str, asked: str, ok: bool) -> None:
    driver = MacvlanDriver(DriverContext(host_ns=None, store=MemoryStore(), host_id="h"))
    claim = {"parent": "eth1", "mode": held, "networks": ["a" * 64], "created_vlan": False}
    check = driver._check_claim
    if ok:
        check(parse({"parent": "eth1", "mode": asked}), "b" * 64, claim)
    else:
        with pytest.raises(Conflict, match="eth1"):
            check(parse({"parent": "eth1", "mode": asked}), "b" * 64, claim)
    # A network never conflicts with its own claim (retries).
    check(parse({"parent": "eth1", "mode": asked}), "a" * 64, claim)
