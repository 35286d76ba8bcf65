"""What pycnm (and these fixtures) left in the kernel, found by name prefix only.

pycnm names every kernel object it makes with one of its prefixes (``cnm.names``), and
these fixtures name theirs ``pt`` + 6 hex digits, so a listing by prefix is exact: nothing
is guessed, and nothing of other software's is ever reported (or deleted by the
``pycnm cleanup`` command, which can reuse ``pycnm_kernel_objects``).

Objects are described as one-line strings: ``namespace NAME``, ``link NAME``,
``nft table FAMILY pycnm`` (or ``pycnm-services``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from pyroute2 import IPRoute

from cnm.names import KERNEL_NAME_RE, NFT_SERVICES_TABLE, NFT_TABLE
from netns_fixtures.netns import FIXTURE_NAME_RE, NETNS_DIR, issued_stems

SETTLE_TIMEOUT = 3.0  # a deleted namespace takes its veth peers along a moment later


def _name_of(description: str) -> str:
    return description.rsplit(" ", 1)[-1]


def _namespaces() -> list[str]:
    # The same directory ``ip netns list`` reads, without a process per call.
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _links(ns: str | None) -> list[str]:
    with IPRoute() if ns is None else IPRoute(netns=ns) as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]


def _nft_tables(ns: str | None) -> list[tuple[str, str]]:
    argv = ["nft", "list", "tables"]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except FileNotFoundError:  # no nft at all: then there is no table of ours either
        return []
    tables = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            tables.append((parts[1], parts[2]))
    return tables


def _objects(ns: str | None, match: Callable[[str], bool]) -> list[str]:
    found: list[str] = []
    if ns is None:
        found += [f"namespace {name}" for name in _namespaces() if match(name)]
    found += [f"link {name}" for name in _links(ns) if name and match(name)]
    found += [f"nft table {family} {name}" for family, name in _nft_tables(ns)
              if name in (NFT_TABLE, NFT_SERVICES_TABLE)]
    return found


def pycnm_kernel_objects(ns: str | None = None) -> list[str]:
    """pycnm's kernel objects: named namespaces (when ``ns`` is None), links in the root
    namespace or in namespace ``ns`` (a name), and the ``pycnm`` nft tables there."""
    return _objects(ns, lambda name: bool(KERNEL_NAME_RE.match(name)))


def fixture_kernel_objects(ns: str | None = None) -> list[str]:
    """The same for the fixtures' own names (``pt`` + 6 hex), made by any process."""
    return _objects(ns, lambda name: bool(FIXTURE_NAME_RE.match(name)))


def snapshot() -> set[str]:
    """pycnm's and the fixtures' objects in the root namespace, right now."""
    return set(_objects(None, lambda name: bool(KERNEL_NAME_RE.match(name)
                                                or FIXTURE_NAME_RE.match(name))))


def _blamed_on_us(description: str) -> bool:
    # A fixture-named object counts only if this process made the name: other test runs
    # sharing the machine make fixture names too. pycnm's names carry no such mark.
    name = _name_of(description)
    if FIXTURE_NAME_RE.match(name):
        return name[:8] in issued_stems()
    return True


def new_objects(before: set[str], settle: float = SETTLE_TIMEOUT) -> list[str]:
    """Objects present now that were not in ``before`` (this process's fixture names
    only, every pycnm name); waits up to ``settle`` seconds for them to go away first,
    since a deleted namespace's veth peers vanish a moment after it."""
    deadline = time.monotonic() + settle
    while True:
        leaked = sorted(d for d in snapshot() - before if _blamed_on_us(d))
        if not leaked or time.monotonic() >= deadline:
            return leaked
        time.sleep(0.05)


def new_leaks(before: list[str] | set[str], after: list[str] | set[str]) -> list[str]:
    """The objects of ``after`` that were not in ``before``."""
    return sorted(set(after) - set(before))
