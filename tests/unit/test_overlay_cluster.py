"""The overlay driver's cluster records and option parsing, on the in-memory store: VNI
allocation without collisions, one config per overlay, clear refusals, the last host out
freeing the VNI. No root, no etcd."""

from __future__ import annotations

import threading

import pytest

from cnm.errors import Conflict, InvalidOption
from cnm.store.memory import MemoryStore
from drivers.overlay import options
from drivers.overlay.cluster import Cluster, OverlaySpec, parse_endpoint_key, remote_of
from drivers.overlay.dataplane import Entries, Remote

SUBNET = ("10.0.0.0/24",)
GATEWAY = ("10.0.0.1/24",)


def spec(name: str = "ov", vni: int | None = None, subnets: tuple[str, ...] = SUBNET,
         gateways: tuple[str, ...] = GATEWAY) -> OverlaySpec:
    return OverlaySpec(name, vni, subnets, gateways)


def test_second_host_joins_the_same_overlay_and_gets_its_vni() -> None:
    store = MemoryStore()
    vni = Cluster(store, "h1").join_overlay(spec())
    assert vni == options.VNI_AUTO_START
    assert Cluster(store, "h2").join_overlay(spec()) == vni
    assert Cluster(store, "h1").overlay("ov")["hosts"] == ["h1", "h2"]


def test_a_different_subnet_or_vni_on_another_host_is_refused_clearly() -> None:
    store = MemoryStore()
    Cluster(store, "h1").join_overlay(spec(vni=300))
    with pytest.raises(Conflict, match=r"subnet\(s\) 10.0.0.0/24, not 10.9.0.0/24"):
        Cluster(store, "h2").join_overlay(spec(subnets=("10.9.0.0/24",)))
    with pytest.raises(Conflict, match="VNI 300, not 301"):
        Cluster(store, "h2").join_overlay(spec(vni=301))
    with pytest.raises(Conflict, match="gateway"):
        Cluster(store, "h2").join_overlay(spec(gateways=("10.0.0.254/24",)))
    assert Cluster(store, "h1").overlay("ov")["hosts"] == ["h1"]


def test_an_explicit_vni_taken_by_another_overlay_is_refused() -> None:
    store = MemoryStore()
    Cluster(store, "h1").join_overlay(spec("a", vni=500))
    with pytest.raises(Conflict, match="VNI 500 is already used by overlay a"):
        Cluster(store, "h1").join_overlay(spec("b", vni=500))


def test_overlays_created_at_once_on_many_hosts_get_distinct_vnis() -> None:
    store = MemoryStore()
    results: dict[str, int] = {}
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        results[f"o{i}"] = Cluster(store, f"h{i}").join_overlay(spec(f"o{i}"))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert len(set(results.values())) == 8


