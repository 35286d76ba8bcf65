"""The protocol of Docker 27, 28 and 29, through Flask's test client.

No such engine runs here, so each test sends payloads shaped as those engines send them,
read from moby's sources (libnetwork/drivers/remote/driver.go and api/api.go, driverapi,
netlabel, endpoint.go of v27.0, v28.5 and v29.0):

- Docker 28: ``GetCapabilities`` may answer ``GwAllocChecker``; the engine then posts
  ``GwAllocCheck`` {"Options"} before ``CreateNetwork`` and reads {"SkipIPv4", "SkipIPv6"};
  ``com.docker.network.enable_ipv4`` sits beside enable_ipv6 in the options, and with IPv4
  off (``--ipv4=false``) ``CreateNetwork`` has an empty ``IPv4Data``.
- Docker 27: endpoint options may carry ``com.docker.network.endpoint.sysctls``
  (dockerd applies them itself); Docker 28: ``com.docker.network.endpoint.ifname``, which
  the remote driver cannot honour.
- Docker 29: ``ProgramExternalConnectivity`` only for the container's gateway endpoint,
  with the options cached from ``Join``; when the gateway moves the old one is revoked
  first (``RevokeExternalConnectivity``) and the new one programmed; the endpoint that is
  the IPv4 gateway while another is the IPv6 gateway gets
  ``com.docker.network.driver.private.no_proxy_6to4``.
- Since 27 the remote driver rolls back at once: ``DeleteEndpoint`` after a
  ``CreateEndpoint`` whose answer it could not use, ``Leave`` after such a ``Join``; and the
  core retries. Every handler must be idempotent, also for what it only half made.

Where Docker would move the interface into the container, the tests do it themselves (as
dockerd does: move, rename, address, up) and send real packets.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.unit.test_plugin_protocol import GENERIC, Lab, new_id

pytestmark = pytest.mark.root

ENABLE_IPV4 = "com.docker.network.enable_ipv4"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
PORTMAP = "com.docker.network.portmap"
EXPOSED = "com.docker.network.endpoint.exposedports"
SYSCTLS = "com.docker.network.endpoint.sysctls"
IFNAME = "com.docker.network.endpoint.ifname"
NO_PROXY_6TO4 = "com.docker.network.driver.private.no_proxy_6to4"


@pytest.fixture
def lab(store_url: str, netns: Callable[..., Any]) -> Iterator[Lab]:
    """A host namespace, two "container" namespaces, a Controller and a client (as in
    test_plugin_protocol.py), removed after the test."""
    made = Lab(store_url, netns)
    try:
        yield made
    finally:
        made.close()


def network_options(generic: dict[str, str] | None = None, *, ipv4: bool = True,
                    ipv6: bool = False, internal: bool = False) -> dict[str, Any]:
    """``Options`` as Docker 28 sends them in GwAllocCheck and CreateNetwork."""
    options: dict[str, Any] = {ENABLE_IPV4: ipv4, ENABLE_IPV6: ipv6, GENERIC: generic or {}}
    if internal:
        options[INTERNAL] = True
    return options


def create_network(lab: Lab, v4: str | None, v6: str | None = None, **flags: Any) -> str:
    """GwAllocCheck, then CreateNetwork, as Docker 28 sends them; returns the id."""
    options = network_options(ipv4=v4 is not None, ipv6=v6 is not None, **flags)
    assert lab.ok("NetworkDriver.GwAllocCheck", {"Options": options}) == {
        "SkipIPv4": False, "SkipIPv6": False}
    nid = new_id()

    def data(pool: str | None) -> list[dict[str, str]]:
        if pool is None:
            return []
        net = ipaddress.ip_network(pool)
        return [{"AddressSpace": "LocalDefault", "Pool": pool,
                 "Gateway": f"{net.network_address + 1}/{net.prefixlen}"}]

    lab.ok("NetworkDriver.CreateNetwork", {"NetworkID": nid, "Options": options,
                                           "IPv4Data": data(v4), "IPv6Data": data(v6)})
    return nid


def create_endpoint(lab: Lab, nid: str, address: str = "", address_v6: str = "",
                    **options: Any) -> str:
    eid = new_id()
    lab.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": address, "AddressIPv6": address_v6, "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.dnsservers": ["127.0.0.1"], EXPOSED: [],
                    PORTMAP: [], **options}})
    return eid


def sandbox_options(*ports: tuple[int, int]) -> dict[str, Any]:
    """The sandbox's options Docker sends in Join and (29: cached from Join) in
    ProgramExternalConnectivity: -p HOST:CONTAINER/tcp for each pair."""
    return {EXPOSED: [{"Proto": 6, "Port": port} for _, port in ports],
            PORTMAP: [{"Proto": 6, "IP": "", "Port": port, "HostIP": "", "HostPort": host,
                       "HostPortEnd": host} for host, port in ports]}


def join(lab: Lab, nid: str, eid: str, sandbox: str, options: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    return lab.ok("NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                         "SandboxKey": sandbox, "Options": options or {}})


def plug(lab: Lab, answer: dict[str, Any], sandbox: str, name: str,
         addresses: list[str]) -> None:
    """What dockerd does with a Join answer: move SrcName into the sandbox, rename it,
    give it its addresses, bring it up."""
    src = answer["InterfaceName"]["SrcName"]
    ns = sandbox.rsplit("/", 1)[1]
    lab.run("ip", "link", "set", src, "netns", ns)
    commands = [["ip", "link", "set", src, "name", name],
                *(["ip", "addr", "add", a, "dev", name, "nodad"] for a in addresses),
                ["ip", "link", "set", name, "up"]]
    for argv in commands:
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True,
                       timeout=20)


def ping(sandbox: str, address: str) -> bool:
    """Bounded: three packets at most, the first may wait for neighbour discovery."""
    ns = sandbox.rsplit("/", 1)[1]
    flag = ["-6"] if ":" in address else []
    result = subprocess.run(["ip", "netns", "exec", ns, "ping", *flag, "-c", "3", "-i", "0.2",
                             "-w", "5", address], capture_output=True, timeout=20)
    return result.returncode == 0


def dnat_targets(lab: Lab, host_port: int) -> list[str]:
    """The addresses a published host port is forwarded to (prerouting's rules)."""
    listed = lab.run("nft", "list", "tables")
    if "inet pycnm" not in listed:
        return []
    chain = lab.run("nft", "list", "chain", "inet", "pycnm", "prerouting")
    found = re.findall(rf"dport {host_port} dnat ip6? to (?:\[([0-9a-f:]+)\]|([0-9.]+)):\d+",
                       chain)
    return [v6 or v4 for v6, v4 in found]


def teardown(lab: Lab, nid: str, *eids: str) -> None:
    for eid in eids:
        lab.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": nid, "EndpointID": eid})
        lab.ok("NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
        lab.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
    lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def assert_nothing_left(lab: Lab, links_before: list[str]) -> None:
    assert lab.links() == links_before
    assert "inet pycnm" not in lab.run("nft", "list", "tables")
    left = [e.key for e in lab.ctl.store.list("") if "/ipam/spaces/" not in e.key]
    assert left == []


# --- Docker 28: GwAllocChecker, GwAllocCheck --------------------------------------------


def test_capabilities_announce_the_gateway_allocation_check(lab: Lab) -> None:
    assert lab.ok("NetworkDriver.GetCapabilities") == {
        "Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}


@pytest.mark.parametrize("flags", [{}, {"internal": True}, {"ipv6": True}],
                         ids=["plain", "internal", "dual-stack"])
def test_gw_alloc_check_keeps_gateways_reserved(lab: Lab, flags: dict[str, bool]) -> None:
    """The bridge holds its gateway address, internal or not: Docker must reserve it."""
    before = lab.snapshot()
    answer = lab.ok("NetworkDriver.GwAllocCheck", {"Options": network_options(
        {"com.docker.network.driver.mtu": "1400"}, **flags)})
    assert answer == {"SkipIPv4": False, "SkipIPv6": False}
    assert lab.snapshot() == before  # a question, nothing made


@pytest.mark.parametrize(("generic", "flags", "words"), [
    ({"colour": "blue"}, {}, "unknown option 'colour'"),
    ({"com.docker.network.driver.mtu": "huge"}, {}, "must be a whole number"),
    ({"driver": "nosuch"}, {}, "unknown driver 'nosuch'"),
    ({"driver": "macvlan", "parent": "lo"}, {"ipv4": False, "ipv6": True},
     "the macvlan driver needs IPv4"),
    ({}, {"ipv4": False}, "needs IPv4 or IPv6"),
])
def test_gw_alloc_check_refuses_bad_options_before_docker_allocates(
        lab: Lab, generic: dict[str, str], flags: dict[str, bool], words: str) -> None:
    before = lab.snapshot()
    status, answer = lab.call("NetworkDriver.GwAllocCheck",
                              {"Options": network_options(generic, **flags)})
    assert status == 500 and words in answer["Err"], answer
    assert "\n" not in answer["Err"]
    assert lab.snapshot() == before


# --- Docker 28: enable_ipv4, IPv6-only networks --------------------------------------------


def test_ipv6_only_network_with_an_empty_ipv4data(lab: Lab) -> None:
    links_before = lab.links()
    nid = create_network(lab, None, "fd00:28::/64")
    record = lab.ctl.network(nid).record
    assert record.ipv4 is False and record.ipv4_pools == [] and record.ipv6
    bridge = lab.ctl.network(nid).inspect()["Options"]["com.docker.network.bridge.name"]
    shown = lab.run("ip", "-br", "addr", "show", bridge)
    assert "fd00:28::1/64" in shown and "." not in shown.split(None, 2)[-1]  # no IPv4 at all
    eid = create_endpoint(lab, nid, address_v6="fd00:28::2/64")
    answer = join(lab, nid, eid, lab.sandboxes[0], sandbox_options((18028, 80)))
    assert answer["GatewayIPv6"] == "fd00:28::1" and "Gateway" not in answer
    plug(lab, answer, lab.sandboxes[0], "eth0", ["fd00:28::2/64"])
    assert ping(lab.sandboxes[0], "fd00:28::1")  # the bridge's gateway, over IPv6 only
    lab.ok("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": nid, "EndpointID": eid, "Options": sandbox_options((18028, 80))})
    assert dnat_targets(lab, 18028) == ["fd00:28::2"]  # published to its IPv6 address
    teardown(lab, nid, eid)
    assert_nothing_left(lab, links_before)


def test_ipv6_only_payloads_that_do_not_add_up_are_refused(lab: Lab) -> None:
    before = lab.snapshot()
    bad = [
        # enable_ipv4 false, yet an IPv4 pool
        ({"Options": network_options(ipv4=False, ipv6=True),
          "IPv4Data": [{"Pool": "10.28.0.0/24", "Gateway": "10.28.0.1/24"}],
          "IPv6Data": [{"Pool": "fd00:28::/64", "Gateway": "fd00:28::1/64"}]},
         "enable_ipv4 is false but IPv4Data has a pool"),
        # IPv4 on (as before Docker 28) but no IPv4 pool
        ({"Options": network_options(ipv6=True), "IPv4Data": [],
          "IPv6Data": [{"Pool": "fd00:28::/64", "Gateway": "fd00:28::1/64"}]},
         "needs an IPv4 subnet"),
        ({"Options": network_options(ipv4="no"), "IPv4Data": []},  # type: ignore[arg-type]
         "must be true or false"),
    ]
    for body, words in bad:
        status, answer = lab.call("NetworkDriver.CreateNetwork", {"NetworkID": new_id(), **body})
        assert status == 500 and words in answer["Err"], answer
    assert lab.snapshot() == before


# --- Docker 27 and 28: endpoint sysctls and ifname ------------------------------------------


def test_endpoint_sysctls_pass_through_for_dockerd_to_apply(lab: Lab) -> None:
    links_before = lab.links()
    nid = create_network(lab, "10.27.0.0/24")
    sysctls = "net.ipv4.conf.IFNAME.log_martians=1,net.ipv6.conf.IFNAME.accept_ra=2"
    eid = create_endpoint(lab, nid, "10.27.0.2/24", **{SYSCTLS: sysctls})
    answer = join(lab, nid, eid, lab.sandboxes[0])
    src = answer["InterfaceName"]["SrcName"]
    # Not pycnm's to set, and not on the host's side of the pair: dockerd sets them on the
    # interface once it is in the container.
    assert lab.run("cat", f"/proc/sys/net/ipv4/conf/{src}/log_martians").strip() == "0"
    plug(lab, answer, lab.sandboxes[0], "eth0", ["10.27.0.2/24"])
    assert ping(lab.sandboxes[0], "10.27.0.1")
    teardown(lab, nid, eid)
    assert_nothing_left(lab, links_before)


def test_endpoint_ifname_is_refused_with_the_reason(lab: Lab) -> None:
    nid = create_network(lab, "10.28.0.0/24")
    before = lab.snapshot()
    status, answer = lab.call("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": new_id(),
        "Interface": {"Address": "10.28.0.2/24", "AddressIPv6": "", "MacAddress": ""},
        "Options": {IFNAME: "data0", EXPOSED: [], PORTMAP: []}})
    assert status == 500
    assert answer["Err"].startswith(f'{IFNAME}="data0" cannot be honoured by a network plugin')
    assert "Docker names a plugin's interface" in answer["Err"]
    assert lab.snapshot() == before


# --- Docker 29: ProgramExternalConnectivity follows the gateway ----------------------------


def test_program_follows_the_gateway_as_it_moves(lab: Lab) -> None:
    """A container with -p 18029:80 on network A, then connected to B, which becomes its
    gateway (--gw-priority), then disconnected from B, as Docker 29 calls the driver."""
    links_before = lab.links()
    sandbox, ports = lab.sandboxes[0], sandbox_options((18029, 80))
    net_a, net_b = create_network(lab, "10.29.1.0/24"), create_network(lab, "10.29.2.0/24")
    a = create_endpoint(lab, net_a, "10.29.1.2/24", **ports)
    plug(lab, join(lab, net_a, a, sandbox, ports), sandbox, "eth0", ["10.29.1.2/24"])
    program = {"NetworkID": net_a, "EndpointID": a, "Options": ports}
    lab.ok("NetworkDriver.ProgramExternalConnectivity", program)
    lab.ok("NetworkDriver.ProgramExternalConnectivity", program)  # a repeat changes nothing
    assert dnat_targets(lab, 18029) == ["10.29.1.2"]
    # B becomes the gateway: Docker 29 revokes A first, then programs B.
    b = create_endpoint(lab, net_b, "10.29.2.2/24")
    plug(lab, join(lab, net_b, b, sandbox, ports), sandbox, "eth1", ["10.29.2.2/24"])
    lab.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": net_a, "EndpointID": a})
    lab.ok("NetworkDriver.ProgramExternalConnectivity",
           {"NetworkID": net_b, "EndpointID": b, "Options": ports})
    assert dnat_targets(lab, 18029) == ["10.29.2.2"]
    # B leaves: revoked, left; A is the gateway again and programmed again.
    lab.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": net_b, "EndpointID": b})
    lab.ok("NetworkDriver.Leave", {"NetworkID": net_b, "EndpointID": b})
    lab.ok("NetworkDriver.ProgramExternalConnectivity", program)
    assert dnat_targets(lab, 18029) == ["10.29.1.2"]
    assert ping(sandbox, "10.29.1.1")
    lab.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net_b, "EndpointID": b})
    lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net_b})
    teardown(lab, net_a, a)
    assert_nothing_left(lab, links_before)


