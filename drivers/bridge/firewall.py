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

from dataclasses import dataclass, field

from cnm.names import NFT_TABLE
from cnm.osl import nft


@dataclass
class NetworkRules:
    bridge: str
    subnets_v4: list[str]
    subnets_v6: list[str]
    icc: bool
    masquerade: bool
    internal: bool


@dataclass
class PortRule:
    proto: str
    host_ip: str | None
    host_port: int
    address: str  # endpoint address (v4)
    port: int


@dataclass
class Ruleset:
    networks: list[NetworkRules] = field(default_factory=list)
    ports: list[PortRule] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.networks


def _quote(names: list[str]) -> str:
    return "{ " + ", ".join(f'"{n}"' for n in names) + " }"


def render_inet(rules: Ruleset) -> str:
    bridges = [n.bridge for n in rules.networks]
    forward: list[str] = []
    postrouting: list[str] = []
    for net in rules.networks:
        others = [b for b in bridges if b != net.bridge]
        if net.internal:
            forward.append(f'iifname "{net.bridge}" oifname != "{net.bridge}" drop')
            forward.append(f'oifname "{net.bridge}" iifname != "{net.bridge}" drop')
        if others:
            # Networks are isolated from each other, as Docker's DOCKER-ISOLATION chains do.
            forward.append(f'iifname "{net.bridge}" oifname {_quote(others)} drop')
        if not net.icc:
            forward.append(f'iifname "{net.bridge}" oifname "{net.bridge}" drop')
        if net.masquerade and not net.internal:
            for subnet in net.subnets_v4:
                postrouting.append(f'ip saddr {subnet} oifname != "{net.bridge}" masquerade')
    dnat: list[str] = []
    for rule in rules.ports:
        match = f"ip daddr {rule.host_ip}" if rule.host_ip else "fib daddr type local"
        dnat.append(
            f"{match} {rule.proto} dport {rule.host_port} dnat ip to {rule.address}:{rule.port}"
        )
    return "\n".join(
        [
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            *(f"    {r}" for r in dnat),
            "  }",
            "  chain output {",
            "    type nat hook output priority -100; policy accept;",
            *(f"    {r}" for r in dnat),
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *(f"    {r}" for r in postrouting),
            "  }",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            *(f"    {r}" for r in forward),
            "  }",
        ]
    )


def apply(ns: str | None, rules: Ruleset, owner: str) -> None:
    """Load the rules, or remove our table when no network needs it; ``owner`` is the
    store they come from (see ``nft.claim_table``). Call with ``nft.ruleset_lock`` held."""
    if rules.empty():
        if nft.other_owner(ns, "inet", NFT_TABLE, owner) is None:  # never another's
            nft.delete_table(ns, "inet", NFT_TABLE)
            nft.release_table(ns)
        return
    nft.claim_table(ns, "inet", NFT_TABLE, owner)
    nft.replace_table(ns, "inet", NFT_TABLE, render_inet(rules), what="bridge firewall")
