"""The yardstick: Docker's own overlay (swarm mode) beside pycnm's, in one run, between the
same two Docker engines on two emulated hosts.

    sudo python3 bench/bench_multihost_docker.py [--rounds 10] [--iperf-runs 5]
                                                 [--iperf-seconds 5] [--engines 20.10,26.1]

The hosts are those of the multi-host e2e tests (``tests.e2e.multihost``): h1 and h2 on
their own underlay subnets joined by a router, each with its own dockerd (in its own
network and mount namespaces) and its own ``pycnm plugin serve``, one etcd (TLS, client
certificates) on the underlay. On the same engines:

- pycnm: ``docker network create -d pycnm -o driver=overlay`` on each host (pycnm's
  cluster-wide IPAM), plugins with pycnm's default lease (15 s);
- Docker: ``docker swarm init`` on h2 (the manager), ``swarm join`` from h1 (a worker),
  both advertising their underlay address, and ``docker network create -d overlay
  --attachable`` on the manager; its VXLAN on UDP 4790 (``--data-path-port``), so the two
  overlays' VTEPs never share a socket.

Measured, alternating pycnm and Docker round by round:

- convergence: a probe container on h2 pings (raw ICMP every 2 ms, ARP retry lowered to
  5 ms) the address a new container on h1 will get (``docker run --ip``), from just before
  ``docker run -d`` until the first reply;
- throughput: iperf3, one TCP stream, from a container on h1 to the probe container on h2
  (the machine's iperf3 run in the containers' network namespaces), beside the bare
  underlay between the two host namespaces; median of ``--iperf-runs``;
- a dead host's entries: h1 dies at once (its plugin, dockerd and containerd SIGKILLed):
  the time until h2 no longer holds h1's container in each overlay's VTEP neighbour table
  (pycnm: its overlay namespace; Docker: its ``1-NETID`` namespace).

It fails (exit 1) when a figure measured nothing, and says why when swarm cannot start.
Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probes import Prober, iperf, percentile  # noqa: E402

from bench.benchlib import footer, header  # noqa: E402
from cnm.osl.netns import write_sysctl  # noqa: E402
from netns_fixtures.docker import stop_daemon  # noqa: E402
from tests.e2e.multihost import DockerHost, MultiHostDocker, multihost_docker  # noqa: E402

PYCNM_SUBNET = "10.40.0.0/24"
SWARM_SUBNET = "10.41.0.0/24"
SWARM_DATA_PORT = "4790"
DEAD_TIMEOUT = 120.0


class Overlay:
    """One overlay as the benchmark drives it: its Docker network name on each host and
    how to read h2's neighbour entries for it."""

    def __init__(self, label: str, network: str, subnet: str) -> None:
        self.label = label
        self.network = network
        self.hosts = list(ipaddress.ip_network(subnet).hosts())[50:]
        self.neighbours: Callable[[], set[str]] = set  # h2's entries, set once it exists
        self.convergence: list[float] = []
        self.throughput: list[float] = []
        self.dead_after: float | None = None

    def next_address(self) -> str:
        return str(self.hosts.pop(0))


def container_pid(host: DockerHost, name: str) -> int:
    return int(host.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())


def netns_of(host: DockerHost, name: str) -> str:
    return f"/proc/{container_pid(host, name)}/ns/net"


def neighbours_in(path: str) -> set[str]:
    """The IPv4 neighbour entries with a MAC in the namespace at ``path``."""
    out = subprocess.run(["nsenter", f"--net={path}", "ip", "-4", "neigh", "show"],
                         capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if "lladdr" in line}


def start_swarm(h1: DockerHost, h2: DockerHost) -> str | None:
    """h2 the manager, h1 a worker; None, or why swarm did not start."""
    init = h2.docker("swarm", "init", "--advertise-addr", h2.address, "--listen-addr",
                     f"{h2.address}:2377", "--data-path-port", SWARM_DATA_PORT, check=False)
    if init.returncode != 0:
        return f"docker swarm init failed: {init.stderr.strip()}"
    token = h2.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    join = h1.docker("swarm", "join", "--token", token, "--advertise-addr", h1.address,
                     "--listen-addr", f"{h1.address}:2377", f"{h2.address}:2377", check=False)
    if join.returncode != 0:
        return f"docker swarm join failed: {join.stderr.strip()}"
    return None