def test_ipv4_and_ipv6_gateways_on_two_endpoints(lab: Lab) -> None:
    """Docker 29 with the IPv4 gateway on network A and the IPv6 gateway on B: each gets
    ProgramExternalConnectivity with the same ports (A's with no_proxy_6to4). pycnm
    publishes each port once, on A; B takes over when A leaves."""
    links_before = lab.links()
    sandbox, ports = lab.sandboxes[1], sandbox_options((18030, 80))
    net_a = create_network(lab, "10.30.1.0/24")
    net_b = create_network(lab, "10.30.2.0/24", "fd00:30::/64")
    a = create_endpoint(lab, net_a, "10.30.1.2/24", **ports)
    b = create_endpoint(lab, net_b, "10.30.2.2/24", "fd00:30::2/64", **ports)
    plug(lab, join(lab, net_a, a, sandbox, ports), sandbox, "eth0", ["10.30.1.2/24"])
    plug(lab, join(lab, net_b, b, sandbox, ports), sandbox, "eth1",
         ["10.30.2.2/24", "fd00:30::2/64"])
    lab.ok("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": net_a, "EndpointID": a, "Options": {**ports, NO_PROXY_6TO4: True}})
    lab.ok("NetworkDriver.ProgramExternalConnectivity",
           {"NetworkID": net_b, "EndpointID": b, "Options": ports})
    assert dnat_targets(lab, 18030) == ["10.30.1.2"]
    lab.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": net_a, "EndpointID": a})
    lab.ok("NetworkDriver.Leave", {"NetworkID": net_a, "EndpointID": a})
    lab.ok("NetworkDriver.ProgramExternalConnectivity",
           {"NetworkID": net_b, "EndpointID": b, "Options": ports})
    assert dnat_targets(lab, 18030) == ["10.30.2.2"]
    assert ping(sandbox, "fd00:30::1") and ping(sandbox, "10.30.2.1")
    lab.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net_a, "EndpointID": a})
    lab.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net_a})
    teardown(lab, net_b, b)
    assert_nothing_left(lab, links_before)


