"""The resolver's pure parts: names from records, lookups as Docker does them, replies as
real DNS messages (parsed back with dnspython), aliases checked, upstreams read."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from cnm.dns import answer, registry, upstreams
from cnm.dns.names import check_aliases, is_valid_hostname
from cnm.errors import InvalidOption

IP = ipaddress.ip_address


def records() -> registry.Records:
    """web: api (alias db, Svc), w2 and w3 (alias db); back (internal): w2 again as b2."""
    return registry.Records(
        networks=[{"id": "n1", "name": "Web"}, {"id": "n2", "name": "back", "internal": True}],
        endpoints=[
            {"id": "e1", "name": "api-ep", "network_id": "n1", "address": "10.1.0.2/24",
             "sandbox_id": "s1", "aliases": ["db", "Svc"]},
            {"id": "e2", "name": "w2", "network_id": "n1", "address": "10.1.0.3/24",
             "address_v6": "fd00::3/64", "sandbox_id": "s2", "aliases": ["db"]},
            {"id": "e3", "name": "b2", "network_id": "n2", "address": "10.2.0.3/24",
             "sandbox_id": "s2"},
            {"id": "e4", "name": "w3", "network_id": "n1", "address": "10.1.0.4/24",
             "sandbox_id": "s3", "aliases": ["db"]},
            {"id": "e5", "name": "loose", "network_id": "n1", "address": "10.1.0.9/24"},
        ],
        sandboxes=[
            {"id": "s1", "name": "api", "netns_path": "/x", "interfaces": {"eth0": "n1/e1"}},
            {"id": "s2", "name": "two", "netns_path": "/y",
             "interfaces": {"eth0": "n1/e2", "eth1": "n2/e3"}},
            {"id": "s3", "name": "three", "netns_path": "/z", "interfaces": {"eth0": "n1/e4"}},
            {"id": "s4", "name": "side", "mode": "container", "container": "s1",
             "netns_path": "/x"},
            {"id": "s5", "name": "inner", "netns_path": "/i", "interfaces": {"eth0": "n2/e6"}},
            {"id": "s6", "name": "hostly", "mode": "host", "netns_path": "/h"},
        ],
    )


def ask(view: registry.SandboxView, name: str, rdtype: str = "A",
        tcp: bool = False) -> dns.message.Message | str | None:
    query = dns.message.make_query(name, rdtype)
    outcome = answer.handle(view, query.to_wire(), tcp)
    if isinstance(outcome, answer.Reply):
        reply = dns.message.from_wire(outcome.wire(query.to_wire()[:2]))
        assert reply.id == query.id
        return reply
    return outcome


def addresses(reply: dns.message.Message | str | None) -> list[str]:
    assert isinstance(reply, dns.message.Message), reply
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


@pytest.fixture
def snapshot() -> registry.Snapshot:
    return registry.build(records(), "h1")


def test_served_sandboxes_are_those_with_a_namespace_of_their_own(snapshot) -> None:
    assert set(snapshot.sandboxes) == {"s1", "s2", "s3", "s5"}
    assert snapshot.sandboxes["s2"].forward and snapshot.sandboxes["s1"].forward
    assert not snapshot.sandboxes["s5"].forward  # internal networks only


def test_every_name_form_case_insensitive(snapshot) -> None:
    view = snapshot.sandboxes["s3"]
    for name in ("api", "API", "api-ep", "svc", "SVC.web", "api.WEB", "side", "side.web"):
        assert addresses(ask(view, name)) == ["10.1.0.2"], name
    assert sorted(addresses(ask(view, "db"))) == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert addresses(ask(view, "two", "AAAA")) == ["fd00::3"]
    reply = ask(view, "Api.Web")
    assert isinstance(reply, dns.message.Message)
    assert reply.answer[0].name.to_text() == "Api.Web."  # the question's case, echoed
    assert reply.flags & dns.flags.RA and reply.rcode() == dns.rcode.NOERROR


def test_isolation_and_forwarding(snapshot) -> None:
    web_only = snapshot.sandboxes["s1"]
    assert ask(web_only, "b2") == answer.FORWARD  # on a network api is not on
    assert ask(web_only, "b2.back") == answer.FORWARD
    assert ask(web_only, "loose") == answer.FORWARD  # not in a sandbox: no name
    assert ask(web_only, "example.com") == answer.FORWARD
    both = snapshot.sandboxes["s2"]
    assert addresses(ask(both, "b2")) == ["10.2.0.3"]
    assert addresses(ask(both, "two.back")) == ["10.2.0.3"]
    assert addresses(ask(both, "two")) == ["10.1.0.3"]  # the first network that knows it


def test_known_names_with_other_types_get_an_empty_answer(snapshot) -> None:
    view = snapshot.sandboxes["s1"]
    for rdtype in ("AAAA", "MX", "TXT"):
        reply = ask(view, "api", rdtype)
        assert addresses(reply) == [] and reply.rcode() == dns.rcode.NOERROR


def test_ptr_is_name_dot_network(snapshot) -> None:
    view = snapshot.sandboxes["s3"]
    assert addresses(ask(view, "2.0.1.10.in-addr.arpa", "PTR")) == ["api.Web."]
    v6 = dns.reversename.from_address("fd00::3").to_text()
    assert addresses(ask(view, v6, "PTR")) == ["two.Web."]
    assert ask(view, "3.0.2.10.in-addr.arpa", "PTR") == answer.FORWARD  # not its network


def test_round_robin_shuffles_every_reply(snapshot) -> None:
    view = snapshot.sandboxes["s1"]
    query = dns.message.make_query("db", "A").to_wire()
    reply = answer.handle(view, query)
    assert isinstance(reply, answer.Reply) and len(reply.records) == 3
    orders = {tuple(addresses(dns.message.from_wire(reply.wire(query[:2]))))
              for _ in range(200)}
    assert len(orders) == 6  # every order of three comes up
    assert {o[0] for o in orders} == {"10.1.0.2", "10.1.0.3", "10.1.0.4"}


def test_too_big_for_udp_is_truncated_and_whole_over_tcp() -> None:
    many = registry.Records(
        networks=[{"id": "n", "name": "big"}],
        endpoints=[{"id": f"e{i}", "name": f"m{i}", "network_id": "n",
                    "address": f"10.9.{i // 200}.{i % 200 + 2}/16", "sandbox_id": f"s{i}",
                    "aliases": ["crowd"]} for i in range(60)],
        sandboxes=[{"id": f"s{i}", "name": f"m{i}", "netns_path": f"/{i}",
                    "interfaces": {"eth0": f"n/e{i}"}} for i in range(60)],
    )
    view = registry.build(many, "h").sandboxes["s0"]
    query = dns.message.make_query("crowd", "A", use_edns=False)
    udp = dns.message.from_wire(answer.handle(view, query.to_wire()).wire(b"\0\0"))
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.message.from_wire(answer.handle(view, query.to_wire(), tcp=True).wire(b"\0\0"))
    assert len(addresses(tcp)) == 60


@pytest.mark.parametrize("data, rcode", [
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ab", dns.rcode.FORMERR),
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
     dns.rcode.FORMERR),  # a label of 64 bytes
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
     dns.rcode.FORMERR),  # a compression pointer to itself
    (b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"
     b"\x01b\x00\x00\x01\x00\x01", dns.rcode.FORMERR),  # two questions
    (b"\x12\x34\x29\x00\x00\x00\x00\x00\x00\x00\x00\x00", dns.rcode.NOTIMP),  # UPDATE
])
def test_broken_queries_get_one_header(snapshot, data: bytes, rcode: int) -> None:
    reply = answer.handle(snapshot.sandboxes["s1"], data)
    assert isinstance(reply, answer.Reply)
    wire = reply.wire(data[:2])
    assert wire[:2] == b"\x12\x34" and wire[2] & 0x80 and wire[3] & 0x0F == rcode


def test_too_short_and_responses_are_dropped(snapshot) -> None:
    view = snapshot.sandboxes["s1"]
    assert answer.handle(view, b"\x12\x34\x01") is None
    response = dns.message.make_response(dns.message.make_query("api", "A")).to_wire()
    assert answer.handle(view, response) is None


def test_a_huge_name_is_answered_not_crashed(snapshot) -> None:
    view = snapshot.sandboxes["s1"]
    name = ".".join(["x" * 63] * 3 + ["y" * 61])  # 253 characters: the most there is
    assert ask(view, name) == answer.FORWARD


def test_aliases_are_rfc1123_host_names() -> None:
    assert check_aliases(["db", "DB", "web.internal", "a-b"]) == ["db", "web.internal", "a-b"]
    for bad in ("-db", "db-", "d_b", "db\n", "", "a" * 64, ".".join(["a" * 60] * 5), "a..b",
                "db.", "dé"):
        assert not is_valid_hostname(bad)
        with pytest.raises(InvalidOption, match="alias"):
            check_aliases(["ok", bad])
    with pytest.raises(InvalidOption, match="list"):
        check_aliases("db")


def test_upstreams_from_resolv_conf_and_systemd_resolved(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n"
                    "nameserver bogus\nnameserver 192.0.2.1\nnameserver 192.0.2.2\n"
                    "nameserver 192.0.2.3\nsearch x\n")
    got = upstreams.read(str(conf), str(tmp_path / "absent"))
    assert got.servers == (IP("192.0.2.1"), IP("fe80::1"), IP("192.0.2.2"))
    stub = tmp_path / "stub.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    real = tmp_path / "real.conf"
    real.write_text("nameserver 198.51.100.53\nnameserver 127.0.0.53\n")
    got = upstreams.read(str(stub), str(real))
    assert got.servers == (IP("198.51.100.53"),) and got.source == str(real)
    assert upstreams.read(str(stub), str(tmp_path / "absent")).servers == (IP("127.0.0.53"),)
    loopback = tmp_path / "lo.conf"
    loopback.write_text("nameserver 127.0.0.1\n")  # dialled from the host: kept
    assert upstreams.read(str(loopback)).servers == (IP("127.0.0.1"),)


def test_cluster_records_join_the_networks_of_their_scope() -> None:
    mine = records()
    mine.scopes = {"n1": "overlay:ov"}
    published = registry.publish_records(mine, "h1")
    assert set(published) == {f"dns/scopes/overlay:ov/h1/{e}" for e in ("e1", "e2", "e4")}
    assert published["dns/scopes/overlay:ov/h1/e1"]["names"] == ["api", "api-ep", "db", "Svc",
                                                                 "side"]
    other = registry.Records(
        networks=[{"id": "m1", "name": "ovnet"}],
        endpoints=[{"id": "f1", "name": "local", "network_id": "m1", "address": "10.1.0.8/24",
                    "sandbox_id": "t1"}],
        sandboxes=[{"id": "t1", "name": "local", "netns_path": "/t",
                    "interfaces": {"eth0": "m1/f1"}}],
        published={**published, "dns/scopes/overlay:other/h1/e9": {
            "names": ["elsewhere"], "addresses": ["10.1.0.77"], "ptr": "elsewhere"}},
        scopes={"m1": "overlay:ov"},
    )
    view = registry.build(other, "h2").sandboxes["t1"]
    assert view.lookup("db.ovnet") == (IP("10.1.0.2"), IP("10.1.0.3"), IP("fd00::3"),
                                       IP("10.1.0.4"))
    assert view.lookup("side") == (IP("10.1.0.2"),)
    assert view.lookup("elsewhere") is None  # another overlay
    assert view.reverse(IP("10.1.0.3")) == "two.ovnet"
    # A host never reads back its own records as remote ones.
    again = registry.build(registry.Records(**{**mine.__dict__, "published": published}), "h1")
    assert again.sandboxes["s1"].lookup("db") == view.lookup("db")
