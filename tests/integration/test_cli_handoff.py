"""The CLI handing its commands to the host's running pycnm process (``cnm.cli.handoff``,
``cnm.cli.daemon``): the same words on stdout and stderr and the same exit codes as a CLI
working alone; the daemon's socket is root's alone; whatever reaches it that a pycnm CLI
would not send is refused and runs nothing; a dead daemon's socket costs the CLI nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys

import pytest

from cnm.cli import handoff
from tests.integration.bridge_helpers import unique
from tests.integration.cli_agent import REPO, running_agent

pytestmark = pytest.mark.root

# A CLI call that reports, after its own output, whether it imported the Controller (a
# CLI that handed its command off never does).
REPORTING = ("import sys\nfrom cnm.cli import main\ncode = main(sys.argv[1:])\n"
             "sys.stdout.flush()\nsys.stderr.write('controller imported: %s\\n' % "
             "('cnm.controller' in sys.modules))\nsys.exit(code)\n")


def cli(store: str, host: str, *args: str, reporting: bool = False
        ) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "-c", REPORTING] if reporting else [sys.executable, "-m", "cnm.cli"]
    return subprocess.run([*head, "--store", store, "--host-ns", host, *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def ask(path: str, payload: bytes) -> tuple[int, list[tuple[int, str]]] | None:
    """Send raw bytes to the daemon's socket; None if it declined, else the exit code and
    the output records of its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(path)
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\n")
    if head == b"pycnm-cli 1 declined":
        return None
    assert head.startswith(b"pycnm-cli 1 exit "), data[:200]
    records = []
    while body:
        line, _, body = body.partition(b"\n")
        stream, size = (int(x) for x in line.split())
        records.append((stream, body[:size].decode()))
        body = body[size:]
    return int(head.split()[-1]), records


def request(store: str, host: str, argv: list[str]) -> bytes:
    key = handoff.host_key(store, host, None)
    assert key is not None
    return handoff.encode_request(key, argv)


