"""Bad input gets one clear sentence and leaves no kernel or store debris."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from cnm.controller import Controller
from cnm.errors import CNMError, Conflict, InvalidOption, NotFound
from tests.integration.bridge_helpers import unique

# Sandbox names this module makes start with OURS: its snapshots look at those namespaces
# only (other runs on the machine make and remove sandboxes of their own meanwhile).
OURS = unique("be")[:6]

pytestmark = pytest.mark.root


@pytest.fixture
def ctl(netns, store_url) -> Iterator[Controller]:
    host = netns("host")
    controller = Controller(store_url, host_ns=host.path)
    controller.test_host = host  # type: ignore[attr-defined]
    try:
        yield controller
    finally:
        controller.cleanup_all()
        controller.close()


def snapshot(ctl: Controller) -> tuple:
    host = ctl.test_host  # type: ignore[attr-defined]
    # Names and addresses, not flags: a new veth's carrier settles a moment after join.
    links = sorted(host.links())
    addrs = sorted(host.addresses())
    rules = host.run(["nft", "list", "ruleset"]).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    keys = sorted(e.key for e in ctl.store.list(""))
    sandboxes = sorted(line for line in spaces.splitlines() if line.startswith("pcsb-" + OURS))
    # Allocations, not raw IPAM records: a failed attempt may move IPAM's cursor.
    held = sorted((p.id, sorted(map(str, ctl.ipam.allocated(p.id))))
                  for p in ctl.ipam.list_pools())
    return links, addrs, rules, sandboxes, keys, held


def one_sentence(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert len(message) < 300


CASES: list[tuple[str, type[CNMError], Callable[[Controller], object], str]] = [
    ("unknown network", NotFound, lambda c: c.network("nosuchnet"), "nosuchnet"),
    ("unknown sandbox", NotFound, lambda c: c.sandbox("nosuchsb"), "nosuchsb"),
    ("garbage subnet", InvalidOption,
     lambda c: c.new_network(unique("n"), subnet="10.1.0.0/33"), "10.1.0.0/33"),
    ("host bits", InvalidOption,
     lambda c: c.new_network(unique("n"), subnet="10.1.0.5/24"), "10.1.0.0/24"),
    ("gateway outside", InvalidOption,
     lambda c: c.new_network(unique("n"), subnet="10.1.0.0/24", gateway="10.2.0.1"), "10.2.0.1"),
    ("bad bridge name", InvalidOption,
     lambda c: c.new_network(unique("n"), subnet="10.1.0.0/24",
                             options={"com.docker.network.bridge.name": "bad/name"}), "bad/name"),
    ("too long bridge name", InvalidOption,
     lambda c: c.new_network(unique("n"), subnet="10.1.0.0/24",
                             options={"bridge_name": "a" * 16}), "aaaa"),
    ("bad mtu", InvalidOption,
     lambda c: c.new_network(unique("n"), options={"mtu": "jumbo"}), "jumbo"),
    ("mtu out of range", InvalidOption,
     lambda c: c.new_network(unique("n"), options={"mtu": "70000"}), "70000"),
    ("bad bool", InvalidOption,
     lambda c: c.new_network(unique("n"), options={"icc": "maybe"}), "maybe"),
    ("unknown option", InvalidOption,
     lambda c: c.new_network(unique("n"), options={"colour": "blue"}), "colour"),
    ("unknown driver", InvalidOption,
     lambda c: c.new_network(unique("n"), driver="warp"), "warp"),
    ("bad network name", InvalidOption, lambda c: c.new_network("bad name"), "bad name"),
    ("bad sandbox name", InvalidOption, lambda c: c.new_sandbox("../etc"), "../etc"),
    ("adopt a non-namespace", NotFound,
     lambda c: c.new_sandbox(unique(OURS + "s"), netns_path="/etc/hostname"), "/etc/hostname"),
]


@pytest.mark.parametrize(("what", "error", "action", "mentions"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(ctl: Controller, what: str, error: type[CNMError],
                                      action: Callable[[Controller], object],
                                      mentions: str) -> None:
    before = snapshot(ctl)
    with pytest.raises(error) as caught:
        action(ctl)
    one_sentence(str(caught.value))
    assert mentions in str(caught.value)
    assert snapshot(ctl) == before


def test_overlapping_subnet_is_refused_and_changes_nothing(ctl: Controller) -> None:
    ctl.new_network(unique("n"), subnet="10.80.0.0/16")
    before = snapshot(ctl)
    for subnet in ("10.80.5.0/24", "10.0.0.0/8", "10.80.0.0/16"):
        with pytest.raises(Conflict) as caught:
            ctl.new_network(unique("n"), subnet=subnet)
        one_sentence(str(caught.value))
    assert snapshot(ctl) == before


def test_endpoint_errors_change_nothing(ctl: Controller) -> None:
    net = ctl.new_network(unique("n"), subnet="10.81.0.0/24")
    sb = ctl.new_sandbox(unique(OURS + "s"))
    ep = net.create_endpoint("first", ip="10.81.0.10")
    ep.join(sb)
    before = snapshot(ctl)
    bad = [
        (InvalidOption, lambda: net.create_endpoint(unique(OURS + "e"), ip="10.99.0.1")),
        (Conflict, lambda: net.create_endpoint(unique(OURS + "e"), ip="10.81.0.10")),
        (Conflict, lambda: net.create_endpoint("first")),
        (InvalidOption, lambda: net.create_endpoint(unique(OURS + "e"), mac="01:00:5e:00:00:01")),
        (InvalidOption, lambda: net.create_endpoint(unique(OURS + "e"), mac="zz:zz")),
        (CNMError, lambda: net.delete()),
        (CNMError, lambda: ep.delete()),
    ]
    for error, action in bad:
        with pytest.raises(error) as caught:
            action()
        one_sentence(str(caught.value))
        assert snapshot(ctl) == before


def test_failed_driver_step_rolls_back_allocations(ctl: Controller) -> None:
    # A user-named bridge that exists as something else makes the driver fail late,
    # after IPAM handed out the pool and gateway: both must be given back.
    host = ctl.test_host  # type: ignore[attr-defined]
    host.run(["ip", "link", "add", "ptclash", "type", "veth", "peer", "name", "ptclash1"],
             check=True)
    before = snapshot(ctl)
    with pytest.raises(Conflict) as caught:
        ctl.new_network(unique("n"), subnet="10.82.0.0/24", options={"bridge_name": "ptclash"})
    assert "ptclash" in str(caught.value)
    assert snapshot(ctl) == before
    ctl.new_network(unique("n"), subnet="10.82.0.0/24")  # the subnet is free again
