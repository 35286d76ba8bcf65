"""Many overlays over hosts in different subsets of them: VTEP entries per host against
the model, and the agents' CPU per endpoint event.

    sudo python3 bench/bench_overlay_scale.py [--overlays 10] [--endpoints 100] [--rounds 10]
                                              [--ignored 50] [--idle 5]

The overlay tests' picture (overlay_lab): 3 emulated hosts behind a router namespace, a
throwaway etcd on loopback, one ``pycnm agent`` process per host. Overlay k is on the
hosts of ``MEMBERS[k % 4]``: all three, h1+h2, h2+h3, h1+h3 (10 overlays: h1 and h2 in 8,
h3 in 7). Each host has ``--endpoints`` sandboxes, each joined to every overlay of its
host (so 100 endpoints per host and overlay), created in ``--rounds`` rounds; after each
round the run waits until every VTEP holds exactly what the model says.

- entries: per host, the VTEP entries in its overlays' namespaces (unicast FDB, flood
  entries, neighbours) against the model: in each overlay, one FDB and one neighbour
  entry per endpoint on the other members and one flood entry per other member; and
  no namespace at all for the overlays it is not in. The run fails on any difference.
- agent CPU: every agent watches every overlay's records, so each endpoint event costs
  each agent something. Per round, each agent's CPU time (/proc/PID/stat, user+system,
  resyncs and lease refreshes included) divided by the endpoint events of the round:
  median over rounds and agents with the spread, net of each agent's own rate measured
  over ``--idle`` quiet seconds first (and raw). Then ``--ignored`` endpoints on an
  overlay of h2 and h3 only: h1's CPU per event it ignores, h3's per event it applies.

Fails (exit 1) if a round measured nothing or an entry count differs from the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchlib  # noqa: E402

from cnm.osl.netns import list_named_netns  # noqa: E402
from tests.integration.overlay_lab import Host, OverlayLab, wait_for  # noqa: E402

UNDERLAYS = {"1": "172.31.1.0/24", "2": "192.168.1.0/24", "3": "172.31.3.0/24"}
MEMBERS = [("1", "2", "3"), ("1", "2"), ("2", "3"), ("1", "3")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Scale:
    def __init__(self, lab: OverlayLab, overlays: int) -> None:
        self.lab = lab
        self.hosts = {key: lab.add_host(key, subnet) for key, subnet in UNDERLAYS.items()}
        for host in self.hosts.values():
            lab.start_agent(host)
        self.members = {k: MEMBERS[k % len(MEMBERS)] for k in range(overlays)}
        self.controllers = {key: lab.controller(h, reconcile=False)
                            for key, h in self.hosts.items()}
        self.nets: dict[tuple[int, str], Any] = {}
        for k, members in self.members.items():
            for key in members:
                self.nets[k, key] = self.controllers[key].new_network(
                    f"scale{k}", "overlay", subnet=f"10.{70 + k}.0.0/22",
                    options={"overlay": f"sc{k}{lab.tag}"})
        self.vnis = {k: lab.vni_of(f"sc{k}{lab.tag}") for k in self.members}
        self.count = {pair: 0 for pair in self.nets}  # endpoints per (overlay, host)

    def agent_cpu(self) -> dict[str, float]:
        return {key: cpu_seconds(h.agent.pid) for key, h in self.hosts.items()
                if h.agent is not None}

    def add(self, key: str, name: str, overlays: list[int]) -> int:
        """A sandbox on host ``key`` joined to ``overlays``; the number of events."""
        sb = self.controllers[key].new_sandbox(f"{name}{self.lab.tag}")
        for k in overlays:
            self.nets[k, key].create_endpoint(sb.name).join(sb)
            self.count[k, key] += 1
        return len(overlays)

    def model(self, host: Host, key: str, k: int) -> tuple[int, int, int]:
        """(unicast FDB, flood, neighbour) entries host ``key`` should hold for overlay k."""
        others = [m for m in self.members[k] if m != key]
        remote = sum(self.count[k, m] for m in others)
        return remote, sum(1 for m in others if self.count[k, m]), remote

    def held(self, host: Host, k: int) -> tuple[int, int, int]:
        entries = self.lab.vtep_entries(host, self.vnis[k])
        return len(entries.fdb), len(entries.flood), len(entries.neigh)

    def converged(self) -> bool:
        return all(self.held(self.hosts[key], k) == self.model(self.hosts[key], key, k)
                   for k, key in self.nets)

    def settle(self) -> None:
        wait_for(self.converged, 120, interval=0.2, what="every VTEP to match the model")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overlays", type=int, default=10)
    parser.add_argument("--endpoints", type=int, default=100, help="per host and overlay")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ignored", type=int, default=50)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle phase")
    args = parser.parse_args()
    if args.overlays < 3 or not 1 <= args.rounds <= args.endpoints or args.ignored < 1:
        parser.error("--overlays >= 3, 1 <= --rounds <= --endpoints, --ignored >= 1")
    if args.overlays > 100:
        parser.error("--overlays at most 100 (each takes a /22 of 10.70.0.0/15 and on)")
    benchlib.compile_tree()
    benchlib.header()
    from netns_fixtures.etcd import start_etcd

    with tempfile.TemporaryDirectory(prefix="pycnm-bench-etcd-") as data, \
            start_etcd(data) as etcd:
        # pycnm's default lease TTL: with the lab's 5 s, an agent that lost its lease had
        # to republish ~800 endpoints under a new one within 5 s on this loaded machine,
        # failed, and started over (docs/scale.md).
        lab = OverlayLab(etcd.url, lease_ttl=15.0)
        scale: Scale | None = None
        try:
            scale = Scale(lab, args.overlays)
            return run(scale, args)
        except AssertionError as exc:  # a VTEP never matched the model
            print(f"FAILED: {exc}")
            return 1
        finally:
            if scale is not None:
                for ctl in scale.controllers.values():
                    ctl.close()
            lab.close()


def run(scale: Scale, args: argparse.Namespace) -> int:
    hosts, members = scale.hosts, scale.members
    mine = {key: [k for k, m in members.items() if key in m] for key in hosts}
    # Each agent's background rate (lease refreshes, the local store's watch), idle.
    cpu0, t0 = scale.agent_cpu(), time.monotonic()
    time.sleep(args.idle)
    cpu1, t1 = scale.agent_cpu(), time.monotonic()
    idle = {key: (cpu1[key] - cpu0[key]) / (t1 - t0) for key in hosts}
    per_event: list[float] = []
    raw: list[float] = []
    started = time.monotonic()
    made = 0
    for r in range(args.rounds):
        cpu0, t0 = scale.agent_cpu(), time.monotonic()
        events = 0
        for n in range(made, args.endpoints * (r + 1) // args.rounds):
            for key in hosts:
                events += scale.add(key, f"s{n}h{key}", mine[key])
        made = args.endpoints * (r + 1) // args.rounds
        scale.settle()
        cpu1, t1 = scale.agent_cpu(), time.monotonic()
        if not events or len(cpu1) != len(hosts):
            raise benchlib.MeasuredNothing(f"round {r} (no event, or an agent exited)")
        for key in hosts:
            used = cpu1[key] - cpu0[key]
            raw.append(used * 1000 / events)
            per_event.append((used - idle[key] * (t1 - t0)) * 1000 / events)
    took = time.monotonic() - started

    # Events one host ignores and another applies: endpoints of h2 on an overlay of h2+h3.
    ignored_overlay = next(k for k, m in members.items() if m == ("2", "3"))
    cpu0, t0 = scale.agent_cpu(), time.monotonic()
    for n in range(args.ignored):
        scale.add("2", f"i{n}", [ignored_overlay])
    scale.settle()
    cpu1, t1 = scale.agent_cpu(), time.monotonic()
    ignore_ms = {key: (cpu1[key] - cpu0[key] - idle[key] * (t1 - t0)) * 1000 / args.ignored
                 for key in hosts}

    print(f"{args.overlays} overlays x 3 hosts x {args.endpoints} endpoints per host and "
          f"overlay ({sum(scale.count.values())} endpoints, built in {took:.0f} s)")
    print("VTEP entries per host (unicast FDB / flood / neighbour), held vs model:")
    wrong = 0
    namespaces = [n for n in list_named_netns() if n.startswith("pcov-")]
    for key, host in hosts.items():
        held = [scale.held(host, k) for k in mine[key]]
        model = [scale.model(host, key, k) for k in mine[key]]
        totals = [tuple(sum(x) for x in zip(*rows, strict=True)) for rows in (held, model)]
        own = {n for n in namespaces if n.endswith(f"-{host.name}")}
        expected_ns = {scale.lab.overlay_netns(host, scale.vnis[k]) for k in mine[key]}
        ok = held == model and own == expected_ns
        wrong += not ok
        print(f"  h{key}: in {len(mine[key])} of {args.overlays} overlays, "
              f"{len(own)} overlay namespaces; held {'/'.join(map(str, totals[0]))}, model "
              f"{'/'.join(map(str, totals[1]))}  {'ok' if ok else 'DIFFERS'}")
    print(f"agent CPU per endpoint event (every agent sees every event; net of each "
          f"agent's idle rate, resyncs included): "
          f"{benchlib.spread(per_event, 'agent CPU per event', digits=2)} over "
          f"{args.rounds} rounds x 3 agents; raw {benchlib.spread(raw, 'raw', digits=2)}")
    print("  idle agents: " + ", ".join(f"h{key} {100 * rate:.1f}%" for key, rate
                                        in idle.items()) + " of a core")
    print(f"  {args.ignored} endpoints of h2 on overlay {ignored_overlay} (h2+h3): per event "
          f"h1 (ignores it) {ignore_ms['1']:.2f} ms, h3 (programs it) {ignore_ms['3']:.2f} ms,"
          f" h2 (its own) {ignore_ms['2']:.2f} ms")
    benchlib.footer()
    if wrong:
        print(f"FAILED: {wrong} host(s) hold entries or namespaces the model does not give")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
