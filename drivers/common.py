"""Small pieces every driver needs the same way: MAC addresses and pool records."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from cnm import inputs
from cnm.driverapi import OPT_MACADDRESS, IpamData
from cnm.errors import Conflict


def mac_from_ip(address: ipaddress.IPv4Address | None) -> str:
    """Docker's scheme (02:42 + the IPv4 bytes): unique where the address is, stable across
    restarts; random (locally administered, unicast) without IPv4."""
    tail = address.packed if address is not None else os.urandom(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in tail)


def mac_option(value: Any) -> str | None:
    """The endpoint's MAC option (see ``cnm.inputs.mac_option``)."""
    return inputs.mac_option(value, f"option {OPT_MACADDRESS}")


def ipam_record(data: IpamData) -> dict[str, Any]:
    """A network's pool as drivers keep it in their store."""
    return {
        "pool": str(data.pool),
        "gateway": str(data.gateway) if data.gateway else None,
        "aux": {k: str(v) for k, v in data.aux_addresses.items()},
    }


def refuse_overlap(pools: list[Any], other: dict[str, Any], where: str) -> None:
    """Refuse ``pools`` (a new network's subnets) if one overlaps a subnet of ``other`` (a
    network record with ``id``, ``ipv4`` and ``ipv6``): two such networks ``where`` they
    meet (one host's bridges, one macvlan parent) would fight over routes and addresses.
    Only Docker's path gets here with one: an IPAM (Docker's, or pycnm's through Docker)
    hands an identical subnet to every network that asks, counting references, so that
    Docker can ask again after a restart; libnetwork's drivers refuse it the same way."""
    for mine in map(ipaddress.ip_network, pools):
        for record in (*other["ipv4"], *other["ipv6"]):
            theirs = ipaddress.ip_network(record["pool"])
            if mine.version == theirs.version and mine.overlaps(theirs):
                raise Conflict(
                    f"subnet {mine} overlaps subnet {theirs} of network {other['id'][:12]}: "
                    f"{where} need subnets of their own"
                )
