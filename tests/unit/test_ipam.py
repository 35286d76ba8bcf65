"""IPAM: default pools, validation, overlap, addresses; property tests against models."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cnm.errors import CNMError, Conflict, InvalidOption, NotFound, PoolExhausted
from cnm.ipam import Ipam, Pool
from cnm.ipam import pools as P
from cnm.ipam import runs as R
from cnm.store.memory import MemoryStore

net = ipaddress.ip_network
ip = ipaddress.ip_address


@pytest.fixture
def ipam() -> Ipam:
    return Ipam(MemoryStore())


def record(ipam: Ipam, pool_id: str) -> dict:
    entry = ipam.store.get("ipam/pools/" + pool_id.replace("/", "_"))
    assert entry is not None
    return entry.value


def assert_one_sentence(err: CNMError, *mentions: str) -> None:
    """A user message: one line, one sentence, naming what was wrong."""
    text = str(err)
    assert "\n" not in text and not re.search(r"[.!?]\s+[A-Z]", text), text
    for mention in mentions:
        assert mention in text, (mention, text)


# --- default pools ----------------------------------------------------------------------


def test_default_pools_follow_dockers_order_and_skip_host_routes() -> None:
    host = [net("172.17.0.0/16"), net("172.19.5.0/24"), net("192.168.0.0/24"),
            net("0.0.0.0/0")]  # a default route blocks nothing
    ipam = Ipam(MemoryStore(), host_prefixes=lambda: host)
    subnets = [str(ipam.request_pool().subnet) for _ in range(15)]
    assert subnets[:3] == ["172.18.0.0/16", "172.20.0.0/16", "172.21.0.0/16"]
    assert subnets[-3:] == ["172.31.0.0/16", "192.168.16.0/20", "192.168.32.0/20"]


def test_default_pools_skip_existing_pools_of_the_same_space_only(ipam: Ipam) -> None:
    ipam.request_pool(subnet="172.17.0.0/16")
    ipam.request_pool(subnet="172.18.128.0/17")
    ipam.request_pool(subnet="172.19.0.0/16", address_space="global")
    assert str(ipam.request_pool().subnet) == "172.19.0.0/16"
    ipam.request_pool(subnet="10.0.0.0/23", address_space="global")
    ipam.request_pool(subnet="10.0.3.0/24")  # local: does not block the global space
    assert str(ipam.request_pool(address_space="global").subnet) == "10.0.2.0/24"
    assert str(ipam.request_pool(address_space="global").subnet) == "10.0.3.0/24"


def test_global_defaults_are_swarms_slash_24s_of_10_0_0_0_8() -> None:
    ipam = Ipam(MemoryStore(), host_prefixes=lambda: [net("10.0.0.0/16")])
    pool = ipam.request_pool(address_space="global")
    assert (pool.id, pool.address_space) == ("global/10.1.0.0/24", "global")
    assert str(ipam.request_pool(address_space="global", v6=True).subnet) == \
        "fd42:7063:6e6d::/64"


def test_default_pools_continue_into_192_168_slash_20s_then_run_out(ipam: Ipam) -> None:
    subnets = [ipam.request_pool().subnet for _ in range(15)]
    assert [str(s) for s in subnets] == [f"172.{n}.0.0/16" for n in range(17, 32)]
    assert str(ipam.request_pool().subnet) == "192.168.0.0/20"
    assert str(ipam.request_pool().subnet) == "192.168.16.0/20"
    for _ in range(14):
        ipam.request_pool()
    with pytest.raises(PoolExhausted) as caught:
        ipam.request_pool()
    assert_one_sentence(caught.value, "--subnet", "IPv4")
    ipam.release_pool("local/172.20.0.0/16")
    assert str(ipam.request_pool().subnet) == "172.20.0.0/16"


def test_default_v6_pools_are_slash_64s_of_pycnms_ula() -> None:
    host = [net("fd42:7063:6e6d:1::/64"), net("10.0.0.0/8")]
    ipam = Ipam(MemoryStore(), host_prefixes=lambda: host)
    first, second = ipam.request_pool(v6=True), ipam.request_pool(v6=True)
    assert str(first.subnet) == "fd42:7063:6e6d::/64"
    assert str(second.subnet) == "fd42:7063:6e6d:2::/64"
    assert first.id == "local/fd42:7063:6e6d::/64" and first.ip_range is None
    assert str(ipam.request_address(first.id)) == "fd42:7063:6e6d::1"
    assert str(ipam.request_pool().subnet) == "172.17.0.0/16"  # v4 ignores v6 prefixes


def test_v6_defaults_run_out_quickly_when_the_host_routes_the_whole_ula() -> None:
    ipam = Ipam(MemoryStore(), host_prefixes=lambda: [net("fd00::/8")])
    with pytest.raises(PoolExhausted) as caught:
        ipam.request_pool(v6=True)
    assert_one_sentence(caught.value, "IPv6", "--subnet")


def test_host_prefixes_are_asked_only_when_a_default_pool_is_chosen() -> None:
    calls: list[int] = []
    ipam = Ipam(MemoryStore(), host_prefixes=lambda: calls.append(1) or [])
    ipam.request_pool(subnet="10.1.0.0/24")
    assert calls == []
    ipam.request_pool()
    assert calls == [1]


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(8, 30)), max_size=12),
       st.booleans(), st.sampled_from(["local", "global"]))
def test_first_free_default_matches_trying_every_pool_in_order(
    blockers: list[tuple[int, int]], v6: bool, space: str
) -> None:
    """The jumping search agrees with the plain one: each default pool in turn."""
    if v6:
        base = int(P.DEFAULT_V6_BASE.network_address)
        nets = [ipaddress.IPv6Network((base + (a << 64), 56 + p % 9), strict=False)
                for a, p in blockers]
    else:
        first = 10 if space == "global" else 172
        nets = [ipaddress.IPv4Network(((first << 24) + (a << 8 if first == 10 else a << 12), p),
                                      strict=False)
                for a, p in blockers] + [net("192.168.0.0/19")][: len(blockers) % 2]
    spans = [(int(b.network_address), int(b.broadcast_address)) for b in nets]
    bits = 128 if v6 else 32

    def candidates():  # every default pool in order, as (first, last) integers
        for pool in P.default_pools(v6, space):
            step = 1 << (bits - pool.size)
            for first in range(int(pool.base.network_address),
                               int(pool.base.broadcast_address), step):
                yield first, first + step - 1, pool.size

    expected = next(((first, size) for first, last, size in candidates()
                     if all(last < lo or hi < first for lo, hi in spans)), None)
    found = P.first_free_default(v6, nets, space)
    assert (None if found is None else (int(found.network_address), found.prefixlen)) == expected


# --- user subnets -----------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "mentions"), [
    ({"subnet": "10.0.0.0/33"}, ["10.0.0.0/33"]),
    ({"subnet": "banana"}, ["banana", "CIDR"]),
    ({"subnet": "10.0.0.5/24"}, ["10.0.0.5/24", "did you mean 10.0.0.0/24"]),
    ({"subnet": "10.0.0.1"}, ["10.0.0.1", "prefix length"]),
    ({"subnet": "10.0.0.1/32"}, ["10.0.0.1/32", "too small"]),
    ({"subnet": "fd00::1/128", "v6": True}, ["fd00::1/128", "too small"]),
    ({"subnet": "fd00::/64"}, ["fd00::/64", "IPv6", "IPv4"]),
    ({"subnet": "10.0.0.0/24", "v6": True}, ["10.0.0.0/24", "IPv4", "IPv6"]),
    ({"subnet": "10.0.0.0/24", "ip_range": "10.0.1.0/25"}, ["10.0.1.0/25", "not inside"]),
    ({"subnet": "10.0.0.0/24", "ip_range": "fd00::/64"}, ["fd00::/64", "not inside"]),
    ({"subnet": "10.0.0.0/24", "ip_range": "10.0.0.128/24"}, ["ip-range 10.0.0.128/24"]),
    ({"subnet": "10.0.0.0/24", "ip_range": "pear"}, ["ip-range", "pear"]),
    ({"subnet": "10.0.0.0/24", "ip_range": "10.0.0.255/32"}, ["10.0.0.255/32", "no address"]),
    ({"ip_range": "10.0.0.0/25"}, ["10.0.0.0/25", "needs a subnet"]),
    ({"subnet": "10.0.0.0/24", "address_space": "elsewhere"}, ["elsewhere"]),
])
def test_bad_requests_get_one_clear_sentence(ipam: Ipam, kwargs: dict,
                                             mentions: list[str]) -> None:
    with pytest.raises(InvalidOption) as caught:
        ipam.request_pool(**kwargs)
    assert_one_sentence(caught.value, *mentions)
    assert ipam.list_pools() == []


def test_small_but_usable_subnets_and_ranges(ipam: Ipam) -> None:
    p2p = ipam.request_pool(subnet="10.0.0.0/31")  # RFC 3021: both addresses usable
    assert {str(ipam.request_address(p2p.id)) for _ in range(2)} == {"10.0.0.0", "10.0.0.1"}
    one = ipam.request_pool(subnet="10.0.1.0/24", ip_range="10.0.1.7/32")
    assert str(ipam.request_address(one.id)) == "10.0.1.7"
    with pytest.raises(PoolExhausted):
        ipam.request_address(one.id)


@pytest.mark.parametrize("other", ["10.1.0.0/16", "10.0.0.0/8", "10.1.0.128/25", "10.1.0.0/24"])
def test_overlapping_subnets_are_refused_both_ways(ipam: Ipam, other: str) -> None:
    ipam.request_pool(subnet="10.1.0.0/24")
    with pytest.raises(Conflict) as caught:
        ipam.request_pool(subnet=other)
    assert_one_sentence(caught.value, other, "local/10.1.0.0/24", "overlaps")
    assert [p.id for p in ipam.list_pools()] == ["local/10.1.0.0/24"]


def test_a_released_subnet_can_be_requested_again(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.1.0.0/24")
    ipam.release_pool(pool.id)
    assert ipam.request_pool(subnet="10.1.0.0/16").id == "local/10.1.0.0/16"


def test_the_same_subnet_lives_in_two_address_spaces(ipam: Ipam) -> None:
    a = ipam.request_pool(subnet="10.2.0.0/24")
    b = ipam.request_pool(subnet="10.2.0.0/24", address_space="global")
    assert (a.id, b.id) == ("local/10.2.0.0/24", "global/10.2.0.0/24")
    assert a.subnet == b.subnet and b.address_space == "global"
    assert str(ipam.request_address(a.id)) == str(ipam.request_address(b.id)) == "10.2.0.1"


def test_shared_identical_requests_are_reference_counted(ipam: Ipam) -> None:
    a = ipam.request_pool(subnet="10.3.0.0/24", shared=True)
    b = ipam.request_pool(subnet="10.3.0.0/24", shared=True)
    assert a == b
    with pytest.raises(Conflict):
        ipam.request_pool(subnet="10.3.0.0/24")  # not shared: an overlap like any other
    with pytest.raises(Conflict):
        ipam.request_pool(subnet="10.3.0.0/24", ip_range="10.3.0.0/25", shared=True)
    ipam.release_pool(a.id)
    assert ipam.get_pool(a.id) == a
    ipam.release_pool(a.id)
    with pytest.raises(NotFound):
        ipam.get_pool(a.id)


# --- addresses --------------------------------------------------------------------------


def test_ip_range_static_addresses_and_gateway(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.4.0.0/24", ip_range="10.4.0.128/25")
    assert pool.id == "local/10.4.0.0/24/10.4.0.128/25"
    assert pool.ip_range == net("10.4.0.128/25")
    assert str(ipam.request_address(pool.id, whole_subnet=True)) == "10.4.0.1"
    assert str(ipam.request_address(pool.id)) == "10.4.0.128"
    assert str(ipam.request_address(pool.id, "10.4.0.9")) == "10.4.0.9"  # outside the range
    assert str(ipam.request_address(pool.id, whole_subnet=True)) == "10.4.0.2"
    assert str(ipam.request_address(pool.id)) == "10.4.0.129"  # gateways left the cursor
    assert str(ipam.request_address(pool.id, ip("10.4.0.200"))) == "10.4.0.200"
    assert str(ipam.request_address(pool.id, "10.4.0.201/24")) == "10.4.0.201"
    with pytest.raises(Conflict) as caught:
        ipam.request_address(pool.id, "10.4.0.9")
    assert_one_sentence(caught.value, "10.4.0.9", "already in use")
    for bad, words in (("10.5.0.1", "not in subnet"), ("10.4.0.0", "network address"),
                       ("10.4.0.255", "broadcast address"), ("nope", "not a valid"),
                       ("fd00::1", "not in subnet")):
        with pytest.raises(InvalidOption) as caught:
            ipam.request_address(pool.id, bad)
        assert_one_sentence(caught.value, bad, words)


def test_v6_skips_the_subnet_router_anycast_address_but_not_the_last(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="fd00:7::/126", v6=True)
    assert [str(ipam.request_address(pool.id)) for _ in range(3)] == \
        ["fd00:7::1", "fd00:7::2", "fd00:7::3"]
    with pytest.raises(InvalidOption) as caught:
        ipam.request_address(pool.id, "fd00:7::")
    assert_one_sentence(caught.value, "fd00:7::", "subnet-router anycast")
    with pytest.raises(PoolExhausted):
        ipam.request_address(pool.id)


def test_the_gateway_of_a_shared_pool_is_one_address(ipam: Ipam) -> None:
    first = ipam.request_pool(subnet="10.8.0.0/24", shared=True)
    assert str(ipam.request_address(first.id, gateway=True)) == "10.8.0.1"
    ipam.request_pool(subnet="10.8.0.0/24", shared=True)
    assert str(ipam.request_address(first.id, gateway=True)) == "10.8.0.1"
    with pytest.raises(Conflict) as caught:
        ipam.request_address(first.id, "10.8.0.254", gateway=True)
    assert_one_sentence(caught.value, "10.8.0.1", "10.8.0.254")
    ipam.release_address(first.id, "10.8.0.1")  # one network's rollback: the other keeps it
    assert ip("10.8.0.1") in ipam.allocated(first.id)
    ipam.release_pool(first.id)
    ipam.release_address(first.id, "10.8.0.1")  # the last user lets it go
    assert ipam.allocated(first.id) == set()
    assert str(ipam.request_address(first.id, "10.8.0.9", gateway=True)) == "10.8.0.9"


def test_exhaustion_release_and_serial_reuse(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.6.0.0/29")
    got = [str(ipam.request_address(pool.id)) for _ in range(6)]
    assert got == [f"10.6.0.{i}" for i in range(1, 7)]
    with pytest.raises(PoolExhausted) as caught:
        ipam.request_address(pool.id)
    assert_one_sentence(caught.value, "10.6.0.0/29")
    ipam.release_address(pool.id, "10.6.0.2")
    ipam.release_address(pool.id, "10.6.0.2")  # idempotent
    ipam.release_address(pool.id, "10.6.0.5")
    assert str(ipam.request_address(pool.id)) == "10.6.0.2"  # wrapped to the first gap
    assert str(ipam.request_address(pool.id)) == "10.6.0.5"
    with pytest.raises(PoolExhausted):
        ipam.request_address(pool.id)


def test_a_released_address_waits_for_the_wrap(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.7.0.0/29")
    first = ipam.request_address(pool.id)
    ipam.release_address(pool.id, first)
    assert [str(ipam.request_address(pool.id)) for _ in range(6)] == \
        ["10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5", "10.7.0.6", "10.7.0.1"]


def test_release_is_idempotent_and_refuses_garbage(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.9.0.0/24")
    before = ipam.store.get("ipam/pools/local_10.9.0.0_24")
    ipam.release_address(pool.id, "10.9.0.77")  # never held
    ipam.release_address(pool.id, "10.99.0.1")  # not even in the subnet
    ipam.release_address(pool.id, "fd00::1")
    assert ipam.store.get("ipam/pools/local_10.9.0.0_24") == before  # nothing written
    with pytest.raises(InvalidOption) as caught:
        ipam.release_address(pool.id, "10.9.0.x")
    assert_one_sentence(caught.value, "10.9.0.x")
    ipam.release_pool(pool.id)
    ipam.release_pool(pool.id)


def test_big_pools_stay_small_in_the_store(ipam: Ipam) -> None:
    v6 = ipam.request_pool(subnet="fd00:1::/64", v6=True)
    v4 = ipam.request_pool(subnet="10.0.0.0/8")
    assert str(ipam.request_address(v6.id)) == "fd00:1::1"
    assert str(ipam.request_address(v6.id, "fd00:1::ffff:ffff:ffff:ffff")) == \
        "fd00:1::ffff:ffff:ffff:ffff"
    for _ in range(1000):
        ipam.request_address(v4.id)
    ipam.request_address(v4.id, "10.200.0.1")
    assert record(ipam, v4.id)["runs"] == "1-1000,13107201"
    assert len(ipam.allocated(v4.id)) == 1001
    assert str(ipam.request_address(v4.id)) == "10.0.3.233"  # 1001: after the last serial one


def test_records_of_the_first_format_are_read_and_upgraded(ipam: Ipam) -> None:
    pool = ipam.request_pool(subnet="10.10.0.0/24")
    old = {"id": pool.id, "space": "local", "subnet": "10.10.0.0/24", "ip_range": None,
           "allocated": [1, 2, 3, 9], "cursor": 3, "refs": 1}
    ipam.store.put("ipam/pools/local_10.10.0.0_24", old)
    assert ipam.allocated(pool.id) == {ip(f"10.10.0.{i}") for i in (1, 2, 3, 9)}
    assert str(ipam.request_address(pool.id)) == "10.10.0.4"
    assert record(ipam, pool.id)["runs"] == "1-4,9" and "allocated" not in record(ipam, pool.id)


def test_get_and_list_pools(ipam: Ipam) -> None:
    b = ipam.request_pool(subnet="10.12.0.0/24", ip_range="10.12.0.0/25")
    a = ipam.request_pool(subnet="10.11.0.0/24")
    g = ipam.request_pool(subnet="10.11.0.0/24", address_space="global")
    v6 = ipam.request_pool(v6=True)
    assert ipam.get_pool(b.id) == b == Pool("local/10.12.0.0/24/10.12.0.0/25", "local",
                                            net("10.12.0.0/24"), net("10.12.0.0/25"))
    assert ipam.list_pools() == [g, a, b, v6]
    assert ipam.list_pools("local") == [a, b, v6] and ipam.list_pools("global") == [g]
    with pytest.raises(NotFound) as caught:
        ipam.get_pool("local/10.13.0.0/24")
    assert_one_sentence(caught.value, "local/10.13.0.0/24", "not found")


def test_unknown_pools(ipam: Ipam) -> None:
    for call in (lambda: ipam.request_address("local/10.9.0.0/24"),
                 lambda: ipam.allocated("local/10.9.0.0/24")):
        with pytest.raises(NotFound):
            call()
    ipam.release_address("local/10.9.0.0/24", "10.9.0.1")
    ipam.release_pool("local/10.9.0.0/24")


# --- the run-length set against a plain set --------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40))),
       st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
def test_runs_behave_like_a_set(ops: list[tuple[bool, int]], low: int, high: int,
                                start: int) -> None:
    runs: R.Runs = []
    model: set[int] = set()
    for adding, value in ops:
        changed = R.add(runs, value) if adding else R.remove(runs, value)
        assert changed == ((value not in model) if adding else (value in model))
        (model.add if adding else model.discard)(value)
        assert all(a[1] + 1 < b[0] for a, b in zip(runs, runs[1:], strict=False))
        assert all(first <= last for first, last in runs)
    assert set(R.offsets(runs)) == model and R.size(runs) == len(model)
    assert all(R.contains(runs, v) == (v in model) for v in range(-1, 42))
    assert R.decode(R.encode(runs)) == runs
    assert R.from_offsets(sorted(model)) == runs
    free = [v for v in range(low, high + 1) if v not in model]
    assert R.first_free(runs, low, high) == (free[0] if free else None)
    order = ([*range(start, high + 1), *range(low, start)] if low <= start <= high
             else list(range(low, high + 1)))
    assert R.next_free(runs, low, high, start) == next(
        (v for v in order if v not in model), None)


# --- a model of the whole allocator -----------------------------------------------------

CONFIGS = [
    ("10.200.0.0/28", "10.200.0.0/29"),  # range holds offsets 1..7, the subnet 1..14
    ("10.200.0.0/29", None),
    ("10.200.0.0/31", None),
    ("fd00:200::/125", None),  # offsets 1..7: no broadcast in IPv6
    ("fd00:200::/124", "fd00:200::8/125"),
]


def assignable(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list:
    hosts = list(subnet)
    if subnet.num_addresses > 2:
        hosts = hosts[1:-1] if subnet.version == 4 else hosts[1:]
    return hosts


class IpamModel(RuleBasedStateMachine):
    """Random requests and releases (serial, static, gateway-style) through two Ipam
    objects on one store, against a plain model of serial allocation: every answer is the
    model's, no address is handed out twice while held, all lie in range, and exhaustion
    comes exactly when the model is full."""

    @initialize(config=st.sampled_from(CONFIGS))
    def setup(self, config: tuple[str, str | None]) -> None:
        store = MemoryStore()
        self.ipams = (Ipam(store), Ipam(store))
        self.subnet = net(config[0])
        v6 = self.subnet.version == 6
        self.pool = self.ipams[0].request_pool(subnet=config[0], ip_range=config[1], v6=v6)
        self.hosts = assignable(self.subnet)
        self.range_hosts = [h for h in self.hosts if config[1] is None or h in net(config[1])]
        self.held: set = set()
        self.last: object = None  # the model's cursor: the last serial answer

    @rule(which=st.integers(0, 1))
    def request_next(self, which: int) -> None:
        order = self.range_hosts
        if self.last in order:
            at = order.index(self.last) + 1
            order = order[at:] + order[:at]
        expected = next((h for h in order if h not in self.held), None)
        if expected is None:
            with pytest.raises(PoolExhausted):
                self.ipams[which].request_address(self.pool.id)
            return
        assert self.ipams[which].request_address(self.pool.id) == expected
        self.held.add(expected)
        self.last = expected

    @rule(which=st.integers(0, 1))
    def request_gateway_style(self, which: int) -> None:
        expected = next((h for h in self.hosts if h not in self.held), None)
        if expected is None:
            with pytest.raises(PoolExhausted):
                self.ipams[which].request_address(self.pool.id, whole_subnet=True)
            return
        assert self.ipams[which].request_address(self.pool.id, whole_subnet=True) == expected
        self.held.add(expected)

    @rule(which=st.integers(0, 1), offset=st.integers(0, 15))
    def request_static(self, which: int, offset: int) -> None:
        address = self.subnet.network_address + offset
        if address not in self.hosts:
            with pytest.raises(InvalidOption):
                self.ipams[which].request_address(self.pool.id, str(address))
        elif address in self.held:
            with pytest.raises(Conflict):
                self.ipams[which].request_address(self.pool.id, str(address))
        else:
            assert self.ipams[which].request_address(self.pool.id, str(address)) == address
            self.held.add(address)

    @precondition(lambda self: self.held)
    @rule(which=st.integers(0, 1), data=st.data())
    def release(self, which: int, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(sorted(self.held)))
        self.ipams[which].release_address(self.pool.id, address)
        self.held.discard(address)

    @rule(offset=st.integers(0, 15))
    def release_anything(self, offset: int) -> None:
        address = self.subnet.network_address + offset
        self.ipams[1].release_address(self.pool.id, address)
        self.held.discard(address)

    @invariant()
    def store_matches_model(self) -> None:
        if hasattr(self, "pool"):
            allocated = self.ipams[0].allocated(self.pool.id)
            assert allocated == self.held
            assert all(a in self.hosts for a in allocated)


IpamModel.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_ipam_against_a_model = IpamModel.TestCase
