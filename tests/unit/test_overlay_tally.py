"""The overlay agent's VTEP table kept remote by remote (``dataplane.Tally``) asks the
kernel for exactly what the from-scratch comparison (``Forwarder.apply`` of two
``Entries``) would: after every change, the same entries, the same removals and
additions, and the same IPs and MACs kept."""

from __future__ import annotations

import random

from drivers.overlay.dataplane import Entries, Remote, Tally


def test_a_tally_changed_remote_by_remote_matches_the_entries_of_all_remotes() -> None:
    rng = random.Random(14)
    remotes: dict[str, Remote] = {}
    tally = Tally()
    for step in range(3000):
        eid = f"e{rng.randrange(20)}"
        before = Entries.of(remotes.values())
        old = remotes.get(eid)
        if old is not None and rng.random() < 0.35:
            new = None
            del remotes[eid]
        else:  # few VTEPs, MACs and IPs: shared and moving ones are common
            n = rng.randrange(8)
            new = Remote(f"02:00:00:00:00:{n:02x}", f"192.168.0.{rng.randrange(3) + 1}",
                         f"10.0.0.{rng.randrange(6) + 2}",
                         f"fd00::{n}" if rng.random() < 0.3 else None)
            remotes[eid] = new
        after = Entries.of(remotes.values())
        gone, made = tally.change(old, new)
        assert tally.entries() == after, f"step {step}"
        assert gone == Entries(before.fdb - after.fdb, before.flood - after.flood,
                               before.neigh - after.neigh), f"step {step}"
        assert made == Entries(after.fdb - before.fdb, after.flood - before.flood,
                               after.neigh - before.neigh), f"step {step}"
        assert set(tally.ips) == {ip for ip, _ in after.neigh}, f"step {step}"
        assert set(tally.macs) == {mac for mac, _ in after.fdb}, f"step {step}"
    assert Tally.of(remotes.values()).entries() == tally.entries()
