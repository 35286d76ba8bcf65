"""The daemon's side of the CLI hand-off (see ``cnm.cli.handoff``).

``pycnm agent`` and ``pycnm plugin serve`` open a ``CliChannel`` beside their work: a Unix
socket under /run/pycnm/cli (directory 0700, socket 0600, root's), one request per
connection, in the wire format ``cnm.cli.handoff`` describes. The daemon

- answers only root (SO_PEERCRED) and reads at most 1 MiB within 5 s;
- checks the request's shape field by field (counts that add up, namespaces as
  DEV:INODE, a plain host id) and that its key is its own (same host namespace, mount
  namespace, host id, store URL and etcd settings);
- parses the argv with the CLI's own parser, with the client's defaults, so each value
  meets the same argparse rules and the same handler checks as on the command line
  (argv is a list of strings: it never becomes a shell line, a path or nft syntax), and
  checks that it names the store, host id and host namespace of the key;
- runs only the commands ``cnm.cli.handoff.HANDOFF`` names, through ``cnm.cli.dispatch``
  with this process's Controller, capturing what the handler prints to stdout and stderr
  (and the warnings it logs, as the CLI's own logging would print them);
- declines everything else, including a line argparse refuses or answers with help: the
  CLI then runs it itself (so declining is always safe, and argparse's messages, whose
  line width follows the user's terminal, always come from the CLI's own process).

One difference stays, by design: a veth pair whose endpoint was detached or deleted is
removed by the daemon's background reaper a few tens of milliseconds after the command
returns (as it is for the Docker plugin), where a CLI running alone waits for it before
exiting. The sandbox has lost its interface and the store its endpoint either way.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from cnm.cli import handoff

log = logging.getLogger("pycnm.cli")

MAX_REQUEST = 1 << 20
MAX_ARGS = 4096
READ_TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 8
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the CLI's (cnm.cli.main)

_served = threading.local()  # .controller and .output while a handed-off command runs


class _Borrowed:
    """The daemon's Controller as ``with open_controller(args) as ctl`` wants it: the
    command uses it and leaves it open."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def __enter__(self) -> Any:
        return self.controller

    def __exit__(self, *exc: object) -> None:
        return None


def current_controller() -> _Borrowed | None:
    """The Controller of the daemon running a handed-off command in this thread, if any."""
    controller = getattr(_served, "controller", None)
    return _Borrowed(controller) if controller is not None else None


