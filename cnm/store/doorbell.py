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

The folder must be a directory of this user that nobody else may write to (a database in
a shared folder such as /tmp could otherwise have its ``.watchers`` made by someone else,
or be a link elsewhere, for this process to unlink sockets in): anything else is not
used, and the watchers poll.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import socket
import stat

SUFFIX = ".watchers"
_counter = itertools.count()


def folder_of(db_path: str) -> str:
    return db_path + SUFFIX


def _open_private(folder: str) -> int:
    """The folder, opened without following a link, if it is a directory of this user that
    no one else may write to; else OSError."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise PermissionError(errno.EPERM, "not a private folder of this user", folder)
    return fd


def ring(folder: str) -> None:
    """Wake every watcher of the database whose folder this is (best effort)."""
    try:
        fd = _open_private(folder)
    except OSError:
        return  # nobody watches (or not a folder of ours: its watchers poll)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for name in os.listdir(fd):
            if not name.endswith(".sock"):
                continue
            try:
                sock.sendto(b"", os.path.join(folder, name))
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:  # its process is gone
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=fd)
                # EAGAIN (its buffer is full: it has wake-ups waiting), ENOENT (it just
                # closed): nothing to do
    finally:
        sock.close()
        os.close(fd)


class Bell:
    """One watcher's socket; ``wait`` returns when rung or after ``timeout``."""

    def __init__(self, folder: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        os.close(_open_private(folder))  # someone else's folder, or a link: poll only
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
