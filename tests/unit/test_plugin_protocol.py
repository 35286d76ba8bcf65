"""The Docker plugin's HTTP protocol through Flask's test client.

A Controller on a throwaway SQLite store acts on a throwaway "host" namespace, and the
requests are the ones real engines sent (tests/data/docker-wire-20.10.jsonl from Docker
20.10, tests/data/docker-wire-26.1.jsonl from Docker 26.1; each file's first line says how
it was recorded), with fresh ids, our own PoolIDs and addresses, and SandboxKeys pointing
at namespaces made here. Error answers must be one clear sentence and leave the store and
the kernel as they were.
"""

from __future__ import annotations

import copy
import http.client
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm.cleanup import remove_kernel_objects
from cnm.controller import Controller
from plugin_server.app import create_app
from plugin_server.protocol import CONTENT_TYPE

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
RECORDED_ENGINES = ("20.10", "26.1")  # tests/data/docker-wire-<version>.jsonl

GENERIC = "com.docker.network.generic"


def new_id() -> str:
    return secrets.token_hex(32)


class Lab:
    """A host namespace, two "container" namespaces, a Controller and a client."""

    def __init__(self, store_url: str, netns: Callable[..., Any]) -> None:
        host = netns("host")
        self.host_name, self.host = host.name, host.path
        self.sandboxes = [netns("container").path for _ in range(2)]
        self.ctl = Controller(store_url, host_ns=self.host)
        self.app = create_app(self.ctl)
        self.client = self.app.test_client()

    def call(self, call: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        # Docker's headers: an Accept of its own, and no JSON Content-Type.
        response = self.client.post(
            f"/{call}", data=data,
            headers={"Accept": "application/vnd.docker.plugins.v1.2+json",
                     "Content-Type": "text/plain"},
        )
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return response.status_code, json.loads(response.get_data())

    def ok(self, call: str, body: Any = None) -> dict:
        status, answer = self.call(call, body)
        assert status == 200, answer
        return answer

    def run(self, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.host_name, *argv],
                              capture_output=True, text=True, timeout=20, check=True).stdout

    def links(self) -> list[str]:
        return sorted(line.split()[0].split("@")[0]
                      for line in self.run("ip", "-br", "link").splitlines())

    def snapshot(self) -> tuple:
        store = sorted((e.key, json.dumps(e.value, sort_keys=True))
                       for e in self.ctl.store.list(""))
        # Names, MACs and addresses, not states or flags (a new bridge's carrier settles
        # on its own, and with it the kernel adds its IPv6 link-local address).
        links = [(f[0], f[2]) for f in map(str.split, self.run("ip", "-br", "link")
                                           .splitlines())]
        addrs = [(f[0], [a for a in f[2:] if not a.startswith("fe80:")])
                 for f in map(str.split, self.run("ip", "-br", "addr").splitlines())]
        return store, links, addrs, self.run("nft", "list", "ruleset")

    def close(self) -> None:
        try:
            self.ctl.cleanup_all()
        finally:
            self.ctl.close()
            remove_kernel_objects(self.host)  # the namespaces go with the netns fixture


@pytest.fixture
def lab(store_url: str, netns: Callable[..., Any]) -> Iterator[Lab]:
    lab = Lab(store_url, netns)
    try:
        yield lab
    finally:
        lab.close()