HEX = re.compile(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{12}\b|\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def script(net: str, a: str, b: str) -> list[list[str]]:
    """A session of commands, good and bad, each of which may be handed off."""
    return [
        ["network", "create", net, "--subnet", "10.93.0.0/24"],
        ["network", "create", net, "--subnet", "10.93.1.0/24"],  # the name is taken
        ["network", "create", "x1", "-o", "novalue"],  # exit 2: KEY=VALUE
        ["network", "create", "bad name!"],
        ["network", "ls"],
        ["sandbox", "create", a],
        ["sandbox", "create", b, "--hostname", "db", "--dns", "10.93.0.53"],
        ["sandbox", "create", a],  # taken
        ["attach", net, a],
        ["attach", net, b, "--ip", "10.93.0.7", "--json"],
        ["attach", net, a],  # already attached
        ["attach", net, "ghost"],
        ["attach", net, b, "-p", "70000:80"],
        ["endpoint", "ls"],
        ["--json", "endpoint", "ls"],
        ["endpoint", "ls", "--json", "--network", net],
        ["sandbox", "ls"],
        ["sandbox", "inspect", a, b],
        ["network", "inspect", net, "ghost"],
        ["network", "rm", net],  # busy
        ["detach", net, b],
        ["detach", net, b],  # not attached any more
        ["endpoint", "create", net, "spare", "--ip", "10.93.0.99"],
        ["endpoint", "rm", f"{net}/spare", f"{net}/ghost"],
        ["sandbox", "rm", a, b, "ghost"],
        ["network", "rm", net],
        ["network", "ls", "--json"],
    ]


def normalised(result: subprocess.CompletedProcess[str]) -> tuple[int, list[str], str]:
    """Exit code, stdout and stderr with ids, MACs and times blanked; stdout's lines
    sorted (lists follow the order of random ids)."""
    def clean(text: str) -> str:
        return STAMP.sub("TIME", HEX.sub("ID", text))

    return result.returncode, sorted(clean(result.stdout).splitlines()), clean(result.stderr)


def test_a_session_prints_and_exits_alike_with_and_without_the_daemon(netns, tmp_path) -> None:
    names = (unique("n"), unique("s"), unique("s"))
    sessions = []
    for mode in ("alone", "daemon"):
        host = netns(f"host-{mode}")
        store = f"sqlite:///{tmp_path}/{mode}.db"
        outcomes = []
        try:
            if mode == "daemon":  # no DNS: the comparison is of the CLI alone
                with running_agent(store, host.name, tmp_path, "--no-dns"):
                    outcomes = [normalised(cli(store, host.name, *c)) for c in script(*names)]
            else:
                outcomes = [normalised(cli(store, host.name, *c)) for c in script(*names)]
        finally:
            cli(store, host.name, "cleanup")
        sessions.append(outcomes)
    alone, daemon = sessions
    for command, one, other in zip(script(*names), alone, daemon, strict=True):
        assert one == other, f"pycnm {' '.join(command)}"
    # The session did what it says: successes and refusals both.
    codes = [code for code, _, _ in alone]
    assert codes.count(0) >= 15 and 2 in codes and 1 in codes


def test_a_handed_off_command_never_imports_the_controller(netns, store_url, tmp_path) -> None:
    host = netns("host")
    net = unique("n")
    try:
        with running_agent(store_url, host.name, tmp_path):
            created = cli(store_url, host.name, "network", "create", net, reporting=True)
            assert created.returncode == 0
            assert created.stderr.splitlines()[-1] == "controller imported: False"
            listed = cli(store_url, host.name, "network", "ls", reporting=True)
            assert net in listed.stdout and listed.stderr.endswith("imported: False\n")
            # -v logs in the CLI's own process: not handed off, and says what it did.
            verbose = cli(store_url, host.name, "-v", "network", "ls", reporting=True)
            assert net in verbose.stdout
            assert verbose.stderr.splitlines()[-1] == "controller imported: True"
        # No daemon: the same command runs here.
        alone = cli(store_url, host.name, "network", "ls", reporting=True)
        assert net in alone.stdout and alone.stderr.endswith("imported: True\n")
    finally:
        cli(store_url, host.name, "cleanup")


def test_the_socket_is_roots_alone(netns, store_url, tmp_path) -> None:
    host = netns("host")
    with running_agent(store_url, host.name, tmp_path) as agent:
        info = os.lstat(agent.socket_path)
        assert stat.S_ISSOCK(info.st_mode) and info.st_uid == 0
        assert stat.S_IMODE(info.st_mode) == 0o600
        folder = os.lstat(handoff.SOCKET_DIR)
        assert folder.st_uid == 0 and stat.S_IMODE(folder.st_mode) == 0o700
        # Another user cannot even reach it.
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n"
                 "    print('refused')\nelse:\n    print('connected')\n")
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 sys.executable, "-c", probe, agent.socket_path],
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == "refused", result.stderr


