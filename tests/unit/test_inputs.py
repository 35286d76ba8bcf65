"""The checks every value from outside goes through (cnm.inputs, cnm.portmap, the CLI's -p):
what they accept, in which form, and the one sentence that refuses the rest."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cnm import inputs
from cnm.cli.endpoint import parse_publish
from cnm.driverapi import PortBinding, refuse_internal_options
from cnm.errors import InvalidOption
from cnm.portmap import parse_portmap

NEWLINE = "\nflush ruleset"


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidOption) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("text", ["10.1.0.2", "fd00::2", "::ffff:10.1.0.2"])
def test_addresses_are_parsed(text: str) -> None:
    assert inputs.address(text, "HostIP") == ipaddress.ip_address(text)


@pytest.mark.parametrize("value", [
    "fe80::1%eth0", "fe80::1%a" + NEWLINE, "10.1.0.2" + NEWLINE, "10.1.0.2\n", " 10.1.0.2",
    "10.1.0.2/24", "", "300.1.0.1", "host.example", 167837954, None, b"10.1.0.2", ["10.1.0.2"],
])
def test_anything_but_a_plain_address_is_refused_naming_the_field(value: Any) -> None:
    assert "HostIP" in refused(inputs.address, value, "HostIP")


def test_an_address_of_the_other_family_is_refused() -> None:
    assert "IPv4" in refused(inputs.address, "fd00::2", "HostIP", version=4)


@pytest.mark.parametrize("value", [80.9, True, False, "80", None, -1, 65536, 70000, [80]])
def test_ports_are_integers_from_1_to_65535(value: Any) -> None:
    assert "HostPort" in refused(inputs.port, value, "HostPort")


def test_port_zero_only_where_allowed() -> None:
    assert inputs.port(0, "HostPort", allow_zero=True) == 0
    assert inputs.port(65535, "HostPort") == 65535
    refused(inputs.port, 0, "Port")


@pytest.mark.parametrize("name", ["web", "web-1", "a.b-c.example", "x" * 63, "0day"])
def test_hostnames_follow_rfc_1123(name: str) -> None:
    assert inputs.hostname(name, "hostname") == name


@pytest.mark.parametrize("name", ["web" + NEWLINE, "web\n", "-web", "web-", "a..b", "a_b",
                                  "x" * 64, "", "a b", "\u0435xample", 5])
def test_other_hostnames_are_refused(name: Any) -> None:
    assert "hostname" in refused(inputs.hostname, name, "hostname")


def test_search_domains_may_end_with_a_dot() -> None:
    assert inputs.domain("example.com.", "search") == "example.com."
    refused(inputs.domain, "example.com" + NEWLINE, "search")
    refused(inputs.domain, ".", "search")


@pytest.mark.parametrize("option", ["ndots:2", "timeout:1", "rotate", "single-request",
                                    "edns0", "use-vc"])
def test_resolver_options(option: str) -> None:
    assert inputs.dns_option(option, "option") == option


@pytest.mark.parametrize("option", ["ndots:2" + NEWLINE, "ndots:2 rotate", "ndots:", ":2",
                                    "ndots:two", "", 2])
def test_other_resolver_options_are_refused(option: Any) -> None:
    refused(inputs.dns_option, option, "option")


def test_macs_are_unicast_and_normalised() -> None:
    assert inputs.mac("02-42-AC-11-00-02", "mac") == "02:42:ac:11:00:02"
    assert "multicast" in refused(inputs.mac, "01:00:5e:00:00:01", "mac")
    assert "multicast" in refused(inputs.mac, "ff:ff:ff:ff:ff:ff", "mac")
    refused(inputs.mac, "02:42:ac:11:00:02\n", "mac")
    refused(inputs.mac, "02:42:ac:11:00", "mac")


# --- port bindings ------------------------------------------------------------------------


def test_a_docker_portmap_is_parsed() -> None:
    raw = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080,
            "HostPortEnd": 18080},
           {"Proto": 17, "Port": 53, "HostIP": "0.0.0.0"},
           {"Proto": "sctp", "Port": 9, "HostIP": "fd00::1", "HostPort": 10, "HostPortEnd": 20},
           PortBinding("tcp", 443, 8443, 0, "127.0.0.1")]
    assert parse_portmap(raw) == [
        PortBinding("tcp", 80, 18080, 18080, ""), PortBinding("udp", 53, 0, 0, "0.0.0.0"),
        PortBinding("sctp", 9, 10, 20, "fd00::1"), PortBinding("tcp", 443, 8443, 0, "127.0.0.1"),
    ]
    assert parse_portmap(None) == []


@pytest.mark.parametrize(("raw", "words"), [
    ({"Proto": 6, "Port": 80}, "must be a list"),
    ("80:80", "must be a list"),
    ([5], "must be an object"),
    ([{"Proto": [6], "Port": 80}], "Proto of port binding 1"),
    ([{"Proto": {"a": 1}, "Port": 80}], "Proto of port binding 1"),
    ([{"Proto": True, "Port": 80}], "Proto of port binding 1"),
    ([{"Proto": 99, "Port": 80}], "unknown protocol"),
    ([{"Proto": 6, "Port": 80.9}], "Port of port binding 1"),
    ([{"Proto": 6, "Port": True}], "Port of port binding 1"),
    ([{"Proto": 6, "Port": "80"}], "Port of port binding 1"),
    ([{"Proto": 6}], "Port of port binding 1"),
    ([{"Proto": 6, "Port": 80}, {"Proto": 6, "Port": 80, "HostPort": 70000}],
     "HostPort of port binding 2"),
    ([{"Proto": 6, "Port": 80, "HostPort": 8080.5}], "HostPort of port binding 1"),
    ([{"Proto": 6, "Port": 80, "HostPort": 90, "HostPortEnd": 80}], "ends before it starts"),
    ([{"Proto": 6, "Port": 80, "HostPortEnd": True}], "HostPortEnd of port binding 1"),
    ([{"Proto": 6, "Port": 80, "HostIP": "1.2.3.4" + NEWLINE}], "HostIP of port binding 1"),
    ([{"Proto": 6, "Port": 80, "HostIP": "fe80::1%lo" + NEWLINE}], "HostIP of port binding 1"),
    ([{"Proto": 6, "Port": 80, "HostIP": "localhost"}], "HostIP of port binding 1"),
    ([{"Proto": 6, "Port": 80, "HostIP": 1}], "HostIP of port binding 1"),
    ([{"Proto": 6, "Port": 80, "HostIP": "fd00::1", "IP": "10.1.0.2"}], "IPv4 address"),
    ([{"Proto": 6, "Port": 80, "IP": "10.1.0.2" + NEWLINE}], "IP of port binding 1"),
    ([PortBinding("tcp", 80, 0, 0, "1.2.3.4" + NEWLINE)], "HostIP of port binding 1"),
])
def test_bad_bindings_are_refused_naming_the_field(raw: Any, words: str) -> None:
    assert words in refused(parse_portmap, raw)


@pytest.mark.parametrize(("spec", "binding"), [
    ("80", {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}),
    ("8080:80/udp", {"Proto": 17, "Port": 80, "HostIP": "", "HostPort": 8080,
                     "HostPortEnd": 0}),
    ("127.0.0.1:8080-8090:80", {"Proto": 6, "Port": 80, "HostIP": "127.0.0.1",
                                "HostPort": 8080, "HostPortEnd": 8090}),
    ("[::1]:8080:80/sctp", {"Proto": 132, "Port": 80, "HostIP": "::1", "HostPort": 8080,
                            "HostPortEnd": 0}),
    ("127.0.0.1::80", {"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 0,
                       "HostPortEnd": 0}),
])
def test_dash_p_is_read_as_docker_reads_it(spec: str, binding: dict[str, object]) -> None:
    assert parse_publish([spec]) == [binding]
    assert parse_portmap(parse_publish([spec]))  # and the driver takes it


@pytest.mark.parametrize("spec", ["80.9:80", "8080:80.9", "x:80", "8080:80/icmp", "+80",
                                  "\u0668\u0660:80", "8080:", "1-:80"])
def test_dash_p_ports_must_be_numbers(spec: str) -> None:
    assert refused(parse_publish, [spec]).startswith("-p ")


def test_a_dash_p_host_ip_with_a_newline_is_refused_before_anything_is_made() -> None:
    [binding] = parse_publish(["1.2.3.4" + NEWLINE + ":8080:80"])
    assert "HostIP" in refused(parse_portmap, [binding])


def test_internal_options_are_the_cores() -> None:
    assert refuse_internal_options({"com.docker.network.portmap": []}, "x") == {
        "com.docker.network.portmap": []}
    assert refuse_internal_options(None, "x") == {}
    assert "pycnm.join.ifname" in refused(refuse_internal_options,
                                          {"pycnm.join.ifname": "eth0"}, "join")
