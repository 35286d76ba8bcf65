"""Wake-ups for the SQLite store's watchers, so a change reaches them at once.

A watcher polls the change log every 25 ms when idle; a change made by another process
would otherwise wait up to that long (and everything that waits on a watcher with it: a
join waits until the host's resolver has its names). Each store object that watches binds
a Unix datagram socket in a folder beside the database (``<db>.watchers/``, named after
its process id and a counter: nothing from a user); every write sends an empty datagram
to each socket there. A watcher waits on its socket with the poll interval as timeout, so
a lost datagram (a full buffer, a socket made a moment too late) costs one interval, as
before, never a change. A socket nobody reads any more (its process died) refuses the
datagram and is removed by the writer that found it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import socket

SUFFIX = ".watchers"
_counter = itertools.count()


def folder_of(db_path: str) -> str:
    return db_path + SUFFIX


def ring(folder: str) -> None:
    """Wake every watcher of the database whose folder this is (best effort)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return  # nobody watches
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for name in names:
            if not name.endswith(".sock"):
                continue
            path = os.path.join(folder, name)
            try:
                sock.sendto(b"", path)
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:  # its process is gone
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                # EAGAIN (its buffer is full: it has wake-ups waiting), ENOENT (it just
                # closed): nothing to do
    finally:
        sock.close()


class Bell:
    """One watcher's socket; ``wait`` returns when rung or after ``timeout``."""

    def __init__(self, folder: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        self.path = os.path.join(folder, f"{os.getpid()}-{next(_counter)}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a reused pid's leftover
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(self.path)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            select.select([self._sock], [], [], timeout)
            while True:  # one poll answers every ring so far
                self._sock.recv(16)

    def wake(self) -> None:
        with contextlib.suppress(OSError), \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"", self.path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._sock.close()
