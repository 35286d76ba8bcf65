"""Deleting links off the caller's critical path.

Deleting a veth costs the kernel an RCU grace period (~17-25 ms here, measured by
bench/bench_attach.py as "kernel floor: veth delete"), most of a container's plugin time
in Docker's Leave. Nothing waits on the result, so the caller resolves the link's index
now (one ioctl) and a background thread deletes it by that index: a link created later
under the same name (a quick re-join) has a new index and is never touched, because the
kernel hands out interface indexes in increasing order.

``flush()`` waits for every queued deletion; ``Controller.close()`` and interpreter exit
call it, so a short-lived process (the CLI) never leaves a link behind.
"""

from __future__ import annotations

import atexit
import errno
import logging
import queue
import threading

from pyroute2.netlink.exceptions import NetlinkError

from cnm.osl.links import link_index
from cnm.osl.netns import iproute

log = logging.getLogger(__name__)

_jobs: queue.Queue[tuple[str | None, int, str]] = queue.Queue()
_worker: threading.Thread | None = None
_start_lock = threading.Lock()


def _run() -> None:
    while True:
        ns, index, name = _jobs.get()
        try:
            with iproute(ns) as ipr:
                ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                log.warning("could not delete %s (index %d): %s", name, index, exc)
        except Exception as exc:  # noqa: BLE001 - the namespace may be gone: nothing to do
            log.debug("delete %s (index %d) skipped: %s", name, index, exc)
        finally:
            _jobs.task_done()


def delete_later(ns: str | None, name: str) -> None:
    """Queue ``name`` (in namespace ``ns``) for deletion; a link already gone is success."""
    global _worker
    with iproute(ns) as ipr:
        index = link_index(ipr, name)
    if index is None:
        return
    with _start_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_run, name="pycnm-link-reaper", daemon=True)
            _worker.start()
    _jobs.put((ns, index, name))


def flush() -> None:
    """Wait until every queued deletion is done."""
    if _worker is not None:
        _jobs.join()


atexit.register(flush)
