"""A read-only /proc/sys, as Docker gives a managed plugin: a sysctl pycnm must set fails
with one sentence that says what to set on the host, not with an internal error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SNIPPET = """
import sys
from cnm.errors import KernelError
from cnm.osl.netns import read_sysctl, write_sysctl
before = read_sysctl(sys.argv[1], "net/ipv4/ip_forward")
try:
    write_sysctl(sys.argv[1], "net/ipv4/ip_forward", "0" if before == "1" else "1")
except KernelError as exc:
    print(exc)
else:
    print("written")
"""


def test_read_only_proc_sys_is_one_sentence(netns: Callable[..., Any]) -> None:
    ns = netns("plugin")
    # A mount namespace of its own with /proc/sys read-only (what runc does to plugins);
    # the sysctl is the emulated host's, never this machine's.
    script = ("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
              'exec "$0" -c "$1" "$2"')
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         sys.executable, SNIPPET, ns.path],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("cannot set net.ipv4.ip_forward="), message
    assert "read-only" in message and "sysctl -w net.ipv4.ip_forward=" in message
    assert "\n" not in message