class _Routed:
    """Stands in for sys.stdout/sys.stderr: what a thread running a handed-off command
    writes goes into its reply; everything else to the real stream."""

    def __init__(self, real: TextIO, number: int) -> None:
        self.real = real
        self.number = number

    def write(self, text: str) -> int:
        output = getattr(_served, "output", None)
        if output is None:
            return self.real.write(text)
        if output and output[-1][0] == self.number:
            output[-1][1] += text
        else:
            output.append([self.number, text])
        return len(text)

    def flush(self) -> None:
        if getattr(_served, "output", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _CapturedWarnings(logging.Handler):
    """Warnings logged while a handed-off command runs, printed into its stderr as the
    CLI's own logging set-up prints them when it runs alone."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        output = getattr(_served, "output", None)
        if output is not None and not record.name.startswith("pycnm.cli"):
            output.append([2, self.format(record) + "\n"])


class CliChannel:
    """Serve handed-off CLI commands with ``controller`` until ``close()``."""

    def __init__(self, controller: Any, key: Key) -> None:
        self.controller = controller
        self.key = key
        self.path = handoff.socket_path(key)
        self._sock: socket.socket | None = None
        self._inode = 0
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._warnings = _CapturedWarnings()
        self._streams: tuple[Any, Any] | None = None

    def start(self) -> bool:
        """Listen; False (logged) if another daemon already serves this key or the socket
        cannot be made safely, in which case CLI calls simply run in their own process."""
        try:
            self._sock = _listener(self.path)
        except OSError as exc:
            log.warning("CLI hand-off off: cannot listen on %s (%s)", self.path,
                        exc.strerror or exc)
            return False
        except _Taken:
            log.warning("CLI hand-off off: another pycnm process serves %s", self.path)
            return False
        self._inode = os.stat(self.path).st_ino
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = _Routed(sys.stdout, 1)
        sys.stderr = _Routed(sys.stderr, 2)
        logging.getLogger().addHandler(self._warnings)
        threading.Thread(target=self._accept, name="pycnm-cli-accept", daemon=True).start()
        log.info("serving CLI calls on %s", self.path)
        return True

    def close(self) -> None:
        """Stop accepting, let the commands in flight finish, remove the socket."""
        with self._lock:
            self._closing = True
            threads = list(self._threads)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._sock.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:  # still ours
                    os.unlink(self.path)
            self._sock = None
        for thread in threads:
            thread.join(timeout=60)
        logging.getLogger().removeHandler(self._warnings)
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None

    def _accept(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closing or len(self._threads) >= MAX_IN_FLIGHT:
                    busy = True
                else:
                    busy = False
                    worker = threading.Thread(target=self._serve, args=(conn,),
                                              name="pycnm-cli", daemon=True)
                    self._threads.add(worker)
            if busy:
                _answer(conn, DECLINED)  # the CLI runs it itself
                continue
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                _answer(conn, self._run(conn))
        except Exception:  # noqa: BLE001 - one bad connection never stops the daemon
            log.exception("CLI hand-off: request failed")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _run(self, conn: socket.socket) -> bytes:
        if _peer_uid(conn) != 0:
            return DECLINED
        try:
            argv, key = parse_request(_read(conn))
        except BadRequest as exc:
            log.warning("CLI hand-off: refused a request: %s", exc)
            return DECLINED
        if key != self.key:
            return DECLINED
        args = _parse_argv(argv, key)
        if args is None or not handoff.eligible(args):
            return DECLINED
        output: list[list[Any]] = []
        _served.controller = self.controller
        _served.output = output
        try:
            from cnm.cli import dispatch

            code = dispatch(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            _served.controller = None
            _served.output = None
        return encode_reply(code, output)


DECLINED = handoff.MAGIC + b" declined\n"


def encode_reply(code: int, output: list[list[Any]]) -> bytes:
    parts = [handoff.MAGIC + f" exit {code}\n".encode()]
    for stream, text in output:
        data = text.encode(errors="surrogateescape")
        parts.append(f"{stream} {len(data)}\n".encode() + data)
    return b"".join(parts)


_parse_lock = threading.Lock()


@functools.lru_cache(maxsize=32)
def _parser(command: str | None, store: str, host_id: str) -> argparse.ArgumentParser:
    """The CLI's parser for ``command`` with the client's defaults, made once: argparse
    spends more on building a parser than on parsing with it."""
    from cnm.cli import build_parser

    return build_parser([command] if command else [],
                        env={"PYCNM_STORE": store, "PYCNM_HOST_ID": host_id})


class _Taken(Exception):
    """A live daemon answers on the socket path already."""


class BadRequest(ValueError):
    """A request that is not what a pycnm CLI sends."""


Key = tuple[str, str, str, str, tuple[str, ...]]


def parse_request(data: bytes) -> tuple[list[str], Key]:
    """Check a request field by field; return its argv and key."""
    head, sep, body = data.partition(b"\n")
    if head != handoff.MAGIC or not sep:
        raise BadRequest("not a pycnm CLI request of this version")
    fields = body.decode("utf-8", errors="surrogateescape").split("\0")
    if len(fields) < 5 or not fields[4].isdigit() or len(fields[4]) > 2:
        raise BadRequest("expected host namespace, mount namespace, host id, store and a "
                         "count of etcd settings")
    count = int(fields[4])
    etcd, argv = fields[5:5 + count], fields[5 + count:]
    if len(etcd) != count or not all(e.partition("=")[0] in handoff.ETCD_ENV and "=" in e
                                     for e in etcd):
        raise BadRequest(f"store settings must be NAME=VALUE, NAME one of "
                         f"{', '.join(handoff.ETCD_ENV)}")
    if not argv or len(argv) > MAX_ARGS:
        raise BadRequest(f"argv must have 1 to {MAX_ARGS} words")
    netns, mntns, host_id = fields[:3]
    if not (_is_identity(netns) and _is_identity(mntns) and handoff.is_plain_name(host_id)):
        raise BadRequest("namespaces must be DEV:INODE and the host id a plain name")
    return argv, (netns, mntns, host_id, fields[3], tuple(etcd))


def _is_identity(text: str) -> bool:
    dev, sep, ino = text.partition(":")
    return bool(sep) and dev.isdigit() and ino.isdigit() and len(text) < 42


def _parse_argv(argv: list[str], key: Key) -> argparse.Namespace | None:
    """``argv`` through the CLI's own parser, its defaults those the client had (its
    key); None if argparse refuses it or prints help, or if it names another store, host
    id or host namespace than the key."""
    from cnm.cli import chosen_command

    parser = _parser(chosen_command(argv), key[3], key[2])
    _served.output = []  # argparse's messages, if any, are dropped with it
    try:
        with _parse_lock:
            args = parser.parse_args(argv)
    except SystemExit:
        return None  # the CLI says it itself, in its own terminal's width
    finally:
        _served.output = None
    if (args.store or "") != key[3] or (args.host_id or key[2]) != key[2]:
        return None
    if args.host_ns is not None:
        path = args.host_ns if "/" in args.host_ns else f"/run/netns/{args.host_ns}"
        try:
            if handoff.identity(path) != key[0]:
                return None
        except (OSError, ValueError):
            return None
    return args


def _read(conn: socket.socket) -> bytes:
    conn.settimeout(READ_TIMEOUT_S)
    chunks, size = [], 0
    while chunk := conn.recv(1 << 16):
        size += len(chunk)
        if size > MAX_REQUEST:
            raise BadRequest(f"larger than {MAX_REQUEST} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(conn: socket.socket, reply: bytes) -> None:
    with contextlib.suppress(OSError):  # the CLI went away (Ctrl-C): nothing to tell
        conn.sendall(reply)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


STALE_AFTER_S = 60.0


def _listener(path: str) -> socket.socket:
    """A listening socket at ``path``, 0600 from birth, in a root-only directory."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"{directory} is not a directory of ours")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)
    _remove_stale(directory)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: its daemon is gone
            else:
                raise _Taken()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(64)
    return sock


