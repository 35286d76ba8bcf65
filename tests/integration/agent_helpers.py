"""What the test hosts that run a ``pycnm agent`` process share: polling for a condition,
and the agent's log and stop."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable
from typing import TypeVar

from tests.integration.overlay_lab import wait_for as poll

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """overlay_lab's poll, with the description third (as the agents' tests call it)."""
    return poll(condition, timeout, interval=interval, what=what)


class RunsAgent:
    """A test host running one ``pycnm agent`` at a time (``agent``), which logs to
    ``agent_log``; the dataclass that inherits this declares both."""

    agent: subprocess.Popen | None
    agent_log: str

    def output(self) -> str:
        """The end of the agent's log."""
        with contextlib.suppress(OSError), open(self.agent_log) as handle:
            return handle.read()[-6000:]
        return ""

    def logged(self, proc: subprocess.Popen, text: str) -> bool:
        """Whether the agent ``proc`` has logged ``text``; fails if it exited."""
        if proc.poll() is not None:
            raise AssertionError(f"the agent exited: {self.output()}")
        return text in self.output()

    def stop_agent(self, sig: int = signal.SIGTERM) -> int:
        proc = self.agent
        assert proc is not None
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        self.agent = None
        return code