def test_what_a_cli_would_not_send_is_refused_and_runs_nothing(netns, store_url,
                                                               tmp_path) -> None:
    host = netns("host")
    net, sb = unique("n"), unique("s")
    other_store = f"sqlite:///{tmp_path}/other.db"
    base = ["--store", store_url, "--host-ns", host.name]
    try:
        with running_agent(store_url, host.name, tmp_path) as agent:
            assert cli(store_url, host.name, "network", "create", net).returncode == 0
            assert cli(store_url, host.name, "sandbox", "create", sb).returncode == 0
            good = request(store_url, host.name, [*base, "network", "rm", "ghost"])
            store_bytes = store_url.encode()
            refused = [
                b"", b"not a request", b'{"argv": ["network", "ls"]}',
                good.replace(b"pycnm-cli 1", b"pycnm-cli 7"),
                good.replace(b"\0network\0", b"\0network\0\0"),  # an empty word: argparse
                # the count of etcd settings after the store: not a number; too many
                good.replace(store_bytes + b"\0" + b"0\0", store_bytes + b"\0" + b"x\0"),
                good.replace(store_bytes + b"\0" + b"0\0", store_bytes + b"\0" + b"3\0"),
                # not a command a daemon runs: the network, the sandbox stay
                request(store_url, host.name, [*base, "cleanup"]),
                request(store_url, host.name, [*base, "reconcile"]),
                request(store_url, host.name, [*base, "sandbox", "exec", sb, "--", "true"]),
                request(store_url, host.name, [*base, "lab", "down", "x"]),
                request(store_url, host.name, [*base, "--debug", "network", "rm", net]),
                request(store_url, host.name, [*base, "-v", "network", "rm", net]),
                request(store_url, host.name, [*base, "sandbox", "create", "z1", "--netns",
                                               "/proc/self/ns/net"]),
                # another store or host id than the key it came with
                request(store_url, host.name, ["--store", other_store, "--host-ns", host.name,
                                               "network", "rm", net]),
                request(store_url, host.name, [*base, "--host-id", "elsewhere",
                                               "network", "rm", net]),
                # the key of a host this daemon does not serve
                request(other_store, host.name, ["--store", other_store, "--host-ns",
                                                 host.name, "network", "ls"]),
                # not even argparse would take it
                request(store_url, host.name, [*base, "network", "rm"]),
            ]
            for payload in refused:
                assert ask(agent.socket_path, payload) is None, payload[:200]
            # More than 1 MiB: the daemon stops reading, declines and hangs up.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                assert ask(agent.socket_path, good + b"x" * (1 << 20)) is None
            listed = json.loads(cli(store_url, host.name, "--json", "network", "ls").stdout)
            assert [n["Name"] for n in listed] == [net]
            assert os.path.exists(f"/run/netns/pcsb-{sb}")
            # ... and the daemon still answers a good request, with the CLI's own words; a
            # value is a value, never syntax.
            assert ask(agent.socket_path, good) == (
                1, [(2, "Error: no network named or with id 'ghost'\n")])
            shell = request(store_url, host.name, [*base, "network", "rm", "$(reboot); rm -rf /"])
            assert ask(agent.socket_path, shell) == (
                1, [(2, "Error: no network named or with id '$(reboot); rm -rf /'\n")])
            assert agent.proc.poll() is None
    finally:
        cli(store_url, host.name, "cleanup")


def test_a_dead_daemons_socket_leaves_the_cli_working_and_a_new_daemon_takes_it(
        netns, store_url, tmp_path) -> None:
    host = netns("host")
    net = unique("n")
    try:
        with running_agent(store_url, host.name, tmp_path) as agent:
            agent.stop(signal.SIGKILL)
            assert os.path.exists(agent.socket_path)  # left behind
            made = cli(store_url, host.name, "network", "create", net, reporting=True)
            assert made.returncode == 0 and made.stderr.endswith("imported: True\n")
        with running_agent(store_url, host.name, tmp_path) as agent:
            listed = cli(store_url, host.name, "network", "ls", reporting=True)
            assert net in listed.stdout and listed.stderr.endswith("imported: False\n")
            # A second daemon for the same host and store leaves the first one serving.
            (tmp_path / "second").mkdir()
            with running_agent(store_url, host.name, tmp_path / "second") as second:
                pass
            assert "another pycnm process serves" in second.output()
            assert ask(agent.socket_path, request(store_url, host.name, [
                "--store", store_url, "--host-ns", host.name, "network", "ls"])) is not None
        assert not os.path.exists(agent.socket_path)  # an orderly stop removes it
    finally:
        cli(store_url, host.name, "cleanup")


def test_a_daemon_removes_sockets_no_daemon_answers_on_any_more(netns, store_url,
                                                                 tmp_path) -> None:
    host = netns("host")
    os.makedirs(handoff.SOCKET_DIR, mode=0o700, exist_ok=True)
    dead = [os.path.join(handoff.SOCKET_DIR, f"{unique('ptstale')}-00000000.sock")
            for _ in range(2)]
    for path in dead:  # a socket file nobody listens on, as a SIGKILLed daemon leaves
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(path)
    old = os.stat(dead[0]).st_mtime - 3600
    os.utime(dead[0], (old, old))  # dead for an hour; dead[1] only just made
    try:
        with running_agent(store_url, host.name, tmp_path, "--no-dns") as agent:
            assert not os.path.exists(dead[0])
            assert os.path.exists(dead[1])  # too young to tell from a daemon starting up
            assert os.path.exists(agent.socket_path)
    finally:
        for path in dead:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
