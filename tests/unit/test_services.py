"""Services without the kernel: every value a user gives is checked (one sentence each),
the rules are the typed JSON nft expects, and the names the resolver gets."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cnm.errors import InvalidOption
from cnm.osl import nftjson as j
from cnm.services import model, rules
from cnm.services.model import Port, Published
from cnm.services.names import entries

IP = ipaddress.IPv4Address


@pytest.mark.parametrize("name", ["web", "a", "api-2", "A1", "x" * 63])
def test_good_names(name: str) -> None:
    assert model.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-web", "web-", "we_b", "tasks.web", "web\n", "x" * 64,
                                  "wéb", 7, None, "a b"])
def test_bad_names_are_one_sentence(name: object) -> None:
    with pytest.raises(InvalidOption) as info:
        model.check_name(name)
    assert "service name" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("spec", "port"), [
    ("80", Port("tcp", 80)), ("80/tcp", Port("tcp", 80)), ("53/udp", Port("udp", 53)),
    (443, Port("tcp", 443)), ({"port": 53, "proto": "udp"}, Port("udp", 53)),
    ("65535/udp", Port("udp", 65535)),
])
def test_ports(spec: object, port: Port) -> None:
    assert model.parse_port(spec) == port


@pytest.mark.parametrize("spec", ["0", "65536", "80/icmp", "80/TCP", "eighty", "80/", "/tcp",
                                  " 80", "80\n", "-1", "1e3", True, 80.0, None,
                                  {"port": "80"}, {"port": True}, "123456"])
def test_bad_ports(spec: object) -> None:
    with pytest.raises(InvalidOption):
        model.parse_port(spec)


def test_ports_are_deduplicated_and_at_least_one() -> None:
    assert model.check_ports(["80", "80/tcp", "53/udp"]) == [Port("tcp", 80), Port("udp", 53)]
    with pytest.raises(InvalidOption, match="at least one port"):
        model.check_ports([])
    with pytest.raises(InvalidOption, match="at most"):
        model.check_ports([str(p) for p in range(1, 100)])


def test_publish() -> None:
    ports = [Port("tcp", 80), Port("udp", 53)]
    assert model.check_publish(["8080:80/tcp", "5353:53/udp"], ports) == [
        Published("tcp", 8080, 80), Published("udp", 5353, 53)]
    assert model.check_publish("8080:80", ports) == [Published("tcp", 8080, 80)]
    for bad, words in [("8080:81", "not one of the service's ports"),
                       ("8080:53/tcp", "not one of"), ("8080", "HOSTPORT:PORT"),
                       ("0:80", "from 1 to 65535"), ("1.2.3.4:8080:80", "HOSTPORT:PORT")]:
        with pytest.raises(InvalidOption, match=words):
            model.check_publish([bad], ports)
    with pytest.raises(InvalidOption, match="published twice"):
        model.check_publish(["8080:80", "8080:81"], [Port("tcp", 80), Port("tcp", 81)])


def plan(balance: str = "rr", backends: int = 3) -> rules.LbPlan:
    return rules.LbPlan(IP("10.1.0.2"), (
        rules.ServicePlan("aaaaaaaaaaaa", IP("10.1.0.100"), (Port("tcp", 80), Port("udp", 53)),
                          balance, tuple(IP(f"10.1.0.{10 + i}") for i in range(backends)), 7),
    ))


def test_round_robin_rules_are_the_json_nft_expects() -> None:
    chains, sets = rules.lb_ruleset(plan())
    by_name = {c.name: c for c in chains}
    assert [s.name for s in sets] == ["service-ips"]
    assert sets[0].map_type == "verdict"
    assert sets[0].elements == (
        [{"concat": ["10.1.0.100", "tcp", 80]}, {"goto": {"target": "svc-aaaaaaaaaaaa"}}],
        [{"concat": ["10.1.0.100", "udp", 53]}, {"goto": {"target": "svc-aaaaaaaaaaaa"}}],
    )
    spread = by_name["svc-aaaaaaaaaaaa"].rules[0].exprs[0]
    assert spread == {"dnat": {"addr": {"map": {
        "key": {"numgen": {"mode": "inc", "mod": 3, "offset": 0}},
        "data": {"set": [[0, "10.1.0.10"], [1, "10.1.0.11"], [2, "10.1.0.12"]]}}}}}
    assert by_name["prerouting"].hook is not None
    assert by_name["forward"].hook.policy == "drop"  # type: ignore[union-attr]
    commands = j.replace_table("ip", "pycnm-lb", chains, sets)
    kinds = [next(iter(c["add"])) if "add" in c else "delete" for c in commands]
    # chains exist before the map whose elements jump to them, rules come last
    assert kinds.index("map") > max(i for i, k in enumerate(kinds) if k == "chain")
    assert kinds.index("rule") > kinds.index("map")
    json.dumps(commands)  # plain JSON all through


def test_source_hash_and_random() -> None:
    chains, _ = rules.lb_ruleset(plan("source-hash"))
    key = chains[-1].rules[0].exprs[0]["dnat"]["addr"]["map"]["key"]
    assert key == {"jhash": {"expr": {"payload": {"protocol": "ip", "field": "saddr"}},
                             "mod": 3, "seed": 7, "offset": 0}}
    chains, _ = rules.lb_ruleset(plan("random"))
    assert chains[-1].rules[0].exprs[0]["dnat"]["addr"]["map"]["key"]["numgen"]["mode"] == \
        "random"


def test_no_backend_means_no_translation_and_a_refusal() -> None:
    chains, sets = rules.lb_ruleset(plan(backends=0))
    by_name = {c.name: c for c in chains}
    assert sets[0].elements == () and by_name["prerouting"].rules == []
    refuse = [r.exprs[-1] for r in by_name["input"].rules]
    assert refuse == [{"reject": {"type": "tcp reset"}},
                      {"reject": {"type": "icmp", "expr": "port-unreachable"}}]


def test_fast_path_rules_match_the_bridge_and_leave_hairpin_and_empty_services_out() -> None:
    empty = rules.ServicePlan("bbbbbbbbbbbb", IP("10.1.0.101"), (Port("tcp", 80),), "rr", (), 1)
    fast = rules.FastPlan((
        rules.FastNetwork("0123456789abcdef", "pcbr-0123456789", (*plan().services, empty)),
        rules.FastNetwork("fedcba9876543210", "pcbr-fedcba9876", (empty,)),
    ))
    chains, sets = rules.fast_ruleset(fast)
    by_name = {c.name: c for c in chains}
    assert [s.name for s in sets] == ["ips-0123456789"]  # the other network: nothing to do
    assert [e[0]["concat"][0] for e in sets[0].elements] == ["10.1.0.100", "10.1.0.100"]
    assert set(by_name) == {"prerouting", "svc-aaaaaaaaaaaa"}  # no chain for no backend
    (match_bridge, lookup), = [r.exprs for r in by_name["prerouting"].rules]
    assert match_bridge == {"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                      "right": "pcbr-0123456789"}}
    assert lookup["vmap"]["data"] == "@ips-0123456789"
    hairpin, spread = by_name["svc-aaaaaaaaaaaa"].rules
    assert hairpin.exprs == (
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"set": ["10.1.0.10", "10.1.0.11", "10.1.0.12"]}}},
        {"return": None})
    assert spread.exprs[0] == {"counter": None}
    assert spread.exprs[1]["dnat"]["addr"]["map"]["key"]["numgen"]["mode"] == "inc"
    json.dumps(j.replace_table("ip", "pycnm-services", chains, sets))
    chains, sets = rules.fast_ruleset(rules.FastPlan(()))
    assert [(c.name, c.rules) for c in chains] == [("prerouting", [])] and sets == []


def test_ingress_rules() -> None:
    chains = rules.ingress_ruleset(rules.IngressPlan(
        (rules.IngressPort("tcp", 8080, IP("10.1.0.100"), 80),),
        (("pcig-aaaaaaaaaa", (ipaddress.IPv4Network("10.1.0.0/24"),)),)))
    pre, post, forward = chains
    assert pre.rules[0].exprs[-1] == {"dnat": {"family": "ip", "addr": "10.1.0.100",
                                               "port": 80}}
    assert post.rules[0].exprs[-1] == {"masquerade": None}
    assert forward.rules[-1].exprs[-1] == {"drop": None}


@pytest.mark.parametrize("bad", ["10.1.0.1", 5, None])
def test_typed_values_only(bad: object) -> None:
    with pytest.raises(j.InvalidNftValue):
        j.service_key(bad, "tcp", 80)  # type: ignore[arg-type]
    with pytest.raises(j.InvalidNftValue):
        j.match_addr_in("daddr", [bad])  # type: ignore[list-item]


def test_nft_builders_refuse_what_they_cannot_write() -> None:
    with pytest.raises(j.InvalidNftValue):
        j.service_key(IP("10.0.0.1"), "icmp", 80)  # type: ignore[arg-type]
    with pytest.raises(j.InvalidNftValue):
        j.service_key(IP("10.0.0.1"), "tcp", 70000)
    with pytest.raises(j.InvalidNftValue):
        j.vmap_lookup(j.service_key_expr(), "bad name; flush ruleset")
    with pytest.raises(j.InvalidNftValue):
        j.match_ct_status("established")  # type: ignore[arg-type]
    with pytest.raises(j.InvalidNftValue):
        j.match_addr_in("daddr", [ipaddress.IPv6Address("fd00::1")])


def test_names_for_the_resolver() -> None:
    state = {"network": "n1", "names": [
        {"service": "web", "mode": "vip", "vip": "10.1.0.100", "backends": ["10.1.0.10"]},
        {"service": "rr", "mode": "dnsrr", "vip": None, "backends": ["10.1.0.10", "10.1.0.11"]},
        {"service": "idle", "mode": "vip", "vip": "10.1.0.101", "backends": []},
        {"service": "broken", "mode": "vip", "vip": "not an address"},
    ]}
    got = {e.names[0]: [str(a) for a in e.addresses] for e in entries(state)}
    assert got == {"web": ["10.1.0.100"], "tasks.web": ["10.1.0.10"],
                   "rr": ["10.1.0.10", "10.1.0.11"], "tasks.rr": ["10.1.0.10", "10.1.0.11"],
                   "idle": ["10.1.0.101"]}
    assert entries({"names": []}) == [] and entries({"network": 5}) == []


def test_network_removal_looks_for_service_state_where_the_manager_keeps_it() -> None:
    """Network.delete imports the services manager only when one of these prefixes holds
    something: every key the manager writes in a host's space must be under them."""
    from cnm.network import SERVICES_LB_PREFIX, SERVICES_PREFIX
    from cnm.services import manager
    from cnm.store.memory import MemoryStore

    for key in (manager.LB_KEY, manager.INGRESS_KEY, manager.FAST_KEY, manager.AGENT_KEY):
        assert key.startswith(SERVICES_LB_PREFIX), key
    space = manager.Space("n1", None, MemoryStore())
    assert space.prefix == f"{SERVICES_PREFIX}n1/" and space.key("web").startswith(space.prefix)
