"""Lab files with names: aliases and DNS expectations are checked like every other field,
each problem tied to its line (no kernel needed)."""

from __future__ import annotations

import textwrap

import pytest

from netns_fixtures.lab import LabFileError, load_text

BASE = """
name: names
hosts: [{name: h1}]
networks: [{name: web, driver: bridge, host: h1, subnet: 10.98.0.0/24}]
sandboxes:
  - {name: a, host: h1, networks: [{name: web, aliases: [db, cache]}]}
  - {name: b, host: h1, networks: [web]}
expect:
"""


def lab(*expect: str, sandbox: str = "") -> str:
    text = BASE + "".join(f"  - {e}\n" for e in expect)
    return text.replace("  - {name: b, host: h1, networks: [web]}", sandbox) if sandbox \
        else text


def test_a_good_file_gives_dns_checks_and_agents_everywhere() -> None:
    topo = load_text(lab("{from: b, resolve: db, answer: [a]}",
                         "{from: b, resolve: cache.web, type: AAAA, expect: nxdomain}",
                         "{from: a, resolve: b, answer: [b, 10.98.0.9], rotates: true}",
                         "{from: a, to: b}"))
    checks = [e for e in topo.expect if e.proto == "dns"]
    assert [(e.src, str(e.dst), e.expect, e.rdtype) for e in checks] == [
        ("b", "db", "resolves", "A"), ("b", "cache.web", "nxdomain", "AAAA"),
        ("a", "b", "resolves", "A")]
    assert [str(t) for t in checks[2].answer] == ["b", "10.98.0.9"] and checks[2].rotates
    assert topo.sandbox("a").networks[0].aliases == ("db", "cache")
    assert topo.uses_dns() and topo.agent_hosts() == ["h1"]


@pytest.mark.parametrize("expect, sandbox, message", [
    ("{from: b, resolve: 'bad_name'}", "", "not a DNS name to ask for"),
    ("{from: nobody, resolve: db}", "", "unknown node 'nobody'"),
    ("{from: b, resolve: db, expect: reach}", "", "expect"),
    ("{from: b, resolve: db, type: MX}", "", "type"),
    ("{from: b, resolve: db, answer: [a], expect: nxdomain}", "", "has no answer"),
    ("{from: b, resolve: db, answer: [a], rotates: true}", "", "two addresses or more"),
    ("{from: b, resolve: db, answer: [ghost]}", "", "unknown node 'ghost'"),
    ("{from: b, resolve: db, tcp: 1}", "", "unknown key 'tcp'"),
    ("{from: b, to: a}", "  - {name: b, host: h1, networks: [{name: web, aliases: [-x]}]}",
     "not a DNS name"),
    ("{from: b, to: a}", "  - {name: b, host: h1, networks: [{name: web, aliases: [x_y]}]}",
     "not a DNS name"),
])
def test_bad_dns_fields_are_refused_with_their_line(expect: str, sandbox: str,
                                                    message: str) -> None:
    with pytest.raises(LabFileError) as caught:
        load_text(textwrap.dedent(lab(expect, sandbox=sandbox)), "names.yaml")
    assert any(message in m and m.startswith("names.yaml:") for m in caught.value.messages), \
        caught.value.messages


def test_without_names_only_overlay_hosts_run_agents() -> None:
    topo = load_text(BASE.replace(", aliases: [db, cache]", "") + "  - {from: a, to: b}\n")
    assert not topo.uses_dns() and topo.agent_hosts() == []
