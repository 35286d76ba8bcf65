"""Docker on several emulated hosts, each with its own dockerd and its own pycnm plugin,
on one routed underlay with one etcd: the picture a user of the overlay runs.

    h1 172.31.1.2/24 --.1--+                      +--.1-- 192.168.1.2/24 h2
                           |        router        |
    etcd 198.18.E.2/24 -.1-+  (no route to any    +-.1- 198.19.O.2/24 outside
                           |   overlay subnet)    |
    (this process) 100.127.R.1/30 --.2-- management link: a /32 route to etcd only

Each host is a network namespace with its own *mount* namespace (``PrivateMounts``): its
dockerd (``netns_fixtures.docker``, run there through nsenter) finds its plugin at the
standard ``/run/docker/plugins/pycnm.sock``, a tmpfs of that host's own, so the two
engines never see each other's plugin nor the machine's. Its ``pycnm plugin serve`` runs
in the same two namespaces (it opens the SandboxKey files dockerd makes there) with
``--host-ns`` that host, the lab's local store (one SQLite file, a prefix per host) and
etcd over the underlay: TLS with client certificates from a CA made for the run. The
outside namespace is a machine beyond the hosts for the gateway path (no pycnm, no route
to any overlay). dockerd runs with its iptables on (only inside its host's namespace) so
that docker_gwbridge masquerades and publishes ports as on a real machine.

The test process itself reaches etcd through its own veth to the router and a /32 route,
checked with ``ip route get`` and removed at the end: never through eth0. Nothing here
pulls an image (the busybox image is imported into each engine).

Shared with the machine, and so checked: dockerd's data and exec roots, its containerd
(and containerd namespace), its pid file and socket are the run's own; /run/docker/plugins
is a tmpfs private to each host; iptables rules live in each host's network namespace;
/etc/docker is read only. Nothing collides with the machine's Docker, but the e2e
suite is run under ``flock /tmp/pycnm-locks/docker.lock`` anyway on shared machines.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from netns_fixtures.docker import DockerEngine, import_image, start_engine, stop_engine
from netns_fixtures.etcd import EtcdServer, EtcdTLS, start_etcd
from netns_fixtures.mounts import PLUGINS_DIR, PrivateMounts
from netns_fixtures.netns import FIXTURE_PREFIX
from tests.e2e.plugin_process import answers
from tests.integration.overlay_lab import REPO, Host, OverlayLab, wait_for

UNDERLAYS = ("172.31.1.0/24", "192.168.1.0/24", "172.31.3.0/24")
PLUGIN_SOCKET = f"{PLUGINS_DIR}/pycnm.sock"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class DockerHost:
    """One emulated host: its namespaces, dockerd and plugin."""

    host: Host
    mounts: PrivateMounts
    workdir: str
    plugin_log: str
    plugin: subprocess.Popen[bytes] | None = None
    engine: DockerEngine | None = None
    plugin_env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        """Its underlay address (its VTEP)."""
        return self.host.underlay

    def docker(self, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.engine is not None
        return self.engine.docker(*args, check=check, timeout=timeout)

    def enter(self) -> list[str]:
        """The command prefix that runs a program in this host's namespaces."""
        return ["nsenter", f"--net={self.host.path}", f"--mount={self.mounts.path}", "--"]

    def plugin_answers(self) -> bool:
        return answers(self.mounts.inside(PLUGIN_SOCKET))

    def plugin_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError), open(self.plugin_log, errors="replace") as handle:
            return "\n".join(handle.read().splitlines()[-lines:])
        return ""


