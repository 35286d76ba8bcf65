"""Parsing of driver options: Docker's key names, short aliases, one clear sentence per
bad value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cnm.driverapi import OPT_ENABLE_IPV4
from cnm.errors import InvalidOption
from cnm.inputs import shown
from cnm.names import is_valid_ifname

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DIGITS = re.compile(r"[0-9]{1,10}")


def canonical(
    options: Mapping[str, Any], aliases: Mapping[str, str], known: set[str]
) -> dict[str, Any]:
    """Map aliases to canonical keys and refuse unknown keys, naming the accepted ones."""
    result: dict[str, Any] = {}
    for key, value in options.items():
        name = aliases.get(key, key)
        if name not in known:
            short = sorted(set(aliases) | {k for k in known if not k.startswith("com.docker.")})
            docker = " (or Docker's com.docker.network.* names)" if len(short) < len(
                set(aliases) | known) else ""
            raise InvalidOption(
                f"unknown option {key!r}; this driver accepts: {', '.join(short)}{docker}"
            )
        if name in result and result[name] != value:
            raise InvalidOption(f"option {key!r} is given twice with different values")
        result[name] = value
    return result


def require_ipv4(driver: str, options: Mapping[str, Any]) -> None:
    """Refuse an IPv6-only network (``com.docker.network.enable_ipv4`` false) for a driver
    that needs IPv4."""
    if not parse_bool(OPT_ENABLE_IPV4, options.get(OPT_ENABLE_IPV4, True)):
        raise InvalidOption(
            f"the {driver} driver needs IPv4: IPv6-only networks ({OPT_ENABLE_IPV4}=false, "
            "docker network create --ipv4=false) are made by the bridge driver only"
        )


def parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidOption(f"option {key} must be true or false, not {value!r}")


def parse_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value, 10)
    else:
        raise InvalidOption(f"option {key} must be a whole number, not {shown(value)}")
    if not low <= number <= high:
        raise InvalidOption(f"option {key} must be between {low} and {high}, not {number}")
    return number


def parse_mtu(key: str, value: Any) -> int:
    return parse_int(key, value, 68, 65535)


def parse_ifname(key: str, value: Any) -> str:
    name = str(value)
    if not is_valid_ifname(name):
        raise InvalidOption(
            f"option {key}: {name!r} is not a valid interface name "
            "(1-15 letters, digits, '_', '-', '.', ':')"
        )
    return name
