"""Fuzzing a real ``pycnm plugin serve`` through its socket, as Docker (or anyone who can
write to the socket) would talk to it.

One plugin process for the module: its own socket path in a temporary folder (never
Docker's), its own SQLite store, acting on an emulated host namespace (``--host-ns``),
next to a sentinel nft table that another program owns. Two kinds of input:

- malformed bodies: bytes that are not JSON, JSON nested too deep, bodies over 1 MiB, and
  every call with fields of the wrong type (every JSON type, strings with line breaks,
  quotes and braces);
- well-formed sequences as Docker sends them (IPAM pool and address, create network,
  create endpoint, join, program external connectivity, leave, revoke, delete) with odd
  values in every field: subnets /0 to /32, gateways outside the subnet or at its network
  or broadcast address, multicast and broadcast MACs, ports 0 and 70000, host IPs of the
  other family, injection strings.

Every answer must be 200, or ``{"Err": one sentence}`` that is not the generic internal
error. After each example everything is deleted through the protocol, and the host's
links, its nft ruleset (the sentinel table included), its addresses and the store must be
exactly as before. Hypothesis runs derandomized (a fixed seed) with a bounded number of
examples, so CI sees the same cases every run in well under a few minutes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnm.store import open_store
from netns_fixtures.netns import Namespace, unique_name
from tests.e2e.plugin_process import answers, call_socket

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SENTINEL = """table inet hsentinel {
    chain forward {
        type filter hook forward priority 5; policy accept;
        meta mark 0x00c0ffee drop comment "another program's rule"
    }
}
"""
GENERIC_ERROR = "internal error"
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Served:
    """The plugin process, the namespaces it may see, and what "as before" means."""

    socket: str
    host: Namespace
    containers: list[Namespace]
    store_url: str
    process: subprocess.Popen[str]
    log: Path
    baseline: dict[str, Any] = field(default_factory=dict)

    def call(self, name: str, body: Any = None, raw: bytes | None = None
             ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else json.dumps(body).encode()
        status, answer = call_socket(name, data, self.socket)
        check_answer(name, status, answer, self)
        return status, answer

    def state(self) -> dict[str, Any]:
        run = self.host.run
        store = open_store(self.store_url)
        try:
            records = sorted((e.key, json.dumps(e.value, sort_keys=True))
                             for e in store.list(""))
        finally:
            store.close()
        return {
            "links": sorted(line.split()[0] for line in run(["ip", "-br", "link"]).stdout
                            .splitlines()),
            "addresses": sorted(a for line in run(["ip", "-br", "addr"]).stdout.splitlines()
                                for a in line.split()[2:] if not a.startswith("fe80:")),
            "routes": run(["ip", "route", "show", "table", "all"]).stdout,
            "ruleset": run(["nft", "list", "ruleset"]).stdout,
            "namespaces": sorted(n for n in os.listdir("/run/netns")
                                 if self.host.name in n),
            "store": records,
        }

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def check_answer(call: str, status: int, answer: dict[str, Any], served: Served) -> None:
    """200 with no Err, or an error status with Err: one line, never the generic one."""
    if status == 200:
        assert not answer.get("Err"), (call, answer)
        return
    assert status in (413, 500), (call, status, answer)
    message = answer.get("Err")
    assert isinstance(message, str) and message, (call, answer)
    assert GENERIC_ERROR not in message, f"{call}: {message}\n{served.tail()}"
    assert "\n" not in message and "\r" not in message and "Traceback" not in message, message
    assert len(message) <= 600, message


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("fuzz")
    host = Namespace(unique_name())
    containers = [Namespace(unique_name()) for _ in range(2)]
    sock, log = folder / "plugin.sock", folder / "plugin.log"
    store_url = f"sqlite:///{folder}/state.db"
    process = None
    try:
        host.run(["nft", "-f", "-"], input=SENTINEL)
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "cnm.cli", "--store", store_url, "--host-ns", host.path,
                 "plugin", "serve", "--socket", str(sock), "--no-background", "--threads", "4"],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 30
        while not answers(str(sock)):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        served = Served(str(sock), host, containers, store_url, process, log)
        served.baseline = served.state()
        assert "hsentinel" in served.baseline["ruleset"]
        yield served
        assert process.poll() is None, served.tail()  # it never died under the fuzz
    finally:
        if process is not None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        # Whatever a failed example left: swept from the host's namespace with the host.
        for ns in (*containers, host):
            ns.delete()
        for name in os.listdir("/run/netns"):
            if host.name in name:  # an overlay namespace of this host (pcov-VNI-HOST)
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)


# --- values ---------------------------------------------------------------------------------

INJECTIONS = ["x\nflush ruleset", "1.2.3.4\nflush ruleset", 'a"b', "a'b", "{", "}", "{}",
              '{"Err": ""}', "$(reboot)", "a;b", "../../etc", "/etc/passwd", "\x00", "\r\n",
              "é", " ", "", "a" * 300, "%s%n", "fe80::1%lo\nx", "\\", "\t", "null"]
odd_text = st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=24))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70),
                                                          max_value=2 ** 70),
                      st.floats(), odd_text)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(odd_text, inner, max_size=3), max_leaves=8)

CALLS = ["Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
         "NetworkDriver.DeleteNetwork", "NetworkDriver.AllocateNetwork",
         "NetworkDriver.FreeNetwork", "NetworkDriver.CreateEndpoint",
         "NetworkDriver.EndpointOperInfo", "NetworkDriver.DeleteEndpoint", "NetworkDriver.Join",
         "NetworkDriver.Leave", "NetworkDriver.ProgramExternalConnectivity",
         "NetworkDriver.RevokeExternalConnectivity", "NetworkDriver.DiscoverNew",
         "NetworkDriver.DiscoverDelete", "IpamDriver.GetCapabilities",
         "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool",
         "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress"]
FIELDS = ["NetworkID", "EndpointID", "Options", "IPv4Data", "IPv6Data", "Interface",
          "SandboxKey", "PoolID", "Pool", "SubPool", "AddressSpace", "V6", "Address",
          "DiscoveryType", "DiscoveryData", "Gateway", "AuxAddresses", "MacAddress",
          "AddressIPv6", "com.docker.network.generic", "com.docker.network.portmap",
          "RequestAddressType", "pycnm.join.ifname"]


def id_like() -> st.SearchStrategy[Any]:
    return st.one_of(st.text("0123456789abcdef", min_size=64, max_size=64), json_value,
                     st.sampled_from(["a" * 11, "a" * 65, "A" * 64 + "\n", "../" * 8]))


@st.composite
def wrong_shapes(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A call with known field names (and a few odd ones) holding values of any type, nested
    ones included (Options.com.docker.network.generic, IPv4Data[0].Pool, Interface.Address)."""
    call = draw(st.sampled_from(CALLS))
    body = draw(st.dictionaries(st.sampled_from(FIELDS) | odd_text, json_value, max_size=6))
    if draw(st.booleans()):
        body["NetworkID"] = draw(id_like())
        body["EndpointID"] = draw(id_like())
    nested = draw(st.sampled_from(["Options", "IPv4Data", "Interface", "none"]))
    if nested == "Options":
        body["Options"] = {draw(st.sampled_from(FIELDS)): draw(json_value)}
    elif nested == "IPv4Data":
        body["IPv4Data"] = [draw(st.dictionaries(
            st.sampled_from(["Pool", "Gateway", "AuxAddresses", "AddressSpace"]), json_value,
            max_size=4))]
    elif nested == "Interface":
        body["Interface"] = draw(st.dictionaries(
            st.sampled_from(["Address", "AddressIPv6", "MacAddress"]), json_value, max_size=3))
    return call, body


