"""How far one etcd carries the overlay's control plane: N simulated hosts, one etcd.

    sudo python3 bench/bench_etcd_fanout.py [--hosts 100,1000] [--events 40] [--burst 20]
                                            [--workers 4] [--idle 10] [--lease-ttl 15]

Each simulated host does on the wire what a ``pycnm agent`` does in etcd and nothing in
the kernel: its own gRPC connection, its three leases (the overlay agent's, the DNS
service's and the load-balancer agent's; each kept alive every TTL/3 with a
LeaseKeepAlive call, as ``refresh_lease`` does), its registration ``hosts/<name>``, and
its own five watch streams on the prefixes the agent watches (``global/drivers/overlay/
overlays/`` and ``hosts/``, ``global/dns/scopes/``, ``global/services/``,
``global/service-backends/``; progress notifications, ``hasleader``). It decodes every
event, and after a change under ``dns/scopes/`` lists that whole prefix (coalesced), as
the DNS service's sync does. The hosts share ``--workers`` processes (asyncio,
grpc.aio), one connection each.

For each N (a fresh throwaway etcd on loopback each time):

- idle: ``--idle`` seconds with the N hosts connected and keeping their leases alive:
  etcd's CPU per keepalive and per second, beside etcd alone before any host connected.
- events: ``--events`` endpoint events written the way an attach and a detach write them
  (pycnm's own code: the cluster-wide IPAM's address compare-and-swap, the endpoint
  record under the writer's lease, then the endpoint's names under ``dns/scopes/`` as
  the writer's DNS service publishes them; a detach withdraws both and releases the
  address), one at a time, each after every host saw the previous one. Per event: the
  time from the start of its write until the last host saw it and until half the hosts
  had (p50 and p99 over the events), for the overlay record (a watch event) and for the
  names (a listing of dns/scopes/ that holds them). Then etcd's CPU per event:
  ``--burst`` events written back to back, net of the idle phase's rate (keepalives);
  the run fails if a host lost a lease.
- etcd's resident memory with no host, with N hosts, after the events; the CPU the
  simulating processes spent per event (they share the 2 cores with etcd: the fan-out
  latency includes their share, so it is an upper bound of etcd's).
- resync: the agent lists each of its overlays twice every 30 s (resync and republish):
  the time and etcd's CPU for one listing of an overlay holding 50 and 2,000 records.

The model for larger clusters built from these figures is in docs/scale.md. Fails (exit
1, FAILED) if an event reached no host or a phase measured nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchlib  # noqa: E402

ETCD_PREFIX = "/pycnm/"
DRIVER_SPACE = "global/drivers/overlay/"
DNS_SPACE = "global/dns/scopes/"
# What a host's `pycnm agent` watches in etcd: the overlay agent, the DNS service and
# the load-balancer agent (drivers/overlay/agent.py, cnm/dns/service.py,
# cnm/services/agent.py); each of the three holds a lease of its own.
WATCHED = (DRIVER_SPACE + "overlays/", DRIVER_SPACE + "hosts/", DNS_SPACE,
           "global/services/", "global/service-backends/")
LEASES = 3
OVERLAY = "benchfan"
CONNECT_CONCURRENCY = 50  # hosts connecting at once per worker
EVENT_TIMEOUT = 30.0
RESYNC = {50: 200, 2000: 20}  # records in an overlay -> listings timed


def mac(block: int, i: int) -> str:
    high, low = divmod(i % 65000 + 2, 256)
    return f"02:42:0a:{block:02x}:{high:02x}:{low:02x}"


# --- /proc ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the simulated hosts (worker processes) ---------------------------------------------


def worker(target: str, names: list[str], ttl: int, conn: Any) -> None:
    """Run ``names`` as simulated hosts until told to report; see the module docstring."""
    asyncio.run(_worker(target, names, ttl, conn))


async def _worker(target: str, names: list[str], ttl: int, conn: Any) -> None:
    import grpc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import etcd3.etcdrpc as rpc

    arrivals: dict[str, list[float]] = defaultdict(list)
    stats = {"keepalives": 0, "ready": 0, "errors": 0, "lost": 0}
    stop = asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    loop = asyncio.get_running_loop()
    # One connection per host, as every pycnm host has its own (no shared subchannel).
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]

    def arrived(event: str, seen: float) -> None:
        times = arrivals[event]
        times.append(seen)
        if len(times) == len(names):
            conn.send(("seen", event))

    def on_event(kind: str, key: str, value: bytes, seen: float, dirty: asyncio.Event) -> None:
        if kind == "put":
            json.loads(value)  # every agent decodes what it is sent
        if key.startswith(ETCD_PREFIX + DNS_SPACE):
            dirty.set()  # the DNS service re-lists dns/scopes/ (coalesced)
            return
        parts = key[len(ETCD_PREFIX) + len(DRIVER_SPACE):].split("/")
        if len(parts) == 4 and parts[2] == "endpoints":  # the agent's parse_endpoint_key
            arrived(f"{parts[3]}:{kind}", seen)

    def span(prefix: str) -> tuple[bytes, bytes]:
        key = (ETCD_PREFIX + prefix).encode()
        return key, key[:-1] + bytes([key[-1] + 1])

    async def relist(channel: Any, dirty: asyncio.Event) -> None:
        """The DNS service's sync: after dns/scopes/ changed, list all of it; a name is
        known to this host once a listing holds it (gone once one no longer does)."""
        key, end = span(DNS_SPACE)
        known: set[str] = set()
        while not stop.is_set():
            await dirty.wait()
            dirty.clear()
            response = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=key, range_end=end))
            seen = time.monotonic()
            present = set()
            for kv in response.kvs:
                json.loads(kv.value)
                present.add(kv.key.decode().rsplit("/", 1)[1])
            for eid in present - known:
                arrived(f"{eid}:dns-put", seen)
            for eid in known - present:
                arrived(f"{eid}:dns-delete", seen)
            known = present

    async def watch(channel: Any, prefix: str, created: asyncio.Event,
                    dirty: asyncio.Event) -> None:
        key, end = span(prefix)

        async def requests() -> Any:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=key, range_end=end, progress_notify=True))
            await stop.wait()

        call = rpc.WatchStub(channel).Watch(requests(), metadata=(("hasleader", "true"),))
        async for response in call:
            if response.created:
                created.set()
            seen = time.monotonic()
            for ev in response.events:
                on_event("delete" if ev.type == 1 else "put", ev.kv.key.decode(),
                         ev.kv.value, seen, dirty)

    async def keepalive(channel: Any, lease: int) -> None:
        await asyncio.sleep(random.uniform(0, ttl / 3))
        while not stop.is_set():
            async def one() -> Any:
                yield rpc.LeaseKeepAliveRequest(ID=lease)

            call = rpc.LeaseStub(channel).LeaseKeepAlive(one())
            if (await call.read()).TTL > 0:
                stats["keepalives"] += 1
            else:
                stats["lost"] += 1
            call.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ttl / 3)

    async def host(name: str) -> None:
        channel = grpc.aio.insecure_channel(target, options=options)
        tasks: list[asyncio.Task[None]] = []
        try:
            async with gate:
                leases = [await rpc.LeaseStub(channel).LeaseGrant(
                    rpc.LeaseGrantRequest(TTL=ttl)) for _ in range(LEASES)]
                record = json.dumps({"name": name, "vtep": "192.0.2.1",
                                     "lease": leases[0].ID, "since": time.time()}).encode()
                await rpc.KVStub(channel).Put(rpc.PutRequest(
                    key=f"{ETCD_PREFIX}{DRIVER_SPACE}hosts/{name}".encode(), value=record,
                    lease=leases[0].ID))
                created = [asyncio.Event() for _ in WATCHED]
                dirty = asyncio.Event()
                tasks = [asyncio.create_task(watch(channel, p, c, dirty))
                         for p, c in zip(WATCHED, created, strict=True)]
                tasks.append(asyncio.create_task(relist(channel, dirty)))
                tasks += [asyncio.create_task(keepalive(channel, lease.ID)) for lease in leases]
                for event in created:
                    await asyncio.wait_for(event.wait(), 60)
            stats["ready"] += 1
            if stats["ready"] == len(names):
                conn.send(("ready", None))
            await stop.wait()
        except Exception:  # noqa: BLE001 - counted and reported: the run then fails
            stats["errors"] += 1
            conn.send(("error", name))
        finally:
            for task in tasks:
                task.cancel()
            await channel.close()

    hosts = [asyncio.create_task(host(name)) for name in names]
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stats":
            conn.send(("stats", dict(stats)))
        elif command == "report":
            stop.set()
            await asyncio.gather(*hosts, return_exceptions=True)
            conn.send(("report", dict(arrivals), dict(stats)))
            return


# --- the run ---------------------------------------------------------------------------


class Fleet:
    """N simulated hosts over ``workers`` processes."""

    def __init__(self, target: str, n: int, workers: int, ttl: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        names = [f"sim{i:04d}" for i in range(n)]
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for w in range(workers):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(target, names[w::workers], ttl, theirs),
                               daemon=True)
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)
        self.pending: dict[str, int] = defaultdict(int)  # event -> workers that saw it all

    def wait(self, kind: str, timeout: float, event: str | None = None) -> bool:
        """Until every worker said ``kind`` (for ``event``); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if kind == "ready" and self.pending["<ready>"] == len(self.conns):
                return True
            if kind == "seen" and event is not None and self.pending[event] == len(self.conns):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready: list[Any] = multiprocessing.connection.wait(self.conns, left)
            for conn in ready:
                message = conn.recv()
                if message[0] == "ready":
                    self.pending["<ready>"] += 1
                elif message[0] == "seen":
                    self.pending[message[1]] += 1
                elif message[0] == "error":
                    raise SystemExit(f"FAILED: simulated host {message[1]} could not connect, "
                                     "register or watch")

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for conn in self.conns:
            conn.send("stats")
        for conn in self.conns:
            while (message := conn.recv())[0] != "stats":
                self._note(message)
            for key, value in message[1].items():
                total[key] += value
        return total

    def _note(self, message: Any) -> None:
        if message[0] == "seen":
            self.pending[message[1]] += 1

    def report(self) -> dict[str, list[float]]:
        merged: dict[str, list[float]] = defaultdict(list)
        for conn in self.conns:
            conn.send("report")
        for conn in self.conns:
            while (message := conn.recv())[0] != "report":
                self._note(message)
            for event, times in message[1].items():
                merged[event] += times
        return merged

    def close(self) -> None:
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def listing(cluster: Any, pid: int, alone: float, records: int, lists: int,
            lease: Any) -> tuple[float, float]:
    """(wall ms, etcd CPU ms) of one listing of an overlay holding ``records`` endpoint
    records, as the agent's resync and republish do every 30 s for each overlay."""
    overlay = f"benchresync{records}"
    for i in range(records):
        cluster.publish(overlay, f"e{i}", {
            "id": f"e{i}", "network": "n" * 64, "vtep": "192.0.2.9", "mac": mac(0x81, i),
            "ip": f"10.129.{i // 250}.{i % 250 + 2}", "ip6": None}, lease)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    for _ in range(lists):
        if len(cluster.endpoints(overlay)) != records:
            raise SystemExit("FAILED: a resync listing missed records")
    took = time.monotonic() - t0
    cpu = max(0.0, cpu_seconds(pid) - cpu0 - alone * took)
    return took * 1000 / lists, cpu * 1000 / lists


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    from cnm.store.etcd import EtcdStore
    from cnm.store.prefixed import PrefixedStore
    from drivers.overlay.cluster import Cluster, put_leased
    from netns_fixtures.etcd import start_etcd

    with tempfile.TemporaryDirectory(prefix="pycnm-bench-fanout-") as data, \
            start_etcd(data) as etcd:
        assert etcd.proc is not None
        pid = etcd.proc.pid
        # A long deadline: how long the writes take under the fan-out is reported (pycnm's
        # default of 2 s per call would turn the slow ones into errors).
        store = EtcdStore(etcd.endpoint, timeout=60.0)
        writes: list[float] = []
        fleet: Fleet | None = None
        try:
            # etcd alone, as a baseline for its own background work.
            rss_empty = rss_mib(pid)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(3.0)
            alone = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)

            start = time.monotonic()
            fleet = Fleet(etcd.endpoint, n, args.workers, args.lease_ttl)
            if not fleet.wait("ready", 60 + n / 10):
                raise SystemExit(f"FAILED: {n} simulated hosts did not all connect in time")
            connect_s = time.monotonic() - start
            rss_hosts = rss_mib(pid)

            k0, cpu0, t0 = fleet.stats()["keepalives"], cpu_seconds(pid), time.monotonic()
            time.sleep(args.idle)
            k1, cpu1, t1 = fleet.stats()["keepalives"], cpu_seconds(pid), time.monotonic()
            idle_s = t1 - t0
            idle_rate = (cpu1 - cpu0) / idle_s
            keepalives = k1 - k0

            writer = PrefixedStore(store, "global/")
            from cnm.ipam import Ipam

            ipam = Ipam(writer)
            pool = ipam.request_pool(subnet="10.128.0.0/16", address_space="global")
            cluster = Cluster(PrefixedStore(store, DRIVER_SPACE), "writer")
            # The writer's lease outlives the run (its keepalives are not what is measured).
            lease = store.grant_lease(3600.0)

            def dns_key(eid: str) -> str:  # the DNS service's publish_records key
                return f"dns/scopes/overlay:{OVERLAY}/writer/{eid}"

            def attach(i: int) -> tuple[str, Any]:
                """What an attach on the writer host writes: the address, the endpoint
                record, then (its DNS service) the endpoint's names."""
                started = time.monotonic()
                eid, address = uuid.uuid4().hex, ipam.request_address(pool.id)
                cluster.publish(OVERLAY, eid, {
                    "id": eid, "network": "n" * 64, "vtep": "192.0.2.9",
                    "mac": mac(0x80, i),
                    "ip": str(address), "ip6": None}, lease)
                put_leased(writer, dns_key(eid), {
                    "names": [f"c{i}", eid[:12]], "ptr": f"c{i}", "host": "writer",
                    "addresses": [str(address)]}, lease)
                writes.append((time.monotonic() - started) * 1000)
                return eid, address

            def detach(eid: str, address: Any) -> None:
                started = time.monotonic()
                cluster.withdraw(OVERLAY, eid)
                writer.delete(dns_key(eid))
                ipam.release_address(pool.id, address)
                writes.append((time.monotonic() - started) * 1000)

            def wait(eid: str, kind: str) -> int:
                """How many of the endpoint's two events (overlay record, DNS names)
                did not reach every host in time."""
                return sum(not fleet.wait("seen", EVENT_TIMEOUT, f"{eid}:{k}")
                           for k in (kind, f"dns-{kind}"))

            # Latency, one event at a time, with the leases kept alive as usual.
            starts: dict[str, float] = {}
            incomplete = 0
            for i in range(args.events // 2):
                started = time.monotonic()
                eid, address = attach(i)
                starts[f"{eid}:put"] = starts[f"{eid}:dns-put"] = started
                incomplete += wait(eid, "put")
                starts[f"{eid}:delete"] = starts[f"{eid}:dns-delete"] = time.monotonic()
                detach(eid, address)
                incomplete += wait(eid, "delete")
            # CPU: a burst of events, net of the idle rate (keepalives) measured above.
            workers = [cpu_seconds(p.pid) for p in fleet.procs]
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            # (attaches first, then detaches: a host whose DNS listing came after both an
            # attach and its detach would never see the name, rightly, and wait forever)
            held = [attach(i) for i in range(args.burst // 2)]
            burst = [eid for eid, _ in held]
            incomplete += sum(wait(eid, "put") for eid in burst)
            for eid, address in held:
                detach(eid, address)
            incomplete += sum(wait(eid, "delete") for eid in burst)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            workers_cpu = sum(cpu_seconds(p.pid) for p in fleet.procs) - sum(workers)
            lost = fleet.stats()["lost"]
            rss_events = rss_mib(pid)
            arrivals = fleet.report()
        finally:
            if fleet is not None:
                fleet.close()

        resync = {size: listing(cluster, pid, alone, size, lists, lease)
                  for size, lists in RESYNC.items()}
        store.close()

    events = len(starts) // 2
    last: dict[bool, list[float]] = {False: [], True: []}  # by "is a DNS event"
    middle: dict[bool, list[float]] = {False: [], True: []}
    for event, started in starts.items():
        times = arrivals.get(event, [])
        if len(times) != n:
            continue
        offsets = sorted((t - started) * 1000 for t in times)
        last[":dns-" in event].append(offsets[-1])
        middle[":dns-" in event].append(statistics.median(offsets))
    if not last[False] or not last[True]:
        raise benchlib.MeasuredNothing(f"fan-out to {n} hosts")
    if not keepalives:
        raise benchlib.MeasuredNothing(f"lease keepalives of {n} hosts")
    return {
        "n": n, "connect_s": connect_s, "rss": (rss_empty, rss_hosts, rss_events),
        "alone": alone, "idle_rate": idle_rate, "keepalives": keepalives,
        "idle_s": idle_s,
        "event_cpu_ms": (cpu1 - cpu0 - idle_rate * (t1 - t0)) * 1000 / (2 * len(burst)),
        "burst": 2 * len(burst), "burst_s": t1 - t0, "lost": lost,
        "workers_ms": workers_cpu * 1000 / (2 * len(burst)), "events": events,
        "complete": len(last[False]), "incomplete": incomplete, "last": last,
        "middle": middle,
        "resync": resync, "writes": writes,
    }


def show(r: dict[str, Any], ttl: int) -> None:
    n, (empty, hosts, after) = r["n"], r["rss"]
    print(f"\n== {n} simulated hosts (connected in {r['connect_s']:.1f} s)")
    print(f"fan-out of one endpoint event ({r['complete']} of {r['events']} events reached "
          f"all {n} hosts), from the start of its write:")
    for dns, what in ((False, "overlay record (watch event)"),
                      (True, "DNS names (watch event, then a listing of dns/scopes/)")):
        print(f"  {what}:")
        print(f"    last host    {benchlib.spread(r['last'][dns], 'last arrival')}   "
              f"p99 {benchlib.percentile(r['last'][dns], 0.99):.1f} ms")
        print(f"    half of them {benchlib.spread(r['middle'][dns], 'median arrival')}   "
              f"p99 {benchlib.percentile(r['middle'][dns], 0.99):.1f} ms")
    slow = sum(w > 2000 for w in r["writes"])
    print(f"the writer's attach or detach (4 etcd calls): "
          f"{benchlib.spread(r['writes'], 'writes')}, max {max(r['writes']):.0f} ms; "
          f"{slow} took over 2 s (pycnm's deadline per call)")
    print(f"etcd CPU per endpoint event: {r['event_cpu_ms']:.2f} ms (the writes, {n} x 2 "
          f"watch events and {n} listings of dns/scopes/; {r['burst']} events in "
          f"{r['burst_s']:.1f} s, net of the idle rate); the simulating processes: "
          f"{r['workers_ms']:.2f} ms")
    per_ka = (r["idle_rate"] - r["alone"]) * r["idle_s"] * 1000 / r["keepalives"]
    print(f"etcd idle with {n} hosts: {100 * r['idle_rate']:.1f}% of a core "
          f"(alone {100 * r['alone']:.1f}%); {r['keepalives'] / r['idle_s']:.0f} keepalives/s "
          f"(TTL {ttl} s, every {ttl / 3:.0f} s), {per_ka:.3f} ms CPU each")
    print(f"etcd RSS: {empty:.0f} MiB alone, {hosts:.0f} MiB with {n} hosts "
          f"({(hosts - empty) * 1024 / n:.0f} KiB per host), {after:.0f} MiB after the events")
    for size, (wall, cpu) in r["resync"].items():
        print(f"resync listing of one overlay with {size} endpoints: {wall:.2f} ms, "
              f"etcd CPU {cpu:.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", default="100,1000", help="comma-separated host counts")
    parser.add_argument("--events", type=int, default=40, help="endpoint events per count")
    parser.add_argument("--burst", type=int, default=20, help="events of the CPU burst")
    parser.add_argument("--workers", type=int, default=4, help="simulating processes")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase")
    parser.add_argument("--lease-ttl", type=int, default=15)
    args = parser.parse_args()
    try:
        counts = [int(c) for c in args.hosts.split(",")]
    except ValueError:
        parser.error(f"--hosts must be comma-separated numbers, not {args.hosts!r}")
    if not all(c >= args.workers >= 1 for c in counts) or min(args.events, args.burst) < 2:
        parser.error("each --hosts count must be >= --workers >= 1; --events and --burst "
                     ">= 2")
    benchlib.header(f"{args.workers} simulating processes")
    results = []
    for n in counts:
        results.append(measure(n, args))
        show(results[-1], args.lease_ttl)
    failed = [r["n"] for r in results if r["incomplete"] or r["lost"]]
    benchlib.footer()
    if failed:
        print(f"FAILED: some events did not reach every host within {EVENT_TIMEOUT:.0f} s, "
              f"or a lease was lost (hosts: {failed})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
