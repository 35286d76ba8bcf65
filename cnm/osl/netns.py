"""Network namespaces without forking and without switching the whole process.

``ip netns add`` and pyroute2's ``netns`` module fork a helper process per call (~10 ms
here). Namespaces are per *thread* on Linux, so we do the same work in a short-lived
thread instead: it unshares (or setns-es) into the namespace, does one small job (bind
mount, open a netlink socket, write a sysctl) and exits. The rest of the process, and every
other thread (the plugin server's workers), never changes namespace. A netlink socket opened
inside keeps talking to that namespace after the thread leaves it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from cnm.errors import Conflict, InvalidOption, KernelError, NotFound
from cnm.osl.rtnl import Rtnl

if TYPE_CHECKING:
    from pyroute2.iproute.linux import IPRoute

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl: which kind of namespace a namespace file is
_MS_BIND = 4096
_MS_SHARED = 1 << 20
_MS_REC = 16384
_MNT_DETACH = 2
_NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)
_run_dir_lock = threading.Lock()
T = TypeVar("T")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def named_netns_path(name: str) -> str:
    """Where ``ip netns`` keeps the namespace called ``name`` (a name, never a path)."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") \
            or not name.isprintable():
        raise InvalidOption(f"{name!r} is not a namespace name (no '/', not '.' or '..')")
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(ns: str) -> bool:
    """Whether ``ns`` (a path) is a live network namespace file."""
    try:
        os.close(open_netns(ns))
    except (NotFound, OSError):
        return False
    return True


def _is_nsfs(path: str) -> bool:
    # Every namespace file lives on the nsfs pseudo device; a stale file left by a crash,
    # or any ordinary file, does not.
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return False