# --- (a) malformed bodies -------------------------------------------------------------------


@pytest.mark.parametrize(("what", "raw"), [
    ("empty", b""), ("not JSON", b"{'NetworkID': 1}"), ("truncated", b'{"NetworkID": "ab'),
    ("a list", b"[1, 2]"), ("a string", b'"NetworkID"'), ("a number", b"42"),
    ("not UTF-8", b'{"NetworkID": "\xff"}'), ("NaN", b'{"NetworkID": NaN}'),
    ("deep arrays", b"[" * 200_000 + b"]" * 200_000),
    ("deep objects", b'{"a":' * 100_000 + b"0" + b"}" * 100_000),
    ("deep in a field", b'{"NetworkID": "' + b"a" * 64 + b'", "Options": '
     + b'{"a":' * 50_000 + b"0" + b"}" * 50_000 + b"}"),
    ("1 MiB and more", b'{"NetworkID": "' + b"a" * (1 << 20) + b'"}'),
    ("2 MiB", b"[" + b"0," * (1 << 20) + b"0]"),
], ids=lambda value: value if isinstance(value, str) else "")
@pytest.mark.parametrize("call", ["NetworkDriver.CreateNetwork", "NetworkDriver.Join",
                                  "IpamDriver.RequestPool"])
def test_malformed_bodies_get_one_sentence(served: Served, call: str, what: str,
                                           raw: bytes) -> None:
    status, answer = served.call(call, raw=raw)
    if what != "empty":  # {} is a valid (if useless) request for some calls
        assert status != 200, answer


