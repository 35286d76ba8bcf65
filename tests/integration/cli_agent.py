"""A ``pycnm agent`` for one store and host namespace, serving CLI hand-offs, for tests
and benchmarks that run the CLI both with and without the host's daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Agent:
    """The agent process and the socket it serves CLI calls on."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, socket_path: str,
                 start: int = 0) -> None:
        self.proc = proc
        self.log = log
        self.socket_path = socket_path
        self.start = start  # where this agent's lines begin in the log

    def output(self) -> str:
        with open(self.log, "rb") as handle:
            handle.seek(self.start)
            return handle.read().decode(errors="replace")[-4000:]

    def serving(self) -> bool:
        """Whether it said it runs and answers on its socket."""
        if "running" not in self.output():
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(self.socket_path)
            return True
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def socket_for(store: str, host_ns: str | None, host_id: str | None = None) -> str:
    """Where the agent for ``store`` and ``host_ns`` serves CLI calls (as the CLI finds
    it)."""
    from cnm.cli.handoff import host_key, socket_path

    key = host_key(store, host_ns, host_id)
    assert key is not None, f"no CLI hand-off is possible for store {store!r}"
    return socket_path(key)


@contextlib.contextmanager
def running_agent(store: str, host_ns: str, logdir: str | Path, *options: str,
                  timeout: float = 60) -> Iterator[Agent]:
    """Start ``pycnm --store STORE --host-ns HOST_NS agent OPTIONS``; yield once it serves
    CLI calls; stop it (SIGTERM, which waits for its queued link deletions) afterwards."""
    log = Path(logdir) / f"agent-{os.path.basename(host_ns)}.log"
    path = socket_for(store, host_ns)
    with open(log, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnm.cli", "--store", store, "--host-ns", host_ns, "agent",
             *options],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    agent = Agent(proc, log, path, start)
    try:
        deadline = time.monotonic() + timeout
        while not agent.serving():
            if proc.poll() is not None:
                raise AssertionError(f"the agent exited: {agent.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent did not serve {path} within {timeout} s: "
                                     f"{agent.output()}")
            time.sleep(0.05)
        yield agent
    finally:
        try:
            agent.stop()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