def _remove_stale(directory: str) -> None:
    """Remove the sockets of daemons that died without closing them (SIGKILL): no one
    answers on them. Only sockets older than a minute: a daemon that has just bound its
    socket refuses connections until it listens, a moment later."""
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISSOCK(info.st_mode) or now - info.st_mtime < STALE_AFTER_S:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(path)
                except ConnectionRefusedError:
                    with contextlib.suppress(OSError):
                        if os.lstat(path).st_ino == info.st_ino:  # still that dead one
                            os.unlink(path)
                except OSError:
                    continue


@contextlib.contextmanager
def serving(controller: Any, args: argparse.Namespace) -> Iterator[CliChannel | None]:
    """Serve handed-off CLI calls for ``controller`` (opened from ``args``) while the
    block runs; nothing when no CLI call could be handed to it (e.g. a ``memory://``
    store). Call it from the thread that opened the Controller (namespaces are per
    thread)."""
    key = handoff.host_key(args.store, args.host_ns, controller.host_id)
    # The key carries $PYCNM_LOCAL_STORE, not --local-store: a daemon given the flag
    # (another local store than a CLI call would open) serves no CLI calls.
    if (getattr(args, "local_store", None) or None) != (os.environ.get("PYCNM_LOCAL_STORE")
                                                         or None):
        key = None
    if key is None:
        log.info("CLI hand-off off: CLI calls for this store run in their own process")
        yield None
        return
    channel = CliChannel(controller, key)
    started = channel.start()
    try:
        yield channel if started else None
    finally:
        if started:
            channel.close()
