"""Overlay convergence, attach cost, floods and throughput across emulated hosts.

    sudo python3 bench/bench_overlay.py [--hosts 3] [--endpoints 100] [--iperf-seconds 5]
                                        [--iperf-runs 5]

Builds the multi-host picture of the overlay tests (hosts in their own underlay subnets
joined by a router namespace, a real etcd on loopback, one ``pycnm agent`` process per
host; each host's own records in a local SQLite file, etcd for what they share) and
measures, in one run:

- convergence: for each new endpoint (created and joined on host i by this process, as
  the CLI would), the time from the start of its creation to the first ICMP echo reply
  it sends to a probe sandbox on host i+1. The probe sends an echo every 2 ms from a raw
  socket; its ARP retransmit interval is lowered to 5 ms so the figure resolves the
  control plane's delay rather than the kernel's 1 s ARP retry. p50 and p99 over
  hosts x endpoints.
- attach: create+join of each of those endpoints, beside the reference, an attach to a
  bridge network on host 1 of the same run (same stores, alternating with the overlay's),
  how much of the overlay's attach is spent in etcd round trips (counted in this
  process), and where each attach's time went: perf_counter timers around its steps
  (``AttachSplit``), the median of each step for the overlay and the bridge.
- floods: VXLAN frames on the underlay during the convergence phase, and how many of
  them carried a broadcast or multicast frame (head-end replication), per endpoint event.
- throughput: iperf3 (TCP, one stream) between sandboxes on two hosts across the overlay,
  and between the same two host namespaces across the bare underlay, alternating; median
  of ``--iperf-runs`` (5) runs.

Everything lives in throwaway namespaces and a throwaway etcd, removed at the end. The
run fails (exit 1) if any figure measured nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probes import Prober, iperf, percentile  # noqa: E402

from cnm.controller import Controller  # noqa: E402
from cnm.osl.netns import write_sysctl  # noqa: E402
from tests.integration.overlay_lab import OverlayLab, UnderlayCounter  # noqa: E402

UNDERLAYS = ["172.31.1.0/24", "192.168.1.0/24", "172.31.3.0/24", "172.31.4.0/24"]
SUBNET = "10.0.0.0/22"


# --- the run ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--endpoints", type=int, default=100, help="per host")
    parser.add_argument("--iperf-seconds", type=int, default=5)
    parser.add_argument("--iperf-runs", type=int, default=5)
    args = parser.parse_args()
    if not 2 <= args.hosts <= len(UNDERLAYS):
        parser.error(f"--hosts must be 2..{len(UNDERLAYS)}")

    from netns_fixtures.etcd import start_etcd

    with tempfile.TemporaryDirectory(prefix="pycnm-bench-etcd-") as data, \
            start_etcd(data) as etcd:
        # Each host keeps its own records in a file of its own, as on real machines.
        lab = OverlayLab(etcd.url, lease_ttl=5.0, local_per_host=True)
        controllers: list[Controller] = []
        probers: list[Prober] = []
        try:
            return run(lab, args, controllers, probers)
        finally:
            for prober in probers:
                prober.close()
            for ctl in controllers:
                ctl.close()
            lab.close()


class AttachSplit:
    """Times the steps of each attach in this process (timers wrapped around the methods
    that do them), per attach, so the benchmark shows where an attach's time goes."""

    def __init__(self) -> None:
        import cnm.controller
        import cnm.endpoint
        import cnm.network
        import cnm.sandbox
        import drivers.bridge
        import drivers.overlay
        from cnm.osl import plumbing
        from cnm.store.sqlite import SQLiteStore
        from drivers.overlay import dataplane

        # (owner, method, label): the labels' indentation shows what is part of what
        self.steps = [
            (cnm.network.Network, "create_endpoint", "create_endpoint"),
            (cnm.network.Network, "_address", "  address (IPAM)"),
            (drivers.overlay.OverlayDriver, "create_endpoint", "  the driver's create_endpoint"),
            (drivers.bridge.BridgeDriver, "create_endpoint", "  the driver's create_endpoint"),
            (cnm.endpoint.Endpoint, "join", "join"),
            (drivers.overlay.OverlayDriver, "join", "  the driver's join"),
            (drivers.bridge.BridgeDriver, "join", "  the driver's join"),
            (dataplane, "plug_veth", "    veth into br0 (kernel)"),
            (plumbing, "configure_inside", "  address, up, routes (kernel)"),
            (cnm.sandbox.Sandbox, "_write_files", "  the sandbox's files"),
            (cnm.controller.Controller, "settle_dns", "  wait for the resolver"),
            (SQLiteStore, "get", "local store reads"),
            (SQLiteStore, "put", "local store writes"),
            (SQLiteStore, "commit", "local store writes"),
        ]
        self.kind = ""
        self._current: dict[str, float] = {}
        self.samples: dict[tuple[str, str], list[float]] = {}
        self._restore = []
        for owner, name, label in self.steps:
            original = owner.__dict__[name]
            self._restore.append((owner, name, original))
            setattr(owner, name, self._timed(original, label))

    def _timed(self, original, label):  # noqa: ANN001, ANN202 - a measuring wrapper
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.kind:
                    self._current[label] = (self._current.get(label, 0.0)
                                            + time.perf_counter() - start)
        return timed

    def begin(self, kind: str) -> None:
        self.kind, self._current = kind, {}

    def end(self) -> None:
        for label, seconds in self._current.items():
            self.samples.setdefault((self.kind, label), []).append(seconds * 1000)
        self.kind = ""

    def lines(self, kinds: tuple[str, ...]) -> list[str]:
        out = []
        for label in dict.fromkeys(label for _, _, label in self.steps):
            cells = []
            for kind in kinds:
                values = self.samples.get((kind, label))
                cells.append(f"{statistics.median(values):6.2f}" if values else "     -")
            out.append(f"    {label:34s} {' / '.join(cells)}")
        return out

    def close(self) -> None:
        for owner, name, original in self._restore:
            setattr(owner, name, original)