def load_samples(engine: str) -> list[dict[str, Any]]:
    """The calls recorded from Docker ``engine``, in order (``#`` lines say where from)."""
    lines = (DATA / f"docker-wire-{engine}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip() and not line.startswith("#")]


class Rewriter:
    """Fresh ids for the capture's ids; our PoolIDs, pools and addresses for the capture
    plugin's; our namespaces for Docker's SandboxKeys."""

    def __init__(self, sandboxes: list[str]) -> None:
        self.values: dict[str, str] = {}
        self.sandboxes = sandboxes
        self.keys: dict[str, str] = {}

    def learn(self, theirs: Any, ours: Any) -> None:
        if isinstance(theirs, str) and isinstance(ours, str):
            self.values[theirs] = ours
            if "/" in theirs and "/" in ours:  # 10.88.0.1/24 also appears as 10.88.0.1
                self.values.setdefault(theirs.split("/")[0], ours.split("/")[0])

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, str):
            return value
        if key in ("NetworkID", "EndpointID"):
            return self.values.setdefault(value, new_id())
        if key == "SandboxKey":
            return self.keys.setdefault(value, self.sandboxes[len(self.keys) % 2])
        return self.values.get(value, value)


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
def test_docker_sessions_replayed(lab: Lab, engine: str) -> None:
    """Every call of the two sessions recorded from a real engine, in order, answered in
    the shape Docker accepted; at the end nothing of ours is left in the store or the
    kernel."""
    before = lab.links()
    rewrite = Rewriter(lab.sandboxes)
    samples = load_samples(engine)
    assert len(samples) > 40 and {s["run"] for s in samples} == {"A", "B"}
    for sample in samples:
        call, theirs = sample["call"], sample["answered"]
        request = rewrite(copy.deepcopy(sample["request"]))
        status, ours = lab.call(call, request)
        assert status == 200, (sample["seq"], call, ours)
        assert set(theirs) <= set(ours), (sample["seq"], call, ours)
        check = CHECKS.get(call)
        if check is not None:
            check(lab, request or {}, theirs, ours)
        if call in ("IpamDriver.RequestPool", "IpamDriver.RequestAddress"):
            for field in ("PoolID", "Pool", "Address"):
                rewrite.learn(theirs.get(field), ours.get(field))
    assert lab.links() == before
    assert "pycnm" not in lab.run("nft", "list", "tables")
    left = [e.key for e in lab.ctl.store.list("")
            if "/ipam/spaces/" not in e.key]  # the (now empty) index of pools may stay
    assert left == []


def _check_create_endpoint(lab: Lab, request: dict, theirs: dict, ours: dict) -> None:
    iface = ours["Interface"]
    assert "Address" not in iface and "AddressIPv6" not in iface  # never contradict Docker
    if request["Interface"].get("MacAddress"):
        assert iface == {}
    else:
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", iface["MacAddress"])


def _check_join(lab: Lab, request: dict, theirs: dict, ours: dict) -> None:
    src = ours["InterfaceName"]["SrcName"]
    assert ours["InterfaceName"]["DstPrefix"] == "eth"
    assert len(src) <= 15 and request["EndpointID"][:8] in src
    assert src in lab.links()  # Docker moves it: it must exist in the host namespace
    assert ours.get("Gateway") == theirs.get("Gateway")
    internal = "Gateway" not in theirs
    assert ours["DisableGatewayService"] is internal


def _check_request_pool(lab: Lab, request: dict, theirs: dict, ours: dict) -> None:
    assert ours["PoolID"].startswith("pycnm-local/")
    pool = ipaddress.ip_network(ours["Pool"])
    if request["Pool"]:
        assert str(pool) == request["Pool"]


def _check_request_address(lab: Lab, request: dict, theirs: dict, ours: dict) -> None:
    address = ipaddress.ip_interface(ours["Address"])
    pool = ipaddress.ip_network(request["PoolID"].split("/", 1)[1])
    assert address.network == pool
    if (request.get("Options") or {}).get("RequestAddressType") == "com.docker.network.gateway":
        assert address.ip == pool.network_address + 1


def _check_program(lab: Lab, request: dict, theirs: dict, ours: dict) -> None:
    rules = lab.run("nft", "list", "table", "inet", "pycnm")
    for binding in request["Options"]["com.docker.network.portmap"]:
        proto = {6: "tcp", 17: "udp"}[binding["Proto"]]
        assert re.search(rf"{proto} dport {binding['HostPort']} dnat ip to "
                         rf"[0-9.]+:{binding['Port']}", rules), rules


CHECKS = {
    "NetworkDriver.CreateEndpoint": _check_create_endpoint,
    "NetworkDriver.Join": _check_join,
    "IpamDriver.RequestPool": _check_request_pool,
    "IpamDriver.RequestAddress": _check_request_address,
    "NetworkDriver.ProgramExternalConnectivity": _check_program,
}