# --- since 27: rollback right after a failed call -------------------------------------------


def test_delete_endpoint_right_after_a_failed_or_refused_create(lab: Lab) -> None:
    nid = create_network(lab, "10.31.0.0/24")
    links_before, before = lab.links(), lab.snapshot()
    # The plugin refused it: Docker's core may still delete what it asked for.
    eid = new_id()
    status, _ = lab.call("NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": "10.99.0.2/24", "AddressIPv6": "", "MacAddress": ""}})
    assert status == 500
    for _ in range(2):
        lab.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
    assert lab.snapshot() == before
    # The plugin said yes, Docker could not use the answer: DeleteEndpoint at once, twice.
    eid = create_endpoint(lab, nid, "10.31.0.2/24")
    for _ in range(2):
        lab.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
    assert lab.snapshot() == before
    # The same id again (Docker retries a container start) works from scratch.
    eid2 = create_endpoint(lab, nid, "10.31.0.2/24")
    answer = join(lab, nid, eid2, lab.sandboxes[0])
    plug(lab, answer, lab.sandboxes[0], "eth0", ["10.31.0.2/24"])
    assert ping(lab.sandboxes[0], "10.31.0.1")
    teardown(lab, nid, eid2)
    assert lab.links() == [n for n in links_before if not n.startswith("pcbr-")]


