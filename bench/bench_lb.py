"""Load-balanced services: the cost of the virtual IP on the data path, and the time to
apply a backend change, each side by side with its reference in one run.

    sudo python3 bench/bench_lb.py [--seconds 1.5] [--rounds 12] [--clients 50] \
        [--services 20] [--changes 30]

Everything happens in a throwaway "host" namespace (pycnm's Python API on an embedded
store in a temporary folder), removed at the end.

1. Data path. Three backends run busybox httpd (a real server, as the tests use; it forks
   per connection) on port 80 and the smallest TCP server there is on port 81 (accept,
   read the request, answer with the backend's name, close: there the network path's
   cost shows most). One client process inside a client sandbox
   opens connections one after the other for ``--seconds`` and records each one's
   time (connect, request, whole answer); rounds alternate between the targets:

   - ``direct``: backend 1's own address (the reference);
   - ``vip``: the VIP of a service whose only backend is backend 1 (pycnm's path on a
     bridge: the host's fast path DNATs the bridged frame to backend 1, no hop through
     the load-balancer namespace; see docs/services.md);
   - ``vip, balancer``: the same through the load-balancer namespace, for comparison: a
     second service with the same single backend, left out of the host's fast path
     (the path every connection took before it, and hairpin and other drivers take);
   - ``vip x3``: the VIP of a service over all three backends (round robin);
   - ``per-client DNAT``: the design pycnm did not choose, for comparison: a DNAT to
     backend 1 in the client's own namespace (nat output hook), no load balancer.

   Each round runs every target once, starting with the next target each round (no
   target always runs first); a target's ratio is its rate over ``direct``'s in the same
   round (the machine's load drifts between rounds more than between targets), the
   median over rounds with its p10-p90 spread.
   Target: ``vip`` at least 0.9 of ``direct``'s connections per second, and of its
   latency (a round's median connection time, direct's over the target's, paired round
   by round likewise). Also printed: what the VIP adds to a connection, in microseconds.

2. Applying a backend change with ``--clients`` client sandboxes and ``--services``
   services of three backends each on one network. A change is one backend joining or
   leaving one service: pycnm's ``apply`` (read the store, render, one nft transaction
   in the load-balancer namespace and one in the host's fast-path table, side by side)
   is timed ``--changes`` times; the whole network sees
   it at once. In the same run, the other design: the same 20 services' rules loaded
   into every client's own namespace, one transaction each, as a change would need
   there. Also timed: a whole ``attach --service`` / ``detach`` through the Python API.
   Target: pycnm's p50 under 50 ms.

Prints tables (median over all rounds/changes, with p10-p90 spread); exits 1, saying
why, if some measurement got nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchlib import footer, header  # noqa: E402
from cnm.controller import Controller  # noqa: E402
from cnm.osl import nft  # noqa: E402
from cnm.osl import nftjson as j  # noqa: E402
from cnm.osl.netns import create_named_netns, delete_named_netns, list_named_netns  # noqa: E402
from cnm.services import rules  # noqa: E402
from cnm.services.manager import Services  # noqa: E402

SUBNET = ipaddress.ip_network("10.98.0.0/22")
SPARE_VIP = ipaddress.ip_address("10.98.3.250")  # the per-client DNAT's address (no host)
PORT = 80  # busybox httpd: a real server (fork per connection)
NULL_PORT = 81  # the smallest server there is: what the network path costs shows most
SERVERS = {"httpd": PORT, "null": NULL_PORT}

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(512)
reply = sys.argv[1].encode()
while True:
    c, _ = s.accept()
    try:
        c.recv(1024)
        c.sendall(reply)
    except OSError:
        pass
    c.close()
"""

CLIENT = r"""
import json, socket, sys, time
address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
times, errors, names = [], 0, {}
end = time.perf_counter() + seconds
while (now := time.perf_counter()) < end:
    try:
        s = socket.create_connection((address, port), timeout=2)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        times.append(time.perf_counter() - now)
        name = data.decode(errors="replace").strip().rsplit("\n", 1)[-1].strip()
        names[name] = names.get(name, 0) + 1
    except OSError:
        errors += 1
print(json.dumps({"times": times, "errors": errors, "names": names}))
"""


