"""Checks for values that come from outside (the CLI, the Python API, Docker's requests)
before they become a name, a path, a line of a file, a netlink request or an nft rule.

Each check takes the value as given (any type), returns it in the one form pycnm uses, or
raises ``InvalidOption`` with one sentence that names the field (``what``) and what it
must be. They are deliberately narrower than what the standard library parses: Python's
``ipaddress`` accepts an IPv6 zone (``fe80::1%eth0``) with any text after the ``%``,
newlines included, and ``int()`` turns ``80.9`` into 80 and ``True`` into 1.

    address("10.1.0.2", "HostIP")           -> IPv4Address('10.1.0.2')
    port(8080, "HostPort")                  -> 8080
    hostname("web-1.example", "hostname")   -> 'web-1.example'
"""

from __future__ import annotations

import base64
import ipaddress
import re

from cnm.errors import InvalidOption

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What an address, a prefix or an address/length is written with. Anything else (a zone,
# blanks inside, a control character) is refused before ipaddress sees it.
_ADDRESS_TEXT = re.compile(r"[0-9A-Fa-f:./]{1,64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A resolv.conf option: a word, optionally ':' and a number (ndots:2, timeout:1, rotate).
_DNS_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}(?::[0-9]{1,5})?")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}")


def shown(value: object, limit: int = 60) -> str:
    """``value`` for a message: repr (so a newline shows as ``\\n``), cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def address_text(value: object) -> str | None:
    """The text of an address or prefix, or None when it holds a character no address is
    written with (a blank or a line break anywhere included), or is not text at all."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address
                  | ipaddress.IPv4Network | ipaddress.IPv6Network
                  | ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        value = str(value)
    if not isinstance(value, str):
        return None
    return value if _ADDRESS_TEXT.fullmatch(value) else None


def address(value: object, what: str, version: int | None = None) -> IPAddress:
    """A plain IP address (of IP ``version`` if given); no zone, no prefix length."""
    text = address_text(value)
    try:
        if text is None:
            raise ValueError
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidOption(f"{what} must be an IP address (e.g. 10.1.0.2 or fd00::2), "
                            f"not {shown(value)}") from None
    if version is not None and ip.version != version:
        raise InvalidOption(f"{what} must be an IPv{version} address, not {ip}")
    return ip


def port(value: object, what: str, *, allow_zero: bool = False) -> int:
    """A port number given as an integer (never a bool, a float or text)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOption(f"{what} must be a whole number from {low} to 65535, "
                            f"not {shown(value)}")
    if not low <= value <= 65535:
        raise InvalidOption(f"{what} must be between {low} and 65535, not {value}")
    return value


def hostname(value: object, what: str) -> str:
    """A host name (RFC 1123): dot-separated labels of letters, digits and inner '-'."""
    if not isinstance(value, str) or len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise InvalidOption(
            f"{what} must be a host name (letters, digits and '-', labels of at most 63 "
            f"separated by '.'), not {shown(value)}")
    return value


def domain(value: object, what: str) -> str:
    """A DNS domain for a search list: a host name, optionally ending with '.'."""
    if isinstance(value, str) and value.endswith(".") and len(value) > 1:
        return hostname(value[:-1], what) + "."
    return hostname(value, what)


def dns_option(value: object, what: str) -> str:
    """One resolv.conf option: a word, optionally with ':' and a number (ndots:2)."""
    if not isinstance(value, str) or not _DNS_OPTION.fullmatch(value):
        raise InvalidOption(f"{what} must be a resolver option such as ndots:2, timeout:1 "
                            f"or rotate, not {shown(value)}")
    return value


def mac(value: object, what: str) -> str:
    """A unicast MAC address, returned as lower-case ``02:42:ac:11:00:02``."""
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise InvalidOption(f"{what} must be a MAC address (e.g. 02:42:ac:11:00:02), "
                            f"not {shown(value)}")
    text = value.replace("-", ":").lower()
    if int(text[:2], 16) & 1:
        raise InvalidOption(f"{what} {text} is a multicast address; an interface needs a "
                            "unicast MAC")
    return text


def mac_option(value: object, what: str) -> str | None:
    """A MAC address as Docker's ``com.docker.network.endpoint.macaddress`` carries it
    (its 6 bytes in base64, ``AkKsEQAC``) or as the Python API passes it (text); None for
    none."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and (":" in value or "-" in value):
        return mac(value, what)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise InvalidOption(f"{what} must be a MAC address (e.g. 02:42:ac:11:00:02, or its "
                            f"6 bytes in base64), not {shown(value)}")
    return mac(":".join(f"{b:02x}" for b in raw), what)