def test_leave_right_after_a_failed_or_unusable_join(lab: Lab) -> None:
    links_before = lab.links()
    nid = create_network(lab, "10.32.0.0/24")
    bridge = lab.ctl.network(nid).inspect()["Options"]["com.docker.network.bridge.name"]
    eid = create_endpoint(lab, nid, "10.32.0.2/24")
    # Join fails half way: the bridge vanished behind pycnm's back.
    lab.run("ip", "link", "del", bridge)
    status, answer = lab.call("NetworkDriver.Join", {
        "NetworkID": nid, "EndpointID": eid, "SandboxKey": lab.sandboxes[0], "Options": {}})
    assert status == 500 and bridge in answer["Err"], answer
    for _ in range(2):
        lab.ok("NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
    assert not [n for n in lab.links() if n.startswith(("pcv-", "pcp-"))]  # nothing half-made
    # The plugin restarts (reconcile rebuilds the bridge); Join works, then Docker cannot
    # use the answer and leaves at once, twice; then the retried start succeeds.
    lab.ctl.reconcile()
    join(lab, nid, eid, lab.sandboxes[0])
    for _ in range(2):
        lab.ok("NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid})
    answer = join(lab, nid, eid, lab.sandboxes[0])
    plug(lab, answer, lab.sandboxes[0], "eth0", ["10.32.0.2/24"])
    assert ping(lab.sandboxes[0], "10.32.0.1")
    teardown(lab, nid, eid)
    assert_nothing_left(lab, links_before)