@settings(FUZZ, max_examples=400)
@given(shaped=wrong_shapes())
def test_every_call_with_fields_of_any_type(served: Served, shaped: tuple[str, Any]) -> None:
    call, body = shaped
    served.call(call, body)


@settings(FUZZ, max_examples=100)
@given(raw=st.binary(max_size=300))
def test_every_call_with_any_bytes(served: Served, raw: bytes) -> None:
    served.call("NetworkDriver.CreateEndpoint", raw=raw)


WRONG_TYPES: list[Any] = [None, True, 0, -1, 2 ** 70, 1.5, "", "x\n{}", [], {}, [[]],
                          {"a": {}}, "fe80::1%lo\nx"]
NEW_NID, NEW_EID = "c" * 64, "d" * 64


def templates(served: Served, nid: str, eid: str) -> dict[str, dict[str, Any]]:
    """A valid request of every call Docker makes, on a live network and endpoint (or new
    ids, for the creating calls)."""
    return {
        "NetworkDriver.CreateNetwork": {
            "NetworkID": NEW_NID, "IPv4Data": [{"AddressSpace": "LocalDefault",
                                                "Pool": "10.202.1.0/24",
                                                "Gateway": "10.202.1.1/24",
                                                "AuxAddresses": {"r": "10.202.1.9/24"}}],
            "IPv6Data": [], "Options": {"com.docker.network.generic": {"mtu": "1400"},
                                        "com.docker.network.enable_ipv6": False,
                                        "com.docker.network.internal": False}},
        "NetworkDriver.CreateEndpoint": {
            "NetworkID": nid, "EndpointID": NEW_EID,
            "Interface": {"Address": "10.202.0.3/24", "AddressIPv6": "",
                          "MacAddress": "02:42:0a:ca:00:03"},
            "Options": {"com.docker.network.portmap": [
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 20080,
                 "HostPortEnd": 20080}]}},
        "NetworkDriver.Join": {"NetworkID": nid, "EndpointID": eid,
                               "SandboxKey": served.containers[0].path, "Options": {}},
        "NetworkDriver.ProgramExternalConnectivity": {
            "NetworkID": nid, "EndpointID": eid, "Options": {
                "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80,
                                                "HostIP": "", "HostPort": 20081,
                                                "HostPortEnd": 20081}],
                "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}},
        "NetworkDriver.EndpointOperInfo": {"NetworkID": nid, "EndpointID": eid},
        "NetworkDriver.RevokeExternalConnectivity": {"NetworkID": nid, "EndpointID": eid},
        "NetworkDriver.Leave": {"NetworkID": nid, "EndpointID": eid},
        "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {"Address": "x"}},
        "IpamDriver.RequestPool": {"AddressSpace": "pycnm-local", "Pool": "10.203.0.0/24",
                                   "SubPool": "10.203.0.128/25", "Options": {}, "V6": False},
        "IpamDriver.RequestAddress": {"PoolID": "pycnm-local/10.203.9.0/24",
                                      "Address": "10.203.9.5",
                                      "Options": {"RequestAddressType": "x"}},
        "IpamDriver.ReleaseAddress": {"PoolID": "pycnm-local/10.203.9.0/24",
                                      "Address": "10.203.9.5"},
    }


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field of a request, nested ones and list items included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield prefix + (index,)
            yield from paths(item, prefix + (index,))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    copy = json.loads(json.dumps(value))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return copy


def undo_success(served: Served, call: str, body: Any, answer: dict[str, Any]) -> None:
    """A replaced field that still made a valid request: undo it as Docker would."""
    ids = {k: body.get(k) for k in ("NetworkID", "EndpointID")} if isinstance(body, dict) \
        else {}
    if call == "NetworkDriver.CreateNetwork":
        served.call("NetworkDriver.DeleteNetwork", {"NetworkID": NEW_NID})
    elif call == "NetworkDriver.CreateEndpoint":
        served.call("NetworkDriver.DeleteEndpoint", {**ids, "EndpointID": NEW_EID})
    elif call == "NetworkDriver.Join":
        served.call("NetworkDriver.Leave", ids)
    elif call == "NetworkDriver.ProgramExternalConnectivity":
        served.call("NetworkDriver.RevokeExternalConnectivity", ids)
    elif call == "IpamDriver.RequestPool":
        served.call("IpamDriver.ReleasePool", {"PoolID": answer["PoolID"]})


