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