# --- a network to break things against -------------------------------------------------


def make_network(lab: Lab, subnet: str = "10.61.0.0/24", **generic: str) -> str:
    nid = new_id()
    lab.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": nid,
        "Options": {"com.docker.network.enable_ipv6": False, GENERIC: generic},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet,
                      "Gateway": str(ipaddress.ip_network(subnet).network_address + 1)
                      + "/" + subnet.split("/")[1]}],
        "IPv6Data": [],
    })
    return nid


def make_endpoint(lab: Lab, nid: str, address: str = "10.61.0.2/24") -> str:
    eid = new_id()
    lab.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""},
        "Options": {},
    })
    return eid


@pytest.fixture
def populated(lab: Lab) -> tuple[Lab, str, str]:
    nid = make_network(lab)
    eid = make_endpoint(lab, nid)
    lab.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                  "SandboxKey": lab.sandboxes[0], "Options": {}})
    return lab, nid, eid


def _net(nid: str, generic: dict | None = None, pool: str = "10.62.0.0/24",
         gateway: str = "10.62.0.1/24", **extra: Any) -> dict:
    body = {"NetworkID": nid, "Options": {GENERIC: generic or {}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gateway}],
            "IPv6Data": []}
    body.update(extra)
    return body


UNKNOWN = "ab" * 32

# (call, body or raw bytes, words the error must contain); NID/EID are replaced by the
# populated network's ids.
BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("NetworkDriver.CreateNetwork", b'{"NetworkID": "abc', "not valid JSON"),
    ("NetworkDriver.CreateNetwork", b"[1, 2]", "must be a JSON object"),
    ("NetworkDriver.CreateNetwork", {"Options": {}}, "has no NetworkID"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": 42}, "NetworkID must be an id"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "../../etc"}, "NetworkID must be an id"),
    ("NetworkDriver.CreateNetwork", _net("NEW", pool="10.62.0.0/33"), "CIDR"),
    ("NetworkDriver.CreateNetwork", _net("NEW", pool="10.62.0.5/24"), "CIDR"),
    ("NetworkDriver.CreateNetwork", _net("NEW", gateway="10.63.0.1/24"), "not inside subnet"),
    ("NetworkDriver.CreateNetwork", _net("NEW", {"foo": "bar"}), "unknown option 'foo'"),
    ("NetworkDriver.CreateNetwork", _net("NEW", {"com.docker.network.driver.mtu": "big"}),
     "whole number"),
    ("NetworkDriver.CreateNetwork", _net("NEW", {"com.docker.network.bridge.enable_icc": "x"}),
     "true or false"),
    ("NetworkDriver.CreateNetwork", _net("NEW", {"driver": "nosuch"}), "unknown driver"),
    ("NetworkDriver.CreateNetwork", _net("NEW", {"bridge_name": "bad/name"}),
     "not a valid interface name"),
    ("NetworkDriver.CreateNetwork", _net("NEW", IPv6Data=[{"Pool": "fd00:62::/64"}]),
     "need --ipv6"),
    ("NetworkDriver.CreateNetwork", _net("NEW", pool="10.61.0.0/24", gateway="10.61.0.1/24",
                                         Options={GENERIC: {"bridge_name": "BRIDGE"}}),
     "already used"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": UNKNOWN, "EndpointID": "NEW"},
     "not found"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "NID", "EndpointID": "NEW",
                                      "Interface": {"Address": "10.99.0.2/24"}},
     "not in the network's subnet"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "NID", "EndpointID": "NEW",
                                      "Interface": {"Address": "10.61.0.3"}},
     "prefix length"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "NID", "EndpointID": "NEW",
                                      "Interface": {"Address": "10.61.0.3/24"},
                                      "Options": {"com.docker.network.endpoint.macaddress":
                                                  "not-base64"}},
     "MAC address in base64"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": "NID", "EndpointID": "NEW",
                                      "Interface": {"Address": "10.61.0.3/24",
                                                    "MacAddress": "01:00:5e:00:00:01"}},
     "multicast"),
    ("NetworkDriver.Join", {"NetworkID": "NID", "EndpointID": UNKNOWN,
                            "SandboxKey": "/var/run/docker/netns/x"}, "not found"),
    ("NetworkDriver.Join", {"NetworkID": "NID", "EndpointID": "EID"}, "has no SandboxKey"),
    ("NetworkDriver.Join", {"NetworkID": "NID", "EndpointID": "EID", "SandboxKey": "rel"},
     "path of a network namespace"),
    ("NetworkDriver.EndpointOperInfo", {"NetworkID": "NID", "EndpointID": UNKNOWN},
     "not found"),
    ("NetworkDriver.ProgramExternalConnectivity",
     {"NetworkID": "NID", "EndpointID": "EID", "Options": {"com.docker.network.portmap": [
         {"Proto": 6, "Port": 80, "HostPort": 70000}]}}, "between 1 and 65535"),
    ("NetworkDriver.ProgramExternalConnectivity",
     {"NetworkID": "NID", "EndpointID": "EID", "Options": {"com.docker.network.portmap": [
         {"Proto": 99, "Port": 80, "HostPort": 8080}]}}, "unknown protocol"),
    ("NetworkDriver.DiscoverNew", {"DiscoveryType": "x"}, "DiscoveryType"),
    ("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local", "Pool": "10.64.0.0/40"},
     "CIDR"),
    ("IpamDriver.RequestPool", {"AddressSpace": "elsewhere", "Pool": "10.64.0.0/24"},
     "unknown address space"),
    ("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local", "Pool": "10.64.0.0/24",
                                "Options": {"colour": "blue"}}, "unknown --ipam-opt"),
    ("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local", "Pool": "10.64.0.0/24",
                                "V6": True}, "an IPv6 pool was requested"),
    ("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local", "Pool": "10.64.0.0/24",
                                "SubPool": "10.65.0.0/25"}, "not inside subnet"),
    ("IpamDriver.RequestAddress", {"PoolID": "pycnm-local/10.66.0.0/24"}, "not found"),
    ("IpamDriver.RequestAddress", {"PoolID": "garbage"}, "not one of pycnm's"),
    ("IpamDriver.RequestAddress", {}, "has no PoolID"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "pycnm-local/10.66.0.0/24"}, "has no Address"),
]


