"""Small pieces every driver needs the same way: MAC addresses and pool records."""

from __future__ import annotations

import base64
import ipaddress
import secrets
from typing import Any

from cnm.driverapi import OPT_MACADDRESS, IpamData
from cnm.errors import InvalidOption


def mac_from_ip(address: ipaddress.IPv4Address | None) -> str:
    """Docker's scheme (02:42 + the IPv4 bytes): unique where the address is, stable across
    restarts; random (locally administered, unicast) without IPv4."""
    tail = address.packed if address is not None else secrets.token_bytes(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in tail)


def mac_option(value: Any) -> str | None:
    """The endpoint's MAC option: Docker sends it base64-encoded ("AkKqu8zd" =
    02:42:aa:bb:cc:dd); the Python API passes it as text."""
    if not value:
        return None
    text = str(value)
    if ":" in text:
        return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise InvalidOption(f"{OPT_MACADDRESS} {text!r} is not a MAC address") from None
    if len(raw) != 6:
        raise InvalidOption(f"{OPT_MACADDRESS} {text!r} is not a MAC address")
    return ":".join(f"{b:02x}" for b in raw)


def ipam_record(data: IpamData) -> dict[str, Any]:
    """A network's pool as drivers keep it in their store."""
    return {
        "pool": str(data.pool),
        "gateway": str(data.gateway) if data.gateway else None,
        "aux": {k: str(v) for k, v in data.aux_addresses.items()},
    }
