"""The CLI's side of the hand-off: send a command to the host's running pycnm process.

A daemon (``pycnm agent`` or ``pycnm plugin serve``) listens on a root-only Unix socket
named after what it serves (``host_key``): this host's network and mount namespaces, its
host id, its store URL and the etcd settings in its environment. A CLI call that would
act on exactly that sends its argv there and prints what comes back; the daemon parses it
with the CLI's own parser and runs the same handler (``cnm.cli.daemon``). When no daemon
serves that key, or the daemon declines, the CLI does the work itself: the same command,
the same output, errors and exit code either way.

Only commands that read or change the store and the kernel go (``HANDOFF``): nothing
that runs or waits (``sandbox exec``, ``lab``, ``agent``), logs (``-v``), prints a
traceback (``--debug``) or help, or names a file the daemon would open in its own view of
the machine (``--netns``, a store path relative to the working directory, ``memory://``).

Every CLI call imports this module first, so it stays cheap: no argparse, json, re or
typing, not even socket.py (each pulls in more; together they cost more than a handed-off
command). So ``scan`` reads only the simple forms of the global options (anything else
runs in the CLI's own process, which parses it with argparse), and the wire format is NUL-
separated strings (argv never holds a NUL):

    request:  b"pycnm-cli 1\\n" + NETNS \\0 MNTNS \\0 HOST_ID \\0 STORE \\0 N \\0
              ETCD_VAR=VALUE (N of them) \\0 ... ARGV...
    reply:    b"pycnm-cli 1 declined\\n", or b"pycnm-cli 1 exit CODE\\n" followed by
              records b"STREAM LENGTH\\n" + LENGTH bytes (STREAM 1: stdout, 2: stderr),
              in the order the command wrote them.
"""

from __future__ import annotations

import os
import sys

# The C socket module: socket.py would import selectors, enum and more.
from _socket import AF_UNIX, SHUT_WR, SOCK_STREAM, gethostname
from _socket import socket as unix_socket

SOCKET_DIR = "/run/pycnm/cli"
MAGIC = b"pycnm-cli 1"

# (command, sub-command) pairs a daemon may run for the CLI.
HANDOFF = frozenset({
    ("network", "create"), ("network", "ls"), ("network", "inspect"), ("network", "rm"),
    ("sandbox", "create"), ("sandbox", "ls"), ("sandbox", "inspect"), ("sandbox", "rm"),
    ("endpoint", "create"), ("endpoint", "ls"), ("endpoint", "rm"),
    ("attach", None), ("detach", None),
})
SUBCOMMAND_DEST = {"network": "network_command", "sandbox": "sandbox_command",
                   "endpoint": "endpoint_command"}
# The environment that changes which store a Controller opens, beside --store: part of
# the key, so a CLI call whose environment differs from the daemon's runs by itself.
ETCD_ENV = ("PYCNM_ETCD_USER", "PYCNM_ETCD_PASSWORD", "PYCNM_ETCD_PASSWORD_FILE",
            "PYCNM_ETCD_CA", "PYCNM_ETCD_CERT", "PYCNM_ETCD_KEY", "PYCNM_LOCAL_STORE")
_ETCD_FILE_PARAMS = ("ca=", "cert=", "key=", "password_file=")
_VALUED = ("--store", "--host-ns", "--host-id")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def is_plain_name(text: str) -> bool:
    """Letters, digits, '_', '.', '-', starting with a letter or digit, at most 63: a host
    id that may become part of a file name."""
    return (0 < len(text) <= 63 and text[0].isascii() and text[0].isalnum()
            and all(c in _NAME_CHARS for c in text))


def identity(path: str) -> str:
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
        query = rest.partition("?")[2].partition("#")[0]
        files = [p.split("=", 1)[1] for p in query.split("&") if p.startswith(_ETCD_FILE_PARAMS)]
        files += [v for k, v in env.items() if k.endswith(("_CA", "_CERT", "_KEY", "_FILE"))]
        return all(v.startswith("/") and "%" not in v for v in files)
    return False  # memory:// lives in one process; anything else: the CLI says what


def host_key(store: str | None, host_ns: str | None, host_id: str | None
             ) -> tuple[str, str, str, str, tuple[str, ...]] | None:
    """The key of the daemon that would do exactly what this process would:
    (host netns, mount ns, host id, store URL, etcd settings); None when no daemon can
    (the CLI then runs the command itself, with its own errors)."""
    env = {k: os.environ[k] for k in ETCD_ENV if os.environ.get(k)}
    store = store or ""
    if not _store_is_portable(store, env) or "\0" in store \
            or not _store_is_portable(env.get("PYCNM_LOCAL_STORE", ""), {}):
        return None
    if host_ns and "/" not in host_ns:
        host_ns = f"/run/netns/{host_ns}"
    if host_ns is not None and not host_ns.startswith("/"):
        return None  # relative to the working directory
    try:
        netns = identity(host_ns or "/proc/thread-self/ns/net")
        mntns = identity("/proc/thread-self/ns/mnt")
    except (OSError, ValueError):
        return None
    name = host_id or (host_ns.rsplit("/", 1)[-1] if host_ns else gethostname())
    if not is_plain_name(name):
        return None
    etcd = tuple(f"{k}={v}" for k, v in sorted(env.items()) if "\0" not in v)
    return (netns, mntns, name, store, etcd)


