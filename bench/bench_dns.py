"""pycnm's resolver against Docker's embedded DNS, side by side in one run.

    sudo python3 bench/bench_dns.py [--seconds 10] [--runs 3] [--engine 20.10]

One emulated host (a namespace) holds both: a ``pycnm agent`` (embedded SQLite store)
with a bridge network and two sandboxes, and a dockerd (netns_fixtures.docker, in that
namespace) with a user-defined bridge network and two busybox containers. The host's own
DNS server is a dnsmasq in a namespace of its own (198.18.54.2) that answers
``www.example.test``; Docker's client container is given it with ``--dns`` (Docker dials
it from the container), pycnm reads it from the host's resolv.conf (and dials it from the
host). The same load generator runs in both clients' namespaces against 127.0.0.11:

- throughput: dnsperf, 4 clients, up to 100 queries in flight, ``--seconds`` long, for a
  local name (the other sandbox / container) and for a forwarded name;
- latency: dnsperf with one query in flight for 3 s, every answer's time kept (``-v``):
  p50 and p99.

Runs alternate pycnm and Docker; every figure is the median over ``--runs`` with the
range. Targets (issue 11): pycnm's queries per second at least half Docker's for local
names, p50 under 1 ms for local names, no query lost. Exit 1 if a run measured nothing
(no answer at all), 2 if a target is missed. Holds /tmp/pycnm-locks/docker.lock while its
dockerd runs; no packet leaves the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchlib import footer, header  # noqa: E402 - after the path
from cnm.osl.netns import delete_named_netns  # noqa: E402 - after the path
from netns_fixtures.docker import (  # noqa: E402
    DockerEngine,
    import_image,
    start_engine,
    stop_engine,
)
from netns_fixtures.netns import Namespace, veth  # noqa: E402

LOCK = "/tmp/pycnm-locks/docker.lock"
HOST_ADDRESS, UPSTREAM_ADDRESS = "198.18.54.1", "198.18.54.2"  # RFC 2544: never routed
PYCNM_SUBNET, DOCKER_SUBNET = "10.80.0.0/24", "10.81.0.0/24"
FORWARDED = "www.example.test"
LATENCY_SECONDS = 3


@dataclass
class Result:
    qps: float
    sent: int
    completed: int
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.completed


def dnsperf(enter: list[str], name: str, seconds: float, workdir: str) -> Result:
    """Throughput: dnsperf -c 4 in the namespace ``enter`` names."""
    data = os.path.join(workdir, f"q-{secrets.token_hex(3)}.txt")
    Path(data).write_text(f"{name} A\n")
    out = subprocess.run([*enter, "dnsperf", "-s", "127.0.0.11", "-d", data, "-l",
                          str(seconds), "-c", "4", "-q", "100"], capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    if not (sent and done and qps):
        raise SystemExit(f"dnsperf printed no figures:\n{out}")
    return Result(float(qps.group(1)), int(sent.group(1)), int(done.group(1)))


def latency(enter: list[str], name: str, workdir: str) -> tuple[float, float]:
    """p50 and p99 in ms with one query in flight (every answer's time, dnsperf -v)."""
    data = os.path.join(workdir, f"l-{secrets.token_hex(3)}.txt")
    Path(data).write_text(f"{name} A\n")
    out = subprocess.run([*enter, "dnsperf", "-s", "127.0.0.11", "-d", data, "-l",
                          str(LATENCY_SECONDS), "-c", "1", "-q", "1", "-v"],
                         capture_output=True, text=True, timeout=LATENCY_SECONDS + 60).stdout
    times = sorted(float(line.split()[-1]) * 1000 for line in out.splitlines()
                   if line.startswith("> NOERROR"))
    if not times:
        raise SystemExit(f"the latency run got no answer:\n{out[-2000:]}")
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


class Bench:
    def __init__(self, workdir: str, engine_version: str) -> None:
        self.workdir = workdir
        self.tag = secrets.token_hex(3)
        self.engine_version = engine_version
        self.host = Namespace(f"dnsb{self.tag}h", forwarding=True)
        self.upstream = Namespace(f"dnsb{self.tag}u")
        self.store = f"sqlite:///{workdir}/state.db"
        self.agent: subprocess.Popen | None = None
        self.engine: DockerEngine | None = None

    # --- the shared part ------------------------------------------------------------------

    def wire(self) -> None:
        veth(self.host, "up0", self.upstream, "eth0", f"{HOST_ADDRESS}/24",
             f"{UPSTREAM_ADDRESS}/24")
        # Docker dials its --dns server from the container: the answer must find its way
        # back to the container's subnet, through the host.
        self.upstream.run(["ip", "route", "add", DOCKER_SUBNET, "via", HOST_ADDRESS])
        self.upstream.popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                             "--bind-interfaces", f"--listen-address={UPSTREAM_ADDRESS}",
                             "--address=/example.test/198.51.100.7", "--address=/#/",
                             "--pid-file=", "--user=root"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        folder = f"/etc/netns/{self.host.name}"
        os.makedirs(folder, exist_ok=True)
        Path(folder, "resolv.conf").write_text(f"nameserver {UPSTREAM_ADDRESS}\n")

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.agent.wait(timeout=30)
        with contextlib.suppress(Exception):
            self.pycnm("cleanup")
        if self.engine is not None:
            with contextlib.suppress(Exception):
                stop_engine(self.engine)
        self.upstream.delete()
        self.host.delete()
        delete_named_netns(self.host.name)  # and its /etc/netns folder

    # --- pycnm ------------------------------------------------------------------------------

    def pycnm(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "cnm.cli", "--store", self.store,
                                 "--host-ns", self.host.name, *args], capture_output=True,
                                text=True, timeout=120, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"pycnm {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start_pycnm(self) -> list[str]:
        log = open(os.path.join(self.workdir, "agent.log"), "ab")  # noqa: SIM115
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "cnm.cli", "--store", self.store, "--host-ns",
             self.host.name, "-v", "agent"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 60
        while "serving" not in Path(self.workdir, "agent.log").read_text(errors="replace"):
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("pycnm agent did not start: "
                                 + Path(self.workdir, "agent.log").read_text()[-2000:])
            time.sleep(0.1)
        net = f"b{self.tag}"
        self.pycnm("network", "create", net, "--subnet", PYCNM_SUBNET)
        for sb in ("target", "client"):
            self.pycnm("sandbox", "create", f"{sb}{self.tag}")
            self.pycnm("attach", net, f"{sb}{self.tag}")
        return ["ip", "netns", "exec", f"pcsb-client{self.tag}"]

    # --- Docker -------------------------------------------------------------------------------

    def start_docker(self) -> list[str]:
        root = os.path.join(self.workdir, "docker")
        os.makedirs(root)
        self.engine = engine = start_engine(root, self.engine_version, netns=self.host.name)
        import_image(engine, root)
        engine.docker("network", "create", "--subnet", DOCKER_SUBNET, f"d{self.tag}")
        for name, extra in (("target", []), ("client", ["--dns", UPSTREAM_ADDRESS])):
            engine.docker("run", "-d", "--name", f"{name}{self.tag}", "--network",
                          f"d{self.tag}", *extra, engine.image, "sleep", "3600")
        pid = engine.docker("inspect", "-f", "{{.State.Pid}}", f"client{self.tag}"
                            ).stdout.strip()
        return ["nsenter", "-n", "-t", pid]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>10,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def ms(values: list[float]) -> str:
    return f"{statistics.median(values):>6.3f} [{min(values):.3f}-{max(values):.3f}]"


@contextlib.contextmanager
def docker_lock() -> Iterator[None]:
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engine", default="20.10", choices=("20.10", "26.1"))
    args = parser.parse_args()
    header(f"Docker {args.engine}")
    results: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as workdir, docker_lock():
        bench = Bench(workdir, args.engine)
        try:
            bench.wire()
            sides = {"pycnm": bench.start_pycnm(), "docker": bench.start_docker()}
            names = {"pycnm": f"target{bench.tag}", "docker": f"target{bench.tag}"}
            for side, enter in sides.items():  # both answer before anything is measured
                dnsperf(enter, names[side], 1, workdir)
                dnsperf(enter, FORWARDED, 1, workdir)
            for run in range(args.runs):
                order = list(sides) if run % 2 == 0 else list(reversed(sides))
                for side in order:
                    for kind, name in (("local", names[side]), ("forwarded", FORWARDED)):
                        got = dnsperf(sides[side], name, args.seconds, workdir)
                        got.p50_ms, got.p99_ms = latency(sides[side], name, workdir)
                        results.setdefault((side, kind), []).append(got)
                        print(f"run {run + 1}: {side:6} {kind:9} {got.qps:>9,.0f} q/s, "
                              f"lost {got.lost}, p50 {got.p50_ms:.3f} ms, "
                              f"p99 {got.p99_ms:.3f} ms", flush=True)
        finally:
            bench.close()
    print(f"\nDNS at 127.0.0.11, {args.runs} runs of {args.seconds:g} s (dnsperf -c 4 -q "
          f"100), latency with one query in flight; Docker {args.engine}; median [range]\n")
    print(f"{'':22}{'queries/s':>26}{'p50 ms':>24}{'p99 ms':>24}{'lost':>8}")
    for (side, kind), runs in sorted(results.items(), key=lambda i: (i[0][1], i[0][0])):
        print(f"{side + ' ' + kind:22}{summary([r.qps for r in runs]):>26}"
              f"{ms([r.p50_ms for r in runs]):>24}{ms([r.p99_ms for r in runs]):>24}"
              f"{sum(r.lost for r in runs):>8}")
    if any(r.completed == 0 for runs in results.values() for r in runs) or not results:
        print("FAILED: a run got no answer at all", file=sys.stderr)
        return 1
    ours = statistics.median(r.qps for r in results[("pycnm", "local")])
    theirs = statistics.median(r.qps for r in results[("docker", "local")])
    p50 = statistics.median(r.p50_ms for r in results[("pycnm", "local")])
    lost = sum(r.lost for (side, _), runs in results.items() if side == "pycnm" for r in runs)
    verdicts = [
        (f"local names: pycnm {ours:,.0f} q/s >= half of Docker's {theirs:,.0f}",
         ours >= theirs / 2),
        (f"local names: pycnm p50 {p50:.3f} ms < 1 ms", p50 < 1.0),
        (f"pycnm lost {lost} queries (none allowed)", lost == 0),
    ]
    print()
    for text, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    footer()
    return 0 if all(ok for _, ok in verdicts) else 2


if __name__ == "__main__":
    sys.exit(main())
