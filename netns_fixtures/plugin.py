"""The pytest plugin: fixtures that hand out namespaces and always take them back, session
servers (a real dockerd, a real etcd), and a leak check that fails the test, and the
session, that left pycnm or fixture objects in the kernel.

Loaded through the ``pytest11`` entry point of the installed package (or with
``pytest_plugins = ["netns_fixtures.plugin"]``). Fixtures:

- ``netns``: factory, ``netns("role")`` -> a fresh ``Namespace`` (loopback up);
- ``host``: factory of ``Host`` namespaces (emulated machines), optionally with an uplink;
- ``outside``: factory, ``outside(host)`` -> an ``Outside`` namespace wired to ``host``;
- ``store_url``: a fresh embedded (SQLite) store URL for one test;
- ``docker_engine`` (package, once per engine): see ``netns_fixtures.docker``;
- ``etcd_server`` (session): see ``netns_fixtures.etcd``.

Every name is unique (``pt`` + 6 hex digits), and everything a test made is removed in
``finally``, whether the test passed or not. ``PYCNM_LEAK_CHECK=0`` turns the leak check off
for a developer whose machine runs other pycnm tests at the same time (their objects would
look like ours); CI always checks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netns_fixtures import leaks
from netns_fixtures.docker import docker_engine  # noqa: F401 - a package fixture
from netns_fixtures.lab.fixture import lab  # noqa: F401 - the lab fixture (topology files)
from netns_fixtures.netns import (
    Host,
    Namespace,
    Outside,
    delete_root_links_since,
    root_links_made,
    unique_name,
    wire_outside,
)
from netns_fixtures.vm.plugin import MARKER as KERNEL_MARKER
from netns_fixtures.vm.plugin import KernelFeatureTests

# Written separately: a checkout without it must still collect every other test.
with contextlib.suppress(ImportError):
    from netns_fixtures.etcd import etcd_server  # noqa: F401 - a session fixture

log = logging.getLogger(__name__)

MARKERS = (
    "root: needs root and real network namespaces",
    "docker: needs a real dockerd (started by the session fixture)",
    "etcd: needs a real etcd server (started by the session fixture)",
    KERNEL_MARKER,
)
_BASELINE = pytest.StashKey[set[str]]()
_BLAME = pytest.StashKey[dict[str, str]]()  # leaked object -> the test after which it showed


def _leak_check_on() -> bool:
    # Only root can see every namespace and nft table; PYCNM_LEAK_CHECK=0 opts out.
    return os.geteuid() == 0 and os.environ.get("PYCNM_LEAK_CHECK", "1") != "0"


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config.stash[_BLAME] = {}
    config.pluginmanager.register(KernelFeatureTests(config), "pycnm-kernel-features")
    if _leak_check_on():
        config.stash[_BASELINE] = leaks.snapshot()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    # Not root: tests that need the kernel cannot run, and a skipped test would pass for
    # one that ran, so a selection holding any of them is refused before anything runs.
    needs_root = [item.nodeid for item in items
                  if any(item.get_closest_marker(mark) for mark in ("root", "docker", "kernel"))]
    if needs_root:
        raise pytest.UsageError(
            f"{len(needs_root)} of the selected tests need root (network namespaces, "
            f"netlink, nftables, dockerd, the VM), e.g. {needs_root[0]}: run them as root "
            "(sudo bash scripts/test.sh), or select the rest with "
            "-m 'not root and not docker and not kernel'")


_KERNEL_FIXTURES = frozenset({"netns", "host", "outside", "docker_engine"})
_SHARED_MACHINE_HINT = ("(another pycnm run on this machine at the same time? its objects "
                        "look like ours: PYCNM_LEAK_CHECK=0 turns this check off)")


def _touches_kernel(item: pytest.Item) -> bool:
    # Tests that make kernel objects say so (a root or docker mark, or a namespace fixture);
    # checking only those keeps the check cheap and keeps other runs' objects from being
    # blamed on a unit test.
    return (any(item.get_closest_marker(mark) for mark in ("root", "docker"))
            or bool(_KERNEL_FIXTURES & set(getattr(item, "fixturenames", ()))))


@pytest.fixture(autouse=True)
def _pycnm_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test that touches the kernel must leave it as it found it; a leak is an error
    on that test."""
    if not _leak_check_on() or not _touches_kernel(request.node):
        yield
        return
    before = leaks.snapshot()
    yield
    leaked = leaks.new_objects(before)
    if leaked:
        blame = request.config.stash[_BLAME]
        for item in leaked:
            blame.setdefault(item, request.node.nodeid)
        pytest.fail("test left kernel objects behind: " + ", ".join(leaked) + "\n"
                    + _SHARED_MACHINE_HINT, pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything of pycnm's (or this run's fixtures') is still in the
    kernel that was not there when the session began."""
    config = session.config
    if _BASELINE not in config.stash:
        return
    leaked = leaks.new_objects(config.stash[_BASELINE])
    if not leaked:
        return
    blame = config.stash[_BLAME]
    lines = [f"  {item}" + (f"   (first seen after {blame[item]})" if item in blame else "")
             for item in leaked]
    hint = ("remove them with `pycnm cleanup` (pycnm's), `ip netns delete NAME` or "
            "`ip link delete NAME` (the fixtures') " + _SHARED_MACHINE_HINT)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "pycnm left kernel objects behind: the run FAILS", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
        reporter.write_line(hint)
    else:
        print("pycnm left kernel objects behind: the run FAILS", *lines, hint, sep="\n")
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- fixtures ----------------------------------------------------------------------------


def _remove(made: list[Namespace], mark: int) -> None:
    """Delete namespaces (newest first), then the root-namespace veth ends made since
    ``mark``; one failure does not stop the rest (the leak check reports what stays)."""
    for ns in reversed(made):
        try:
            ns.delete()
        except Exception:  # keep cleaning; the leak check will name what stays
            log.exception("could not delete namespace %s", ns.name)
    try:
        delete_root_links_since(mark)
    except Exception:  # noqa: BLE001
        log.exception("could not delete root-namespace test links")


@pytest.fixture
def netns() -> Iterator[Callable[..., Namespace]]:
    """Factory: ``netns("role", forwarding=False)`` -> a fresh ``Namespace`` with
    loopback up, deleted after the test (pass or fail)."""
    made: list[Namespace] = []
    mark = root_links_made()

    def make(role: str = "ns", *, forwarding: bool = False) -> Namespace:
        ns = Namespace(unique_name(), forwarding=forwarding)
        ns.role = role
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        _remove(made, mark)


@pytest.fixture
def host() -> Iterator[Callable[..., Host]]:
    """Factory of emulated machines: ``host("role")`` -> a ``Host`` (loopback up,
    forwarding on). With ``uplink=NS`` it is also wired to router/switch namespace NS
    (``address``, ``peer_address``, ``bridge``, ``gateway`` as in ``Host.connect``)."""
    made: list[Namespace] = []
    mark = root_links_made()

    def make(role: str = "host", *, uplink: Namespace | None = None,
             address: str | None = None, peer_address: str | None = None,
             bridge: str | None = None, gateway: str | None = None) -> Host:
        machine = Host(unique_name())
        machine.role = role
        made.append(machine)
        if uplink is not None:
            machine.connect(uplink, address, peer_address=peer_address, bridge=bridge,
                            gateway=gateway)
        return machine

    try:
        yield make
    finally:
        _remove(made, mark)


@pytest.fixture
def outside() -> Iterator[Callable[..., Outside]]:
    """Factory: ``outside(host, host_addr=None, outside_addr=None)`` -> an ``Outside``
    namespace ("the internet" of a NAT test) wired to ``host`` (a namespace, or None for
    the root namespace) by a veth; addresses default to a random /30 of 198.18.0.0/15.
    A host namespace without a default route gets one to the outside."""
    made: list[Namespace] = []
    mark = root_links_made()

    def make(host: Namespace | None, host_addr: str | None = None,
             outside_addr: str | None = None, *, default_route: bool = True) -> Outside:
        far = wire_outside(host, host_addr, outside_addr, default_route=default_route)
        made.append(far)
        return far

    try:
        yield make
    finally:
        _remove(made, mark)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh embedded store for one test."""
    return f"sqlite:///{tmp_path}/state.db"