def socket_path(key: tuple[str, str, str, str, tuple[str, ...]]) -> str:
    """The daemon's socket for ``key``: the host id (a plain name) and a checksum of the
    rest, so that no input becomes a path."""
    import zlib

    digest = zlib.crc32("\0".join([*key[:4], *key[4]]).encode(errors="surrogateescape"))
    return os.path.join(SOCKET_DIR, f"{key[2]}-{digest:08x}.sock")


def encode_request(key: tuple[str, str, str, str, tuple[str, ...]], argv: list[str]) -> bytes:
    fields = [*key[:4], str(len(key[4])), *key[4], *argv]
    return MAGIC + b"\n" + b"\0".join(f.encode(errors="surrogateescape") for f in fields)


def scan(words: list[str]) -> tuple[str | None, str | None, str | None, str, str | None] | None:
    """(store, host-ns, host-id, command, sub-command) of a plain command line, from its
    global options in their simple forms (``--store X``, ``--store=X``) and the
    environment; None for anything else (help, -v, --debug, abbreviations, no command),
    which the CLI parses and runs itself."""
    values: dict[str, str | None] = {
        "--store": os.environ.get("PYCNM_STORE"), "--host-ns": os.environ.get("PYCNM_HOST_NS"),
        "--host-id": os.environ.get("PYCNM_HOST_ID")}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-"):
            break
        name, eq, value = word.partition("=")
        if name in _VALUED:
            if not eq:
                i += 1
                if i >= len(words):
                    return None
                value = words[i]
            values[name] = value
        elif word != "--json":
            return None
        i += 1
    else:
        return None
    command = words[i]
    rest = words[i + 1:]
    if "-h" in rest or "--help" in rest:
        return None
    sub = None
    if command in SUBCOMMAND_DEST:
        if not rest or rest[0].startswith("-"):
            return None
        sub = rest[0]
    return values["--store"], values["--host-ns"], values["--host-id"], command, sub


def send(words: list[str]) -> int | None:
    """Have the host's daemon run ``words`` (argv without the program); print what it
    printed and return its exit code. None: no daemon serves this host and store, or it
    declined, or the line is not one to hand off (the caller runs it itself). Once the
    daemon has taken the request it is never run here as well: if the daemon goes away
    before answering, that is an error, not a second try."""
    scanned = scan(words)
    if scanned is None or scanned[3:] not in HANDOFF:
        return None
    key = host_key(*scanned[:3])
    if key is None:
        return None
    conn = unix_socket(AF_UNIX, SOCK_STREAM)
    try:
        try:
            conn.connect(socket_path(key))
        except OSError:
            return None  # no daemon (or not ours to use): do it here
        try:
            conn.sendall(encode_request(key, words))
            conn.shutdown(SHUT_WR)
        except OSError:
            return None  # it closed before reading: it ran nothing
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return _lost(f"lost the pycnm daemon while it ran the command ({exc.strerror})")
    finally:
        conn.close()
    return _replay(b"".join(chunks))


def _replay(reply: bytes) -> int | None:
    head, _, body = reply.partition(b"\n")
    if head == MAGIC + b" declined":
        return None
    words = head.split(b" ")
    if len(words) != 4 or words[:3] != [*MAGIC.split(b" "), b"exit"] or not words[3].isdigit():
        return _lost("the pycnm daemon stopped before it answered")
    at = 0
    while at < len(body):
        end = body.find(b"\n", at)
        stream, _, size = body[at:end].partition(b" ")
        if end < 0 or stream not in (b"1", b"2") or not size.isdigit():
            return _lost("the pycnm daemon's answer was cut short")
        data = body[end + 1:end + 1 + int(size)]
        out = sys.stdout if stream == b"1" else sys.stderr
        out.write(data.decode(errors="surrogateescape"))
        out.flush()  # in the order the command wrote them
        at = end + 1 + int(size)
    return int(words[3])


def _lost(what: str) -> int:
    print(f"Error: {what}; check the result with pycnm ... ls", file=sys.stderr)
    return 1


def eligible(args: object) -> bool:
    """Whether a daemon may run this parsed command line (the daemon's own check, after
    it parsed the request with the CLI's parser)."""
    command = getattr(args, "command", None)
    dest = SUBCOMMAND_DEST.get(command or "")
    pair = (command, getattr(args, dest, None) if dest else None)
    return (pair in HANDOFF and not getattr(args, "verbose", True)
            and not getattr(args, "debug", True) and not getattr(args, "netns", None))
