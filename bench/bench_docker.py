"""pycnm as a Docker network plugin against Docker's built-in bridge, side by side.

    sudo python3 bench/bench_docker.py [--runs 30] [--creates 15] [--rounds 3]

One run, one dockerd (started here as the tests start theirs: netns_fixtures.docker, with
``--bridge=none --iptables=false``), one ``pycnm plugin serve`` on the real socket with a
throwaway store. The built-in side is a user-defined ``docker network create -d bridge``
network on that same dockerd, so both sides get Docker's embedded DNS and neither has
Docker's default bridge. Measured with the sides taking turns going first (pycnm, bridge;
then bridge, pycnm; ...) so drift and warm caches favour neither:

- ``docker network create`` (each network removed again, untimed);
- ``docker run --rm IMAGE true`` on a network of each kind;
- 20 concurrent ``docker run -d IMAGE sleep``: wall time of the batch and each run's time;
- the plugin's own time per call and per container, from its log ("-> 200 in X ms").

Prints the commit and command, median, p10 and p90 (milliseconds) and a verdict against
issue 3's targets: pycnm's median ``docker run`` within 5% of the bridge's, and under
10 ms of plugin time per container. Fails (exit 1, no verdict) if any measure has no
sample or the plugin's log has no line for one of a container's calls. No packet leaves
the machine: the containers run ``true`` or ``sleep``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchlib import footer, header, rotated, summary  # noqa: E402
from netns_fixtures.docker import (  # noqa: E402 - after the path
    DOCKER,
    DockerEngine,
    _import_image,
    start_engine,
    stop_engine,
)

SOCKET = "/run/docker/plugins/pycnm.sock"
LINE = re.compile(r" INFO plugin_server: (\S+) .*-> 200 in ([0-9.]+) ms")
START_PATH = ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
              "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.EndpointOperInfo")
PER_CONTAINER = ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
                 "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.EndpointOperInfo",
                 "NetworkDriver.RevokeExternalConnectivity", "NetworkDriver.Leave",
                 "NetworkDriver.DeleteEndpoint")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


class Plugin:
    def __init__(self, workdir: str) -> None:
        self.log = Path(workdir) / "plugin.log"
        self.store = f"sqlite://{workdir}/state.db"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.path.exists(SOCKET):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(SOCKET)
                raise SystemExit(f"another plugin already serves {SOCKET}: stop it first")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cnm.cli", "--store", self.store, "plugin", "serve",
                 "--socket", SOCKET], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "serving on" in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise SystemExit(f"the plugin exited:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise SystemExit("the plugin did not start within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def mark(self) -> int:
        return self.log.stat().st_size

    def calls_since(self, mark: int, network_id: str) -> dict[str, list[float]]:
        """Durations per call since ``mark`` on one network (the socket is the machine's:
        anything else that talks to it must not count)."""
        calls: dict[str, list[float]] = defaultdict(list)
        with open(self.log, "rb") as handle:
            handle.seek(mark)
            for line in handle.read().decode(errors="replace").splitlines():
                found = LINE.search(line)
                if found and f"NetworkID={network_id[:12]} " in line:
                    calls[found.group(1)].append(float(found.group(2)))
        return calls


@contextlib.contextmanager
def engine_and_plugin() -> Iterator[tuple[DockerEngine, Plugin]]:
    workdir = tempfile.mkdtemp(prefix="pycnm-bench-docker-")
    engine = start_engine(workdir)  # its folder goes with it; the plugin's log stays
    plugin = Plugin(tempfile.mkdtemp(prefix="pycnm-bench-plugin-"))
    try:
        _import_image(engine, workdir)
        plugin.start()
        yield engine, plugin
    finally:
        with contextlib.suppress(Exception):
            ids = engine.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                engine.docker("rm", "-f", *ids, check=False)
            for net in engine.docker("network", "ls", "-q", "--filter", "name=pb-",
                                     check=False).stdout.split():
                engine.docker("network", "rm", net, check=False)
        plugin.stop()
        stop_engine(engine)
        # Whatever dockerd did not remove (a network rm refused while a container was
        # still going away) would stay in the kernel: the bridge and the host's table.
        subprocess.run([sys.executable, "-m", "cnm.cli", "--store", plugin.store, "cleanup"],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, timeout=120, check=False)


def docker(engine: DockerEngine, *args: str) -> None:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DOCKER_HOST": engine.host})
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="docker run --rm per side")
    parser.add_argument("--creates", type=int, default=15, help="network creates per side")
    parser.add_argument("--rounds", type=int, default=3, help="batches of 20 per side")
    args = parser.parse_args()
    sides = {"pycnm": "pycnm", "bridge": "bridge"}  # name -> docker's -d
    subnets = {"pycnm": "10.201.0.0/16", "bridge": "10.202.0.0/16"}
    results: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in sides}
    with engine_and_plugin() as (engine, plugin):
        image = engine.image
        version = engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        # network create; the sides take turns going first.
        for i in range(args.creates):
            for side in rotated(list(sides), i):
                driver = sides[side]
                name = f"pb-c{i}-{side}"
                results[side]["network create"].append(timed(lambda d=driver, n=name: docker(
                    engine, "network", "create", "-d", d, n)))
                docker(engine, "network", "rm", name)
        for side, driver in sides.items():
            docker(engine, "network", "create", "-d", driver, "--subnet", subnets[side],
                   f"pb-{side}")
        for side in sides:  # warm up: first container, image layers, plugin imports
            docker(engine, "run", "--rm", "--network", f"pb-{side}", image, "true")
        # docker run --rm
        mark = plugin.mark()
        for i in range(args.runs):
            for side in rotated(list(sides), i):
                results[side]["docker run --rm"].append(timed(lambda s=side: docker(
                    engine, "run", "--rm", "--network", f"pb-{s}", image, "true")))
        pycnm_id = engine.docker("network", "inspect", "-f", "{{.Id}}", "pb-pycnm").stdout
        run_calls = plugin.calls_since(mark, pycnm_id.strip())
        # 20 concurrent docker run -d
        for r in range(args.rounds):
            for side in rotated(list(sides), r):
                names = [f"pb-r{r}-{side}-{i}" for i in range(20)]

                def one(name: str, s: str = side) -> float:
                    return timed(lambda: docker(engine, "run", "-d", "--name", name,
                                                "--network", f"pb-{s}", image, "sleep", "600"))

                start = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(20) as pool:
                    each = list(pool.map(one, names))
                results[side]["20 x docker run -d (batch)"].append(
                    (time.perf_counter() - start) * 1000)
                results[side]["20 x docker run -d (each)"].extend(each)
                docker(engine, "rm", "-f", *names)
    # Measured nothing? Then there is no figure: fail, never print a verdict.
    for side in sides:
        for measure in ("network create", "docker run --rm", "20 x docker run -d (batch)"):
            summary(results[side][measure], f"{side} {measure}")
    missing = [c for c in PER_CONTAINER if not run_calls.get(c)]
    if missing:
        raise SystemExit(f"FAILED: no plugin log line for {', '.join(missing)} during the "
                         f"docker run --rm phase (see {plugin.log}): the plugin's time per "
                         "container was not measured")
    header(f"docker {version}; milliseconds")
    print(f"{'measure':32} {'pycnm med':>10} {'p10':>8} {'p90':>8} {'bridge med':>11} "
          f"{'p10':>8} {'p90':>8} {'ratio':>7}")
    for measure in results["pycnm"]:
        mp, p10p, pp = summary(results["pycnm"][measure], measure)
        mb, p10b, pb = summary(results["bridge"][measure], measure)
        print(f"{measure:32} {mp:10.1f} {p10p:8.1f} {pp:8.1f} {mb:11.1f} {p10b:8.1f} {pb:8.1f} "
              f"{mp / mb:7.3f}")
    print("\n# plugin time per call during the docker run --rm phase (ms)")
    print(f"{'call':44} {'count':>6} {'median':>8} {'p10':>8} {'p90':>8}")
    for call, samples in sorted(run_calls.items()):
        med, p10, p90 = summary(samples, call)
        print(f"{call:44} {len(samples):6d} {med:8.2f} {p10:8.2f} {p90:8.2f}")
    print(f"\nplugin log: {plugin.log}")
    containers = len(run_calls["NetworkDriver.Join"])
    per_container = sum(sum(run_calls.get(c, [])) for c in PER_CONTAINER) / containers
    start_path = sum(sum(run_calls.get(c, [])) for c in START_PATH) / containers
    run_ratio = (statistics.median(results["pycnm"]["docker run --rm"])
                 / statistics.median(results["bridge"]["docker run --rm"]))
    print(f"\nplugin time per container, whole life (sum of its calls, mean): "
          f"{per_container:.2f} ms")
    print(f"plugin time per container, start path (CreateEndpoint, Join, "
          f"ProgramExternalConnectivity, EndpointOperInfo): {start_path:.2f} ms")
    print(f"target docker run median within 5% of bridge: ratio {run_ratio:.3f} -> "
          f"{'met' if run_ratio <= 1.05 else 'NOT met'}")
    print(f"target under 10 ms of plugin time per container: {per_container:.2f} ms -> "
          f"{'met' if per_container < 10 else 'NOT met'}")
    footer()
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root: dockerd, namespaces and nftables need it")
    sys.exit(main())
