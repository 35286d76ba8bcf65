"""A mount namespace of its own for an emulated host: what its dockerd and plugin see.

Each emulated host runs a dockerd and a ``pycnm plugin serve`` that must find each other
at the standard place, ``/run/docker/plugins/pycnm.sock``, without touching the machine's
own ``/run/docker/plugins`` (shared with every other dockerd here) or the other host's.
``PrivateMounts`` makes a mount namespace, held open by a small process, in which:

- every mount of the machine is a *slave*: mounts made inside (a tmpfs on
  ``/run/docker/plugins``, dockerd's namespace and shm mounts under its exec root) never
  reach the machine, while the machine's later mounts still show inside;
- ``/run/netns`` stays *shared* with the machine, both ways: the network namespaces pycnm
  makes inside (an overlay's ``pcov-VNI-HOST``) are seen by everyone, and the ones the
  machine makes are seen inside;
- ``/run/docker/plugins`` is a fresh tmpfs, empty, mode 0700.

Processes join it with ``nsenter --mount=PATH`` (``PrivateMounts.path``); the machine
reaches a file inside through ``inside(path)`` (``/proc/PID/root/...``). The namespace
goes when its holder and every process that joined it are gone; ``close`` ends the
holder (by its pid: a process this object started).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from netns_fixtures.orphans import die_with_parent

PLUGINS_DIR = "/run/docker/plugins"
NETNS_DIR = "/run/netns"

# Runs inside the new mount namespace (made by ``unshare --mount --propagation unchanged``,
# so /run/netns is still a peer of the machine's): make every other mount a slave, put a
# tmpfs on the plugin folder, say so, then wait for stdin to close.
_HOLDER = r"""
import ctypes, os, sys
MS_SLAVE = 1 << 19
libc = ctypes.CDLL(None, use_errno=True)
netns = sys.argv[1]
with open("/proc/self/mountinfo") as handle:
    points = [line.split()[4].replace("\\040", " ") for line in handle]
for point in points:
    if point == netns or point.startswith(netns + "/"):
        continue
    if libc.mount(None, point.encode(), None, MS_SLAVE, None) != 0:
        err = ctypes.get_errno()
        if err not in (2, 13, 22):  # gone meanwhile, or an overmounted path
            sys.exit(f"make {point} a slave: {os.strerror(err)}")
os.makedirs(sys.argv[2], exist_ok=True)
if libc.mount(b"tmpfs", sys.argv[2].encode(), b"tmpfs", 0, b"mode=0700") != 0:
    sys.exit(f"mount a tmpfs on {sys.argv[2]}: {os.strerror(ctypes.get_errno())}")
print("ready", flush=True)
sys.stdin.read()
"""


class MountError(RuntimeError):
    """The private mount namespace could not be made; the message says why."""


class PrivateMounts:
    """One held mount namespace; see the module docstring."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            die_with_parent(["unshare", "--mount", "--propagation", "unchanged", "--",
                             sys.executable, "-c", _HOLDER, NETNS_DIR, PLUGINS_DIR]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.close()
            error = self.holder.stderr.read() if self.holder.stderr else ""
            raise MountError(f"cannot make a private mount namespace: {error.strip() or line}")

    @property
    def path(self) -> str:
        """The namespace, for ``nsenter --mount=``."""
        return f"/proc/{self.holder.pid}/ns/mnt"

    def inside(self, path: str) -> str:
        """``path`` as the namespace sees it, reachable from the machine's namespace."""
        return f"/proc/{self.holder.pid}/root{os.path.abspath(path)}"

    def close(self) -> None:
        if self.holder.poll() is None:
            with contextlib.suppress(OSError):
                assert self.holder.stdin is not None
                self.holder.stdin.close()  # the holder's read ends: it exits
            try:
                self.holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(timeout=10)
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> PrivateMounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
