"""The load balancer's nftables rules, rendered from a plan (pure: no kernel, no store).

In a network's load-balancer namespace, table ``ip pycnm-lb`` (kube-proxy's nftables
design, in a namespace of its own):

    map service-ips  VIP . PROTO . PORT : goto svc-ID           (one element per port)
    chain prerouting (nat, dstnat):   ip daddr . meta l4proto . th dport vmap @service-ips
    chain svc-ID:     dnat to numgen inc mod N map { 0 : BACKEND0, ... }     (rr)
                      dnat to numgen random mod N map { ... }               (random)
                      dnat to jhash ip saddr mod N seed S map { ... }       (source-hash)
                      (the port stays: a backend serves the service's port)

One rule per service (kube-proxy jumps to a chain per endpoint; pycnm needs no per-endpoint
rule, and fewer chains make the one transaction of a change cheaper).
    chain postrouting (nat, srcnat):  ct status dnat oifname eth0 snat to LEG-ADDRESS
    chain input (filter):    ip daddr { VIPs } meta l4proto tcp reject with tcp reset
                             ip daddr { VIPs } reject (icmp port unreachable)
    chain forward (filter, policy drop):  ct state established,related accept
                                          ct status dnat accept

A connection to a VIP port with backends is translated before routing and never reaches
the namespace's own stack; anything else for a VIP (no backend, a port the service does
not have) reaches ``input`` and is refused at once, never dropped. The SNAT to the leg's
address brings the backend's reply back through the same namespace (as libnetwork's
load balancer in NAT mode and Docker's ingress do), so the client sees the VIP answer.
The namespace forwards only what it translated.

On a bridge network the host's own table ``ip pycnm-services`` carries the same
translation (the fast path: no hop through the load-balancer namespace). Frames between
two ports of a bridge pass the host's IP hooks through br_netfilter, with the bridge as
their input interface; a DNAT there is routed back onto the same bridge and sent on to
the backend's port with the backend's MAC, and conntrack undoes it on the replies:

    chain prerouting (nat, dstnat):   iifname BRIDGE ip daddr . meta l4proto . th dport
                                          vmap @ips-NID                 (one per network)
    map ips-NID       VIP . PROTO . PORT : goto svc-ID
    chain svc-ID:     ip saddr { BACKENDS } return
                      counter dnat to numgen inc mod N map { ... }      (as above)

A backend's own connection to its VIP (hairpin) returns and goes on, as everything the
fast path does not translate, to the load-balancer namespace (a backend picked for
itself must see another source address than its own: the balancer's SNAT). So does a
connection to a service without backends or to a port it does not have: refused there.

On the host, table ``ip pycnm-ingress`` publishes service ports (the routing mesh):

    chain prerouting (nat, dstnat):   fib daddr type local tcp dport HOSTPORT dnat to VIP:PORT
    chain postrouting (nat, srcnat):  oifname pcig-NET ip saddr SUBNET masquerade
    chain forward (filter):           oifname { pcig-... } ct status dnat accept
                                      oifname { pcig-... } drop

The VIP is routed through the ``pcig-`` veth to the network's load balancer, which picks
a backend on any host; the masquerade only concerns a sandbox of the network itself that
reaches its host's published port (its reply must come back the same way). The forward
guard lets through the link only what a published port translated: a sandbox of another
network, routed by the host, must not reach the VIP that way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cnm import names
from cnm.osl import nftjson as j
from cnm.services.model import Port, Proto

LB_TABLE = "pycnm-lb"
INGRESS_TABLE = names.NFT_INGRESS_TABLE
SERVICES_TABLE = names.NFT_SERVICES_TABLE
FAMILY: j.Family = "ip"
SERVICE_MAP = "service-ips"
LEG = "eth0"

IPv4 = ipaddress.IPv4Address


@dataclass(frozen=True)
class ServicePlan:
    id: str  # 12 hex digits: names its chains
    vip: IPv4
    ports: tuple[Port, ...]
    balance: str
    backends: tuple[IPv4, ...]
    seed: int


@dataclass(frozen=True)
class LbPlan:
    leg_address: IPv4
    services: tuple[ServicePlan, ...]

    def vips(self) -> list[IPv4]:
        return sorted({s.vip for s in self.services})


@dataclass(frozen=True)
class FastNetwork:
    """A bridge network's services as the host's fast path serves them."""

    id: str  # the network's id (its first 10 characters name its map)
    bridge: str
    services: tuple[ServicePlan, ...]


@dataclass(frozen=True)
class FastPlan:
    networks: tuple[FastNetwork, ...]


@dataclass(frozen=True)
class IngressPort:
    proto: Proto
    host_port: int
    vip: IPv4
    port: int


@dataclass(frozen=True)
class IngressPlan:
    """What one host publishes: ports, and per ``pcig-`` link the subnets it serves."""

    ports: tuple[IngressPort, ...]
    links: tuple[tuple[str, tuple[ipaddress.IPv4Network, ...]], ...]


def _balance(service: ServicePlan) -> j.Expr:
    if service.balance == "source-hash":
        return j.dnat_jhash(j.payload("ip", "saddr"), service.backends, seed=service.seed)
    return j.dnat_numgen("random" if service.balance == "random" else "inc", service.backends)


def lb_ruleset(plan: LbPlan) -> tuple[list[j.Chain], list[j.NamedSet]]:
    chains: list[j.Chain] = []
    elements: list[list[object]] = []
    for service in plan.services:
        if not service.backends:
            continue
        svc = f"svc-{service.id}"
        chains.append(j.Chain(svc, None, [j.rule(_balance(service))]))
        elements += [j.goto_element(j.service_key(service.vip, p.proto, p.port), svc)
                     for p in service.ports]
    sets = [j.NamedSet(SERVICE_MAP, ("ipv4_addr", "inet_proto", "inet_service"),
                       tuple(elements), map_type="verdict")]
    prerouting = [j.rule(j.vmap_lookup(j.service_key_expr(), SERVICE_MAP))] if elements else []
    vips = plan.vips()
    refuse = [
        j.rule(j.match_addr_in("daddr", vips), j.match_l4proto("tcp"), j.reject("tcp reset")),
        j.rule(j.match_addr_in("daddr", vips), j.reject("icmp")),
    ] if vips else []
    base = [
        j.Chain("prerouting", j.nat_hook("prerouting"), prerouting),
        j.Chain("postrouting", j.nat_hook("postrouting"), [
            j.rule(j.match_ct_status("dnat"), j.match_ifname("oifname", LEG),
                   j.snat(plan.leg_address))]),
        j.Chain("input", j.filter_hook("input"), refuse),
        j.Chain("forward", j.filter_hook("forward", policy="drop"), [
            j.rule(j.match_ct_state(["established", "related"]), j.accept()),
            j.rule(j.match_ct_status("dnat"), j.accept())]),
    ]
    return base + chains, sets


def fast_ruleset(plan: FastPlan) -> tuple[list[j.Chain], list[j.NamedSet]]:
    """The host's ``ip pycnm-services`` table (see the module's notes)."""
    prerouting: list[j.Rule] = []
    chains: list[j.Chain] = []
    sets: list[j.NamedSet] = []
    for net in plan.networks:
        elements: list[list[object]] = []
        for service in net.services:
            if not service.backends:
                continue  # refused by the load-balancer namespace
            svc = f"svc-{service.id}"
            chains.append(j.Chain(svc, None, [
                j.rule(j.match_addr_in("saddr", service.backends), j.ret()),
                j.rule(j.counter(), _balance(service))]))
            elements += [j.goto_element(j.service_key(service.vip, p.proto, p.port), svc)
                         for p in service.ports]
        if not elements:
            continue
        name = f"ips-{names.short(net.id, names.KERNEL_ID_CHARS)}"
        sets.append(j.NamedSet(name, ("ipv4_addr", "inet_proto", "inet_service"),
                               tuple(elements), map_type="verdict"))
        prerouting.append(j.rule(j.match_ifname("iifname", net.bridge),
                                 j.vmap_lookup(j.service_key_expr(), name)))
    return [j.Chain("prerouting", j.nat_hook("prerouting"), prerouting), *chains], sets


def ingress_ruleset(plan: IngressPlan) -> list[j.Chain]:
    dnat = [
        j.rule(j.match_local_daddr(), j.match_port(p.proto, "dport", p.host_port),
               j.dnat(p.vip, p.port))
        for p in plan.ports
    ]
    masquerade = [
        j.rule(j.match_ifname("oifname", link), j.match_addr("saddr", subnet), j.masquerade())
        for link, subnets in plan.links for subnet in subnets
    ]
    links = [link for link, _ in plan.links]
    guard = [
        j.rule(j.match_ifname("oifname", links), j.match_ct_status("dnat"), j.accept()),
        j.rule(j.match_ifname("oifname", links), j.drop()),
    ] if links else []
    return [j.Chain("prerouting", j.nat_hook("prerouting"), dnat),
            j.Chain("postrouting", j.nat_hook("postrouting"), masquerade),
            j.Chain("forward", j.filter_hook("forward"), guard)]
