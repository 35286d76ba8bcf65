"""Running a lab's many independent jobs on two cores: every other one in a forked child.

Why: making a sandbox on a bridge costs ~8 ms, and most of that is Python on one core
(store records, netlink messages, the DNS files), the kernel's part being the smaller
one; a lab of 1000 sandboxes kept one core busy for ~8 s while the other sat idle. The
jobs of one run of sandboxes touch nothing of each other's (each has its own namespace,
endpoint records and veth; the store serialises the writes of every pycnm process with
its own locks, as it does for a CLI call beside a running plugin), so they split.

How: ``run_split`` forks once; the child takes a share of the jobs spread evenly over
them (every other one at 0.5), this process the rest, both in order; work the child's
jobs need first (a lab's endpoints, made in order for their addresses) is done here
right after the fork, while the child starts. The child writes one JSON line per job
into a pipe (its detail, or the error that stopped it) and leaves with ``os._exit``:
nothing of the parent's (atexit hooks, buffers) runs twice. The parent reports every
job in order as soon as it and all before it are done, so the progress lines read as a
sequential build's.

Fork safety: ``before_fork`` must leave nothing open that a fork would share (the parent
closes its Controllers: their store connections and netlink sockets; each process opens
its own afterwards), and the fork happens only while this process runs one thread, so
no lock can be held by a thread the child does not have. Otherwise, or with fewer than
two CPUs, every job runs here, one after the other: the result is the same.

Failure: the first error (in either process) stops both: the child is killed and reaped
before ``SplitFailed`` (naming the job's position) is raised, so whoever removes a
half-built lab never races a builder still at work; a parent killed outright takes the
child with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence

Job = Callable[[], str | None]


class SplitFailed(Exception):
    """Job ``position`` failed with ``error`` (the child's: a ``ChildFailed``)."""

    def __init__(self, position: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.position = position
        self.error = error


class ChildFailed(Exception):
    """A job in the child process failed; the message is its error's first line."""


def can_split() -> bool:
    """Whether a fork can help (two CPUs) and is safe (one thread in this process)."""
    return (os.cpu_count() or 1) >= 2 and threading.active_count() == 1 \
        and hasattr(os, "fork")


def child_positions(count: int, share: float) -> list[int]:
    """The positions (of ``count``) the child takes: a fraction ``share`` of them, spread
    evenly (0.5: every other one)."""
    return [p for p in range(count) if int((p + 1) * share) > int(p * share)]


def run_split(jobs: Sequence[Job], report: Callable[[int, str | None], None], *,
              before_fork: Callable[[], None], child_done: Callable[[], None],
              parent_first: Callable[[], None] | None = None,
              parent_last: Callable[[], None] | None = None, child_share: float = 0.5
              ) -> None:
    """Run ``jobs`` (each returns a detail for the progress line), a share ``child_share``
    of them in a forked child (see the module's docstring); ``report(position, detail)`` is
    called here, in order. ``parent_first`` runs here right after the fork, before this
    process's jobs (work the child's jobs wait for, as they see fit; it raises
    ``SplitFailed`` to name a job). ``parent_last`` runs here once every job is done and
    reported, while the child may still be running ``child_done`` (close what it
    opened), which runs in the child after its last job. An error in ``parent_last`` is
    raised as it is, once the child is stopped."""
    before_fork()
    if len(jobs) < 2 or not can_split():
        if parent_first is not None:
            parent_first()
        for position, job in enumerate(jobs):
            report(position, _run(position, job))
        if parent_last is not None:
            parent_last()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    theirs = child_positions(len(jobs), child_share)
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: odd positions
        os.close(read_end)
        _die_with(parent)
        _child(jobs, theirs, write_end, child_done)
    os.close(write_end)
    finished = False
    try:
        if parent_first is not None:
            parent_first()
        _parent(jobs, theirs, read_end, report, parent_last)
        finished = True
    finally:
        os.close(read_end)
        status = _reap(pid, kill=not finished)
    if status != 0:
        raise SplitFailed(len(jobs) - 1, ChildFailed(
            f"the second builder process failed while closing (wait status {status})"))


def _run(position: int, job: Job) -> str | None:
    try:
        return job()
    except SplitFailed:
        raise
    except BaseException as exc:
        raise SplitFailed(position, exc) from exc


def _die_with(parent: int) -> None:
    """SIGKILL for this child when the parent dies (PR_SET_PDEATHSIG), so a killed
    ``lab up`` leaves no builder behind to race the ``lab down`` that follows."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        os._exit(1)  # without it, no split: the parent sees the job fail
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _child(jobs: Sequence[Job], theirs: list[int], out: int,
           child_done: Callable[[], None]) -> None:
    status = 0
    try:
        with os.fdopen(out, "w", encoding="utf-8") as pipe:
            for position in theirs:
                try:
                    detail = jobs[position]()
                    line = {"position": position, "detail": detail}
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    text = str(exc).strip().splitlines()
                    line = {"position": position,
                            "error": text[0] if text else type(exc).__name__}
                    status = 1
                pipe.write(json.dumps(line) + "\n")
                pipe.flush()
                if status:
                    break
            if not status:
                child_done()
    except BaseException:  # noqa: BLE001 - never return into the parent's code
        status = 1
    os._exit(status)


def _parent(jobs: Sequence[Job], theirs: list[int], pipe: int,
            report: Callable[[int, str | None], None],
            last: Callable[[], None] | None) -> None:
    done: dict[int, str | None] = {}
    buffer = b""
    closed = False
    reported = 0

    def flush_in_order() -> None:
        nonlocal reported
        while reported in done:
            report(reported, done.pop(reported))
            reported += 1

    def take(lines: bytes) -> None:
        for raw in lines.splitlines():
            line = json.loads(raw)
            if "error" in line:
                raise SplitFailed(line["position"], ChildFailed(line["error"]))
            done[line["position"]] = line["detail"]

    def read(block: bool) -> None:
        nonlocal buffer, closed
        while not closed and (block or select.select([pipe], [], [], 0)[0]):
            chunk = os.read(pipe, 65536)
            if not chunk:
                closed = True
                break
            buffer += chunk
            complete, _, buffer = buffer.rpartition(b"\n")
            take(complete)
            if block:
                return

    child = set(theirs)
    for position in (p for p in range(len(jobs)) if p not in child):
        done[position] = _run(position, jobs[position])
        read(block=False)
        flush_in_order()
    while reported < len(jobs):
        if reported in done:
            flush_in_order()
            continue
        if closed:  # the child ended without saying how: a crash, a kill
            raise SplitFailed(reported, ChildFailed(
                "the second builder process ended without finishing (killed?)"))
        read(block=True)
    if last is not None:  # beside the child's closing (its queued link deletions)
        last()
    while not closed:  # the child closes its end when it has closed all it opened
        read(block=True)


def _reap(pid: int, kill: bool) -> int:
    """Wait for the child and return its wait status; with ``kill`` (the parent failed
    first) it is killed first, so it stops building."""
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0