@pytest.mark.parametrize("call", ["NetworkDriver.CreateNetwork", "NetworkDriver.CreateEndpoint",
                                  "NetworkDriver.Join",
                                  "NetworkDriver.ProgramExternalConnectivity",
                                  "NetworkDriver.EndpointOperInfo",
                                  "NetworkDriver.RevokeExternalConnectivity",
                                  "NetworkDriver.Leave", "NetworkDriver.DiscoverNew",
                                  "IpamDriver.RequestPool", "IpamDriver.RequestAddress",
                                  "IpamDriver.ReleaseAddress"])
def test_every_field_of_every_call_with_every_wrong_type(served: Served, call: str) -> None:
    """One field at a time replaced by a value of each JSON type (and two odd strings), on
    a live network and endpoint: one sentence or success, and then nothing left over."""
    nid, eid = "e" * 64, "f" * 64
    served.call("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local",
                                           "Pool": "10.203.9.0/24"})
    try:
        assert served.call("NetworkDriver.CreateNetwork", {
            "NetworkID": nid, "IPv4Data": [{"Pool": "10.202.0.0/24",
                                            "Gateway": "10.202.0.1/24"}]})[0] == 200
        assert served.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": nid, "EndpointID": eid,
            "Interface": {"Address": "10.202.0.2/24"}})[0] == 200
        if call in ("NetworkDriver.ProgramExternalConnectivity",
                    "NetworkDriver.RevokeExternalConnectivity", "NetworkDriver.Leave"):
            assert served.call("NetworkDriver.Join", {
                "NetworkID": nid, "EndpointID": eid,
                "SandboxKey": served.containers[1].path})[0] == 200
        template = templates(served, nid, eid)[call]
        tried = 0
        for path in paths(template):
            for wrong in WRONG_TYPES:
                body = replaced(template, path, wrong)
                status, answer = served.call(call, body)
                tried += 1
                if status == 200:
                    undo_success(served, call, body, answer)
        assert tried >= 13
    finally:
        teardown(served)
    assert served.state() == served.baseline


def test_nothing_the_malformed_requests_did_is_left(served: Served) -> None:
    """Valid requests can come out of the generators above by chance (an empty
    RequestPool takes a default pool): undo those as Docker would, then compare."""
    teardown(served)
    assert served.state() == served.baseline


# --- (b) well-formed sequences with odd values ----------------------------------------------

BASES_V4 = ["10.200.0.0", "10.201.7.128", "0.0.0.0", "127.0.0.0", "169.254.0.0", "224.0.0.0",
            "255.255.255.255", "198.18.0.0"]
MACS = ["02:42:0a:c8:00:02", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00",
        "02:42:0A:C8:00:02", "02-42-0a-c8-00-02", "02:42:0a:c8:00:02\n", "zz:42:0a:c8:00:02",
        "", "33:33:00:00:00:01"]
PORTS = [0, 1, 80, 65535, 70000, -1, 80.5, True, "80", None, 2 ** 64]
HOST_IPS = ["", "0.0.0.0", "::", "127.0.0.1", "198.18.0.1", "fd00::1", "::1", "fe80::1%lo",
            "224.0.0.1", "255.255.255.255", "1.2.3.4\nflush ruleset", 'a"b', "{}", None, 7]


@st.composite
def subnet(draw: st.DrawFn, odd: bool) -> tuple[str, ipaddress.IPv4Network]:
    """A /24 of 10.200.0.0/16, or (``odd``) any prefix /0 to /32 of an odd base, written
    in CIDR or not quite."""
    if not odd:
        net = ipaddress.IPv4Network(f"10.200.{draw(st.integers(0, 255))}.0/24")
        return str(net), net
    base = draw(st.sampled_from(BASES_V4))
    prefix = draw(st.integers(0, 32))
    net = ipaddress.IPv4Network(f"{base}/{prefix}", strict=False)
    text = draw(st.sampled_from([str(net), str(net), f"{base}/{prefix}", str(net) + "\n",
                                 f"{net.network_address}/{prefix + 1}", "fe80::%lo/64"]))
    return text, net


