"""The loop of every long-running watcher of the store (the overlay agent, the embedded
resolver, the load balancers): connect, serve until the store fails, back off, again.

A store that goes away is expected (etcd restarts, a partition): each caller says what it
keeps doing meanwhile. Anything else is a bug, logged with its traceback, and must not
leave the host unwatched for good, so the loop reconnects after it too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0


def run_reconnecting(
    what: str,
    stopping: threading.Event,
    connect: Callable[[], None],
    serve: Callable[[], None],
    expected: tuple[type[Exception], ...],
    on_expected: Callable[[Exception, float], None],
    disconnected: Callable[[], None],
    log: logging.Logger,
) -> None:
    """Run ``connect`` then ``serve`` until ``stopping`` is set. When they raise one of
    ``expected``, call ``on_expected(exc, backoff)``; any other exception is logged as
    "``what``: unexpected error". After either, ``disconnected()``, then wait the backoff
    (doubling from 0.2 s to 5 s, back to 0.2 s once connected) and try again."""
    backoff = BACKOFF_FIRST
    while not stopping.is_set():
        try:
            connect()
            backoff = BACKOFF_FIRST
            serve()
        except expected as exc:
            on_expected(exc, backoff)
        except Exception:  # noqa: BLE001 - see the module's docstring
            log.exception("%s: unexpected error; reconnecting", what)
        disconnected()
        if stopping.wait(backoff):
            break
        backoff = min(backoff * 2, BACKOFF_MAX)


def cancel_all(cancels: list[Callable[[], None]]) -> None:
    """Cancel the watches whose cancel functions ``cancels`` holds and empty it. A watch
    whose cancel fails is gone already (its stream died with the store)."""
    taken = cancels[:]
    del cancels[:]
    for cancel in taken:
        with contextlib.suppress(Exception):
            cancel()
