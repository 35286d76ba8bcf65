"""The host's DNS servers: where names the resolver does not know are forwarded.

Read from the host namespace's resolv.conf: ``/etc/netns/HOST/resolv.conf`` for an
emulated host whose namespace is named (what ``ip netns exec HOST`` shows as its
/etc/resolv.conf), else ``/etc/resolv.conf``. Where systemd-resolved's stub 127.0.0.53 is
listed, its real servers are read from ``/run/systemd/resolve/resolv.conf`` instead (as
Docker does): the stub would only add a hop. Loopback servers are kept: they are dialled
from the host's namespace, where they live. At most three, as glibc reads.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from cnm.dns.names import MAX_UPSTREAMS
from cnm.dns.registry import IPAddress
from cnm.etcfiles import HOST_RESOLV_CONF, host_resolv_conf

__all__ = ["HOST_RESOLV_CONF", "Upstreams", "host_resolv_conf", "nameservers", "read"]
RESOLVED_STUB = ipaddress.IPv4Address("127.0.0.53")
RESOLVED_REAL = "/run/systemd/resolve/resolv.conf"


def nameservers(path: str) -> list[IPAddress]:
    """The ``nameserver`` addresses of a resolv.conf, in order (zones dropped; a file
    that cannot be read has none)."""
    found: list[IPAddress] = []
    try:
        with open(path) as handle:
            text = handle.read(1 << 20)
    except OSError:
        return found
    for line in text.splitlines():
        parts = re.split(r"\s+", line.split("#", 1)[0].split(";", 1)[0].strip())
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                found.append(ipaddress.ip_address(parts[1].split("%", 1)[0]))
            except ValueError:
                continue
    return found


@dataclass(frozen=True)
class Upstreams:
    servers: tuple[IPAddress, ...]
    source: str  # the file they were read from


def read(path: str, resolved_real: str = RESOLVED_REAL) -> Upstreams:
    servers = nameservers(path)
    source = path
    if RESOLVED_STUB in servers and os.path.exists(resolved_real):
        real = [s for s in nameservers(resolved_real) if s != RESOLVED_STUB]
        if real:
            servers, source = real, resolved_real
    unique = list(dict.fromkeys(servers))
    return Upstreams(tuple(unique[:MAX_UPSTREAMS]), source)