def _fill(value: Any, nid: str, eid: str, bridge: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, nid, eid, bridge) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, nid, eid, bridge) for v in value]
    return {"NID": nid, "EID": eid, "NEW": new_id(), "BRIDGE": bridge}.get(value, value) \
        if isinstance(value, str) else value


@pytest.mark.parametrize(("call", "body", "words"), BAD_REQUESTS,
                         ids=[f"{i}-{c.split('.')[1]}" for i, (c, _, _) in
                              enumerate(BAD_REQUESTS)])
def test_bad_requests_change_nothing(populated: tuple[Lab, str, str], call: str, body: Any,
                                     words: str) -> None:
    lab, nid, eid = populated
    bridge = lab.ctl.network(nid).inspect()["Options"].get("bridge") or "pcbr-" + nid[:10]
    before = lab.snapshot()
    if isinstance(body, bytes):
        status, answer = lab.call(call, raw=body)
    else:
        status, answer = lab.call(call, _fill(copy.deepcopy(body), nid, eid, bridge))
    assert status == 500
    message = answer["Err"]
    assert words in message, message
    assert "\n" not in message and "Traceback" not in message and len(message) < 600
    assert lab.snapshot() == before


def test_unknown_paths_methods_and_oversize(lab: Lab) -> None:
    before = lab.snapshot()
    status, answer = lab.call("NetworkDriver.NoSuchCall", {})
    assert status == 404 and "does not implement" in answer["Err"]
    response = lab.client.get("/Plugin.Activate")
    assert response.status_code == 405
    assert response.headers["Content-Type"] == CONTENT_TYPE
    assert "POST" in json.loads(response.get_data())["Err"]
    response = lab.client.post("/a/b", data=b"{}")
    assert response.status_code == 404 and "Err" in json.loads(response.get_data())
    huge = json.dumps({"NetworkID": new_id(), "Options": {GENERIC: {"x": "y" * (2 << 20)}}})
    status, answer = lab.call("NetworkDriver.CreateNetwork", raw=huge.encode())
    assert status == 413 and "larger than" in answer["Err"]
    assert lab.snapshot() == before


