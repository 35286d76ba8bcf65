"""Several overlays over hosts that take part in different subsets of them: each host's
VTEPs hold entries for exactly the remote endpoints of the overlays it is in, and a host
has nothing at all (no namespace, no entry) for an overlay it is not in.

    overlay a: h1 h2 h3      overlay b: h1 h2      overlay c: h2 h3

Real namespaces, a real etcd, one ``pycnm agent`` process per emulated host (every agent
sees every overlay's endpoint events: the test proves it programs only its own). The
full-size measurement (10 overlays x 3 hosts x 100 endpoints, agent CPU per event) is
``bench/bench_overlay_scale.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cnm.osl.netns import list_named_netns
from drivers.overlay.dataplane import Entries, Remote
from tests.integration.overlay_lab import Host, OverlayLab, overlay_lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

UNDERLAYS = {"1": "172.31.1.0/24", "2": "192.168.1.0/24", "3": "172.31.3.0/24"}
MEMBERS = {"a": ("1", "2", "3"), "b": ("1", "2"), "c": ("2", "3")}
SUBNETS = {"a": "10.61.0.0/24", "b": "10.62.0.0/24", "c": "10.63.0.0/24"}
PER_HOST = 2  # endpoints per host and overlay


@pytest.fixture
def lab(etcd_server: Any) -> Iterator[OverlayLab]:
    with overlay_lab(etcd_server.url, lease_ttl=5.0) as lab:
        yield lab


def expected(lab: OverlayLab, host: Host, overlay: str,
             published: dict[tuple[str, str], list[Remote]]) -> Entries:
    """The model: one FDB and one neighbour entry per endpoint of the other members."""
    return Entries.of(r for (ov, key), remotes in published.items()
                      if ov == overlay and lab.hosts[key] is not host for r in remotes)


def test_vtep_entries_follow_only_the_overlays_a_host_takes_part_in(lab: OverlayLab) -> None:
    hosts = {key: lab.add_host(key, subnet) for key, subnet in UNDERLAYS.items()}
    for host in hosts.values():
        lab.start_agent(host)
    controllers = {key: lab.controller(host, reconcile=False) for key, host in hosts.items()}
    try:
        names = {ov: f"{ov}{lab.tag}" for ov in MEMBERS}
        nets: dict[tuple[str, str], Any] = {}
        for ov, members in MEMBERS.items():
            for key in members:
                nets[ov, key] = controllers[key].new_network(
                    f"scale{ov}", "overlay", subnet=SUBNETS[ov], options={"overlay": names[ov]})
        vnis = {ov: lab.vni_of(names[ov]) for ov in MEMBERS}
        published: dict[tuple[str, str], list[Remote]] = {k: [] for k in nets}
        for key, host in hosts.items():  # each sandbox joins every overlay of its host
            for n in range(PER_HOST):
                sb = controllers[key].new_sandbox(f"s{n}h{key}{lab.tag}")
                for ov in (ov for ov, members in MEMBERS.items() if key in members):
                    ep = nets[ov, key].create_endpoint(sb.name)
                    ep.join(sb)
                    published[ov, key].append(Remote(
                        mac=ep.record.mac, vtep=host.underlay,
                        ip=ep.record.address.split("/")[0], ip6=None))

        def converged() -> bool:
            """True once every VTEP matches the model; fails at once on an entry outside
            it (the agents' 30 s resync would hide a leak from a check at the end only)."""
            done = True
            for ov, key in nets:
                now, want = lab.vtep_entries(hosts[key], vnis[ov]), expected(
                    lab, hosts[key], ov, published)
                extra = (now.fdb - want.fdb, now.flood - want.flood, now.neigh - want.neigh)
                assert not any(extra), f"h{key}'s VTEP of overlay {ov} holds {extra}"
                done = done and now == want
            return done

        wait_for(converged, 30, what="every VTEP to hold its overlay's remote endpoints")
        for key, host in hosts.items():
            for ov, members in MEMBERS.items():
                entries = lab.vtep_entries(host, vnis[ov]) if key in members else None
                if entries is not None:  # exactly the model, nothing from other overlays
                    remote_eps = (len(MEMBERS[ov]) - 1) * PER_HOST
                    assert len(entries.fdb) == len(entries.neigh) == remote_eps
                    assert entries.flood == {hosts[k].underlay for k in members if k != key}
        ours = [n for n in list_named_netns() if n.startswith("pcov-")]
        for key, host in hosts.items():  # no namespace for an overlay a host is not in
            mine = {n for n in ours if n.endswith(f"-{host.name}")}
            assert mine == {lab.overlay_netns(host, vnis[ov])
                            for ov, members in MEMBERS.items() if key in members}

        # A withdrawal on h3 in overlay c reaches h2, and leaves h1 (not in c) untouched.
        h1_before = {ov: lab.vtep_entries(hosts["1"], vnis[ov]) for ov in ("a", "b")}
        gone = published["c", "3"].pop()
        for ep in nets["c", "3"].endpoints():
            if ep.record.mac == gone.mac:
                ep.delete(force=True)
        wait_for(lambda: lab.vtep_entries(hosts["2"], vnis["c"])
                 == expected(lab, hosts["2"], "c", published), 15,
                 what="h2 to drop the withdrawn endpoint of overlay c")
        assert {ov: lab.vtep_entries(hosts["1"], vnis[ov]) for ov in ("a", "b")} == h1_before
        assert lab.overlay_netns(hosts["1"], vnis["c"]) not in list_named_netns()
    finally:
        for ctl in controllers.values():
            for sb in ctl.sandboxes():
                sb.delete()
            ctl.close()