class NothingMeasured(RuntimeError):
    """A measurement got no sample: the figures would mean nothing."""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(samples: list[float], scale: float = 1000.0) -> str:
    if not samples:
        raise NothingMeasured("no samples")
    return (f"{statistics.median(samples) * scale:8.2f} "
            f"({percentile(samples, 0.1) * scale:.2f}-{percentile(samples, 0.9) * scale:.2f})")


@contextlib.contextmanager
def host_namespace() -> Iterator[str]:
    name = f"pt{uuid.uuid4().hex[:6]}lbh"
    path = create_named_netns(name, loopback_up=True, forwarding=True)
    try:
        yield path
    finally:
        delete_named_netns(name)


def in_ns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def run_client(netns: str, address: str, seconds: float, port: int = PORT) -> dict:
    out = subprocess.run(in_ns(netns, sys.executable, "-c", CLIENT, address, str(port),
                               str(seconds)), capture_output=True, text=True,
                         timeout=seconds + 60)
    if out.returncode != 0:
        raise NothingMeasured(f"the client failed: {out.stderr.strip()[:300]}")
    return json.loads(out.stdout)


def wait_listening(netns: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(in_ns(netns, "ss", "-Hltn", f"( sport = :{port} )"),
                             capture_output=True, text=True)
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise NothingMeasured(f"the server in {netns} did not listen")


def data_path(ctl: Controller, net: str, args: argparse.Namespace,
              servers: list[subprocess.Popen]) -> dict[str, float]:
    backends = []
    for i in range(3):
        sb = ctl.new_sandbox(f"be{i}-{uuid.uuid4().hex[:4]}")
        services = ["one", "one-lb", "three"] if i == 0 else ["three"]
        ep = ctl.network(net).create_endpoint(sb.name, services=services)
        ep.join(sb)
        netns = f"pcsb-{sb.name}"
        www = os.path.join(args.tmp, sb.name)
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as handle:
            handle.write(sb.name)
        servers.append(subprocess.Popen(in_ns(netns, "busybox", "httpd", "-f", "-p", str(PORT),
                                              "-h", www), stdout=subprocess.DEVNULL))
        servers.append(subprocess.Popen(in_ns(netns, sys.executable, "-c", SERVER, sb.name,
                                              str(NULL_PORT)), stdout=subprocess.DEVNULL))
        wait_listening(netns, PORT)
        wait_listening(netns, NULL_PORT)
        backends.append((sb.name, str(ipaddress.ip_interface(ep.record.address or "").ip)))
    client = ctl.new_sandbox(f"cl-{uuid.uuid4().hex[:4]}")
    ctl.network(net).create_endpoint(client.name).join(client)
    client_ns = f"pcsb-{client.name}"
    # The design not chosen: DNAT in the client's own namespace, to backend 1.
    nft.replace_table(client.netns_path, "ip", "bench-dnat", [
        j.Chain("output", j.nat_hook("output"), [
            j.rule(j.match_addr("daddr", SPARE_VIP), j.match_l4proto("tcp"),
                   j.dnat(ipaddress.IPv4Address(backends[0][1])))])],
        what="per-client DNAT")
    _skip_fast_path(ctl, net, ctl.service("one-lb").record.id)
    targets = {
        "direct": backends[0][1],
        "vip": str(ctl.service("one").vip),
        "vip, balancer": str(ctl.service("one-lb").vip),
        "vip x3": str(ctl.service("three").vip),
        "per-client DNAT": str(SPARE_VIP),
    }
    run_client(client_ns, targets["direct"], 0.5)  # warm up (ARP, caches)
    runs = [(server, what) for server in SERVERS for what in targets]
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    latencies: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    round_latency: dict[tuple[str, str], list[float]] = {k: [] for k in runs}  # medians
    seen: dict[tuple[str, str], dict[str, int]] = {k: {} for k in runs}
    for round_number in range(args.rounds):
        shift = round_number % len(runs)  # each target goes first in turn
        for server, what in runs[shift:] + runs[:shift]:
            address = targets[what]
            result = run_client(client_ns, address, args.seconds, SERVERS[server])
            if not result["times"]:
                raise NothingMeasured(f"{what} ({address}, {server}): no connection in "
                                      f"{args.seconds} s ({result['errors']} errors)")
            rates[(server, what)].append(len(result["times"]) / args.seconds)
            latencies[(server, what)] += result["times"]
            round_latency[(server, what)].append(statistics.median(result["times"]))
            for name, n in result["names"].items():
                seen[(server, what)][name] = seen[(server, what)].get(name, 0) + n
    print(f"\n1. data path: {args.rounds} rounds x {args.seconds:g} s per target, one client "
          "opening connections one after the other (targets interleaved, each round "
          "starting with the next)")
    print("   ratio: to direct's rate in the same round (the machine's load drifts between "
          "rounds), median over rounds (p10-p90)")
    print(f"{'server':<7}{'target':<18}{'conn/s median (p10-p90)':>26}"
          f"{'ratio (p10-p90)':>22}{'latency ms p50':>16}{'p99':>8}"
          f"{'latency ratio (p10-p90)':>26}   backends that answered")
    ratio: dict[str, float] = {}
    for server, what in runs:
        key = (server, what)
        paired = [rate / direct for rate, direct in zip(rates[key], rates[(server, "direct")],
                                                          strict=True)]
        ratio[f"{server} {what}"] = statistics.median(paired)
        spread = f"({percentile(paired, 0.1):.2f}-{percentile(paired, 0.9):.2f})"
        # Latency, paired likewise: direct's median connection time over the target's.
        faster = [direct / took for took, direct in zip(
            round_latency[key], round_latency[(server, "direct")], strict=True)]
        ratio[f"{server} {what} latency"] = statistics.median(faster)
        lat_spread = f"({percentile(faster, 0.1):.2f}-{percentile(faster, 0.9):.2f})"
        print(f"{server:<7}{what:<18}{statistics.median(rates[key]):>10.0f} "
              f"({percentile(rates[key], 0.1):.0f}-{percentile(rates[key], 0.9):.0f})"
              f"{'':>4}{statistics.median(paired):>9.3f} {spread:<12}"
              f"{statistics.median(latencies[key]) * 1000:>12.3f}"
              f"{percentile(latencies[key], 0.99) * 1000:>10.3f}"
              f"{statistics.median(faster):>13.3f} {lat_spread:<12}   "
              + ", ".join(f"{k} {v}" for k, v in sorted(seen[key].items())))
    for what in ("vip", "vip, balancer"):
        extra = {server: (statistics.median(latencies[(server, what)])
                          - statistics.median(latencies[(server, "direct")])) * 1e6
                 for server in SERVERS}
        print(f"{what} adds, per connection (p50 over p50): "
              + ", ".join(f"{k} {v:.0f} us" for k, v in extra.items()))
    return ratio


def _skip_fast_path(ctl: Controller, net: str, service_id: str) -> None:
    """Load the host's fast-path table without one service: its connections then take
    the load-balancer namespace (no apply runs during the data path to put it back)."""
    plan = Services(ctl)._fast_plan()
    kept = rules.FastPlan(tuple(
        rules.FastNetwork(n.id, n.bridge, tuple(s for s in n.services if s.id != service_id))
        for n in plan.networks))
    if kept == plan:
        raise NothingMeasured(f"network {net} has no fast path to leave a service out of")
    chains, sets = rules.fast_ruleset(kept)
    nft.replace_table(ctl.host_ns, rules.FAMILY, rules.SERVICES_TABLE, chains, sets,
                      what="the fast path without one service")


def apply_time(ctl: Controller, net: str, args: argparse.Namespace) -> float:
    network = ctl.network(net)
    names = [f"s{i}" for i in range(args.services)]
    for name in names:
        ctl.new_service(name, net, ["80/tcp"])
    backends = []
    for i in range(3):
        sb = ctl.new_sandbox(f"bb{i}-{uuid.uuid4().hex[:4]}")
        ep = network.create_endpoint(sb.name, services=names)
        ep.join(sb)
        backends.append(ep)
    clients = []
    for i in range(args.clients):
        sb = ctl.new_sandbox(f"c{i}-{uuid.uuid4().hex[:4]}")
        network.create_endpoint(sb.name).join(sb)
        clients.append(sb)
    svc = Services(ctl)
    nid = network.id
    key = f"endpoints/{nid}/{backends[0].id}"
    samples: list[float] = []
    for i in range(args.changes):
        change = names if i % 2 else names[1:]  # backend 0 leaves / joins service s0
        ctl.local.update(key, lambda value, change=change: {**(value or {}),
                                                            "services": list(change)})
        started = time.perf_counter()
        svc.apply(nid)
        samples.append(time.perf_counter() - started)
    # The design not chosen: the same rules in every client's namespace, one transaction
    # each, for every change.
    state = svc.lb_state(nid)
    plan_rules = rules.lb_ruleset(_plan_of(svc, nid, state))
    others: list[float] = []
    for _ in range(max(3, args.changes // 5)):
        started = time.perf_counter()
        for sb in clients:
            nft.replace_table(sb.netns_path, "ip", "bench-lb", plan_rules[0], plan_rules[1],
                              what="per-client rules")
        others.append(time.perf_counter() - started)
    # Whole API operations, for context: a backend attached to one service and detached.
    attach: list[float] = []
    detach: list[float] = []
    for _ in range(max(3, args.changes // 3)):
        sb = ctl.new_sandbox(f"bx-{uuid.uuid4().hex[:4]}")
        started = time.perf_counter()
        ep = network.create_endpoint(sb.name, services=[names[0]])
        ep.join(sb)
        attach.append(time.perf_counter() - started)
        started = time.perf_counter()
        ep.leave(drain=0)
        ep.delete()
        detach.append(time.perf_counter() - started)
        sb.delete()
    chains = len(plan_rules[0])
    print(f"\n2. a backend change, {args.clients} client sandboxes, {args.services} services x "
          f"3 backends on one network; milliseconds, median (p10-p90)")
    print(f"{'what':<58}{'ms':>22}")
    print(f"{'pycnm: apply (balancer + host fast path, side by side)':<58}"
          f"{summary(samples):>22}")
    print(f"{f'per-client rules: {len(clients)} namespaces, 1 transaction each':<58}"
          f"{summary(others):>22}")
    print(f"{'pycnm API: attach a backend to a service (endpoint + join)':<58}"
          f"{summary(attach):>22}")
    print(f"{'pycnm API: detach it (leave, no drain, + delete endpoint)':<58}"
          f"{summary(detach):>22}")
    print(f"rules: one table of {chains} chains in one namespace, vs {len(clients)} such tables")
    return statistics.median(samples)


def _plan_of(svc: Services, nid: str, state: dict) -> rules.LbPlan:
    backends = svc.backends(nid)
    services = svc.space(nid).services()
    return rules.LbPlan(ipaddress.IPv4Address(state["address"]), tuple(
        rules.ServicePlan(s.id, ipaddress.IPv4Address(s.vip or ""), tuple(s.port_list()),
                          s.balance, tuple(a for _, a, _ in backends[s.name]), 1)
        for s in services))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--changes", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_lb needs root (namespaces, nftables)", file=sys.stderr)
        return 1
    header()
    servers: list[subprocess.Popen] = []
    before = set(list_named_netns())
    with tempfile.TemporaryDirectory() as tmp, host_namespace() as host:
        args.tmp = tmp
        ctl = Controller(f"sqlite:///{tmp}/state.db", host_ns=host, reconcile=False)
        try:
            ctl.new_network("bench", subnet=str(SUBNET))
            ctl.new_service("one", "bench", ["80/tcp", "81/tcp"])
            ctl.new_service("one-lb", "bench", ["80/tcp", "81/tcp"])
            ctl.new_service("three", "bench", ["80/tcp", "81/tcp"])
            ratio = data_path(ctl, "bench", args, servers)
            ctl.new_network("busy", subnet="10.99.0.0/22")
            p50 = apply_time(ctl, "busy", args)
        except NothingMeasured as exc:
            print(f"bench_lb: measured nothing: {exc}", file=sys.stderr)
            return 1
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
            with contextlib.suppress(Exception):
                ctl.cleanup_all()
            ctl.close()
    left = [n for n in set(list_named_netns()) - before if n.startswith(("pcsb-", "pclb-"))]
    for name in left:
        delete_named_netns(name)
    figures = [(f"{k} {what}", ratio[f"{k} vip{suffix}"]) for k in SERVERS
               for what, suffix in (("conn/s", ""), ("latency", " latency"))]
    print("\ntargets: vip / direct >= 0.9: "
          + ", ".join(f"{name} {value:.3f} ({'met' if value >= 0.9 else 'NOT met'})"
                      for name, value in figures)
          + f"; apply p50 {p50 * 1000:.1f} ms (< 50 ms: {'met' if p50 < 0.05 else 'NOT met'})")
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
