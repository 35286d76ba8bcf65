"""The resolver's incremental index gives, after every change, exactly the snapshot
``registry.build`` makes from scratch (names, addresses in order, PTRs, views)."""

from __future__ import annotations

import random

from cnm.dns import registry
from cnm.dns.index import Index
from cnm.dns.registry import NameEntry


def tables(snapshot: registry.Snapshot) -> tuple[object, object]:
    nets = {nid: (n.name, n.internal, dict(n.names), dict(n.reverse))
            for nid, n in snapshot.networks.items()}
    views = {sid: (v.name, v.netns_path, tuple(n.id for n in v.networks), v.forward,
                   v.dns_servers)
             for sid, v in snapshot.sandboxes.items()}
    return nets, views


def records_of(state: dict[str, dict[str, dict]], scopes: dict[str, str]) -> registry.Records:
    """Records in key order, as the resolver's mirror lists them."""
    def values(prefix: str) -> list[dict]:
        return [state[prefix][k] for k in sorted(state[prefix])]

    return registry.Records(
        networks=values("networks"), endpoints=values("endpoints"),
        sandboxes=values("sandboxes"),
        published={k: state["published"][k] for k in sorted(state["published"])},
        scopes=dict(scopes),
    )


def test_index_matches_a_full_build_after_every_change() -> None:
    rng = random.Random(14)
    state: dict[str, dict[str, dict]] = {
        "networks": {"n1": {"id": "n1", "name": "Ovl"}, "n2": {"id": "n2", "name": "br",
                                                             "internal": True}},
        "endpoints": {}, "sandboxes": {}, "published": {},
    }
    scopes = {"n1": "overlay:o"}
    index = Index("h1")
    told = Index("h1")  # told each change by id, as the resolver tells it
    told.update(records_of(state, scopes))
    aliases = ["db", "Web", "cache"]
    for step in range(600):
        roll = rng.random()
        n = rng.randrange(12)
        what: tuple[str, str] | None = None  # (kind, id) of the record changed
        if roll < 0.3:  # a sandbox made, changed or removed
            sid = f"s{n}"
            what = ("sandboxes", sid)
            if sid in state["sandboxes"] and rng.random() < 0.3:
                del state["sandboxes"][sid]
            else:
                eps = [k for k, e in state["endpoints"].items() if e.get("sandbox_id") == sid]
                state["sandboxes"][sid] = {
                    "id": sid, "name": f"box{n}", "netns_path": f"/run/netns/b{n}",
                    "mode": "container" if n == 11 else "default",
                    "container": "s0" if n == 11 else None,
                    "interfaces": {f"eth{i}": f"{state['endpoints'][e]['network_id']}/{e}"
                                   for i, e in enumerate(sorted(eps))},
                    "dns_servers": ["10.9.9.9"] if n == 3 else [],
                }
        elif roll < 0.65:  # an endpoint made, joined, left or removed
            eid = f"e{n:02d}"
            what = ("endpoints", eid)
            if eid in state["endpoints"] and rng.random() < 0.25:
                del state["endpoints"][eid]
            else:
                state["endpoints"][eid] = {
                    "id": eid, "name": f"ep{n}", "network_id": rng.choice(["n1", "n2"]),
                    "address": f"10.0.0.{n % 7 + 2}/24",  # some addresses shared
                    "address_v6": f"fd00::{n}/64" if n % 4 == 0 else None,
                    "sandbox_id": rng.choice([None, f"s{rng.randrange(12)}"]),
                    "aliases": rng.sample(aliases, rng.randrange(3)),
                }
        elif roll < 0.95:  # another host's published name
            key = f"dns/scopes/{rng.choice(['overlay:o', 'overlay:other'])}/" \
                  f"{rng.choice(['h2', 'h3', 'h1'])}/p{n}"
            what = ("published", key)
            if key in state["published"] and rng.random() < 0.3:
                del state["published"][key]
            else:
                state["published"][key] = {
                    "names": [f"far{n}", rng.choice(aliases)], "host": "h2",
                    "addresses": [f"10.0.0.{n % 5 + 2}"],
                    "ptr": f"far{n}" if n % 3 else None,
                }
        elif roll < 0.98:  # a network renamed (the index starts over)
            state["networks"]["n2"] = {**state["networks"]["n2"],
                                      "name": rng.choice(["br", "back"])}
        else:  # a scope appears or goes
            scopes = {"n1": "overlay:o"} if "n2" in scopes else {"n1": "overlay:o",
                                                                  "n2": "overlay:other"}
        records = records_of(state, scopes)
        extra = [NameEntry("n1", ("svc", f"tasks.svc{step % 3}"),
                           (registry._ip(f"10.0.9.{step % 4 + 1}"),))] if step % 5 else []
        built = tables(registry.build(records, "h1", extra))
        assert tables(index.update(records, extra)) == built, f"step {step}"
        if what is None:  # a network or a scope: the resolver starts over
            snapshot = told.update(records, extra)
        else:
            kind, key = what
            snapshot = told.change(**{kind: {key: state[kind].get(key)}}, extra=tuple(extra))
        assert tables(snapshot) == built, f"step {step} (told {what})"
        assert snapshot.sandboxes.keys() == built[1].keys()


