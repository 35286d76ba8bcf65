"""``pycnm plugin serve`` as a real process for the end-to-end tests, and a raw client
for its socket (what Docker itself sends)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnm.store import open_store
from netns_fixtures.vm import time_factor

REPO = Path(__file__).resolve().parents[2]
SOCKET = "/run/docker/plugins/pycnm.sock"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def call_socket(call: str, body: bytes, path: str = SOCKET) -> tuple[int, dict[str, Any]]:
    """POST a raw body straight to the plugin's socket, as Docker would."""
    conn = UnixHTTP(path)
    try:
        conn.request("POST", f"/{call}", body=body,
                     headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/vnd.docker.plugins.v1+json"
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def answers(path: str = SOCKET) -> bool:
    """Whether a plugin answers Docker's handshake on ``path``."""
    with contextlib.suppress(OSError):
        return call_socket("Plugin.Activate", b"", path)[0] == 200
    return False


@dataclass
class Plugin:
    """One ``pycnm plugin serve`` process on ``socket`` with its own store and log."""

    store_url: str
    log_path: Path
    socket: str = SOCKET
    host_id: str | None = None
    local_store: str | None = None  # beside an etcd store: where the host's records live
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # more flags for `plugin serve`
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        # A test owns the plugin it talks to: another one answering on the socket would
        # be mistaken for ours below, and its store would be checked instead of ours.
        if answers(self.socket):
            raise AssertionError(f"another plugin already serves {self.socket}: stop it first")
        argv = [sys.executable, "-m", "cnm.cli", "--store", self.store_url,
                *(["--local-store", self.local_store] if self.local_store else []),
                *(["--host-id", self.host_id] if self.host_id else []),
                "plugin", "serve", "--socket", self.socket, *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
            )
        self.starts += 1
        limit = 30 * time_factor()  # stretched under the VM's emulation
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the plugin exited at start:\n{self.tail()}")
            if answers(self.socket):
                return
            time.sleep(0.05)
        raise AssertionError(f"the plugin did not answer within {limit:.0f} s:\n{self.tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; SIGKILL (and a raise) if it hangs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @contextlib.contextmanager
    def serving(self) -> Iterator[Plugin]:
        """Started, and stopped cleanly (exit 0, socket removed) however the body ends;
        what the store still holds afterwards is removed from the kernel too."""
        self.start()
        try:
            yield self
        finally:
            try:
                if self.running():
                    assert self.stop() == 0, self.tail()
                assert not os.path.exists(self.socket), "the plugin left its socket behind"
            finally:
                forget_everything(self.store_url, self.host_id, self.local_store)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def store_snapshot(self) -> list[tuple[str, str]]:
        store = open_store(self.store_url)
        try:
            return sorted((e.key, json.dumps(e.value, sort_keys=True)) for e in store.list(""))
        finally:
            store.close()


def forget_everything(store_url: str, host_id: str | None = None,
                      local_store: str | None = None) -> None:
    """Remove what a plugin's store still has for its host (after a test failed half-way)."""
    from cnm.controller import Controller

    with Controller(store_url, local_store=local_store, host_id=host_id,
                    reconcile=False) as ctl:
        ctl.cleanup_all()