def swarm_namespace(mh: MultiHostDocker, host: DockerHost, network: str) -> str:
    """Docker's overlay namespace of ``network`` on ``host``, as this process reaches it."""
    assert host.engine is not None
    netid = host.docker("network", "inspect", "-f", "{{.Id}}", network).stdout.strip()
    return host.mounts.inside(os.path.join(host.engine.netns_dir, f"1-{netid[:10]}"))


def converge(host: DockerHost, prober: Prober, overlay: Overlay, key: str,
             image: str) -> float:
    """Seconds from just before ``docker run`` on ``host`` to the probe's first reply."""
    address = overlay.next_address()
    outcome: list[float | BaseException] = []

    def probe() -> None:
        try:
            outcome.append(prober.first_reply(address, timeout=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    thread = threading.Thread(target=probe)
    start = time.perf_counter()
    thread.start()
    host.docker("run", "-d", "--name", key, "--network", overlay.network, "--ip", address,
                image, "sleep", "3600")
    thread.join(90)
    result = outcome[0] if outcome else TimeoutError("the probe did not finish")
    if isinstance(result, BaseException):
        raise RuntimeError(f"{overlay.label}: no reply from {address}: {result}")
    return result - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iperf-runs", type=int, default=5)
    parser.add_argument("--iperf-seconds", type=int, default=5)
    parser.add_argument("--engines", default="20.10,26.1", help="h1's and h2's Docker")
    args = parser.parse_args()
    versions = tuple(args.engines.split(","))
    header(f"engines {args.engines}")
    with multihost_docker(versions=versions, lease_ttl=15.0) as mh:
        return run(mh, args)


def run(mh: MultiHostDocker, args: argparse.Namespace) -> int:
    h1, h2 = mh.hosts
    assert h1.engine is not None and h2.engine is not None
    image = h1.engine.image
    print(f"engines: h1 Docker {h1.engine.version}, h2 Docker {h2.engine.version}; "
          f"pycnm lease 15 s")
    why = start_swarm(h1, h2)
    if why is not None:
        print(f"FAILED: Docker's overlay cannot run here: {why}")
        return 1
    h2.docker("network", "create", "-d", "overlay", "--attachable", "--subnet", SWARM_SUBNET,
              "swov")
    for host in mh.hosts:
        host.docker("network", "create", "-d", "pycnm", "--ipam-driver", "pycnm",
                    "--ipam-opt", "scope=global", "--subnet", PYCNM_SUBNET,
                    "-o", "driver=overlay", "-o", "overlay=pyov", "pyov")
    vni = mh.vni_of("pyov")
    pycnm = Overlay("pycnm", "pyov", PYCNM_SUBNET)
    swarm = Overlay("Docker swarm", "swov", SWARM_SUBNET)
    both = (pycnm, swarm)
    probes: dict[str, Prober] = {}
    underlay: list[float] = []
    try:
        for overlay in both:
            h2.docker("run", "-d", "--name", f"probe-{overlay.network}", "--network",
                      overlay.network, image, "sleep", "3600")
            path = netns_of(h2, f"probe-{overlay.network}")
            write_sysctl(path, "net/ipv4/neigh/eth0/retrans_time_ms", "5")
            probes[overlay.network] = Prober(path)
        pycnm.neighbours = lambda: mh.remote_ips(h2, vni)
        swarm_ns = swarm_namespace(mh, h2, "swov")
        swarm.neighbours = lambda: neighbours_in(swarm_ns)

        for n in range(args.rounds):
            for overlay in both:
                overlay.convergence.append(converge(h1, probes[overlay.network], overlay,
                                                    f"c{n}-{overlay.network}", image))
        for overlay in both:
            name = f"tp-{overlay.network}"
            h1.docker("run", "-d", "--name", name, "--network", overlay.network, image,
                      "sleep", "3600")
        probe_ips = {o.network: h2.docker(
            "inspect", "-f", f"{{{{.NetworkSettings.Networks.{o.network}.IPAddress}}}}",
            f"probe-{o.network}").stdout.strip() for o in both}
        port = 5400
        for _ in range(args.iperf_runs):
            for overlay in both:
                port += 1
                overlay.throughput.append(iperf(
                    ["nsenter", f"--net={netns_of(h2, f'probe-{overlay.network}')}"],
                    ["nsenter", f"--net={netns_of(h1, f'tp-{overlay.network}')}"],
                    probe_ips[overlay.network], args.iperf_seconds, port, mh.lab.processes))
            port += 1
            underlay.append(iperf(["ip", "netns", "exec", h2.name],
                                  ["ip", "netns", "exec", h1.name], h2.address,
                                  args.iperf_seconds, port, mh.lab.processes))

        dead_host(mh, h1, both)
    finally:
        for prober in probes.values():
            prober.close()
    report(args, both, underlay)
    if not all(o.convergence and all(o.throughput) for o in both) or not all(underlay):
        print("FAILED: a figure measured nothing")
        return 1
    return 0


def dead_host(mh: MultiHostDocker, h1: DockerHost, overlays: tuple[Overlay, ...]) -> None:
    """h1 dies at once; time until h2 drops h1's containers from each overlay."""
    watched = {}
    for overlay in overlays:
        ip = h1.docker("inspect", "-f",
                       f"{{{{.NetworkSettings.Networks.{overlay.network}.IPAddress}}}}",
                       f"tp-{overlay.network}").stdout.strip()
        if ip not in overlay.neighbours():
            raise RuntimeError(f"{overlay.label}: h2 does not know {ip} before the death")
        watched[overlay.label] = (overlay, ip)
    assert h1.engine is not None
    died = time.monotonic()
    mh.kill_plugin(h1)
    stop_daemon(h1.engine, signal.SIGKILL, stop_containerd=True)
    while watched and time.monotonic() - died < DEAD_TIMEOUT:
        for label, (overlay, ip) in list(watched.items()):
            if ip not in overlay.neighbours():
                overlay.dead_after = time.monotonic() - died
                del watched[label]
        time.sleep(0.05)


def report(args: argparse.Namespace, overlays: tuple[Overlay, ...],
           underlay: list[float]) -> None:
    print(f"convergence ({args.rounds} containers each; docker run on h1 -> first reply "
          "seen from h2), ms:")
    for o in overlays:
        ms = [s * 1000 for s in o.convergence]
        if ms:
            print(f"  {o.label:13s} p50 {statistics.median(ms):8.1f}   p90 "
                  f"{percentile(ms, 0.9):8.1f}   max {max(ms):8.1f}")
    print(f"iperf3 TCP, 1 stream, {args.iperf_seconds} s, median of {args.iperf_runs} "
          "(runs), Gbit/s:")
    under = statistics.median(underlay) if underlay else 0.0
    for o in overlays:
        if o.throughput:
            got = statistics.median(o.throughput)
            print(f"  {o.label:13s} {got:6.2f}  ({100 * got / under:.0f}% of the underlay; "
                  f"{', '.join(f'{g:.1f}' for g in o.throughput)})")
    print(f"  {'underlay':13s} {under:6.2f}  ({', '.join(f'{g:.1f}' for g in underlay)})")
    print(f"a dead host's entries (h1 SIGKILLed: plugin, dockerd, containerd), gone from h2 "
          f"after (limit {DEAD_TIMEOUT:.0f} s):")
    for o in overlays:
        print(f"  {o.label:13s} " + (f"{o.dead_after:.1f} s" if o.dead_after is not None
                                     else f"still there after {DEAD_TIMEOUT:.0f} s"))
    footer()


if __name__ == "__main__":
    sys.exit(main())
