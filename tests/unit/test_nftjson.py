"""The typed nft JSON builder: values of the wrong type or shape never reach a ruleset."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cnm.osl import nftjson as j

V4 = ipaddress.ip_address("10.1.0.2")
V6 = ipaddress.ip_address("fd00::2")


@pytest.mark.parametrize("bad", ["eth0\nflush ruleset", 'a"b', "x" * 16, "", "a b", "..", 7])
def test_interface_names_are_checked(bad: object) -> None:
    with pytest.raises(j.InvalidNftValue):
        j.match_ifname("iifname", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, 80.0, "80", -1, 65536])
def test_ports_are_integers_in_range(bad: object) -> None:
    with pytest.raises(j.InvalidNftValue):
        j.match_port("tcp", "dport", bad)  # type: ignore[arg-type]
    with pytest.raises(j.InvalidNftValue):
        j.dnat(V4, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["10.1.0.2", "10.1.0.2\nflush ruleset", "example.com", 167837698])
def test_addresses_must_be_ipaddress_objects(bad: object) -> None:
    with pytest.raises(j.InvalidNftValue):
        j.dnat(bad)  # type: ignore[arg-type]
    with pytest.raises(j.InvalidNftValue):
        j.match_addr("daddr", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["pycnm\n", "py cnm", "1abc", "a;b", ""])
def test_table_and_chain_names_are_checked(bad: str) -> None:
    with pytest.raises(j.InvalidNftValue):
        j.replace_table("inet", bad, [])
    with pytest.raises(j.InvalidNftValue):
        j.replace_table("inet", "pycnm", [j.Chain(bad)])


def test_comment_cannot_carry_syntax() -> None:
    with pytest.raises(j.InvalidNftValue):
        j.rule(j.accept(), comment='x" ; flush ruleset')


def test_family_follows_the_value() -> None:
    assert j.match_addr("saddr", ipaddress.ip_network("fd00::/64")) == {"match": {
        "op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
        "right": {"prefix": {"addr": "fd00::", "len": 64}}}}
    assert j.dnat(V6, 80) == {"dnat": {"family": "ip6", "addr": "fd00::2", "port": 80}}
    assert j.match_addr("daddr", ipaddress.ip_network("10.0.0.1/32"))["match"]["right"] == \
        "10.0.0.1"


def test_replace_table_is_one_exact_transaction() -> None:
    commands = j.replace_table("inet", "pycnm", [
        j.Chain("prerouting", j.nat_hook("prerouting"),
                [j.rule(j.match_port("udp", "dport", range(8000, 8011)), j.dnat(V4, 53))]),
    ])
    verbs = [next(iter(c)) for c in commands]
    assert verbs == ["add", "delete", "add", "add", "add"]
    assert commands[3]["add"]["chain"]["prio"] == -100
    text = json.dumps(commands)
    assert '"range": [8000, 8010]' in text


def test_create_table_is_the_replace_without_its_delete_and_fails_on_a_table_there() -> None:
    chains = [j.Chain("output", j.nat_hook("output"), [j.rule(j.dnat(V4, 5353))])]
    created, replaced = j.create_table("ip", "pycnm-dns", chains), \
        j.replace_table("ip", "pycnm-dns", chains)
    assert created[0] == {"create": replaced[0]["add"]}  # nft refuses it if there
    assert created[1:] == replaced[3:]


def test_kernel_names_refuse_a_trailing_newline() -> None:
    from cnm import names

    assert not names.is_valid_ifname("eth0\n")
    assert not names.is_valid_object_name("web\n")
    assert names.is_valid_ifname("eth0") and names.is_valid_object_name("web")