def test_handshake_with_empty_or_null_bodies(lab: Lab) -> None:
    for raw in (b"", b"null", b"{}", b"  \n"):
        status, answer = lab.call("Plugin.Activate", raw=raw)
        assert status == 200
        assert answer == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert lab.ok("NetworkDriver.GetCapabilities") == {
        "Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}


def test_retried_calls_are_idempotent(populated: tuple[Lab, str, str]) -> None:
    lab, nid, eid = populated
    links = lab.links()
    # Creating again what exists succeeds and changes nothing.
    lab.ok("NetworkDriver.CreateNetwork", _net(nid, pool="10.61.0.0/24",
                                               gateway="10.61.0.1/24"))
    assert len(lab.ctl.networks()) == 1
    again = lab.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": "10.61.0.2/24", "AddressIPv6": "", "MacAddress": ""}})
    assert again["Interface"]["MacAddress"] == lab.ctl.endpoints()[0].record.mac
    first = lab.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                          "SandboxKey": lab.sandboxes[0]})
    assert first["InterfaceName"]["SrcName"] in lab.links()
    assert lab.links() == links
    # Tearing down what is gone succeeds.
    for call in ("NetworkDriver.Leave", "NetworkDriver.RevokeExternalConnectivity",
                 "NetworkDriver.DeleteEndpoint"):
        for ids in ((nid, eid), (nid, eid), (nid, UNKNOWN), (UNKNOWN, UNKNOWN)):
            lab.ok(call, {"NetworkID": ids[0], "EndpointID": ids[1]})
    for _ in range(2):
        lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": UNKNOWN})
    lab.ok("IpamDriver.ReleasePool", {"PoolID": "pycnm-local/10.66.0.0/24"})
    lab.ok("IpamDriver.ReleaseAddress", {"PoolID": "pycnm-local/10.66.0.0/24",
                                         "Address": "10.66.0.9"})
    assert lab.ctl.networks() == [] and not any(n.startswith("pc") for n in lab.links())


def test_a_create_retried_while_the_first_runs(lab: Lab) -> None:
    """Docker may send CreateNetwork again before the first answer (a timed-out client):
    both succeed and one network exists."""
    nid = new_id()
    body = _net(nid, pool="10.77.0.0/24", gateway="10.77.0.1/24")
    answers: list[int] = []

    def create() -> None:
        response = lab.app.test_client().post("/NetworkDriver.CreateNetwork",
                                              data=json.dumps(body))
        answers.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [200] * 4
    assert [n.id for n in lab.ctl.networks()] == [nid]
    assert lab.links().count("pcbr-" + nid[:10]) == 1


def test_delete_network_takes_orphaned_endpoints(populated: tuple[Lab, str, str]) -> None:
    """Docker deletes a network only when it holds no containers: endpoints we still have
    then are orphans of a crash, and go with the network."""
    lab, nid, _ = populated
    lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    assert lab.ctl.networks() == [] and lab.ctl.endpoints() == []
    assert not any(n.startswith("pc") for n in lab.links())


def test_a_second_bridge_network_on_an_overlapping_subnet_is_refused(lab: Lab) -> None:
    """An IPAM hands an identical subnet to every network that asks (Docker's does too);
    the bridge driver refuses the second bridge, as libnetwork's does, and makes nothing."""
    first = make_network(lab, "10.66.0.0/24")
    links_before = lab.links()
    for subnet in ("10.66.0.0/24", "10.66.0.0/16"):
        nid = new_id()
        status, answer = lab.call("NetworkDriver.CreateNetwork", {
            "NetworkID": nid, "Options": {GENERIC: {}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet,
                          "Gateway": "10.66.0.1/" + subnet.split("/")[1]}],
            "IPv6Data": [],
        })
        assert status == 500
        assert answer["Err"] == (f"subnet {subnet} overlaps subnet 10.66.0.0/24 of network "
                                 f"{first[:12]}: bridge networks on one host need subnets "
                                 "of their own")
    assert lab.links() == links_before
    assert [n.id for n in lab.ctl.networks()] == [first]
    make_network(lab, "10.67.0.0/24")  # a subnet of its own is fine


