"""Fixtures of the end-to-end tests: the engine with its own client (each engine in turn),
one ``pycnm plugin serve`` on Docker's socket for the whole package (gone when the e2e
tests are done), and unique names that each test's containers and networks take and give
back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netns_fixtures.docker import DockerEngine
from tests.e2e.docker_client import Docker, Names
from tests.e2e.plugin_process import SOCKET, Plugin, answers


@pytest.fixture(scope="package")
def docker(docker_engine: DockerEngine) -> Docker:
    """The package's dockerd (each engine in turn: netns_fixtures.docker) and its client."""
    return Docker(docker_engine, docker_engine.image)


@pytest.fixture(scope="package")
def plugin(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """``pycnm plugin serve`` on /run/docker/plugins/pycnm.sock with a store of its own,
    owned by this test run (a test may stop, kill and start it; it is running again when
    the test ends): fails if another process already serves that socket."""
    if answers(SOCKET):
        pytest.fail(f"another plugin already serves {SOCKET}: stop it first")
    workdir = tmp_path_factory.mktemp("pycnm-plugin")
    with Plugin(f"sqlite://{workdir}/state.db", workdir / "plugin.log").serving() as served:
        yield served


@pytest.fixture
def names(docker: Docker, plugin: Plugin) -> Iterator[Names]:
    """Unique names for one test's containers and networks, removed when it ends."""
    made = Names()
    try:
        yield made
    finally:
        made.remove(docker)