@st.composite
def address_in(draw: st.DrawFn, net: ipaddress.IPv4Network, odd: bool, offset: int = 2) -> str:
    """A host address of ``net`` with its prefix length, or (``odd``) one at its ends,
    outside it, or written oddly."""
    if not odd:
        return f"{net.network_address + min(offset, net.num_addresses - 1)}/{net.prefixlen}"
    size = net.num_addresses
    inside = net.network_address + draw(st.integers(0, min(size - 1, 2 ** 16)))
    outside = ipaddress.IPv4Address((int(net.broadcast_address) + 1) % 2 ** 32)
    choice = draw(st.sampled_from([inside, net.network_address, net.broadcast_address,
                                   outside]))
    suffix = draw(st.sampled_from([f"/{net.prefixlen}", "", "/33", "\n", "%lo", "/24\n"]))
    return f"{choice}{suffix}"


GOOD_PORT = st.fixed_dictionaries({
    "Proto": st.sampled_from([6, 17]), "IP": st.just(""), "Port": st.integers(1, 65535),
    "HostIP": st.sampled_from(["", "0.0.0.0"]), "HostPort": st.integers(20000, 30000),
    "HostPortEnd": st.just(0)})
ODD_PORT_VALUES: dict[str, list[Any]] = {
    "Proto": [1, 99, "tcp", "icmp", [6], {"a": 1}, None, True, 6.0, "6\n"],
    "IP": ["fd00::2", "10.200.0.2\n", "fe80::2%lo", 7, "{}"],
    "Port": PORTS, "HostIP": HOST_IPS, "HostPort": PORTS, "HostPortEnd": [1, *PORTS]}


@st.composite
def odd_port(draw: st.DrawFn) -> dict[str, Any]:
    """A good binding with one field odd."""
    port = draw(GOOD_PORT)
    key = draw(st.sampled_from(sorted(ODD_PORT_VALUES)))
    port[key] = draw(st.sampled_from(ODD_PORT_VALUES[key]))
    return port


ODD_PORTMAP = st.one_of(st.lists(odd_port(), min_size=1, max_size=3),
                        st.sampled_from(["80:80", {"Proto": 6, "Port": 80}, 5, [5], [[6]]]))
def _host_port(binding: dict[str, Any]) -> Any:
    return binding["HostPort"]


SPOILABLE = ["subnet", "gateway", "aux", "generic", "ipv6", "address", "mac", "sandbox",
             "join_options", "ports", "network_id", "endpoint_id"]


@st.composite
def plan(draw: st.DrawFn) -> dict[str, Any]:
    """Docker's calls for one container, valid but for (at most) two fields, so that most
    examples get as far as the odd value and the calls after it."""
    odd = {draw(st.sampled_from(SPOILABLE))}
    if draw(st.integers(0, 3)) == 0:  # now and then a second one
        odd.add(draw(st.sampled_from(SPOILABLE)))
    pool_text, net = draw(subnet("subnet" in odd))
    hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
    generic: dict[str, Any] = {}
    if "generic" in odd:
        generic = draw(st.dictionaries(st.sampled_from([
            "com.docker.network.bridge.enable_icc",
            "com.docker.network.bridge.enable_ip_masquerade", "com.docker.network.driver.mtu",
            "com.docker.network.bridge.host_binding_ipv4", "com.docker.network.bridge.name",
            "driver", "parent", "colour"]),
            st.one_of(st.sampled_from(["true", "false", "0", "1500", "68", "65536", "pcfz0",
                                       "br\n0", "198.18.0.1", "fd00::1", "bridge", "macvlan",
                                       "lo", "x" * 20]), json_leaf), min_size=1, max_size=3))
    return {
        "network_id": draw(st.one_of(st.sampled_from(["a" * 63 + "\n", "a" * 11, "../" * 8]),
                                     json_leaf) if "network_id" in odd else hex64),
        "endpoint_id": draw(st.one_of(st.sampled_from(["b" * 63 + "\n", "b" * 65]), json_leaf)
                            if "endpoint_id" in odd else hex64),
        "pool": pool_text, "net": net, "use_ipam": draw(st.booleans()),
        "gateway": draw(st.one_of(st.none(), address_in(net, True)) if "gateway" in odd
                        else address_in(net, False, offset=1)),
        "aux": draw(st.dictionaries(odd_text, address_in(net, True), min_size=1, max_size=2)
                    if "aux" in odd else st.just({})),
        "generic": generic, "internal": draw(st.booleans()),
        "ipv6": draw(st.sampled_from(["fd00::/127", "2001:db8::/0", "10.0.0.0/24", "fd00::1/64",
                                      "fe80::%lo/64"]) if "ipv6" in odd
                     else st.sampled_from([None, None, "fd00:f0::/64"])),
        "address": draw(address_in(net, "address" in odd)),
        "mac": draw(st.sampled_from(MACS) if "mac" in odd else st.sampled_from(["", MACS[0]])),
        "sandbox": draw(st.sampled_from(["/proc/self/ns/mnt", "/dev/null", "relative/key",
                                         "/run/netns/none\n", "/etc/passwd"])
                        if "sandbox" in odd else st.sampled_from(["container0", "container1"])),
        "join_options": draw(st.sampled_from([{"pycnm.join.ifname": "eth0"},
                                              {"com.docker.network.portmap": "80"},
                                              {"pycnm.x\n": 1}])
                             if "join_options" in odd else st.just({})),
        "ports": draw(ODD_PORTMAP if "ports" in odd else st.lists(GOOD_PORT, max_size=3,
                                                                   unique_by=_host_port)),
    }


