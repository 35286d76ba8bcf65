"""The names services add to the embedded resolver, from what each host's load balancer
serves (``lb/networks/<nid>`` in the host's key space, written by ``manager.apply``).

On the service's network: ``NAME`` resolves to the virtual IP (mode vip) or to the
backends' addresses (mode dnsrr, shuffled per reply by the resolver), ``tasks.NAME`` to
the backends' addresses, as in Docker. Registered with ``DnsService.add_source``, which
resyncs the resolver whenever a key under ``LB_PREFIX`` changes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from cnm.dns.registry import NameEntry, Records
from cnm.store.base import Store

LB_PREFIX = "lb/networks/"


def entries(state: dict[str, Any]) -> list[NameEntry]:
    nid = state.get("network")
    if not isinstance(nid, str):
        return []
    found = []
    for item in state.get("names", ()):
        try:
            name = str(item["service"])
            backends = tuple(ipaddress.ip_address(a) for a in item.get("backends", ()))
            vip = ipaddress.ip_address(item["vip"]) if item.get("vip") else None
        except (KeyError, TypeError, ValueError):
            continue  # not a record pycnm wrote
        if item.get("mode") == "vip" and vip is not None:
            found.append(NameEntry(nid, (name,), (vip,)))
        elif backends:
            found.append(NameEntry(nid, (name,), backends))
        if backends:
            found.append(NameEntry(nid, (f"tasks.{name}",), backends))
    return found


def dns_names(local: Store, records: Records) -> list[NameEntry]:
    del records  # the load balancers' records say it all
    found: list[NameEntry] = []
    for entry in local.list(LB_PREFIX):
        found += entries(entry.value)
    return found
