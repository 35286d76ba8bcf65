"""The SQLite store's wake-ups (cnm/store/doorbell.py): a ring wakes a waiting watcher; a
watchers folder that is not this user's own private directory is never used."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from cnm.store import doorbell


def test_a_ring_wakes_a_waiting_watcher(tmp_path: Path) -> None:
    folder = doorbell.folder_of(str(tmp_path / "state.db"))
    bell = doorbell.Bell(folder)
    try:
        assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
        doorbell.ring(folder)
        started = time.monotonic()
        bell.wait(30)
        assert time.monotonic() - started < 10, "the ring did not wake the watcher"
    finally:
        bell.close()
    assert os.listdir(folder) == []


def test_a_dead_watchers_socket_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    folder = doorbell.folder_of(str(tmp_path / "state.db"))
    bell = doorbell.Bell(folder)
    bell._sock.close()  # its process died: the socket file stays, nobody reads it
    doorbell.ring(folder)
    assert os.listdir(folder) == []


def _stale_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()  # a socket file that refuses datagrams, as a dead watcher's


@pytest.mark.parametrize("made_by", ["link", "other user", "group-writable"])
def test_a_folder_not_privately_ours_is_not_used(tmp_path: Path, made_by: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    _stale_socket(elsewhere / "keep.sock")
    folder = Path(doorbell.folder_of(str(tmp_path / "state.db")))
    if made_by == "link":
        folder.symlink_to(elsewhere)
    else:
        folder.mkdir(mode=0o700)
        _stale_socket(folder / "keep.sock")
        if made_by == "other user":
            os.chown(folder, 65534, 65534)
        else:
            folder.chmod(0o770)
    with pytest.raises(OSError):
        doorbell.Bell(str(folder))  # the store's watchers poll instead
    doorbell.ring(str(folder))
    # nothing unlinked there (a writer removes refusing sockets only in its own folder)
    assert (elsewhere / "keep.sock").exists()
    if made_by != "link":
        assert (folder / "keep.sock").exists()


def test_a_write_waiter_wakes_at_another_stores_write_and_leaves_no_socket(
        tmp_path: Path) -> None:
    from cnm.store.sqlite import SQLiteStore

    path = tmp_path / "state.db"
    # A poll interval far longer than the test: only the ring can end the wait early.
    waiting, writing = SQLiteStore(path, poll_interval=60), SQLiteStore(path)
    folder = doorbell.folder_of(str(path))
    try:
        with waiting.write_waiter() as wait:
            assert len(os.listdir(folder)) == 1  # bound before the caller's first look
            started = time.monotonic()
            wait(0.2)  # nothing written: it waits out its limit (a poller would not)
            assert time.monotonic() - started >= 0.19
            writing.put("dns/applied", {"revision": 1})  # after the look: it must ring
            started = time.monotonic()
            wait(30)
            assert time.monotonic() - started < 10, "the write did not wake the waiter"
        assert os.listdir(folder) == []
    finally:
        waiting.close()
        writing.close()


def _rings(bell: doorbell.Bell) -> int:
    """How many datagrams wait on ``bell``'s socket (read and counted)."""
    count = 0
    while True:
        try:
            bell._sock.recv(16)
        except BlockingIOError:
            return count
        count += 1


def test_batched_writes_ring_once_at_the_end_or_when_told(tmp_path: Path) -> None:
    from cnm.store.prefixed import PrefixedStore
    from cnm.store.sqlite import SQLiteStore

    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    view = PrefixedStore(store, "local/h/")  # what the controller and drivers write through
    bell = doorbell.Bell(doorbell.folder_of(str(path)))
    try:
        store.put("a", {"n": 1})
        assert _rings(bell) == 1  # outside a batch: each write rings
        with view.wakeups_batched():
            view.put("b", {"n": 1})
            with store.wakeups_batched():  # nested: only the outermost end rings
                view.put("c", {"n": 1})
                store.delete("a")
            assert _rings(bell) == 0
            view.wake_watchers()  # what another process must see at once
            assert _rings(bell) == 1
            view.wake_watchers()  # nothing written since: no ring
            assert _rings(bell) == 0
            assert view.create("d", {"n": 1})
        assert _rings(bell) == 1
        with pytest.raises(RuntimeError), view.wakeups_batched():
            view.put("e", {"n": 1})
            raise RuntimeError("a failed operation still tells of what it wrote")
        assert _rings(bell) == 1
        with view.wakeups_batched():
            pass  # nothing written: no ring
        assert _rings(bell) == 0
        with view.wakeups_batched(ring=False):
            view.put("f", {"n": 1})
        assert _rings(bell) == 0  # left for the next ring (or the watchers' poll)
        view.wake_watchers()
        assert _rings(bell) == 1
        assert {e.key for e in store.list("")} == {"local/h/b", "local/h/c", "local/h/d",
                                                   "local/h/e", "local/h/f"}
    finally:
        bell.close()
        store.close()
