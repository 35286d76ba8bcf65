"""Deleting links off the caller's critical path, many at a time.

Deleting a veth costs the kernel an RCU grace period (~17-25 ms here, measured by
bench/bench_attach.py as "kernel floor: veth delete"), most of a container's plugin time
in Docker's Leave. Nothing waits on the result, so the caller resolves the link's index
now (one ioctl) and a background thread deletes it by that index: a link created later
under the same name (a quick re-join) has a new index and is never touched, because the
kernel hands out interface indexes in increasing order.

The thread takes every deletion queued by the time it wakes. Two or more in one namespace
are deleted together: each gets a link group of the batch's own (one cheap request each,
by index), then one RTM_DELLINK of that group unregisters them all with one grace period
(``ip link delete group N``): 200 veths took 4 s one by one and 0.09 s as a group here.
The group is a random number no link of the namespace has (checked with one dump just
before), so nothing but the batch is in it.

``flush()`` waits for every queued deletion; ``Controller.close()`` and interpreter exit
call it, so a short-lived process (the CLI) never leaves a link behind.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import queue
import threading

from pyroute2.netlink.exceptions import NetlinkError

from cnm.osl import nlpack
from cnm.osl.links import delete_request, link_index
from cnm.osl.netns import NetlinkHandle, iproute
from cnm.osl.rtnl import RTM_DELLINK, RTM_NEWLINK, SET, Request, RequestFailed

log = logging.getLogger(__name__)

_GONE = (errno.ENODEV, errno.ENOENT, errno.EINVAL)
_jobs: queue.Queue[tuple[str | None, int, str]] = queue.Queue()
_worker: threading.Thread | None = None
_start_lock = threading.Lock()


def _run() -> None:
    while True:
        batch = [_jobs.get()]
        while True:  # and whatever else is queued by now
            try:
                batch.append(_jobs.get_nowait())
            except queue.Empty:
                break
        by_ns: dict[str | None, list[tuple[int, str]]] = {}
        for ns, index, name in batch:
            by_ns.setdefault(ns, []).append((index, name))
        try:
            for ns, links in by_ns.items():
                _delete(ns, links)
        finally:
            for _ in batch:
                _jobs.task_done()


def _delete(ns: str | None, links: list[tuple[int, str]]) -> None:
    try:
        with iproute(ns) as ipr:
            if len(links) > 1 and _delete_as_group(ipr, links):
                return
            for index, name in links:
                _delete_one(ipr, index, name)
    except Exception as exc:  # noqa: BLE001 - the namespace may be gone: nothing to do
        log.debug("deleting %d links in %s skipped: %s", len(links), ns, exc)


def _delete_one(ipr: NetlinkHandle, index: int, name: str) -> None:
    try:
        ipr.rtnl.run([delete_request(index, name)])  # already gone is tolerated
    except NetlinkError as exc:
        log.warning("could not delete %s (index %d): %s", name, index, exc)


def _delete_as_group(ipr: NetlinkHandle, links: list[tuple[int, str]]) -> bool:
    """Delete ``links`` with one grace period; False if the caller must delete them one by
    one instead."""
    try:
        taken = ipr.rtnl.link_groups()
    except (NetlinkError, OSError) as exc:
        log.debug("reading link groups failed (%s): one by one", exc)
        return False
    group = 0
    while group == 0 or group in taken:
        # never 0, the default group (os.urandom: secrets would import hashlib, ~5 ms)
        group = 0x40000000 | int.from_bytes(os.urandom(4), "little") >> 2
    requests = []
    for index, name in links:  # (packed by hand: pyroute2's ifinfmsg costs a CLI ~8 ms)
        requests.append(Request(nlpack.link(index, 0, 0, [("IFLA_GROUP", group)]),
                                RTM_NEWLINK, SET, f"group {name}",
                                frozenset(_GONE)))  # already gone: nothing to do
    try:
        ipr.rtnl.run(requests)
    except RequestFailed as exc:
        log.debug("grouping links for deletion failed (%s): one by one", exc)
        return False
    # index 0 and a group: every link of the group (ip link delete group)
    msg = nlpack.link(0, 0, 0, [("IFLA_GROUP", group)])
    try:
        ipr.rtnl.run([Request(msg, RTM_DELLINK, SET, f"delete link group {group}")])
    except RequestFailed as exc:
        if exc.code == errno.ENODEV:
            return True  # every one of them was gone already
        log.debug("deleting link group %d failed (%s): one by one", group, exc)
        return False
    return True


def delete_later(ns: str | None, name: str, handle: NetlinkHandle | None = None) -> None:
    """Queue ``name`` (in namespace ``ns``) for deletion; a link already gone is success.
    ``handle``: an open handle of ``ns`` to look the link up with (a driver's pooled one),
    which saves opening one (a thread's visit to ``ns``) per link."""
    global _worker
    if handle is not None:
        index = link_index(handle, name)
    else:
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
