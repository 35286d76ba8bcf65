"""The pytest fixture ``lab``: topology files as test set-ups.

    def test_bridge(lab):
        handle = lab("labs/01-bridge/lab.yaml")         # built; removed after the test
        assert all(o.passed for o in handle.check())
        assert "10.1.0.1" in handle.exec("c1", ["ip", "route"]).stdout

Who does what: the fixture resolves the path (as given, else from pytest's rootdir), builds
the lab in this process (its etcd and agents, if any, die with the test process) and, in
``finally``, takes down every lab it built, whether the test passed or not. ``name=``
builds the file under another lab name, so tests never collide with a learner's lab.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netns_fixtures.lab.handle import Lab, up

log = logging.getLogger(__name__)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """Factory: ``lab(path, name=None)`` -> a ``Lab`` that is up."""
    made: list[Lab] = []

    def make(path: str | Path, *, name: str | None = None) -> Lab:
        where = Path(path)
        if not where.is_absolute() and not where.exists():
            where = Path(request.config.rootpath) / where
        handle = up(where, name=name, progress=log.info, detach=False)
        made.append(handle)
        return handle

    try:
        yield make
    finally:
        for handle in reversed(made):
            try:
                handle.down()
            except Exception:  # keep removing the others; the leak check names what stays
                log.exception("could not take lab %s down", handle.name)