def open_netns(ns: str) -> int:
    """A read-only descriptor of the network namespace file ``ns``; NotFound if it is not
    one. Checked before it is opened (a path off nsfs is never opened: a FIFO would block,
    a device could act on the open) and after (a namespace of another kind, such as
    /proc/PID/ns/mnt, is refused)."""
    if not isinstance(ns, str) or not _is_nsfs(ns):
        raise NotFound(f"network namespace {ns!r} does not exist")
    fd = os.open(ns, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if (os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev
                or fcntl.ioctl(fd, _NS_GET_NSTYPE) != CLONE_NEWNET):
            raise NotFound(f"{ns!r} is not a network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


_run_dir_ready = False


def _ensure_run_dir() -> None:
    """Make /run/netns a shared mount point as iproute2 does, so mounts propagate.

    Checked once per process: mountinfo grows by a line per namespace.
    """
    global _run_dir_ready
    with _run_dir_lock:
        if _run_dir_ready:
            return
        os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
        with open("/proc/self/mountinfo") as mounts:
            if any(line.split()[4] == NETNS_RUN_DIR for line in mounts):
                _run_dir_ready = True
                return
        _check(
            _libc.mount(
                NETNS_RUN_DIR.encode(), NETNS_RUN_DIR.encode(), b"none", _MS_BIND | _MS_REC, None
            ),
            "bind-mount /run/netns",
        )
        _libc.mount(b"none", NETNS_RUN_DIR.encode(), None, _MS_SHARED | _MS_REC, None)
        _run_dir_ready = True


def _run_in_thread(job: Callable[[], T], meanwhile: Callable[[], object] | None = None) -> T:
    """Run ``job`` in a fresh thread and return its result (or raise its exception).

    ``meanwhile`` runs in the calling thread while the job does, so that the two overlap;
    it must not need the job's result. The job's error wins if both fail; a failure of
    ``meanwhile`` alone is raised as ``MeanwhileFailed`` carrying the job's result, so
    that the caller can undo the job.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = job()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="pycnm-netns", daemon=True)
    worker.start()
    side_error: BaseException | None = None
    if meanwhile is not None:
        try:
            meanwhile()
        except BaseException as exc:  # raised once the job is over
            side_error = exc
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if side_error is not None:
        raise MeanwhileFailed(box["value"]) from side_error
    return box["value"]  # type: ignore[return-value]


class MeanwhileFailed(Exception):
    """What ran beside a namespace job failed; ``result`` is the job's (to undo it)."""

    def __init__(self, result: object) -> None:
        super().__init__("the work done meanwhile failed")
        self.result = result


def in_netns(ns: str | None, job: Callable[[], T],
             meanwhile: Callable[[], object] | None = None) -> T:
    """Run ``job`` with the calling thread inside ``ns`` (None: run it here, unchanged);
    ``meanwhile``: see ``_run_in_thread``."""
    if ns is None:
        if meanwhile is not None:
            return _run_in_thread(job, meanwhile)
        return job()

    def entered() -> T:
        target = open_netns(ns)
        try:
            _check(_libc.setns(target, CLONE_NEWNET), f"enter {ns}")
        finally:
            os.close(target)
        # The thread ends right after the job: it never goes back, so nothing can leak out.
        return job()

    return _run_in_thread(entered, meanwhile)


@contextlib.contextmanager
def netns_fd(ns: str | None) -> Iterator[int]:
    """A file descriptor of namespace ``ns`` (None: the calling thread's), for requests
    that place an interface there (``net_ns_fd``); closed afterwards."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY) if ns is None else open_netns(ns)
    try:
        yield fd
    finally:
        os.close(fd)


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)


def _sockets() -> tuple[socket.socket, socket.socket]:
    return _netlink_socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


class NetlinkHandle:
    """One namespace's netlink for the length of one operation.

    ``rtnl`` sends requests that only want an acknowledgement (cheap, see
    ``cnm.osl.rtnl``); ``ioctl`` is a plain socket of the same namespace, so that looking
    up an interface's index is one ioctl instead of a decoded netlink reply. pyroute2's
    ``IPRoute``, for everything that reads state back, is opened on first use (~0.3 ms),
    and its methods are reachable on the handle itself: ``handle.link("get", ...)``.
    """

    _ipr: IPRoute | None = None

    def __init__(self, ns: str | None, netlink: socket.socket, ioctl: socket.socket) -> None:
        self.ns = ns
        self.rtnl = Rtnl(netlink)
        self.ioctl = ioctl

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            from pyroute2.iproute.linux import IPRoute  # only when state is read back


            self._ipr = IPRoute() if self.ns is None else \
                IPRoute(use_socket=in_netns(self.ns, _netlink_socket))
        return self._ipr

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ipr, name)

    def close_ipr(self) -> None:
        """Close the IPRoute if one was opened (its event loop belongs to one thread)."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def close(self) -> None:
        self.rtnl.sock.close()
        self.ioctl.close()
        self.close_ipr()


def _open_handle(ns: str | None) -> NetlinkHandle:
    born = _take_born(ns) if ns is not None else None
    if born is not None:
        return NetlinkHandle(ns, *born)
    netlink, ioctl = _sockets() if ns is None else in_netns(ns, _sockets)
    return NetlinkHandle(ns, netlink, ioctl)


# Sockets opened inside a namespace by the thread that made it (``create_named_netns``'s
# ``keep_sockets``), for the first handle opened to it afterwards: a sandbox's join then
# needs no thread's visit to open one (~0.2-0.4 ms). An open socket keeps its namespace
# alive, so only a few are kept (the oldest is closed) and deleting the namespace closes
# its own; a forked child closes its copies (they are its parent's sockets).
_BORN_KEPT = 4
_born: dict[str, tuple[int, tuple[socket.socket, socket.socket]]] = {}  # path: (inode, ...)
_born_lock = threading.Lock()


def _keep_born(path: str, sockets: tuple[socket.socket, socket.socket]) -> None:
    try:
        inode = os.stat(path).st_ino
    except OSError:
        _close_all(sockets)
        return
    with _born_lock:
        stale = [_born.pop(path, (0, ()))[1]]
        if len(_born) >= _BORN_KEPT:
            stale.append(_born.pop(next(iter(_born)))[1])
        _born[path] = (inode, sockets)
    for old in stale:
        _close_all(old)


def _take_born(path: str) -> tuple[socket.socket, socket.socket] | None:
    """The sockets kept for ``path``, if the namespace there is still the one they were
    opened in (not one made again under its name since)."""
    with _born_lock:
        inode, sockets = _born.pop(path, (0, None))
    if sockets is None:
        return None
    try:
        same = os.stat(path).st_ino == inode
    except OSError:
        same = False
    if not same:
        _close_all(sockets)
        return None
    return sockets


def _drop_born(path: str) -> None:
    with _born_lock:
        _, sockets = _born.pop(path, (0, ()))
    _close_all(sockets)


def _forget_born_in_child() -> None:
    global _born_lock
    _born_lock = threading.Lock()  # a thread of the parent may have held it
    for _, sockets in _born.values():
        _close_all(sockets)
    _born.clear()


def _close_all(sockets: tuple[socket.socket, ...]) -> None:
    for sock in sockets:
        sock.close()


os.register_at_fork(after_in_child=_forget_born_in_child)


@contextlib.contextmanager
def iproute(ns: str | None = None) -> Iterator[NetlinkHandle]:
    """A netlink handle bound to ``ns`` (None: this process's namespace) for the length of
    one operation."""
    handle = _open_handle(ns)
    try:
        yield handle
    finally:
        handle.close()


class NetlinkPool:
    """Handles to one long-lived namespace (a host's), kept open between operations:
    opening one costs a thread hop into the namespace and two sockets. Each user gets a
    handle of its own. An open socket keeps its namespace alive, so the owner closes the
    pool before the namespace is meant to go (``Driver.close``)."""

    def __init__(self, ns: str | None, keep: int = 4) -> None:
        self.ns = ns
        self._keep = keep
        self._free: list[NetlinkHandle] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def handle(self) -> Iterator[NetlinkHandle]:
        with self._lock:
            handle = self._free.pop() if self._free else None
        if handle is None:
            handle = _open_handle(self.ns)
        try:
            yield handle
        except BaseException:
            handle.close()  # it may hold unread replies: never hand it out again
            raise
        handle.close_ipr()
        with self._lock:
            if not self._closed and len(self._free) < self._keep:
                self._free.append(handle)
                return
        handle.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for handle in free:
            handle.close()


def create_named_netns(
    name: str,
    parent: str | None = None,
    *,
    loopback_up: bool = False,
    forwarding: bool | None = None,
    meanwhile: Callable[[], object] | None = None,
    keep_sockets: bool = False,
) -> str:
    """Create the named namespace ``name`` (as ``ip netns add`` does) and return its path.

    ``parent`` is irrelevant to the kernel (namespaces are flat) but lets a host namespace
    emulate a machine: we unshare from inside it so /proc/sys defaults match.
    ``loopback_up`` and ``forwarding`` (set explicitly either way when not None) are done
    by the same thread while it is inside, which saves a netlink socket and two thread
    round trips per sandbox. ``meanwhile`` runs in the calling thread at the same time
    (file work that does not need the namespace); if it fails, the namespace is removed
    and its error raised. ``keep_sockets``: the thread also opens the sockets of a netlink
    handle there, for the next ``iproute`` of this namespace in this process (a join
    soon after). Raises Conflict if the name is taken.
    """
    _ensure_run_dir()
    path = named_netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
    except FileExistsError:
        raise Conflict(f"network namespace {name!r} already exists") from None

    def make() -> None:
        _check(_libc.unshare(CLONE_NEWNET), f"create network namespace {name}")
        _check(
            _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND, None),
            f"bind-mount namespace {name}",
        )
        if loopback_up:
            _set_up_here("lo")
        if forwarding is not None:
            value = "1" if forwarding else "0"
            for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
                with open(os.path.join("/proc/sys", key), "w") as handle:
                    handle.write(value)
        if keep_sockets:
            born.append(_sockets())

    born: list[tuple[socket.socket, socket.socket]] = []

    try:
        if parent is None:
            _run_in_thread(make, meanwhile)
        else:
            in_netns(parent, make, meanwhile)
    except MeanwhileFailed as failed:
        _unmake(path, born)
        raise failed.__cause__ from None  # type: ignore[misc]
    except OSError as exc:
        _unmake(path, born)
        raise KernelError(str(exc)) from exc
    except BaseException:
        for sockets in born:
            _close_all(sockets)
        raise
    if born:
        _keep_born(path, born[0])
    return path


def _unmake(path: str, born: list[tuple[socket.socket, socket.socket]]) -> None:
    """Undo a namespace half made or made in vain: sockets opened in it, its bind mount
    (if any), its file."""
    for sockets in born:
        _close_all(sockets)
    _libc.umount2(path.encode(), _MNT_DETACH)
    with contextlib.suppress(OSError):
        os.unlink(path)


def _set_up_here(ifname: str) -> None:
    """Bring an interface of the calling thread's namespace up with two ioctls."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", ifname.encode(), 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", ifname.encode(), flags | iff_up))


def delete_named_netns(name: str) -> None:
    """Remove the named namespace; a namespace already gone is success (as CNI's DEL)."""
    path = named_netns_path(name)
    _drop_born(path)
    result = _libc.umount2(path.encode(), _MNT_DETACH)
    if result != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        err = ctypes.get_errno()
        raise KernelError(f"cannot unmount namespace {name}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _remove_etc_netns(name)


def _remove_etc_netns(name: str) -> None:
    folder = os.path.join("/etc/netns", name)
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, entry))
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def list_named_netns() -> list[str]:
    """Names of the namespaces under /run/netns."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def write_sysctl(ns: str | None, key: str, value: str) -> None:
    """Set a net sysctl (``net/ipv4/ip_forward``) as seen inside ``ns``."""

    def write() -> None:
        with open(os.path.join("/proc/sys", key), "w") as handle:
            handle.write(value)

    try:
        in_netns(ns, write)
    except FileNotFoundError as exc:
        raise KernelError(f"sysctl {key} does not exist on this kernel") from exc
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        # A managed Docker plugin sees /proc/sys read-only: the host must set it.
        name = key.replace("/", ".")
        raise KernelError(f"cannot set {name}={value}: /proc/sys is read-only here (a "
                          f"managed Docker plugin?); set it on the host: sysctl -w "
                          f"{name}={value}") from None


def read_sysctl(ns: str | None, key: str) -> str:
    def read() -> str:
        with open(os.path.join("/proc/sys", key)) as handle:
            return handle.read().strip()

    return in_netns(ns, read)
