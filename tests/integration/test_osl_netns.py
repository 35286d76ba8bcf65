"""Making named namespaces (cnm.osl.netns) against the real kernel: work done meanwhile,
and nothing left behind when it fails."""

from __future__ import annotations

import os

import pytest

from cnm.osl.netns import create_named_netns, delete_named_netns, named_netns_path
from netns_fixtures.netns import unique_name

pytestmark = pytest.mark.root


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == path for line in mounts)


def test_work_done_meanwhile_runs_and_the_namespace_is_made() -> None:
    name = unique_name()
    ran: list[bool] = []
    try:
        path = create_named_netns(name, loopback_up=True, meanwhile=lambda: ran.append(True))
        assert ran == [True] and _mounted(path)
    finally:
        delete_named_netns(name)


def test_a_failure_meanwhile_removes_the_namespace_and_is_raised() -> None:
    name = unique_name()
    path = named_netns_path(name)

    def fail() -> None:
        raise PermissionError("cannot write the sandbox's files")

    try:
        with pytest.raises(PermissionError, match="sandbox's files"):
            create_named_netns(name, loopback_up=True, meanwhile=fail)
        assert not os.path.exists(path) and not _mounted(path)
    finally:
        delete_named_netns(name)


def test_the_ruleset_lock_is_the_namespace_itself_across_processes(netns) -> None:
    """Held here, it blocks another process asking through another path to the same
    namespace (/proc/PID/ns/net of a process inside), and leaves no lock file behind."""
    import subprocess
    import sys

    from cnm.osl.nft import LOCK_DIR, ruleset_lock

    ns = netns("lock")
    inside = ns.popen(["sleep", "30"])
    try:
        other_path = f"/proc/{inside.pid}/ns/net"
        probe = ("import fcntl, os, sys\n"
                 "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                 "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                 "except BlockingIOError:\n    print('held')\nelse:\n    print('free')\n")
        before = set(os.listdir(LOCK_DIR)) if os.path.isdir(LOCK_DIR) else set()
        with ruleset_lock(ns.path):
            held = subprocess.run([sys.executable, "-c", probe, other_path],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        free = subprocess.run([sys.executable, "-c", probe, other_path],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        after = set(os.listdir(LOCK_DIR)) if os.path.isdir(LOCK_DIR) else set()
    finally:
        inside.kill()
        inside.wait(timeout=10)
    assert (held, free) == ("held", "free")
    # Other runs may share LOCK_DIR: look for a file named after this namespace only.
    assert not [f for f in after - before if str(os.stat(ns.path).st_ino) in f]


def test_the_load_balancers_lock_is_the_rules_lock_and_a_thread_may_take_it_again(
        netns) -> None:
    """The load balancers' lock of a host namespace is its rules lock: no file per
    namespace; the thread holding it takes the rules lock again without waiting (the
    bridge driver does, making a balancer's leg), another thread waits."""
    import threading

    from cnm.osl import lbns
    from cnm.osl.nft import LOCK_DIR, ruleset_lock

    ns = netns("lblock")
    before = set(os.listdir(LOCK_DIR)) if os.path.isdir(LOCK_DIR) else set()
    other_got_it = threading.Event()

    def other() -> None:
        with ruleset_lock(ns.path):
            other_got_it.set()

    with lbns.lock(ns.path):
        with ruleset_lock(ns.path):  # the same thread again: no wait
            pass
        waiter = threading.Thread(target=other)
        waiter.start()
        assert not other_got_it.wait(0.5)  # another thread waits while it is held
    waiter.join(timeout=10)
    assert other_got_it.is_set()
    after = set(os.listdir(LOCK_DIR)) if os.path.isdir(LOCK_DIR) else set()
    assert not [f for f in after - before if str(os.stat(ns.path).st_ino) in f]


def _link_via_handle(path: str, name: str) -> None:
    """Make a veth pair (``name``, ``name``p) through the first handle opened to ``path``
    in this process."""
    from cnm.osl import iproute
    from cnm.osl.links import create_veth

    with iproute(path) as handle:
        create_veth(handle, name, f"{name}p")


def _links_in(name: str) -> str:
    import subprocess

    return subprocess.run(["ip", "-n", name, "-o", "link", "show"], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def test_sockets_kept_at_creation_serve_the_first_handle_and_act_inside() -> None:
    """The handle opened right after ``keep_sockets`` uses the sockets made inside by the
    creating thread (no visit): what it makes is in that namespace, not in this one."""
    from cnm.osl import netns as osl_netns

    name = unique_name()
    try:
        path = create_named_netns(name, loopback_up=True, keep_sockets=True)
        kept = osl_netns._born[path][1]
        _link_via_handle(path, "kept0")
        assert path not in osl_netns._born and all(s.fileno() == -1 for s in kept)
        assert "kept0" in _links_in(name)
        assert not os.path.exists("/sys/class/net/kept0")
    finally:
        delete_named_netns(name)


def test_deleting_a_namespace_closes_the_sockets_kept_for_it() -> None:
    from cnm.osl import netns as osl_netns

    name = unique_name()
    try:
        path = create_named_netns(name, keep_sockets=True)
        kept = osl_netns._born[path][1]
    finally:
        delete_named_netns(name)
    assert path not in osl_netns._born and all(s.fileno() == -1 for s in kept)


def test_sockets_kept_for_a_namespace_made_again_under_its_name_are_not_used() -> None:
    """Removed behind pycnm's back and made again by someone else: the first handle is
    opened in the new namespace, the old sockets are closed."""
    import subprocess

    from cnm.osl import netns as osl_netns

    name = unique_name()
    try:
        path = create_named_netns(name, keep_sockets=True)
        kept = osl_netns._born[path][1]
        subprocess.run(["ip", "netns", "delete", name], check=True, timeout=30)
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        _link_via_handle(path, "again0")
        assert all(s.fileno() == -1 for s in kept)
        assert "again0" in _links_in(name)
    finally:
        delete_named_netns(name)


def test_a_forked_child_does_not_use_its_parents_kept_sockets() -> None:
    from cnm.osl import netns as osl_netns

    name = unique_name()
    try:
        path = create_named_netns(name, keep_sockets=True)
        pid = os.fork()
        if pid == 0:  # the child: nothing kept; the parent's copies closed
            os._exit(0 if not osl_netns._born else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert path in osl_netns._born  # the parent's are still its own
    finally:
        delete_named_netns(name)
