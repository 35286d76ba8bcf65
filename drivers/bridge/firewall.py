"""The bridge driver's nftables rules, rendered from its stored state.

Declarative, like kube-proxy's nftables mode: every change re-renders pycnm's own table
(``inet pycnm``: NAT, published ports, isolation between networks, internal networks)
from the store and loads it in one atomic transaction, so a restarted process converges on
the same rules and nothing else's rules are touched.

ICC off is not a firewall rule: frames between two ports of one bridge never reach the
inet forward hook (unless br_netfilter is loaded and enabled in that namespace), so the
driver marks the network's bridge ports "isolated" instead (IFLA_BRPORT_ISOLATED): isolated
ports cannot talk to each other, only to the bridge itself, i.e. the gateway.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from cnm.names import NFT_TABLE
from cnm.osl import nft
from cnm.osl import nftjson as j

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class NetworkRules:
    bridge: str
    subnets_v4: list[ipaddress.IPv4Network]
    subnets_v6: list[ipaddress.IPv6Network]
    icc: bool
    masquerade: bool
    internal: bool


@dataclass
class PortRule:
    proto: Literal["tcp", "udp", "sctp"]
    host_ip: Address | None  # None: every local address
    host_port: int
    address: Address  # the endpoint's address, of host_ip's family
    port: int


@dataclass
class Ruleset:
    networks: list[NetworkRules] = field(default_factory=list)
    ports: list[PortRule] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.networks


def _forward_rules(rules: Ruleset) -> list[j.Rule]:
    bridges = [n.bridge for n in rules.networks]
    forward: list[j.Rule] = []
    for net in rules.networks:
        others = [b for b in bridges if b != net.bridge]
        if net.internal:
            forward.append(j.rule(j.match_ifname("iifname", net.bridge),
                                  j.match_ifname("oifname", net.bridge, "!="), j.drop()))
            forward.append(j.rule(j.match_ifname("oifname", net.bridge),
                                  j.match_ifname("iifname", net.bridge, "!="), j.drop()))
        if others:
            # Networks are isolated from each other, as Docker's DOCKER-ISOLATION chains do.
            forward.append(j.rule(j.match_ifname("iifname", net.bridge),
                                  j.match_ifname("oifname", others), j.drop()))
        if not net.icc:
            forward.append(j.rule(j.match_ifname("iifname", net.bridge),
                                  j.match_ifname("oifname", net.bridge), j.drop()))
    return forward


def _masquerade_rules(rules: Ruleset) -> list[j.Rule]:
    outbound = [
        j.rule(j.match_addr("saddr", subnet), j.match_ifname("oifname", net.bridge, "!="),
               j.masquerade())
        for net in rules.networks if net.masquerade and not net.internal
        for subnet in net.subnets_v4
    ]
    # Hairpin: a sandbox reaching its own published port comes back to itself; its own
    # address as the source would make it answer itself directly (and the connection
    # fail), so the packet takes the gateway's address instead (Docker's rule, without
    # its userland proxy).
    targets = dict.fromkeys((p.proto, p.address, p.port) for p in rules.ports)
    hairpin = [
        j.rule(j.match_addr("saddr", address), j.match_addr("daddr", address),
               j.match_port(proto, "dport", port), j.masquerade())
        for proto, address, port in targets
    ]
    return outbound + hairpin


def _dnat_rules(rules: Ruleset) -> list[j.Rule]:
    dnat: list[j.Rule] = []
    for port in rules.ports:
        where = (j.match_addr("daddr", port.host_ip) if port.host_ip is not None
                 else j.match_local_daddr())
        family = [] if port.host_ip is not None else [
            j.match_nfproto("ipv4" if port.address.version == 4 else "ipv6")]
        dnat.append(j.rule(*family, where, j.match_port(port.proto, "dport", port.host_port),
                           j.dnat(port.address, port.port)))
    return dnat


def chains(rules: Ruleset) -> list[j.Chain]:
    """The table's chains: published ports (prerouting, and output for the host's own
    connections), masquerade, and the forward filter."""
    dnat = _dnat_rules(rules)
    return [
        j.Chain("prerouting", j.nat_hook("prerouting"), dnat),
        j.Chain("output", j.nat_hook("output", -100), list(dnat)),
        j.Chain("postrouting", j.nat_hook("postrouting"), _masquerade_rules(rules)),
        j.Chain("forward", j.filter_hook("forward"), _forward_rules(rules)),
    ]


def apply(ns: str | None, rules: Ruleset, owner: str) -> None:
    """Load the rules, or remove our table when no network needs it; ``owner`` is the
    store they come from (see ``nft.claim_table``). Call with ``nft.ruleset_lock`` held."""
    if rules.empty():
        if nft.other_owner(ns, "inet", NFT_TABLE, owner) is None:  # never another's
            nft.delete_table(ns, "inet", NFT_TABLE)
            nft.release_table(ns)
        return
    fresh = nft.claim_table(ns, "inet", NFT_TABLE, owner)
    nft.replace_table(ns, "inet", NFT_TABLE, chains(rules), what="bridge firewall",
                      fresh=fresh)
