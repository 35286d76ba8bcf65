"""DNS names given by users, and the resolver's constants.

Aliases are host names as RFC 1123 allows them: dot-separated labels of letters, digits
and hyphens, each 1-63 characters, not starting or ending with a hyphen; 253 characters
in all. Lookups ignore case, as DNS does.
"""

from __future__ import annotations

import ipaddress
import re

from cnm.errors import InvalidOption

RESOLVER_ADDRESS = ipaddress.IPv4Address("127.0.0.11")  # as Docker's embedded DNS
RESOLVER_PORT = 53
TTL = 10  # seconds; short, because names come and go with endpoints (Docker: 600)
MAX_UPSTREAMS = 3  # as Docker, and as glibc reads from resolv.conf
FORWARD_TIMEOUT = 4.0  # seconds for every upstream together (Docker: 4 s for each)
MAX_IN_FLIGHT = 1024  # forwarded queries waiting for an answer (Docker: 1024)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def is_valid_hostname(name: object) -> bool:
    """An RFC 1123 host name (no trailing dot)."""
    return isinstance(name, str) and len(name) <= 253 and bool(_HOSTNAME_RE.fullmatch(name))


def check_aliases(aliases: object) -> list[str]:
    """Validated aliases, in order, without duplicates (case-insensitively); raises
    InvalidOption naming the first bad one."""
    if aliases is None:
        return []
    if isinstance(aliases, str) or not isinstance(aliases, list | tuple):
        raise InvalidOption(f"aliases must be a list of names, not {aliases!r}")
    result: list[str] = []
    for alias in aliases:
        if not is_valid_hostname(alias):
            raise InvalidOption(
                f"alias {alias!r} is not a valid DNS name: use letters, digits and '-' in "
                "dot-separated labels of at most 63 characters (RFC 1123), 253 in all"
            )
        if alias.lower() not in (a.lower() for a in result):
            result.append(alias)
    return result
