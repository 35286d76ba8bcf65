"""IPAM: pools, addresses, errors; a property test against a model."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cnm.errors import Conflict, InvalidOption, NotFound, PoolExhausted
from cnm.ipam import Ipam
from cnm.store.memory import MemoryStore


@pytest.fixture
def ipam() -> Ipam:
    return Ipam(MemoryStore())


def test_default_pools_follow_dockers_order_and_skip_host_routes() -> None:
    host = [ipaddress.ip_network("172.17.0.0/16"), ipaddress.ip_network("172.19.5.0/24")]
    ipam = Ipam(MemoryStore(), host_prefixes=lambda: host)
    subnets = [str(ipam.request_pool().subnet) for _ in range(3)]
    assert subnets == ["172.18.0.0/16", "172.20.0.0/16", "172.21.0.0/16"]


def test_default_pools_continue_into_192_168_slash_20s_then_run_out(ipam: Ipam) -> None:
    subnets = [ipam.request_pool().subnet for _ in range(15)]
    assert str(subnets[-1]) == "172.31.0.0/16"
    assert str(ipam.request_pool().subnet) == "192.168.0.0/20"
    assert str(ipam.request_pool().subnet) == "192.168.16.0/20"
    for _ in range(14):
        ipam.request_pool()
    with pytest.raises(PoolExhausted, match="--subnet"):
        ipam.request_pool()


def test_default_v6_pools_are_slash_64s_of_pycnms_ula(ipam: Ipam) -> None:
    first, second = ipam.request_pool(v6=True), ipam.request_pool(v6=True)
    assert str(first.subnet) == "fd42:7063:6e6d::/64"
    assert str(second.subnet) == "fd42:7063:6e6d:1::/64"
    assert str(ipam.request_address(first.id)) == "fd42:7063:6e6d::1"


@pytest.mark.parametrize(("subnet", "ip_range", "words"), [
    ("10.0.0.0/33", None, "10.0.0.0/33"),
    ("banana", None, "banana"),
    ("10.0.0.5/24", None, "did you mean 10.0.0.0/24"),
    ("10.0.0.1/32", None, "too small"),
    ("10.0.0.0/24", "10.0.1.0/25", "not inside"),
    ("10.0.0.0/24", "fd00::/64", "not inside"),
])
def test_bad_subnets_get_one_clear_sentence(ipam: Ipam, subnet: str, ip_range: str | None,
                                            words: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        ipam.request_pool(subnet=subnet, ip_range=ip_range)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert ipam.list_pools() == []


@pytest.mark.parametrize("other", ["10.1.0.0/16", "10.0.0.0/8", "10.1.0.128/25", "10.1.0.0/24"])
def test_overlapping_subnets_are_refused_both_ways(ipam: Ipam, other: str) -> None:
    ipam.request_pool(subnet="10.1.0.0/24")
    with pytest.raises(Conflict, match="10.1.0.0/24"):
        ipam.request_pool(subnet=other)


def test_the_same_subnet_lives_in_two_address_spaces(ipam: Ipam) -> None:
    a = ipam.request_pool(subnet="10.2.0.0/24")
    b = ipam.request_pool(subnet="10.2.0.0/24", address_space="global")
    assert a.id != b.id and a.subnet == b.subnet


def test_shared_identical_requests_are_reference_counted(ipam: Ipam) -> None:
    a = ipam.request_pool(subnet="10.3.0.0/24", shared=True)
    b = ipam.request_pool(subnet="10.3.0.0/24", shared=True)
    assert a == b
    ipam.release_pool(a.id)
    assert ipam.get_pool(a.id) == a
    ipam.release_pool(a.id)
    with pytest.raises(NotFound):
        ipam.get_pool(a.id)


def test_ip_range_static_addresses_and_gateway(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.4.0.0/24", ip_range="10.4.0.128/25")
    assert str(ipam.request_address(pool.id, whole_subnet=True)) == "10.4.0.1"
    assert str(ipam.request_address(pool.id)) == "10.4.0.128"
    assert str(ipam.request_address(pool.id, "10.4.0.9")) == "10.4.0.9"
    assert str(ipam.request_address(pool.id)) == "10.4.0.129"
    with pytest.raises(Conflict, match="10.4.0.9"):
        ipam.request_address(pool.id, "10.4.0.9")
    for bad, words in (("10.5.0.1", "not in subnet"), ("10.4.0.0", "network address"),
                       ("10.4.0.255", "broadcast address"), ("nope", "not a valid")):
        with pytest.raises(InvalidOption, match=words):
            ipam.request_address(pool.id, bad)


def test_exhaustion_release_and_serial_reuse(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.6.0.0/29")
    got = [str(ipam.request_address(pool.id)) for _ in range(6)]
    assert got == [f"10.6.0.{i}" for i in range(1, 7)]
    with pytest.raises(PoolExhausted, match="10.6.0.0/29"):
        ipam.request_address(pool.id)
    ipam.release_address(pool.id, "10.6.0.2")
    ipam.release_address(pool.id, "10.6.0.2")  # idempotent
    ipam.release_address(pool.id, "10.6.0.5")
    assert str(ipam.request_address(pool.id)) == "10.6.0.2"  # wrapped to the first gap
    assert str(ipam.request_address(pool.id)) == "10.6.0.5"


def test_a_released_address_is_not_handed_out_at_once(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.7.0.0/24")
    first = ipam.request_address(pool.id)
    ipam.release_address(pool.id, first)
    assert ipam.request_address(pool.id) != first


def test_big_pools_cost_nothing_until_used(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="fd00:1::/64")
    assert str(ipam.request_address(pool.id)) == "fd00:1::1"
    assert len(ipam.store.get("ipam/pools/" + pool.id.replace("/", "_")).value["allocated"]) == 1


def test_unknown_pools(ipam: Ipam) -> None:
    with pytest.raises(NotFound):
        ipam.request_address("local/10.9.0.0/24")
    ipam.release_address("local/10.9.0.0/24", "10.9.0.1")
    ipam.release_pool("local/10.9.0.0/24")


class IpamModel(RuleBasedStateMachine):
    """Random requests and releases against a set: never a duplicate, always in range,
    exhaustion exactly when the model is full."""

    SUBNET = ipaddress.ip_network("10.200.0.0/28")  # 14 usable addresses
    RANGE = ipaddress.ip_network("10.200.0.0/29")  # offsets 1..7 (no broadcast inside)

    def __init__(self) -> None:
        super().__init__()
        self.ipam = Ipam(MemoryStore())
        self.pool = self.ipam.request_pool(subnet=str(self.SUBNET), ip_range=str(self.RANGE))
        self.held: set[ipaddress.IPv4Address] = set()
        self.range_hosts = {a for a in self.RANGE if a != self.RANGE.network_address}

    @rule()
    def request(self) -> None:
        free = self.range_hosts - self.held
        if not free:
            with pytest.raises(PoolExhausted):
                self.ipam.request_address(self.pool.id)
            return
        got = self.ipam.request_address(self.pool.id)
        assert got in free
        self.held.add(got)

    @rule(offset=st.integers(min_value=1, max_value=14))
    def request_static(self, offset: int) -> None:
        address = self.SUBNET.network_address + offset
        if address in self.held:
            with pytest.raises(Conflict):
                self.ipam.request_address(self.pool.id, str(address))
        else:
            assert self.ipam.request_address(self.pool.id, str(address)) == address
            self.held.add(address)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(sorted(self.held)))
        self.ipam.release_address(self.pool.id, address)
        self.held.discard(address)

    @invariant()
    def store_matches_model(self) -> None:
        assert self.ipam.allocated(self.pool.id) == self.held


IpamModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_ipam_against_a_model = IpamModel.TestCase