def test_a_snapshot_handed_out_is_never_changed_afterwards() -> None:
    index = Index("h1")
    net = {"id": "n1", "name": "web"}
    sandbox = {"id": "s1", "name": "api", "netns_path": "/x", "interfaces": {"eth0": "n1/e1"}}
    endpoint = {"id": "e1", "name": "api-ep", "network_id": "n1", "address": "10.0.0.2/24",
                "sandbox_id": "s1"}
    first = index.update(registry.Records(networks=[net], endpoints=[endpoint],
                                          sandboxes=[sandbox]))
    names = dict(first.networks["n1"].names)
    moved = {**endpoint, "address": "10.0.0.3/24"}
    second = index.update(registry.Records(networks=[net], endpoints=[moved],
                                           sandboxes=[sandbox]))
    assert dict(first.networks["n1"].names) == names
    assert second.sandboxes["s1"].lookup("api") == (registry._ip("10.0.0.3"),)
    assert first.sandboxes["s1"].lookup("api") == (registry._ip("10.0.0.2"),)


def test_the_mirror_reports_only_changes_that_matter() -> None:
    from cnm.dns.mirror import Mirror
    from cnm.dns.service import _same_names
    from cnm.store.base import WatchEvent

    mirror = Mirror(("endpoints/", "sandboxes/", "drivers/"))
    made = {"id": "e1", "name": "web", "network_id": "n1", "address": "10.0.0.2/24"}
    joined = {**made, "sandbox_id": "s1", "ifname": "eth0"}
    plugged = {**joined, "src_name": "pcv-x", "gateway": "10.0.0.1"}
    sandbox = {"id": "s1", "name": "box"}
    for revision, (key, value) in enumerate([
            ("endpoints/n1/e1", made),      # made, not joined: no name
            ("sandboxes/s1", sandbox),      # a sandbox: always a change
            ("sandboxes/s1", dict(sandbox)),  # written again unchanged: none
            ("endpoints/n1/e1", joined),    # joined: its names
            ("endpoints/n1/e1", plugged),   # details no name depends on
            ("drivers/overlay/endpoints/n1/e1", {"id": "e1"}),  # a driver's own: none
            ("drivers/overlay/networks/n1", {"id": "n1"})], start=1):  # scope, gateway
        mirror.note(WatchEvent("put", key, value, revision))
        changed, newest = mirror.drain(_same_names)
        assert newest == revision  # the revision counts, whether or not it matters
        assert changed == ({key} if revision in (2, 4, 7) else set()), revision
    assert mirror.tables["endpoints/"]["endpoints/n1/e1"] == plugged  # every event applied
    mirror.note(WatchEvent("delete", "endpoints/n1/e1", None, 8))
    assert mirror.drain(_same_names) == ({"endpoints/n1/e1"}, 8)  # its names go
