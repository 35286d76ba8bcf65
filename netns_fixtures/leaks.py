"""What pycnm (and these fixtures) left in the kernel, by name prefix only."""

from __future__ import annotations

import os
import re
import subprocess

from cnm.names import KERNEL_NAME_RE, NFT_TABLE
from netns_fixtures.netns import FIXTURE_PREFIX

_FIXTURE_RE = re.compile(rf"^{FIXTURE_PREFIX}[0-9a-f]")


def _ours(name: str) -> bool:
    return bool(KERNEL_NAME_RE.match(name) or _FIXTURE_RE.match(name))


def pycnm_kernel_objects(ns: str | None = None) -> list[str]:
    """Namespaces, links (in the root namespace or ``ns``) and nft tables that carry
    pycnm's or the fixtures' prefixes, one description per object."""
    found: list[str] = []
    prefix = [] if ns is None else ["ip", "netns", "exec", ns]
    if ns is None and os.path.isdir("/run/netns"):
        found += [f"namespace {n}" for n in sorted(os.listdir("/run/netns")) if _ours(n)]
    links = subprocess.run([*prefix, "ip", "-o", "link", "show"], capture_output=True,
                           text=True, timeout=30).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if _ours(name):
            found.append(f"link {name}")
    tables = subprocess.run([*prefix, "nft", "list", "tables"], capture_output=True, text=True,
                            timeout=30).stdout
    for line in tables.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == NFT_TABLE:
            found.append(f"nft table {parts[1]} {parts[2]}")
    return found


def new_leaks(before: list[str], after: list[str]) -> list[str]:
    return sorted(set(after) - set(before))