class EtcdCalls:
    """Counts this process's etcd round trips and the time spent in them."""

    METHODS = ("get", "list", "put", "delete", "commit", "_put_leased", "grant_lease",
               "refresh_lease")

    def __init__(self) -> None:
        from cnm.store.etcd import EtcdStore

        self.calls = 0
        self.seconds = 0.0
        self._restore = []
        for name in self.METHODS:
            original = getattr(EtcdStore, name)
            self._restore.append((EtcdStore, name, original))
            setattr(EtcdStore, name, self._timed(original))

    def _timed(self, original):  # noqa: ANN001, ANN202 - a measuring wrapper
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return timed

    def close(self) -> None:
        for owner, name, original in self._restore:
            setattr(owner, name, original)


def in_ns(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]


def median_p90(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {percentile(values, 0.9):.2f}"


def run(lab: OverlayLab, args: argparse.Namespace, controllers: list[Controller],
        probers: list[Prober]) -> int:
    print("load average at the start: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    hosts = [lab.add_host(str(i + 1), UNDERLAYS[i]) for i in range(args.hosts)]
    for host in hosts:
        lab.start_agent(host)
    overlay = f"bench{lab.tag}"
    nets = []
    for host in hosts:
        ctl = lab.controller(host, reconcile=False)
        controllers.append(ctl)
        nets.append(ctl.new_network("benchnet", "overlay", subnet=SUBNET,
                                    options={"overlay": overlay}))
    bridge = controllers[0].new_network("benchbr", "bridge", subnet="10.99.0.0/20")
    # One probe sandbox per host, on the overlay from the start.
    probes = []
    for i, (ctl, net) in enumerate(zip(controllers, nets, strict=True)):
        sb = ctl.new_sandbox(f"probe{i}{lab.tag}")
        ep = net.create_endpoint(sb.name)
        ep.join(sb)
        write_sysctl(sb.netns_path, "net/ipv4/neigh/eth0/retrans_time_ms", "5")
        probers.append(Prober(sb.netns_path))
        probes.append((sb, ep.record.address.split("/")[0]))
    for i in range(args.hosts):  # every probe reaches the next one before we start
        target = probes[(i + 1) % args.hosts][1]
        probers[i].first_reply(target, timeout=15)

    samples: list[float] = []
    attach_times: list[float] = []
    bridge_times: list[float] = []
    etcd = EtcdCalls()
    split = AttachSplit()
    floods = UnderlayCounter(lab, hosts)
    try:
        for n in range(args.endpoints):
            for i, (ctl, net) in enumerate(zip(controllers, nets, strict=True)):
                sb = ctl.new_sandbox(f"b{n}h{i}{lab.tag}")
                split.begin("overlay")
                start = time.perf_counter()
                ep = net.create_endpoint(sb.name)
                ep.join(sb)
                attached = time.perf_counter()
                split.end()
                address = ep.record.address.split("/")[0]
                reply = probers[(i + 1) % args.hosts].first_reply(address)
                samples.append(reply - start)
                attach_times.append(attached - start)
            sb = controllers[0].new_sandbox(f"r{n}{lab.tag}")  # the reference
            split.begin("bridge")
            start = time.perf_counter()
            bridge.create_endpoint(sb.name).join(sb)
            bridge_times.append(time.perf_counter() - start)
            split.end()
        # Floods of the last joins (IPv6 DAD and MLD would come within a second or two).
        time.sleep(2.0)
    finally:
        counted = floods.snapshot()
        floods.close()
        etcd.close()
        split.close()
    events = len(samples)
    if not events or not bridge_times or not counted["vxlan"]:
        print("FAILED: the run measured nothing (no attach, or no VXLAN frame seen)")
        return 1
    ms = [s * 1000 for s in samples]
    attach_ms = [s * 1000 for s in attach_times]
    after_ms = [(s - a) * 1000 for s, a in zip(samples, attach_times, strict=True)]
    print(f"convergence, {args.hosts} hosts x {args.endpoints} endpoints "
          f"(create+join on one host -> first echo reply seen from the next host):")
    print(f"  p50 {percentile(ms, 0.5):.1f} ms   p99 {percentile(ms, 0.99):.1f} ms   "
          f"max {max(ms):.1f} ms")
    print(f"  join -> reply (etcd watch, VTEP entries, ARP, echo): p50 "
          f"{percentile(after_ms, 0.5):.1f} ms, p99 {percentile(after_ms, 0.99):.1f} ms")
    print("attach (create+join), median / p90, ms:")
    print(f"  overlay {median_p90(attach_ms)}   bridge on host 1 (reference) "
          f"{median_p90([t * 1000 for t in bridge_times])}")
    print(f"  of the overlay's: {etcd.calls / events:.1f} etcd round trips, "
          f"{etcd.seconds * 1000 / events:.2f} ms in them, per attach (mean)")
    print("  where it went, median per attach of each step, ms, overlay / bridge:")
    print("\n".join(split.lines(("overlay", "bridge"))))
    print(f"floods on the underlay while {events} endpoints joined: {counted['vxlan']} VXLAN "
          f"frames, of which broadcast/multicast {counted['bum']} "
          f"({counted['bum'] / events:.2f} per endpoint event), IPv6 {counted['ipv6']}, "
          f"ARP {counted['arp']}")

    a, b = probes[0][0], probes[1][0]
    overlay_runs, underlay_runs = [], []
    for run_index in range(args.iperf_runs):
        overlay_runs.append(iperf(in_ns(b.netns_name), in_ns(a.netns_name), probes[1][1],
                                  args.iperf_seconds, 5201 + run_index, lab.processes))
        underlay_runs.append(iperf(in_ns(hosts[1].name), in_ns(hosts[0].name),
                                   hosts[1].underlay, args.iperf_seconds, 5301 + run_index,
                                   lab.processes))
    if not all(overlay_runs) or not all(underlay_runs):
        print("FAILED: an iperf3 run measured nothing")
        return 1
    over, under = statistics.median(overlay_runs), statistics.median(underlay_runs)
    print(f"iperf3 TCP, 1 stream, {args.iperf_seconds} s, median of {args.iperf_runs}:")
    print(f"  overlay  {over:.2f} Gbit/s  (sandbox h1 -> sandbox h2, MTU 1450)")
    print(f"  underlay {under:.2f} Gbit/s  (host h1 -> host h2 through the router, MTU 1500)")
    print(f"  overlay / underlay = {100 * over / under:.0f}%   (runs: overlay "
          f"{', '.join(f'{g:.1f}' for g in overlay_runs)}; underlay "
          f"{', '.join(f'{g:.1f}' for g in underlay_runs)})")
    print("load average at the end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    for i, ctl in enumerate(controllers):
        for sb in ctl.sandboxes():
            sb.delete()
        nets[i].delete(force=True)
    bridge.delete(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
