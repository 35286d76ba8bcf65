"""Children that get SIGKILL when the thread that started them goes, with no Python code
run between fork and exec.

A ``preexec_fn`` runs Python in the child of a process that may have other threads (a
test session's watch threads, the VM's); a lock one of them held at the fork (the
allocator's, the dynamic loader's) stays held in the child for good, which then hangs or
aborts before it execs. CI saw both: a lab agent that never wrote a line, and an etcd
that died of SIGABRT as it restarted. util-linux's ``setpriv`` sets the parent-death
signal and execs the command instead; the signal survives the exec (and ``ip netns exec``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the thread that started it ends (start
    long-lived children from the main thread)."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