def network_body(p: dict[str, Any], pool: str, gateway: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"AddressSpace": "pycnm-local" if p["use_ipam"] else "LocalDefault",
                            "Pool": pool, "AuxAddresses": p["aux"]}
    if gateway is not None:
        data["Gateway"] = gateway
    body: dict[str, Any] = {
        "NetworkID": p["network_id"], "IPv4Data": [data], "IPv6Data": [],
        "Options": {"com.docker.network.generic": p["generic"],
                    "com.docker.network.enable_ipv6": p["ipv6"] is not None,
                    "com.docker.network.internal": p["internal"]}}
    if p["ipv6"] is not None:
        body["IPv6Data"] = [{"AddressSpace": "LocalDefault", "Pool": p["ipv6"]}]
    return body


def run_plan(served: Served, p: dict[str, Any]) -> None:
    """One container's life as Docker drives it; every answer checked by ``call``."""
    pool, gateway = p["pool"], p["gateway"]
    if p["use_ipam"]:
        status, answer = served.call("IpamDriver.RequestPool", {
            "AddressSpace": "pycnm-local", "Pool": pool, "Options": {}, "V6": False})
        if status == 200:
            pool = answer["Pool"]
            status, answer = served.call("IpamDriver.RequestAddress", {
                "PoolID": answer["PoolID"], "Address": (gateway or "").split("/")[0],
                "Options": {"RequestAddressType": "com.docker.network.gateway"}})
            if status == 200:
                gateway = answer["Address"]
    served.call("NetworkDriver.CreateNetwork", network_body(p, pool, gateway))
    nid, eid = p["network_id"], p["endpoint_id"]
    served.call("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": p["address"], "AddressIPv6": "", "MacAddress": p["mac"]},
        "Options": {"com.docker.network.portmap": p["ports"]}})
    served.call("NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid})
    key = p["sandbox"]
    if key.startswith("container"):
        key = served.containers[int(key[-1])].path
    served.call("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                       "SandboxKey": key, "Options": p["join_options"]})
    served.call("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": nid, "EndpointID": eid,
        "Options": {"com.docker.network.portmap": p["ports"],
                    "com.docker.network.endpoint.exposedports": []}})
    served.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": nid,
                                                             "EndpointID": eid})
    served.call("NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
    served.call("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
    served.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def teardown(served: Served) -> None:
    """Delete what the store still holds, through the protocol only (as dockerd would on
    its own restart: every object it knows, every pool it took)."""
    state = served.state()["store"]
    ids = {key.split("/")[3] for key, _ in state
           if key.split("/")[2:3] == ["networks"] and len(key.split("/")) == 4}
    for key, _ in state:
        parts = key.split("/")
        if parts[2:3] == ["endpoints"] and len(parts) == 5:
            served.call("NetworkDriver.DeleteEndpoint", {"NetworkID": parts[3],
                                                         "EndpointID": parts[4]})
    for nid in sorted(ids):
        served.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    for key, text in served.state()["store"]:
        value = json.loads(text)
        if "/ipam/pools/" in key and isinstance(value, dict) and value.get("id"):
            space = "pycnm-global" if value.get("space") == "global" else "pycnm-local"
            for _ in range(int(value.get("refs", 1))):
                served.call("IpamDriver.ReleasePool",
                            {"PoolID": f"{space}/{value['id'].partition('/')[2]}"})


@settings(FUZZ, max_examples=120)
@given(p=plan())
def test_docker_sequences_with_odd_values_leave_nothing_behind(served: Served,
                                                               p: dict[str, Any]) -> None:
    try:
        run_plan(served, p)
    finally:
        teardown(served)
    assert served.state() == served.baseline
