"""Real Docker engines for tests: each its own dockerd, data root, exec root and socket.

Two engines run here (``ENGINE_VERSIONS``): Debian 12's docker.io 20.10 (/usr/sbin/dockerd,
its own client /usr/bin/docker) and Debian 13's docker.io 26.1, which scripts/setup.sh
(scripts/docker-engine.sh) unpacks into ``$PYCNM_CACHE/docker-trixie`` (default
/var/cache/pycnm) and which runs with the machine's own runc first on PATH. Both clients
get Debian 13's compose v2 as their CLI plugin (``docker compose``). Docker's own bridge
and firewall stay out of the way (``--bridge=none --iptables=false``); its embedded DNS
still works. No image can be pulled (dockerd's registry client is pointed at a closed
loopback port), so one is built from busybox-static and imported as
``pycnm-busybox:test``.

The API, for tests and for anything that runs engines of its own (several emulated hosts,
each with a dockerd in its own network and mount namespace):

    install = engine_install("26.1")                  # binaries; DockerError if absent
    engine = start_engine(workdir, install,           # returns once `docker version` answers
                          extra_args=("--live-restore",),
                          netns="NAME-or-path", mountns="/path/of/a/mount/ns")
    import_image(engine, workdir)                     # pycnm-busybox:test
    engine.docker("run", "--rm", "--network", "none", engine.image, "true")
    restart_engine(engine, extra_args=(...))          # same data; containers come back
    stop_daemon(engine); start_daemon(engine, wait=False); engine.wait_ready()
    stop_engine(engine)                               # containers, networks, dockerd, files

``netns``/``mountns`` run dockerd (through nsenter) in that network namespace and mount
namespace; without ``mountns`` it shares the caller's mounts, so a plugin in the caller's
mount namespace can open the SandboxKey files it hands out. Everything the engine writes
lives under ``workdir``, which ``stop_engine`` unmounts and removes. Shared with everything
else on the machine, and so left alone: the legacy plugin directory ``/run/docker/plugins``
(where ``pycnm plugin serve`` puts its socket) and any other dockerd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from netns_fixtures.netns import CommandFailed
from netns_fixtures.orphans import die_with_parent
from netns_fixtures.vm import time_factor

CACHE = os.environ.get("PYCNM_CACHE", "/var/cache/pycnm")
TRIXIE = os.path.join(CACHE, "docker-trixie")
ENGINE_VERSIONS = ("20.10", "26.1")
DOCKERD = "/usr/sbin/dockerd"
# Debian's client matches the 20.10 daemon; a newer client in /usr/local/bin refuses some
# flags (--mac-address) against it.
DOCKER = "/usr/bin/docker"
IMAGE = "pycnm-busybox:test"
SETUP_HINT = "run scripts/setup.sh (as root) first"
# vfs and a cold containerd are slow on a busy 2-core machine (slower still in the VM)
START_TIMEOUT = 90.0 * time_factor()
STOP_TIMEOUT = 40.0
# Applets the tests rely on; every other applet busybox lists is linked as well.
APPLETS = ("sh", "ip", "ping", "nc", "wget", "sleep", "cat", "hostname", "ifconfig",
           "route", "nslookup", "echo", "true", "udhcpc")
NO_REGISTRY = "http://127.0.0.1:9"  # the discard port: nothing listens there

log = logging.getLogger(__name__)


class DockerError(RuntimeError):
    """dockerd could not be started or used; the message says why (and shows its log)."""


@dataclass(frozen=True)
class EngineInstall:
    """One Docker engine's binaries: its dockerd, the client that matches it, directories
    put first on dockerd's PATH (containerd and shims), and a folder of client CLI plugins
    (docker-compose)."""

    version: str  # the major.minor dockerd reports, e.g. "26.1"
    dockerd: str
    docker: str
    path: tuple[str, ...] = ()
    cli_plugins: str | None = None


def engine_install(version: str = ENGINE_VERSIONS[0]) -> EngineInstall:
    """Where the engine ``version`` ("20.10" or "26.1") lives on this machine; DockerError
    naming what is missing (scripts/setup.sh installs and fetches both)."""
    compose = os.path.join(TRIXIE, "usr/libexec/docker/cli-plugins")
    plugins = compose if os.path.exists(os.path.join(compose, "docker-compose")) else None
    if version == "20.10":
        install = EngineInstall(version, DOCKERD, DOCKER, cli_plugins=plugins)
        what = "docker.io (Debian 12's Docker 20.10)"
    elif version == "26.1":
        # The unpacked containerd and shims, but the machine's own runc (/usr/sbin first):
        # Debian 13's runc needs a newer glibc than Debian 12's.
        install = EngineInstall(
            version, os.path.join(TRIXIE, "usr/sbin/dockerd"),
            os.path.join(TRIXIE, "usr/bin/docker"),
            path=("/usr/sbin", os.path.join(TRIXIE, "usr/bin"),
                  os.path.join(TRIXIE, "usr/sbin")),
            cli_plugins=plugins)
        what = f"Debian 13's Docker 26.1 in {TRIXIE}"
    else:
        raise DockerError(f"unknown Docker engine {version!r}: this machine runs "
                          f"{' and '.join(ENGINE_VERSIONS)}")
    for binary in (install.dockerd, install.docker):
        if not os.access(binary, os.X_OK):
            raise DockerError(f"{what} is missing ({binary}): {SETUP_HINT}")
    if install.cli_plugins is None:
        raise DockerError(f"Debian 13's docker compose is missing from {compose}: "
                          f"{SETUP_HINT}")
    return install


@dataclass
class DockerEngine:
    """A dockerd: ``host`` is its DOCKER_HOST url, ``root`` its work directory, ``install``
    its binaries and client; ``argv`` is how it is (re)started."""

    host: str
    root: str
    install: EngineInstall
    extra_args: tuple[str, ...] = ()  # dockerd flags beyond the fixed ones
    netns: str | None = None  # network namespace (name or path) dockerd runs in
    mountns: str | None = None  # mount namespace (path) dockerd runs in
    image: str = IMAGE
    process: subprocess.Popen[bytes] | None = None
    containerd_namespace: str = field(default_factory=lambda: "pt" + secrets.token_hex(3))

    @property
    def version(self) -> str:
        return self.install.version

    @property
    def argv(self) -> list[str]:
        return daemon_argv(self)

    @property
    def client_config(self) -> str:
        """DOCKER_CONFIG of this engine's client: holds the CLI plugins (compose)."""
        return os.path.join(self.root, "client")

    @property
    def env(self) -> dict[str, str]:
        """The environment for a docker client (or compose) of this engine."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": self.client_config}

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "dockerd.log")

    @property
    def exec_root(self) -> str:
        return os.path.join(self.root, "exec")

    @property
    def netns_dir(self) -> str:
        """Where this dockerd keeps its containers' namespaces (what SandboxKey names)."""
        return os.path.join(self.exec_root, "netns")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run this engine's own client; ``check``: raise ``CommandFailed`` (a
        ``CalledProcessError`` whose message has stderr)."""
        result = subprocess.run([self.install.docker, *args], capture_output=True, text=True,
                                timeout=timeout, input=input, env=self.env)
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, ["docker", *args], result.stdout,
                                result.stderr)
        return result

    def log_tail(self, chars: int = 3000) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()[-chars:]
        except OSError:
            return ""

    def log_since(self, offset: int) -> str:
        """dockerd's log from byte ``offset`` on (see ``log_size``)."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once ``docker version`` answers; DockerError (with the log) if dockerd
        exits or does not answer in time."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                code = self.process.returncode if self.process else None
                raise DockerError(f"dockerd exited at start ({code}):\n{self.log_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.docker("version", check=False, timeout=10).returncode == 0:
                    return
            if time.monotonic() >= deadline:
                raise DockerError(f"dockerd did not answer within {timeout:.0f} s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.2)


def _busybox_binary() -> str:
    for path in ("/usr/bin/busybox", "/bin/busybox"):
        if os.path.exists(path):
            return path
    raise DockerError(f"busybox-static not installed: {SETUP_HINT}")


def import_image(engine: DockerEngine, workdir: str) -> None:
    """Build a busybox root file system under ``workdir`` and import it as ``engine.image``
    (``tar -C DIR -c . | docker import - IMAGE``)."""
    rootfs = os.path.join(workdir, "image")
    for sub in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    busybox = _busybox_binary()
    shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
    listed = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                            timeout=10).stdout.split()
    for applet in sorted(set(APPLETS) | set(listed)):
        link = os.path.join(rootfs, "bin", applet)
        if applet != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        result = subprocess.run(
            [engine.install.docker, "import", "--change", 'CMD ["sh"]', "-", engine.image],
            stdin=tar.stdout, capture_output=True, text=True, timeout=120, env=engine.env)
    finally:
        tar.stdout.close()  # so tar sees a broken pipe, not a hang, if docker gave up
        tar.wait(timeout=60)
    if result.returncode != 0 or tar.returncode != 0:
        raise DockerError(f"docker import of {engine.image} failed: {result.stderr.strip()}")


_import_image = import_image  # the name bench/bench_docker.py imports


def _namespace_path(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join("/run/netns", name_or_path)


def daemon_argv(engine: DockerEngine) -> list[str]:
    """dockerd's command line for ``engine`` (everything under its directory), through
    nsenter when it runs in other namespaces."""
    work = engine.root
    argv = [
        engine.install.dockerd, "--config-file", os.path.join(work, "daemon.json"),
        "--data-root", os.path.join(work, "root"), "--exec-root", engine.exec_root,
        "-H", engine.host, "--pidfile", os.path.join(work, "docker.pid"),
        "--storage-driver=vfs", "--bridge=none", "--iptables=false", "--ip6tables=false",
        # Its own containerd namespaces, should it find a system containerd to share.
        "--containerd-namespace", engine.containerd_namespace,
        "--containerd-plugins-namespace", engine.containerd_namespace + "-plugins",
        # Containers ask 127.0.0.1 for names Docker's embedded DNS does not know, so no
        # test's lookup leaves the machine (a test may still pass --dns of its own).
        "--dns", "127.0.0.1",
        *engine.extra_args,
    ]
    enter = []
    if engine.netns:
        enter.append(f"--net={_namespace_path(engine.netns)}")
    if engine.mountns:
        enter.append(f"--mount={engine.mountns}")
    return ["nsenter", *enter, "--", *argv] if enter else argv


def _daemon_env(install: EngineInstall) -> dict[str, str]:
    # No image can be pulled here, and a pull would send traffic off the machine: point
    # dockerd's registry client at a closed loopback port so a pull fails at once. (Plugin
    # sockets do not use the proxy.)
    env = {**os.environ, "HTTP_PROXY": NO_REGISTRY, "HTTPS_PROXY": NO_REGISTRY,
           "http_proxy": NO_REGISTRY, "https_proxy": NO_REGISTRY, "NO_PROXY": "",
           "no_proxy": ""}
    if install.path:
        env["PATH"] = ":".join([*install.path, env.get("PATH", "/usr/bin:/bin")])
    return env


def start_daemon(engine: DockerEngine, wait: bool = True,
                 timeout: float = START_TIMEOUT) -> None:
    """(Re)start dockerd from ``engine.argv`` on its existing directory; with ``wait``,
    return once it answers (see ``DockerEngine.wait_ready``)."""
    if engine.running():
        raise DockerError("dockerd is already running")
    with open(engine.log_path, "ab") as log:
        # dockerd gets SIGKILL if the test process dies, so a crashed session leaves no
        # daemon (its own session, so that ^C reaches pytest, which then stops it cleanly).
        engine.process = subprocess.Popen(
            die_with_parent(engine.argv), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=_daemon_env(engine.install), start_new_session=True,
        )
    if wait:
        engine.wait_ready(timeout)


def start_engine(workdir: str, install: EngineInstall | str = ENGINE_VERSIONS[0], *,
                 extra_args: Sequence[str] = (), netns: str | None = None,
                 mountns: str | None = None, timeout: float = START_TIMEOUT) -> DockerEngine:
    """Start a dockerd of ``install`` (or its version) with everything under ``workdir``
    (data root, exec root, socket, pid file, log, an empty config file, the client's
    config) and return once it answers and reports the expected version. ``extra_args``
    go to dockerd; ``netns``/``mountns`` run it in that network / mount namespace."""
    if os.geteuid() != 0:
        raise DockerError("dockerd needs root: run the tests as root")
    if isinstance(install, str):
        install = engine_install(install)
    sock = os.path.join(workdir, "docker.sock")
    engine = DockerEngine(host=f"unix://{sock}", root=workdir, install=install,
                          extra_args=tuple(extra_args), netns=netns, mountns=mountns)
    with open(os.path.join(workdir, "daemon.json"), "w") as handle:
        handle.write("{}\n")  # never the machine's /etc/docker/daemon.json
    plugins_dir = os.path.join(engine.client_config, "cli-plugins")
    os.makedirs(plugins_dir, exist_ok=True)
    if install.cli_plugins:
        for name in os.listdir(install.cli_plugins):
            link = os.path.join(plugins_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(install.cli_plugins, name), link)
    try:
        if mountns is None:
            share_mounts_below(engine.netns_dir)
        start_daemon(engine, timeout=timeout)
        reported = engine.docker("version", "--format", "{{.Server.Version}}",
                                 timeout=30).stdout.strip()
        if not reported.startswith(install.version + "."):
            raise DockerError(f"{install.dockerd} reports Docker {reported}, not "
                              f"{install.version}")
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def share_mounts_below(path: str) -> None:
    """Make ``path`` a shared mount point (a bind mount onto itself), so that what dockerd
    mounts below it later (its containers' network namespaces) also appears in a managed
    plugin's mount of it: on a machine whose / is a private mount (this one), mounts made
    after the plugin started would otherwise stay invisible to it. Unmounted with the
    engine's directory. Where it cannot be done, dockerd runs all the same (only a managed
    plugin would miss later namespaces: its test checks that it does not)."""
    os.makedirs(path, exist_ok=True)
    for argv in (["mount", "--bind", path, path], ["mount", "--make-shared", path]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            log.warning("%s: %s", " ".join(argv), result.stderr.strip())
            return


def _pid_from(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def containerd_pid(engine: DockerEngine) -> int | None:
    """The containerd this engine's dockerd started (from its pid file), if it runs."""
    pid = _pid_from(os.path.join(engine.exec_root, "containerd", "containerd.pid"))
    if pid is None or not _alive(pid):
        return None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as handle:
        if engine.root.encode() in handle.read():
            return pid  # ours: its command line names our directory
    return None


def stop_daemon(engine: DockerEngine, sig: int = signal.SIGTERM,
                stop_containerd: bool = False) -> None:
    """Stop dockerd and keep its data (SIGTERM, as systemd stops it; SIGKILL if it hangs,
    or at once with ``sig=SIGKILL``). Its containerd stops with it unless dockerd leaves
    it running (``--live-restore``); ``stop_containerd`` stops that one too."""
    if engine.running():
        assert engine.process is not None
        engine.process.send_signal(sig)
        try:
            engine.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(timeout=20)
    if stop_containerd:
        # Killed dockerd or live-restore leave it: a process this engine started (its pid
        # file and command line say so), never one found by name.
        pid = containerd_pid(engine)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def restart_engine(engine: DockerEngine, *, extra_args: Sequence[str] | None = None,
                   sig: int = signal.SIGTERM, timeout: float = START_TIMEOUT) -> None:
    """Stop dockerd (``sig``) and start it again on the same data, with ``extra_args``
    instead of the flags it had when not None; returns once it answers."""
    stop_daemon(engine, sig)
    if extra_args is not None:
        engine.extra_args = tuple(extra_args)
    start_daemon(engine, timeout=timeout)


def stop_engine(engine: DockerEngine) -> None:
    """Remove every container and custom network, stop dockerd (and the containerd it
    started), unmount whatever is still mounted under its directory and delete it."""
    if engine.running():
        with contextlib.suppress(Exception):
            ids = engine.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.docker("rm", "-f", *ids, check=False, timeout=120)
        with contextlib.suppress(Exception):
            nets = engine.docker("network", "ls", "-q", "--filter", "type=custom",
                                 check=False, timeout=30).stdout.split()
            for net in nets:
                engine.docker("network", "rm", net, check=False, timeout=60)
    stop_daemon(engine, stop_containerd=True)
    _unmount_below(engine.root)
    shutil.rmtree(engine.root, ignore_errors=True)


def _unmount_below(root: str) -> None:
    """Unmount every mount point under ``root``, deepest first (netns bind mounts, shm)."""
    root = os.path.realpath(root)
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4].replace("\\040", " ") for line in mounts]
    for point in sorted((p for p in points if p == root or p.startswith(root + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


@contextlib.contextmanager
def running_engine(version: str = ENGINE_VERSIONS[0], *, extra_args: Sequence[str] = (),
                   image: bool = True, netns: str | None = None,
                   mountns: str | None = None) -> Iterator[DockerEngine]:
    """A started engine of ``version`` (with the busybox image), stopped and removed on
    exit however the body ends. DockerError if it cannot start."""
    workdir = tempfile.mkdtemp(prefix=f"pycnm-dockerd-{version}-")
    try:
        engine = start_engine(workdir, version, extra_args=extra_args, netns=netns,
                              mountns=mountns)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        if image:
            import_image(engine, workdir)
        yield engine
    finally:
        stop_engine(engine)


@pytest.fixture(scope="package", params=ENGINE_VERSIONS)
def docker_engine(request: pytest.FixtureRequest) -> Iterator[DockerEngine]:
    """A real dockerd for the tests of one package (tests/e2e, say), once per engine
    (``[20.10]`` and ``[26.1]``: pytest runs every test of one engine before the next
    starts), with ``pycnm-busybox:test`` imported. Package scope, not session: the engine
    (and what uses Docker's shared plugin folder with it) is gone once the package's tests
    are done, not at the end of a long run. A test that needs one engine only says so with
    ``@pytest.mark.parametrize("docker_engine", ["26.1"], indirect=True)``.

    Fails (never skips) when an engine is missing: the tests that use it are part of the
    suite. Torn down at the end, however the tests ended.
    """
    try:
        with running_engine(request.param) as engine:
            yield engine
    except DockerError as exc:
        pytest.fail(str(exc), pytrace=False)
