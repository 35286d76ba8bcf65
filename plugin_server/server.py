"""Serving the plugin: waitress on a Unix socket, in the foreground, until SIGTERM/SIGINT.

The socket is made here rather than by waitress so that it is born with mode 0660 (a
umask around bind: no moment where anyone else may connect) and so that a stale socket of
a killed plugin is removed while a live one is refused. Docker finds the plugin by the
socket's name (``/run/docker/plugins/NAME.sock``: ``docker network create -d NAME``). A TCP
listener exists only when asked for (``--tcp``): the protocol has no authentication.

Order at start: the Controller first (it reconciles the kernel with the store, so a plugin
killed with SIGKILL comes back with everything it had), then the socket: Docker's first
call never meets a half-restored plugin.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnm import inputs
from cnm.errors import CNMError, Conflict, InvalidOption

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger("plugin_server")

DEFAULT_SOCKET = "/run/docker/plugins/pycnm.sock"
SOCKET_MODE = 0o660
DEFAULT_THREADS = 16
UNIX_PATH_MAX = 108  # sun_path, NUL included
_PORT_TEXT = re.compile(r"[0-9]{1,5}")


@dataclass
class ServeOptions:
    socket_path: str = DEFAULT_SOCKET
    tcp: str | None = None  # HOST:PORT, only when asked for
    threads: int = DEFAULT_THREADS
    background: bool = True  # start the drivers' long-running work (overlay agent)
    background_config: dict[str, Any] = field(default_factory=dict)


def _remove_stale(path: str) -> None:
    """Remove a socket nobody answers on; refuse to steal one a live plugin serves."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise Conflict(f"{path} exists and is not a socket: move it away first")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        os.unlink(path)
        log.info("removed the stale socket %s", path)
        return
    finally:
        probe.close()
    raise Conflict(f"another process is already serving on {path}")


def unix_listener(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0660, owned by root:root from birth."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~SOCKET_MODE)  # bind() makes the file: born 0660
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)  # already ours; makes the group root even under sudo -g
    sock.listen(128)
    return sock


def check_options(options: ServeOptions) -> None:
    """Refuse, with one sentence, a socket path or a TCP address the server cannot or must
    not listen on, before anything starts."""
    socket_path(options.socket_path)
    if options.tcp is not None:
        tcp_address(options.tcp)


def socket_path(path: str) -> str:
    """``--socket``: a path the kernel can bind (at most 107 bytes, no NUL)."""
    size = len(os.fsencode(path))
    if not path or "\0" in path or size >= UNIX_PATH_MAX:
        raise InvalidOption(f"--socket must be a path of 1 to {UNIX_PATH_MAX - 1} bytes "
                            f"without NUL (a Unix socket's limit), not one of {size} bytes")
    return path


def tcp_address(spec: str) -> tuple[str, int]:
    """``--tcp HOST:PORT``, where HOST is a loopback address: the plugin protocol has no
    authentication, so whoever reaches the port could change the host's networks."""
    host, sep, port_text = spec.rpartition(":")
    if not sep or not host or not _PORT_TEXT.fullmatch(port_text):
        raise InvalidOption(f"--tcp needs HOST:PORT (e.g. 127.0.0.1:9234), not {spec!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidOption(f"--tcp {spec}: the port must be between 1 and 65535, not {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = inputs.address(host, "--tcp HOST")
    except InvalidOption:
        address = None
    if address is None or not address.is_loopback:
        raise InvalidOption(f"--tcp {spec}: HOST must be a loopback address (127.0.0.1 or "
                            "[::1]): the plugin protocol has no authentication")
    return str(address), port


def tcp_listener(spec: str) -> socket.socket:
    host, port = tcp_address(spec)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidOption(f"cannot listen on {spec}: {exc.strerror}") from None
    sock.listen(128)
    log.warning("listening on tcp://%s too (loopback: any local user can change this "
                "host's networks through it)", spec)
    return sock


def notify_systemd(state: str) -> None:
    """Tell systemd (Type=notify) how we are, when it started us; otherwise nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the returned event; the serving loop checks it between two
    polls. (Raising from the handler instead could land inside one of waitress's
    dispatchers, which would log and swallow it.)"""
    stopping = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopping
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def serve(controller: Controller, options: ServeOptions) -> None:
    """Serve ``controller`` until SIGTERM or SIGINT; the socket file is removed at exit."""
    from waitress import wasyncore
    from waitress.server import create_server

    from plugin_server.app import create_app

    check_options(options)
    with _stop_on_signals() as stopping:  # from the start: a SIGTERM now still stops cleanly
        app = create_app(controller)
        if options.background:
            try:
                started = controller.start_background(options.background_config)
                if started:
                    log.info("background work started for: %s", ", ".join(started))
            except CNMError as exc:
                log.warning("drivers' background work not started: %s", exc)
        sockets = [unix_listener(options.socket_path)]
        try:
            # waitress serves Unix and TCP sockets from separate server objects: both share
            # one event loop (the map) and one pool of worker threads.
            shared: dict[int, Any] = {}
            settings = {"threads": options.threads, "ident": "pycnm",
                        "max_request_body_size": 4 << 20, "channel_timeout": 120}
            server = create_server(app, map=shared, sockets=sockets[:1], **settings)
            if options.tcp:
                sockets.append(tcp_listener(options.tcp))
                create_server(app, map=shared, _dispatcher=server.task_dispatcher,
                              sockets=sockets[1:], **settings)
            log.info("pycnm plugin: serving on unix://%s (%d threads)", options.socket_path,
                     options.threads)
            notify_systemd("READY=1")
            try:
                while not stopping.is_set():
                    wasyncore.loop(timeout=0.5, map=shared, use_poll=True, count=1)
            finally:
                notify_systemd("STOPPING=1")
                # Let the calls in progress finish (bounded), then close every channel.
                with contextlib.suppress(Exception):
                    server.task_dispatcher.shutdown(timeout=10)
                for channel in list(shared.values()):
                    with contextlib.suppress(Exception):
                        channel.close()
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(options.socket_path)
    log.info("pycnm plugin: stopped")