def test_one_overlay_created_at_once_on_many_hosts_has_one_vni() -> None:
    store = MemoryStore()
    results: list[int] = []
    barrier = threading.Barrier(6)

    def create(i: int) -> None:
        barrier.wait()
        results.append(Cluster(store, f"h{i}").join_overlay(spec()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 6 and len(set(results)) == 1
    assert Cluster(store, "x").overlay("ov")["hosts"] == [f"h{i}" for i in range(6)]
    assert len(store.list("vnis/")) == 1


def test_the_last_host_out_frees_the_vni() -> None:
    store = MemoryStore()
    vni = Cluster(store, "h1").join_overlay(spec())
    Cluster(store, "h2").join_overlay(spec())
    Cluster(store, "h1").leave_overlay("ov")
    assert store.get(f"vnis/{vni}") is not None
    Cluster(store, "h2").leave_overlay("ov")
    assert store.get(f"vnis/{vni}") is None and Cluster(store, "h2").overlay("ov") is None
    Cluster(store, "h2").leave_overlay("ov")  # idempotent


def test_records_of_a_vanished_host_written_before_it_went_are_forgotten() -> None:
    store = MemoryStore()
    h2 = Cluster(store, "h2")
    h2.publish("ov", "e1", {"mac": "02:42:0a:00:00:04", "vtep": "192.168.1.2"}, None)
    cutoff = store.put("marker", {})
    h2.publish("ov", "e2", {"mac": "02:42:0a:00:00:05", "vtep": "192.168.1.2"}, None)
    assert Cluster(store, "h1").forget_records_of("h2", cutoff) == 1
    assert [e.key for e in h2.endpoints("ov")] == ["overlays/ov/endpoints/e2"]


def test_endpoint_keys_and_records() -> None:
    assert parse_endpoint_key("overlays/ov/endpoints/abc") == ("ov", "abc")
    assert parse_endpoint_key("overlays/ov/config") is None
    assert remote_of({"mac": "m", "vtep": "v", "ip": "10.0.0.4"}) == Remote("m", "v", "10.0.0.4")
    assert remote_of({"mac": "m"}) is None


def test_entries_replicate_to_each_peer_vtep_once() -> None:
    entries = Entries.of([
        Remote("02:00:00:00:00:01", "192.168.1.2", "10.0.0.4"),
        Remote("02:00:00:00:00:02", "192.168.1.2", "10.0.0.5", "fd00::5"),
        Remote("02:00:00:00:00:03", "172.31.2.2", "10.0.0.6"),
    ])
    assert entries.flood == {"192.168.1.2", "172.31.2.2"}
    assert ("fd00::5", "02:00:00:00:00:02") in entries.neigh
    assert len(entries.fdb) == 3


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({}, "needs -o overlay=NAME"),
        ({"overlay": "bad/name"}, "not a valid name"),
        ({"overlay": "o", "vni": "0"}, "between 1 and 16777215"),
        ({"overlay": "o", options.DOCKER_VXLANID_LIST: "300,301"}, "one VXLAN id"),
        ({"overlay": "o", "vtep": "not an if name!"}, "IPv4 address or an interface"),
        ({"overlay": "o", "mtu": "20"}, "between 68"),
        ({"overlay": "o", "colour": "blue"}, "unknown option 'colour'"),
    ],
)
def test_bad_options_are_refused_with_a_reason(opts: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        options.parse(opts)


def test_docker_option_names_and_aliases() -> None:
    parsed = options.parse({
        "overlay": "ov", options.DOCKER_VXLANID_LIST: "4242",
        "com.docker.network.driver.mtu": "1400", "vtep": "eth0",
    })
    assert (parsed.vni, parsed.mtu, parsed.vtep) == (4242, 1400, "eth0")
    assert options.parse({"overlay": "ov", "vtep": "172.31.1.2"}).vtep == "172.31.1.2"


def test_a_shared_pool_has_one_gateway_for_every_network_on_it() -> None:
    from cnm.ipam import Ipam

    ipam = Ipam(MemoryStore())
    first = ipam.request_pool(subnet="10.0.0.0/24", shared=True)
    assert str(ipam.request_address(first.id, gateway=True)) == "10.0.0.1"
    second = ipam.request_pool(subnet="10.0.0.0/24", shared=True)  # the overlay on host 2
    assert second.id == first.id
    assert str(ipam.request_address(second.id, gateway=True)) == "10.0.0.1"
    assert str(ipam.request_address(second.id, "10.0.0.1", gateway=True)) == "10.0.0.1"
    with pytest.raises(Conflict, match="already has gateway 10.0.0.1"):
        ipam.request_address(second.id, "10.0.0.254", gateway=True)
    ipam.release_address(second.id, "10.0.0.1")  # host 2's rollback: host 1 keeps it
    assert str(ipam.request_address(first.id)) == "10.0.0.2"
    ipam.release_pool(second.id)
    ipam.release_address(first.id, "10.0.0.1")  # the last network's: freed
    assert {str(a) for a in ipam.allocated(first.id)} == {"10.0.0.2"}
