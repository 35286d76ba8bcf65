"""The CLI's side of the hand-off: send a command to the host's running pycnm process.

A daemon (``pycnm agent`` or ``pycnm plugin serve``) listens on a root-only Unix socket
named after what it serves: this host's network and mount namespaces, its host id, its
store URL and the etcd settings in its environment (``HostKey``). A CLI call that would
act on exactly that sends its argv there and prints what comes back; the daemon runs the
same handler it would have run itself (``cnm.cli.daemon``). When no daemon serves that
key, or the daemon declines, the CLI does the work itself: the same command, the same
output, errors and exit code either way.

Only commands that read or change the store and the kernel go (``HANDOFF``); nothing that
runs or waits (``sandbox exec``, ``lab``, ``agent``), logs (``-v``), prints tracebacks
(``--debug``) or names a file the daemon would open in its own view of the machine
(``--netns``, a store path relative to the working directory, ``memory://``).

This module is imported by every CLI call: it must stay cheap (no cnm.controller, no
pyroute2, no hashlib).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

# The C socket module: socket.py would import selectors, enum and more (a few ms a call).
from _socket import AF_UNIX, SHUT_WR, SOCK_STREAM, gethostname
from _socket import socket as unix_socket
from typing import NamedTuple

SOCKET_DIR = "/run/pycnm/cli"
VERSION = 1

# (command, sub-command) pairs a daemon may run for the CLI.
HANDOFF: frozenset[tuple[str, str | None]] = frozenset({
    ("network", "create"), ("network", "ls"), ("network", "inspect"), ("network", "rm"),
    ("sandbox", "create"), ("sandbox", "ls"), ("sandbox", "inspect"), ("sandbox", "rm"),
    ("endpoint", "create"), ("endpoint", "ls"), ("endpoint", "rm"),
    ("attach", None), ("detach", None),
})
_SUBCOMMAND_DEST = {"network": "network_command", "sandbox": "sandbox_command",
                    "endpoint": "endpoint_command"}
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ETCD_ENV = ("PYCNM_ETCD_USER", "PYCNM_ETCD_PASSWORD", "PYCNM_ETCD_PASSWORD_FILE",
             "PYCNM_ETCD_CA", "PYCNM_ETCD_CERT", "PYCNM_ETCD_KEY")
_ETCD_FILE_PARAMS = ("ca", "cert", "key", "password_file")


class HostKey(NamedTuple):
    """What a daemon serves; a CLI call goes to it only if every field is equal."""

    netns: str  # "dev:inode" of the namespace acting as the host's
    mntns: str  # "dev:inode" of the mount namespace (paths, /run/netns)
    host_id: str
    store: str  # the --store URL as given ("" for the default)
    etcd_env: tuple[tuple[str, str], ...]  # PYCNM_ETCD_* that are set

    def socket_path(self) -> str:
        """The daemon's socket: the host id (checked to be a plain name) and a checksum of
        the rest, so that no input becomes a path."""
        import zlib

        digest = zlib.crc32(json.dumps(self.to_wire(), sort_keys=True).encode())
        return os.path.join(SOCKET_DIR, f"{self.host_id}-{digest:08x}.sock")

    def to_wire(self) -> dict[str, object]:
        return {**self._asdict(), "etcd_env": [list(p) for p in self.etcd_env]}


def _identity(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _store_is_portable(store: str, env: dict[str, str]) -> bool:
    """Whether ``store`` names the same store from any working directory and process:
    the default, an absolute SQLite path, or etcd with absolute file parameters."""
    if not store:
        return True
    scheme, sep, rest = store.strip().partition("://")
    scheme = scheme.lower()
    if not sep:
        return store.startswith("/")
    if scheme == "sqlite":
        return rest.startswith("/")
    if scheme in ("etcd", "etcds"):
        from urllib.parse import parse_qsl, urlsplit

        try:
            params = parse_qsl(urlsplit(store.strip()).query, keep_blank_values=True)
        except ValueError:
            return False
        files = [v for k, v in params if k in _ETCD_FILE_PARAMS]
        files += [v for k, v in env.items() if k != "PYCNM_ETCD_USER"
                  and k != "PYCNM_ETCD_PASSWORD"]
        return all(v.startswith("/") for v in files)
    return False  # memory:// lives in one process; anything else: let the CLI say what


def host_key(store: str | None, host_ns: str | None, host_id: str | None) -> HostKey | None:
    """The key of the daemon that would do exactly what this process would, or None when
    no daemon can (the CLI then runs the command itself, with its own errors)."""
    env = {k: os.environ[k] for k in _ETCD_ENV if os.environ.get(k)}
    store = store or ""
    if not _store_is_portable(store, env):
        return None
    if host_ns and "/" not in host_ns:
        host_ns = f"/run/netns/{host_ns}"
    if host_ns is not None and not host_ns.startswith("/"):
        return None  # relative to the working directory
    try:
        netns = _identity(host_ns or "/proc/thread-self/ns/net")
        mntns = _identity("/proc/thread-self/ns/mnt")
    except (OSError, ValueError):
        return None
    name = host_id or (host_ns.rsplit("/", 1)[-1] if host_ns else gethostname())
    if not _HOST_ID.fullmatch(name):
        return None
    return HostKey(netns, mntns, name, store, tuple(sorted(env.items())))


def command_of(args: argparse.Namespace) -> tuple[str, str | None]:
    sub = _SUBCOMMAND_DEST.get(args.command)
    return args.command, getattr(args, sub, None) if sub else None


def eligible(args: argparse.Namespace) -> bool:
    """Whether a daemon may run this parsed command (the daemon checks again)."""
    return (command_of(args) in HANDOFF and not args.verbose and not args.debug
            and not getattr(args, "netns", None))


def send(argv: list[str], args: argparse.Namespace) -> int | None:
    """Have the daemon run ``argv``; print what it printed and return its exit code.
    None: no daemon serves this host and store, or it declined (the caller runs the
    command itself). Once the daemon has the request it is never run here as well: if the
    daemon goes away before answering, that is an error, not a second try."""
    key = host_key(args.store, args.host_ns, args.host_id)
    if key is None:
        return None
    conn = unix_socket(AF_UNIX, SOCK_STREAM)
    try:
        try:
            conn.connect(key.socket_path())
        except OSError:
            return None  # no daemon (or not ours to use): do it here
        request = {"version": VERSION, "argv": argv, "key": key.to_wire()}
        try:
            conn.sendall(json.dumps(request).encode())
            conn.shutdown(SHUT_WR)
        except OSError:
            return None  # it closed before reading: it ran nothing
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"Error: lost the pycnm daemon while it ran the command ({exc.strerror}); "
              "check the result with pycnm ... ls", file=sys.stderr)
        return 1
    finally:
        conn.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        print("Error: the pycnm daemon stopped before it answered; check the result with "
              "pycnm ... ls", file=sys.stderr)
        return 1
    if not reply.get("handled"):
        return None
    for stream, text in reply["output"]:  # in the order the command wrote them
        out = sys.stdout if stream == 1 else sys.stderr
        out.write(text)
        out.flush()
    return int(reply["exit"])