class MultiHostDocker:
    """The picture of the module docstring; ``close`` removes everything, whatever
    state a test left it in."""

    def __init__(self, versions: tuple[str, ...] = ("20.10", "26.1"), lease_ttl: float = 3.0,
                 iptables: bool = True) -> None:
        self.workdir = tempfile.mkdtemp(prefix="pycnm-multihost-")
        self.lab = OverlayLab("", lease_ttl=lease_ttl, logdir=self.workdir)
        self.lease_ttl = lease_ttl
        self.iptables = iptables
        self.hosts: list[DockerHost] = []
        self.etcd: EtcdServer | None = None
        self.root_link: str | None = None
        self._routes: list[str] = []
        try:
            self._build(versions)
        except BaseException:
            self.close()
            raise

    # --- building ------------------------------------------------------------------------

    def _build(self, versions: tuple[str, ...]) -> None:
        third = random.sample(range(1, 255), 3)
        etcd_host = self.lab.add_host("e", f"198.18.{third[0]}.0/24")
        self.outside = self.lab.add_host("o", f"198.19.{third[1]}.0/24")
        self._wire_root(ipaddress.ip_network(f"100.127.{third[2]}.0/30"), etcd_host.underlay)
        tls = EtcdTLS.create(os.path.join(self.workdir, "pki"), ips=(etcd_host.underlay,))
        self.etcd = start_etcd(os.path.join(self.workdir, "etcd"), address=etcd_host.underlay,
                               netns=etcd_host.name, tls=tls)
        self.lab.store_url = self.etcd.url
        for index, version in enumerate(versions):
            self._host(str(index + 1), UNDERLAYS[index], version)

    def _wire_root(self, net: ipaddress.IPv4Network, etcd_address: str) -> None:
        """A veth from this namespace to the router and a /32 route to etcd through it,
        checked before use."""
        link, peer = f"{FIXTURE_PREFIX}{self.lab.tag}m", f"m{self.lab.tag}"
        ours, theirs = (f"{net[1]}/30", f"{net[2]}/30")
        _ip("link", "add", link, "type", "veth", "peer", "name", peer, "netns", self.lab.router)
        self.root_link = link
        _ip("addr", "add", ours, "dev", link)
        _ip("link", "set", link, "up")
        _ip("-n", self.lab.router, "addr", "add", theirs, "dev", peer)
        _ip("-n", self.lab.router, "link", "set", peer, "up")
        route = f"{etcd_address}/32"
        _ip("route", "add", route, "via", str(net[2]), "dev", link)
        self._routes.append(route)
        got = _ip("route", "get", etcd_address).stdout
        assert f"dev {link}" in got and "eth0" not in got, got

    def _host(self, key: str, underlay: str, version: str) -> DockerHost:
        host = self.lab.add_host(key, underlay)
        workdir = os.path.join(self.workdir, f"h{key}")
        os.makedirs(workdir)
        docker_host = DockerHost(host, PrivateMounts(), workdir,
                                 os.path.join(workdir, "plugin.log"),
                                 plugin_env={"PYCNM_OVERLAY_LEASE_TTL": f"{self.lease_ttl:g}"})
        self.hosts.append(docker_host)  # so that close() sees it even if the rest fails
        self.start_plugin(docker_host)
        engine_dir = os.path.join(workdir, "docker")
        os.makedirs(engine_dir)
        docker_host.engine = start_engine(
            engine_dir, version, netns=host.name, mountns=docker_host.mounts.path,
            extra_args=("--iptables=true",) if self.iptables else ())
        import_image(docker_host.engine, engine_dir)
        return docker_host

    # --- the plugin -------------------------------------------------------------------------

    def plugin_argv(self, host: DockerHost, *args: str) -> list[str]:
        """pycnm as this host runs it: in its namespaces, with the lab's stores."""
        return [*host.enter(), sys.executable, "-m", "cnm.cli", "--store", self.lab.store_url,
                "--local-store", self.lab.local_url, "--host-ns", host.name, "--host-id",
                host.name, *args]

    def start_plugin(self, host: DockerHost) -> None:
        with open(host.plugin_log, "ab") as log:
            host.plugin = subprocess.Popen(
                self.plugin_argv(host, "plugin", "serve"), cwd=REPO, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": REPO, **host.plugin_env})
        self.lab.processes.append(host.plugin)

        def ready() -> bool:
            assert host.plugin is not None
            if host.plugin.poll() is not None:
                raise AssertionError(f"the plugin of {host.name} exited:\n{host.plugin_tail()}")
            return host.plugin_answers()

        wait_for(ready, 60, what=f"the plugin of {host.name} to answer")

    def kill_plugin(self, host: DockerHost, sig: int = signal.SIGKILL) -> None:
        assert host.plugin is not None
        host.plugin.send_signal(sig)
        host.plugin.wait(timeout=30)
        host.plugin = None

    # --- asking the cluster -----------------------------------------------------------------

    def vni_of(self, overlay: str) -> int:
        return self.lab.vni_of(overlay)

    def overlay_netns(self, host: DockerHost, vni: int) -> str:
        return self.lab.overlay_netns(host.host, vni)

    def remote_ips(self, host: DockerHost, vni: int) -> set[str]:
        """The addresses ``host``'s VTEP holds neighbour entries for (other hosts')."""
        return {ip for ip, _ in self.lab.vtep_entries(host.host, vni).neigh}

    # --- tearing down -----------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:
            if host.engine is not None:
                with contextlib.suppress(Exception):
                    if host.plugin is None:  # Docker's DeleteNetwork needs the plugin
                        self.start_plugin(host)
                with contextlib.suppress(Exception):
                    stop_engine(host.engine)
            if host.plugin is not None and host.plugin.poll() is None:
                host.plugin.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.plugin.wait(timeout=30)
        with contextlib.suppress(Exception):
            self.lab.close()  # kills what is left, sweeps pycnm's objects, the namespaces
        for host in self.hosts:
            host.mounts.close()
        if self.etcd is not None:
            self.etcd.stop()
        for route in self._routes:
            _ip("route", "del", route, check=False)
        if self.root_link is not None:
            _ip("link", "del", self.root_link, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def multihost_docker(**kwargs: object) -> Iterator[MultiHostDocker]:
    setup = MultiHostDocker(**kwargs)  # type: ignore[arg-type]
    try:
        yield setup
    finally:
        setup.close()


def container_ip(host: DockerHost, container: str, network: str) -> str:
    return host.docker("inspect", "-f",
                       f"{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}",
                       container).stdout.strip()


def exec_ok(host: DockerHost, container: str, *argv: str, attempts: int = 5,
            timeout: float = 30) -> bool:
    """``docker exec`` succeeds within ``attempts`` tries (a first packet may wait for a
    neighbour entry)."""
    for _ in range(attempts):
        if host.docker("exec", container, *argv, check=False, timeout=timeout).returncode == 0:
            return True
        time.sleep(0.2)
    return False
