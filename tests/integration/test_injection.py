"""No input becomes syntax: a value with a line break (or any other character its field
cannot hold) in any field that reaches nft, a file, a path or a kernel name is refused
with one sentence naming the field, through the Python API, the Docker plugin and the
CLI, and nothing changes: not the store, not the links, not the sandbox files, not the
nft ruleset, and least of all a table of another owner in the same namespace.

One emulated host for the module: a network with a published port (so pycnm's own table
is loaded), a sandbox joined to it, a spare endpoint, and the sentinel table
``inet hsentinel`` that another program owns. Every case snapshots all of that before
and after its refused call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cnm.controller import Controller
from cnm.driverapi import OPT_MACADDRESS, OPT_PORTMAP
from cnm.errors import CNMError
from cnm.network import Network
from cnm.sandbox import Sandbox
from netns_fixtures.netns import Namespace, unique_name
from plugin_server.app import create_app
from tests.integration.bridge_helpers import unique

pytestmark = pytest.mark.root

NL = "\nflush ruleset"  # what a line break would let through into an nft script
SENTINEL = """table inet hsentinel {
    chain input {
        type filter hook input priority 10; policy accept;
        meta mark 0x00c0ffee drop comment "another program's rule"
    }
}
"""


@dataclass
class Env:
    host: Namespace
    ctl: Controller
    net: Network
    sb: Sandbox
    other: Sandbox  # joined to nothing
    spare: Any  # an endpoint not joined to anything
    client: Any  # Flask test client of the plugin on the same Controller
    store_url: str
    token: str  # in every name this module makes

    def snapshot(self) -> dict[str, Any]:
        return {
            "store": sorted((e.key, json.dumps(e.value, sort_keys=True))
                            for e in self.ctl.store.list("")),
            "links": sorted(line.split()[0] for line in self.host.run(
                ["ip", "-br", "link"]).stdout.splitlines()),
            "ruleset": json.loads(self.host.run(["nft", "-j", "list", "ruleset"]).stdout),
            "namespaces": sorted(n for n in os.listdir("/run/netns") if self.token in n),
            "etc_netns": sorted(n for n in os.listdir("/etc/netns") if self.token in n)
            if os.path.isdir("/etc/netns") else [],
            "files": {name: Path("/etc/netns", f"pcsb-{self.sb.name}", name).read_text()
                      for name in ("hosts", "resolv.conf", "hostname")},
        }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    token = unique("i")[:7]
    host = Namespace(unique_name())
    store_url = f"sqlite:///{tmp_path_factory.mktemp('inject')}/state.db"
    ctl = None
    try:
        host.run(["nft", "-f", "-"], input=SENTINEL)
        ctl = Controller(store_url, host_ns=host.path)
        net = ctl.new_network(f"n{token}", subnet="10.71.0.0/24")
        sb = ctl.new_sandbox(f"s{token}", dns=["10.71.0.53"], dns_search=["example.com"],
                             dns_options=["ndots:2"], extra_hosts={"db": "10.71.0.40"})
        ep = net.create_endpoint(f"e{token}", options={OPT_PORTMAP: [
            {"Proto": 6, "Port": 80, "HostPort": 18081, "HostIP": "198.18.71.1"}]})
        ep.join(sb)
        other = ctl.new_sandbox(f"o{token}")
        spare = net.create_endpoint(f"f{token}")
        yield Env(host, ctl, net, sb, other, spare, create_app(ctl).test_client(), store_url,
                  token)
    finally:
        if ctl is not None:
            ctl.cleanup_all()
            ctl.close()
        host.delete()


def test_the_module_host_is_really_set_up(env: Env) -> None:
    """The cases below compare states: this is what they compare against."""
    ruleset = env.host.run(["nft", "list", "ruleset"]).stdout
    assert "table inet pycnm" in ruleset and "dnat ip to 10.71.0.2:80" in ruleset
    assert "table inet hsentinel" in ruleset
    resolv = env.snapshot()["files"]["resolv.conf"]
    assert "nameserver 10.71.0.53\nsearch example.com\noptions ndots:2\n" in resolv
    assert "10.71.0.40\tdb\n" in env.snapshot()["files"]["hosts"]


# --- the Python API (the core and the drivers) ----------------------------------------------

Case = Callable[[Env], Any]
PORT = {"Proto": 6, "Port": 80, "HostPort": 18082}

API_CASES: list[tuple[str, Case, str]] = [
    # nft: the portmap, at each place it comes in
    ("portmap HostIP at endpoint create", lambda e: e.net.create_endpoint(
        f"x{e.token}", options={OPT_PORTMAP: [{**PORT, "HostIP": "198.18.71.1" + NL}]}),
     "HostIP"),
    ("portmap HostIP at join", lambda e: e.spare.join(e.other, options={
        OPT_PORTMAP: [{**PORT, "HostIP": "198.18.71.1" + NL}]}), "HostIP"),
    ("portmap HostIP zone", lambda e: e.net.create_endpoint(
        f"x{e.token}", options={OPT_PORTMAP: [{**PORT, "HostIP": "fe80::1%lo" + NL}]}),
     "HostIP"),
    ("portmap Proto", lambda e: e.net.create_endpoint(
        f"x{e.token}", options={OPT_PORTMAP: [{**PORT, "Proto": "tcp" + NL}]}), "Proto"),
    ("portmap HostPort", lambda e: e.net.create_endpoint(
        f"x{e.token}", options={OPT_PORTMAP: [{**PORT, "HostPort": "18082" + NL}]}),
     "HostPort"),
    ("program external connectivity", lambda e: e.spare.program_external_connectivity(
        {OPT_PORTMAP: [{**PORT, "HostIP": "198.18.71.1" + NL}]}), "HostIP"),
    # nft and kernel names: network options and addressing
    ("host_ip option", lambda e: e.ctl.new_network(f"x{e.token}", subnet="10.72.0.0/24",
                                                   options={"host_ip": "198.18.71.1" + NL}),
     "host_binding_ipv4"),
    ("bridge name option", lambda e: e.ctl.new_network(
        f"x{e.token}", subnet="10.72.0.0/24", options={"bridge_name": "br0" + NL}),
     "interface name"),
    ("mtu option", lambda e: e.ctl.new_network(
        f"x{e.token}", subnet="10.72.0.0/24", options={"mtu": "1400" + NL}), "mtu"),
    ("subnet", lambda e: e.ctl.new_network(f"x{e.token}", subnet="10.72.0.0/24" + NL),
     "subnet"),
    ("subnet zone", lambda e: e.ctl.new_network(f"x{e.token}", ipv6=True, subnet=[
        "10.72.0.0/24", "fe80::%lo" + NL + "/64"]), "subnet"),
    ("gateway", lambda e: e.ctl.new_network(f"x{e.token}", subnet="10.72.0.0/24",
                                            gateway="10.72.0.1" + NL), "gateway"),
    ("ip range", lambda e: e.ctl.new_network(f"x{e.token}", subnet="10.72.0.0/24",
                                             ip_range="10.72.0.0/25" + NL), "ip-range"),
    ("aux address", lambda e: e.ctl.new_network(f"x{e.token}", subnet="10.72.0.0/24",
                                                aux_addresses={"r": "10.72.0.9" + NL}),
     "aux-address"),
    ("aux address name", lambda e: e.ctl.new_network(
        f"x{e.token}", subnet="10.72.0.0/24", aux_addresses={"r" + NL: "10.72.0.9"}),
     "aux-address"),
    ("macvlan parent", lambda e: e.ctl.new_network(
        f"x{e.token}", "macvlan", subnet="10.72.0.0/24", options={"parent": "lo" + NL}),
     "interface name"),
    ("overlay name", lambda e: e.ctl.new_network(
        f"x{e.token}", "overlay", subnet="10.72.0.0/24", options={"overlay": "o" + NL}),
     "overlay"),
    ("endpoint address", lambda e: e.net.create_endpoint(f"x{e.token}", ip="10.71.0.9" + NL),
     "IP address"),
    ("endpoint mac", lambda e: e.net.create_endpoint(f"x{e.token}",
                                                      mac="02:42:0a:47:00:09" + NL), "MAC"),
    ("endpoint mac option", lambda e: e.net.create_endpoint(
        f"x{e.token}", options={OPT_MACADDRESS: "02:42:0a:47:00:09" + NL}), "MAC"),
    # paths, store keys and kernel names made from names and ids
    ("network name", lambda e: e.ctl.new_network(f"x{e.token}" + NL, subnet="10.72.0.0/24"),
     "network name"),
    ("network id", lambda e: e.ctl.new_network(f"x{e.token}", subnet="10.72.0.0/24",
                                               network_id="../../../etc/pycnm0"), "network id"),
    ("endpoint name", lambda e: e.net.create_endpoint(f"x{e.token}" + NL), "endpoint name"),
    ("endpoint id", lambda e: e.net.create_endpoint(f"x{e.token}",
                                                    endpoint_id="a" * 12 + NL), "endpoint id"),
    ("sandbox name", lambda e: e.ctl.new_sandbox(f"x{e.token}" + NL), "sandbox name"),
    ("sandbox name path", lambda e: e.ctl.new_sandbox("../../etc"), "sandbox name"),
    ("sandbox id", lambda e: e.ctl.new_sandbox(f"x{e.token}", sandbox_id="../../../etc"),
     "sandbox id"),
    ("sandbox namespace path", lambda e: e.ctl.new_sandbox(
        f"x{e.token}", netns_path="/run/netns/x" + NL), "not a network namespace"),
    # the sandbox's files
    ("hostname", lambda e: e.ctl.new_sandbox(f"x{e.token}", hostname="web" + NL), "hostname"),
    ("dns server", lambda e: e.ctl.new_sandbox(f"x{e.token}", dns=["10.71.0.53" + NL]),
     "DNS server"),
    ("dns server zone", lambda e: e.ctl.new_sandbox(f"x{e.token}", dns=["fe80::1%lo" + NL]),
     "DNS server"),
    ("dns search", lambda e: e.ctl.new_sandbox(f"x{e.token}", dns_search=["example.com" + NL]),
     "DNS search domain"),
    ("dns option", lambda e: e.ctl.new_sandbox(f"x{e.token}", dns_options=["ndots:2" + NL]),
     "DNS option"),
    ("extra host name", lambda e: e.ctl.new_sandbox(
        f"x{e.token}", extra_hosts={"db" + NL: "10.71.0.40"}), "extra host name"),
    ("extra host address", lambda e: e.ctl.new_sandbox(
        f"x{e.token}", extra_hosts={"db": "10.71.0.40" + NL}), "extra host"),
    # options that only pycnm may set
    ("internal option at create", lambda e: e.net.create_endpoint(
        f"x{e.token}", options={"pycnm.join.ifname": "eth9"}), "pycnm.join.ifname"),
    ("internal option at join", lambda e: e.spare.join(
        e.other, options={"pycnm.join.ifname": "eth9"}), "pycnm.join.ifname"),
]


def refused_quietly(env: Env, call: Callable[[], Any]) -> str:
    """Run a call that must be refused; return its one-sentence message after checking
    that nothing changed (the sentinel table included)."""
    before = env.snapshot()
    with pytest.raises(CNMError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and len(message) < 400, message
    after = env.snapshot()
    assert after == before  # the ruleset as a whole: the sentinel table too
    assert any(i.get("table", {}).get("name") == "hsentinel"
               for i in after["ruleset"]["nftables"])
    return message


@pytest.mark.parametrize(("what", "call", "words"), API_CASES, ids=[c[0] for c in API_CASES])
def test_the_api_refuses_the_value_and_changes_nothing(env: Env, what: str, call: Case,
                                                       words: str) -> None:
    assert words in refused_quietly(env, lambda: call(env))


# --- the Docker plugin ----------------------------------------------------------------------


def plugin_cases(env: Env) -> list[tuple[str, str, dict[str, Any], str]]:
    nid, spare = env.net.id, env.spare.id
    new = "f" * 64
    pool = {"AddressSpace": "", "Pool": "10.73.0.0/24", "Gateway": "10.73.0.1/24"}
    port = {"Proto": 6, "Port": 80, "HostPort": 18083, "HostIP": ""}
    return [
        ("pool", "NetworkDriver.CreateNetwork",
         {"NetworkID": new, "IPv4Data": [{**pool, "Pool": "10.73.0.0/24" + NL}]}, "Pool"),
        ("gateway", "NetworkDriver.CreateNetwork",
         {"NetworkID": new, "IPv4Data": [{**pool, "Gateway": "10.73.0.1/24" + NL}]},
         "Gateway"),
        ("bridge name", "NetworkDriver.CreateNetwork",
         {"NetworkID": new, "IPv4Data": [pool], "Options": {"com.docker.network.generic": {
             "com.docker.network.bridge.name": "br0" + NL}}}, "interface name"),
        ("host ip option", "NetworkDriver.CreateNetwork",
         {"NetworkID": new, "IPv4Data": [pool], "Options": {"com.docker.network.generic": {
             "com.docker.network.bridge.host_binding_ipv4": "1.2.3.4" + NL}}},
         "host_binding_ipv4"),
        ("network id", "NetworkDriver.CreateNetwork",
         {"NetworkID": new[:20] + NL, "IPv4Data": [pool]}, "NetworkID"),
        ("endpoint id", "NetworkDriver.CreateEndpoint",
         {"NetworkID": nid, "EndpointID": new[:20] + NL}, "EndpointID"),
        ("endpoint address", "NetworkDriver.CreateEndpoint",
         {"NetworkID": nid, "EndpointID": new,
          "Interface": {"Address": "10.71.0.9/24" + NL}}, "Address"),
        ("endpoint mac", "NetworkDriver.CreateEndpoint",
         {"NetworkID": nid, "EndpointID": new,
          "Interface": {"Address": "10.71.0.9/24", "MacAddress": "02:42:0a:47:00:09" + NL}},
         "MacAddress"),
        ("endpoint internal option", "NetworkDriver.CreateEndpoint",
         {"NetworkID": nid, "EndpointID": new, "Interface": {"Address": "10.71.0.9/24"},
          "Options": {"pycnm.join.ifname": "eth9"}}, "pycnm.join.ifname"),
        ("join internal option", "NetworkDriver.Join",
         {"NetworkID": nid, "EndpointID": spare, "SandboxKey": env.sb.netns_path,
          "Options": {"pycnm.join.ifname": "eth9"}}, "pycnm.join.ifname"),
        ("join sandbox key", "NetworkDriver.Join",
         {"NetworkID": nid, "EndpointID": spare, "SandboxKey": env.sb.netns_path + NL},
         "SandboxKey"),
        ("portmap HostIP", "NetworkDriver.ProgramExternalConnectivity",
         {"NetworkID": nid, "EndpointID": spare, "Options": {OPT_PORTMAP: [
             {**port, "HostIP": "1.2.3.4" + NL}]}}, "HostIP"),
        ("portmap Proto", "NetworkDriver.ProgramExternalConnectivity",
         {"NetworkID": nid, "EndpointID": spare, "Options": {OPT_PORTMAP: [
             {**port, "Proto": [6]}]}}, "Proto"),
        ("portmap not a list", "NetworkDriver.ProgramExternalConnectivity",
         {"NetworkID": nid, "EndpointID": spare, "Options": {OPT_PORTMAP: "80:80" + NL}},
         OPT_PORTMAP),
        ("request address", "IpamDriver.RequestAddress",
         {"PoolID": "pycnm-local/10.71.0.0/24", "Address": "10.71.0.9" + NL}, "Address"),
    ]


PLUGIN_IDS = ["pool", "gateway", "bridge name", "host ip option", "network id", "endpoint id",
              "endpoint address", "endpoint mac", "endpoint internal option",
              "join internal option", "join sandbox key", "portmap HostIP", "portmap Proto",
              "portmap not a list", "request address"]


@pytest.mark.parametrize("which", PLUGIN_IDS)
def test_the_plugin_refuses_the_value_and_changes_nothing(env: Env, which: str) -> None:
    [(_, call, body, words)] = [c for c in plugin_cases(env) if c[0] == which]
    before = env.snapshot()
    response = env.client.post(f"/{call}", data=json.dumps(body))
    answer = json.loads(response.get_data())
    assert response.status_code == 500, answer
    message = answer["Err"]
    assert words in message and "internal error" not in message, message
    assert "\n" not in message and len(message) < 400, message
    assert env.snapshot() == before


# --- the CLI --------------------------------------------------------------------------------

CLI_CASES: list[tuple[str, list[str], str]] = [
    ("-p", ["attach", "NET", "SB", "-p", "1.2.3.4" + NL + ":18084:80"], "HostIP"),
    ("--subnet", ["network", "create", "x{t}", "--subnet", "10.74.0.0/24" + NL], "subnet"),
    ("--hostname", ["sandbox", "create", "x{t}", "--hostname", "web" + NL], "hostname"),
    ("--dns", ["sandbox", "create", "x{t}", "--dns", "10.71.0.53" + NL], "DNS server"),
    ("--dns-search", ["sandbox", "create", "x{t}", "--dns-search", "a.example" + NL],
     "DNS search domain"),
    ("--dns-option", ["sandbox", "create", "x{t}", "--dns-option", "ndots:1" + NL],
     "DNS option"),
    ("--add-host", ["sandbox", "create", "x{t}", "--add-host", "db=10.71.0.40" + NL],
     "extra host"),
    ("sandbox name", ["sandbox", "create", "x{t}" + NL], "sandbox name"),
]


@pytest.mark.parametrize(("flag", "argv", "words"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_cli_refuses_the_value_and_changes_nothing(env: Env, flag: str, argv: list[str],
                                                       words: str) -> None:
    before = env.snapshot()
    args = [a.replace("NET", env.net.name).replace("SB", env.other.name)
            .replace("{t}", env.token) for a in argv]
    result = subprocess.run(
        [sys.executable, "-m", "cnm.cli", "--store", env.store_url, "--host-ns",
         env.host.path, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], \
        result.stderr
    assert env.snapshot() == before


# --- pycnm's own work never touches another owner's table ---------------------------------


def test_a_table_of_another_owner_survives_pycnm_loading_and_removing_its_own(
        netns: Callable[..., Namespace], store_url: str) -> None:
    host = netns("host")
    host.run(["nft", "-f", "-"], input=SENTINEL)
    sentinel = host.run(["nft", "list", "table", "inet", "hsentinel"]).stdout
    with Controller(store_url, host_ns=host.path) as ctl:
        try:
            net = ctl.new_network(unique("n"), subnet="10.75.0.0/24")
            sb = ctl.new_sandbox(unique("s"))
            net.create_endpoint(sb.name, options={OPT_PORTMAP: [
                {"Proto": 6, "Port": 80, "HostPort": 18085}]}).join(sb)
            assert "table inet pycnm" in host.run(["nft", "list", "tables"]).stdout
            assert host.run(["nft", "list", "table", "inet", "hsentinel"]).stdout == sentinel
        finally:
            ctl.cleanup_all()  # the last network goes: pycnm deletes its own table
    tables = host.run(["nft", "list", "tables"]).stdout
    assert "pycnm" not in tables
    assert host.run(["nft", "list", "table", "inet", "hsentinel"]).stdout == sentinel