def test_pools_are_shared_by_identical_requests_and_counted(lab: Lab) -> None:
    ask = {"AddressSpace": "pycnm-local", "Pool": "10.70.0.0/24", "SubPool": "",
           "Options": {}, "V6": False}
    first, second = lab.ok("IpamDriver.RequestPool", ask), lab.ok("IpamDriver.RequestPool", ask)
    assert first == second == {"PoolID": "pycnm-local/10.70.0.0/24", "Pool": "10.70.0.0/24",
                               "Data": {}}
    status, answer = lab.call("IpamDriver.RequestPool", dict(ask, Pool="10.70.0.0/16"))
    assert status == 500 and "overlaps" in answer["Err"]
    gateway = lab.ok("IpamDriver.RequestAddress", {
        "PoolID": first["PoolID"], "Address": "",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert gateway == {"Address": "10.70.0.1/24", "Data": {}}
    status, answer = lab.call("IpamDriver.RequestAddress",
                              {"PoolID": first["PoolID"], "Address": "10.70.0.1"})
    assert status == 500 and "already in use" in answer["Err"]
    lab.ok("IpamDriver.ReleasePool", {"PoolID": first["PoolID"]})
    assert lab.ok("IpamDriver.RequestAddress", {"PoolID": first["PoolID"], "Address": "",
                                                "Options": None})["Address"] == "10.70.0.2/24"
    lab.ok("IpamDriver.ReleasePool", {"PoolID": first["PoolID"]})
    status, answer = lab.call("IpamDriver.RequestAddress", {"PoolID": first["PoolID"]})
    assert status == 500 and "not found" in answer["Err"]
    # Without a subnet every request gets a pool of its own.
    auto = {"AddressSpace": "pycnm-local", "Pool": "", "SubPool": "", "Options": {},
            "V6": False}
    a, b = lab.ok("IpamDriver.RequestPool", auto), lab.ok("IpamDriver.RequestPool", auto)
    assert a["PoolID"] != b["PoolID"]
    assert not ipaddress.ip_network(a["Pool"]).overlaps(ipaddress.ip_network(b["Pool"]))
    v6 = lab.ok("IpamDriver.RequestPool", dict(auto, V6=True))
    assert ipaddress.ip_network(v6["Pool"]).version == 6
    ranged = lab.ok("IpamDriver.RequestPool", dict(ask, Pool="10.71.0.0/24",
                                                   SubPool="10.71.0.128/25"))
    assert ranged["PoolID"] == "pycnm-local/10.71.0.0/24/10.71.0.128/25"
    assert lab.ok("IpamDriver.RequestAddress", {"PoolID": ranged["PoolID"]})["Address"] == \
        "10.71.0.128/24"
    glob = lab.ok("IpamDriver.RequestPool", dict(ask, Pool="10.72.0.0/24",
                                                 Options={"scope": "global"}))
    assert glob["PoolID"] == "pycnm-global/10.72.0.0/24"
    assert [p.id for p in lab.ctl.global_ipam.list_pools()] == ["global/10.72.0.0/24"]
    for pool in (a, b, v6, ranged, glob):
        lab.ok("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
    assert lab.ctl.ipam.list_pools() == [] and lab.ctl.global_ipam.list_pools() == []


def test_ipam_driver_pycnm_network(lab: Lab) -> None:
    """--ipam-driver pycnm: the pools come from pycnm's IPAM, the network records them
    with pycnm's pool id and leaves addresses to Docker's Request/ReleaseAddress."""
    pool = lab.ok("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local", "Pool": "",
                                             "SubPool": "", "Options": {}, "V6": False})
    gateway = lab.ok("IpamDriver.RequestAddress", {
        "PoolID": pool["PoolID"], "Address": "",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
    nid = new_id()
    lab.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "Options": {GENERIC: {}},
        "IPv4Data": [{"AddressSpace": "pycnm-local", "Pool": pool["Pool"],
                      "Gateway": gateway}], "IPv6Data": []})
    record = lab.ctl.network(nid).record
    assert record.ipam == "external" and record.labels["docker.ipam"] == "pycnm"
    assert record.ipv4_pools[0]["pool_id"] == "local/" + pool["Pool"]
    address = lab.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
                                                   "Options": None})["Address"]
    eid = new_id()
    lab.ok("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                            "Interface": {"Address": address}})
    lab.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
    held = lab.ctl.ipam.allocated("local/" + pool["Pool"])
    assert {str(a) for a in held} == {gateway.split("/")[0], address.split("/")[0]}
    lab.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"],
                                         "Address": address.split("/")[0]})
    lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    lab.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"],
                                         "Address": gateway.split("/")[0]})
    lab.ok("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
    assert lab.ctl.ipam.list_pools() == []


def test_mac_and_static_addresses_are_honoured(lab: Lab) -> None:
    nid = make_network(lab)
    eid = new_id()
    answer = lab.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": "10.61.0.200/24", "AddressIPv6": "", "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.macaddress": "AkKqu8zd"}})
    assert answer == {"Interface": {"MacAddress": "02:42:aa:bb:cc:dd"}}
    ep = lab.ctl.endpoints()[0]
    assert ep.record.address == "10.61.0.200/24" and ep.record.mac == "02:42:aa:bb:cc:dd"
    join = lab.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                         "SandboxKey": lab.sandboxes[1]})
    shown = lab.run("ip", "-br", "link", "show", join["InterfaceName"]["SrcName"])
    assert "02:42:aa:bb:cc:dd" in shown
    status, answer = lab.call("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": new_id(),
        "Interface": {"Address": "10.61.0.201/24", "MacAddress": "02:42:00:00:00:01"},
        "Options": {"com.docker.network.endpoint.macaddress": "AkKqu8zd"}})
    assert status == 500 and "disagree" in answer["Err"]


