"""What any pycnm process asks about this host's resolver (it runs in another process).

The resolver records itself at ``dns/resolver`` in the host's key space, under a lease
(the record vanishes when its process dies and the lease runs out), the sandboxes it has
taken over at ``dns/sandboxes/ID``, and after each change it has applied, the newest store
revision it has seen at ``dns/applied``. A process that just changed names (a sandbox
made, an endpoint joined or left) waits, briefly, until the resolver has applied its
change: a name then resolves as soon as the command that made it returns, as in Docker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cnm.store.base import Store

log = logging.getLogger(__name__)

RESOLVER_KEY = "dns/resolver"
APPLIED_KEY = "dns/applied"
SETTLE_TIMEOUT = 3.0  # seconds a change waits for the resolver before going on


def sandbox_key(sandbox_id: str) -> str:
    return f"dns/sandboxes/{sandbox_id}"


def resolver_running(local: Store) -> bool:
    """Whether a resolver serves this host (its leased record is there)."""
    return local.get(RESOLVER_KEY) is not None


def is_served(local: Store, sandbox_id: str) -> bool:
    """Whether a live resolver has taken this sandbox over."""
    return resolver_running(local) and local.get(sandbox_key(sandbox_id)) is not None


def wait_applied(local: Store, revision: int, timeout: float = SETTLE_TIMEOUT,
                 before_waiting: Callable[[], None] | None = None) -> bool:
    """Wait until the resolver has applied the store as of ``revision`` (True), there is
    no resolver (True at once), or ``timeout`` passed (False: it will catch up).
    ``before_waiting``: called once if it has to wait."""
    if revision <= 0 or _applied(local) >= revision or not resolver_running(local):
        return True  # (usually the first: the resolver worked while the caller did)
    if before_waiting is not None:
        before_waiting()
    deadline = time.monotonic() + timeout
    # Woken by the resolver's write of dns/applied where the store can tell (SQLite's
    # doorbell), else polling.
    with local.write_waiter() as wait:
        while True:
            if _applied(local) >= revision:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("the resolver has not applied revision %d after %.1f s; names "
                            "may take a moment", revision, timeout)
                return False
            wait(left)


def _applied(local: Store) -> int:
    """The newest store revision the resolver has applied (0: none recorded)."""
    entry = local.get(APPLIED_KEY)
    return int(entry.value.get("revision", 0)) if entry is not None else 0
