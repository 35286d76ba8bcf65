"""The pytest plugin: fixtures that hand out namespaces and always take them back, and a
leak check that fails a test (and the session) that left pycnm objects in the kernel."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from netns_fixtures.leaks import new_leaks, pycnm_kernel_objects
from netns_fixtures.netns import Host, Namespace, unique_name, veth

# Servers for the session; each fixture fails by itself if its binary is missing.
with contextlib.suppress(ImportError):  # an incomplete checkout
    from netns_fixtures.etcd import etcd_server  # noqa: F401
with contextlib.suppress(ImportError):
    from netns_fixtures.docker import docker_engine  # noqa: F401

_SESSION_BASELINE = pytest.StashKey[list[str]]()
_SESSION_LEAKS = pytest.StashKey[list[str]]()


def _checking() -> bool:
    # PYCNM_LEAK_CHECK=0 turns the check off for a developer sharing the machine with other
    # runs (their objects would look like ours); CI always checks.
    return os.geteuid() == 0 and os.environ.get("PYCNM_LEAK_CHECK", "1") != "0"


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("root: needs root and real network namespaces",
                   "docker: needs a real dockerd (started by the session fixture)",
                   "etcd: needs a real etcd server (started by the session fixture)"):
        config.addinivalue_line("markers", marker)
    if _checking():
        config.stash[_SESSION_BASELINE] = pycnm_kernel_objects()
    config.stash[_SESSION_LEAKS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces and netlink")
    for item in items:
        if any(item.iter_markers(name) for name in ("root", "docker", "etcd")):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_leaked_kernel_objects(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each root test must leave the kernel as it found it."""
    if not _checking() or not any(request.node.iter_markers("root")):
        yield
        return
    before = pycnm_kernel_objects()
    yield
    leaked = new_leaks(before, pycnm_kernel_objects())
    if leaked:
        request.config.stash[_SESSION_LEAKS].extend(leaked)
        pytest.fail(f"test left kernel objects behind: {', '.join(leaked)}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _SESSION_BASELINE not in config.stash:
        return
    leaked = new_leaks(config.stash[_SESSION_BASELINE], pycnm_kernel_objects())
    if leaked:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "pycnm left kernel objects behind", red=True)
            for item in leaked:
                reporter.write_line(f"  {item}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def netns() -> Iterator[Callable[..., Namespace]]:
    """Factory: ``netns("role")`` -> a fresh Namespace, removed after the test."""
    made: list[Namespace] = []

    def make(role: str = "ns", *, forwarding: bool = False) -> Namespace:
        ns = Namespace(unique_name(), forwarding=forwarding)
        ns.role = role  # type: ignore[attr-defined]
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.delete()


@pytest.fixture
def host() -> Iterator[Callable[..., Host]]:
    """Factory of emulated machines (namespaces with forwarding on)."""
    made: list[Host] = []

    def make(role: str = "host") -> Host:
        h = Host(unique_name())
        h.role = role  # type: ignore[attr-defined]
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in reversed(made):
            h.delete()


@pytest.fixture
def outside(netns: Callable[..., Namespace]) -> Callable[..., Namespace]:
    """Factory: ``outside(host_ns, host_addr, outside_addr)`` wires a far-end namespace
    (the "internet" of a NAT test) to a host namespace with a veth."""

    def make(host_ns: Namespace, host_addr: str = "198.18.0.1/24",
             outside_addr: str = "198.18.0.2/24") -> Namespace:
        far = netns("outside")
        veth(host_ns, unique_name(), far, "eth0", host_addr, outside_addr)
        return far

    return make


@pytest.fixture
def store_url(tmp_path) -> str:
    """A fresh embedded store for one test."""
    return f"sqlite:///{tmp_path}/state.db"