def test_internal_and_dual_stack(lab: Lab) -> None:
    nid = new_id()
    lab.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": nid,
        "Options": {"com.docker.network.enable_ipv6": True, GENERIC: {},
                    "com.docker.network.internal": True},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.73.0.0/24",
                      "Gateway": "10.73.0.1/24"}],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "fd00:73::/64",
                      "Gateway": "fd00:73::1/64"}]})
    eid = new_id()
    lab.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": "10.73.0.2/24", "AddressIPv6": "fd00:73::2/64"}})
    join = lab.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                         "SandboxKey": lab.sandboxes[0]})
    assert "Gateway" not in join and "GatewayIPv6" not in join
    assert join["DisableGatewayService"] is True
    status, answer = lab.call("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": nid, "EndpointID": eid, "Options": {"com.docker.network.portmap": [
            {"Proto": 6, "Port": 80, "HostPort": 8080}]}})
    assert status == 500 and "internal" in answer["Err"]
    other = new_id()
    lab.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": other, "Options": {"com.docker.network.enable_ipv6": True, GENERIC: {}},
        "IPv4Data": [{"Pool": "10.74.0.0/24", "Gateway": "10.74.0.1/24"}],
        "IPv6Data": [{"Pool": "fd00:74::/64", "Gateway": "fd00:74::1/64"}]})
    eid2 = make_endpoint(lab, other, "10.74.0.2/24")
    join = lab.ok("NetworkDriver.Join", {"NetworkID": other, "EndpointID": eid2,
                                         "SandboxKey": lab.sandboxes[1]})
    assert join["Gateway"] == "10.74.0.1" and join["GatewayIPv6"] == "fd00:74::1"
    assert join["DisableGatewayService"] is False


def test_driver_options_reach_the_bridge(lab: Lab) -> None:
    nid = make_network(lab, "10.75.0.0/24", driver="bridge", mtu="1400", bridge_name="pcbr-opt",
                       masquerade="false")
    shown = lab.run("ip", "-d", "link", "show", "pcbr-opt")
    assert "mtu 1400" in shown
    assert "masquerade" not in lab.run("nft", "list", "table", "inet", "pycnm")
    record = lab.ctl.network(nid).record
    assert record.name == "docker-" + nid[:12] and record.driver == "bridge"


def test_concurrent_endpoints_get_distinct_addresses(lab: Lab) -> None:
    """20 containers at once on one --ipam-driver pycnm network, each on its own worker
    thread as waitress would run them: distinct addresses, every join made."""
    pool = lab.ok("IpamDriver.RequestPool", {"AddressSpace": "pycnm-local",
                                             "Pool": "10.76.0.0/24"})
    gateway = lab.ok("IpamDriver.RequestAddress", {
        "PoolID": pool["PoolID"],
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
    nid = new_id()
    lab.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "Options": {GENERIC: {}},
        "IPv4Data": [{"AddressSpace": "pycnm-local", "Pool": pool["Pool"],
                      "Gateway": gateway}]})
    results: dict[int, Any] = {}

    def container(i: int) -> None:
        client = lab.app.test_client()

        def post(call: str, body: dict) -> dict:
            response = client.post(f"/{call}", data=json.dumps(body))
            answer = json.loads(response.get_data())
            assert response.status_code == 200, answer
            return answer

        try:
            address = post("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"]})["Address"]
            eid = new_id()
            post("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                  "Interface": {"Address": address}})
            join = post("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                               "SandboxKey": lab.sandboxes[i % 2]})
            post("NetworkDriver.ProgramExternalConnectivity",
                 {"NetworkID": nid, "EndpointID": eid, "Options": {}})
            results[i] = (address, join["InterfaceName"]["SrcName"])
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=container, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    failures = [r for r in results.values() if isinstance(r, BaseException)]
    assert not failures, failures
    assert len(results) == 20
    addresses = {r[0] for r in results.values()}
    assert len(addresses) == 20 and gateway not in addresses
    links = lab.links()
    assert all(r[1] in links for r in results.values())


# --- the server: socket, listeners, signals ------------------------------------------------


def _serve(store_url: str, host: str, sock: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cnm.cli", "--store", store_url, "--host-ns", host, "plugin",
         "serve", "--socket", str(sock), "--no-background", *extra],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_socket(proc: subprocess.Popen[str], sock: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if sock.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(sock))
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.05)
    raise AssertionError("the plugin never listened")


def _tcp_listeners(pid: int) -> str:
    return subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True,
                          timeout=20).stdout if pid else ""


def test_server_socket_stale_socket_tcp_and_sigterm(tmp_path: Path, store_url: str,
                                                     netns: Callable[..., Any]) -> None:
    host = netns("host").path
    sock = tmp_path / "plugins" / "pycnm.sock"
    sock.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody serves: a killed plugin's
    stale.bind(str(sock))
    stale.close()
    proc = _serve(store_url, host, sock)
    try:
        _wait_for_socket(proc, sock)
        info = sock.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert (info.st_uid, info.st_gid) == (0, 0)
        assert f"pid={proc.pid}," not in _tcp_listeners(proc.pid)  # no TCP unless asked
        second = _serve(store_url, host, sock)
        output = second.communicate(timeout=60)[0]
        assert second.returncode != 0 and "already serving" in output
        assert sock.exists()  # the refused second one left the first one's socket alone
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "removed the stale socket" in output and "stopped" in output
    assert not sock.exists()
    port = 20000 + secrets.randbelow(20000)
    proc = _serve(store_url, host, sock, "--tcp", f"127.0.0.1:{port}")
    try:
        _wait_for_socket(proc, sock)
        for _ in range(50):  # bounded: the TCP listener comes right after the socket
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/Plugin.Activate", body=b"")
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        answer = conn.getresponse()
        assert answer.status == 200 and b"NetworkDriver" in answer.read()
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0 and not sock.exists()
