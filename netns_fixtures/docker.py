"""A real Docker engine for a test session: its own dockerd, data root, exec root and socket.

Debian's docker.io (Docker 20.10) runs here with the vfs storage driver. Docker's own
bridge and firewall stay out of the way (``--bridge=none --iptables=false``); its embedded
DNS still works. No image can be pulled, so one is built from busybox-static and imported
as ``pycnm-busybox:test``. Everything lives under one temporary directory, which the
teardown removes after the containers, networks, dockerd and its mounts are gone.

Shared with everything else on the machine, and so left alone: the legacy plugin
directory ``/run/docker/plugins`` (where ``pycnm plugin serve`` puts its socket) and any
other dockerd.

    engine = start_engine(tempfile.mkdtemp())     # or the ``docker_engine`` fixture
    engine.docker("run", "--rm", "--network", "none", engine.image, "echo", "hi")
    stop_engine(engine)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from netns_fixtures.netns import CommandFailed

DOCKERD = "/usr/sbin/dockerd"
# Debian's client matches the 20.10 daemon; a newer client in /usr/local/bin refuses some
# flags (--mac-address) against it.
DOCKER = "/usr/bin/docker"
IMAGE = "pycnm-busybox:test"
NOT_INSTALLED = "docker.io not installed: run scripts/setup.sh"
START_TIMEOUT = 90.0  # vfs and a cold containerd are slow on a busy 2-core machine
STOP_TIMEOUT = 40.0
# Applets the tests rely on; every other applet busybox lists is linked as well.
APPLETS = ("sh", "ip", "ping", "nc", "wget", "sleep", "cat", "hostname", "ifconfig",
           "route", "nslookup", "echo", "true", "udhcpc")
NO_REGISTRY = "http://127.0.0.1:9"  # the discard port: nothing listens there
_PR_SET_PDEATHSIG = 1


class DockerError(RuntimeError):
    """dockerd could not be started or used; the message says why (and shows its log)."""


@dataclass
class DockerEngine:
    """A running dockerd: ``host`` is its DOCKER_HOST url, ``root`` its work directory."""

    host: str
    root: str
    image: str = IMAGE
    process: subprocess.Popen[bytes] | None = None
    containerd_namespace: str = field(default_factory=lambda: "pt" + secrets.token_hex(3))

    @property
    def env(self) -> dict[str, str]:
        """The environment for a docker client of this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "dockerd.log")

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run Debian's docker client against this engine; ``check``: raise
        ``CommandFailed`` (a ``CalledProcessError`` whose message has stderr)."""
        result = subprocess.run([DOCKER, *args], capture_output=True, text=True,
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


def _die_with_parent() -> None:
    # dockerd gets SIGKILL if the test process dies, so a crashed session leaves no daemon.
    # (It runs in its own session so that ^C reaches pytest, which then stops it cleanly.)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _busybox_binary() -> str:
    for path in ("/usr/bin/busybox", "/bin/busybox"):
        if os.path.exists(path):
            return path
    raise DockerError("busybox-static not installed: run scripts/setup.sh")


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
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        result = subprocess.run(
            [DOCKER, "import", "--change", 'CMD ["sh"]', "-", engine.image],
            stdin=tar.stdout, capture_output=True, text=True, timeout=120, env=engine.env)
    finally:
        tar.stdout.close()  # so tar sees a broken pipe, not a hang, if docker gave up
        tar.wait(timeout=60)
    if result.returncode != 0 or tar.returncode != 0:
        raise DockerError(f"docker import of {engine.image} failed: {result.stderr.strip()}")


_import_image = import_image  # the name bench/bench_docker.py imports


def start_engine(workdir: str, timeout: float = START_TIMEOUT) -> DockerEngine:
    """Start dockerd with everything under ``workdir`` (data root, exec root, socket,
    pid file, log, an empty config file) and return once ``docker version`` answers."""
    for binary in (DOCKERD, DOCKER):
        if not os.path.exists(binary):
            raise DockerError(NOT_INSTALLED)
    if os.geteuid() != 0:
        raise DockerError("dockerd needs root: run the tests as root")
    sock = os.path.join(workdir, "docker.sock")
    engine = DockerEngine(host=f"unix://{sock}", root=workdir)
    config = os.path.join(workdir, "daemon.json")
    with open(config, "w") as handle:  # never the machine's /etc/docker/daemon.json
        handle.write("{}\n")
    argv = [
        DOCKERD, "--config-file", config,
        "--data-root", os.path.join(workdir, "root"),
        "--exec-root", os.path.join(workdir, "exec"),
        "-H", engine.host, "--pidfile", os.path.join(workdir, "docker.pid"),
        "--storage-driver=vfs", "--bridge=none", "--iptables=false", "--ip6tables=false",
        # Its own containerd namespaces, should it find a system containerd to share.
        "--containerd-namespace", engine.containerd_namespace,
        "--containerd-plugins-namespace", engine.containerd_namespace + "-plugins",
        # Containers ask 127.0.0.1 for names Docker's embedded DNS does not know, so no
        # test's lookup leaves the machine (a test may still pass --dns of its own).
        "--dns", "127.0.0.1",
    ]
    # No image can be pulled here, and a pull would send traffic off the machine: point
    # dockerd's registry client at a closed loopback port so a pull fails at once. (Plugin
    # sockets do not use the proxy.)
    env = {**os.environ, "HTTP_PROXY": NO_REGISTRY, "HTTPS_PROXY": NO_REGISTRY,
           "http_proxy": NO_REGISTRY, "https_proxy": NO_REGISTRY, "NO_PROXY": "",
           "no_proxy": ""}
    with open(engine.log_path, "ab") as log:
        engine.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    deadline = time.monotonic() + timeout
    while True:
        if engine.process.poll() is not None:
            tail = engine.log_tail()
            stop_engine(engine)
            raise DockerError(f"dockerd exited at start ({engine.process.returncode}):\n{tail}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            if engine.docker("version", check=False, timeout=10).returncode == 0:
                return engine
        if time.monotonic() >= deadline:
            tail = engine.log_tail()
            stop_engine(engine)
            raise DockerError(f"dockerd did not answer within {timeout:.0f} s:\n{tail}")
        time.sleep(0.2)


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


def stop_engine(engine: DockerEngine) -> None:
    """Remove every container and custom network, stop dockerd (and the containerd it
    started), unmount whatever is still mounted under its directory and delete it."""
    if engine.process is not None and engine.process.poll() is None:
        with contextlib.suppress(Exception):
            ids = engine.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.docker("rm", "-f", *ids, check=False, timeout=120)
        with contextlib.suppress(Exception):
            nets = engine.docker("network", "ls", "-q", "--filter", "type=custom",
                                 check=False, timeout=30).stdout.split()
            for net in nets:
                engine.docker("network", "rm", net, check=False, timeout=60)
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(timeout=20)
    # dockerd stops the containerd it started; if dockerd was killed, stop it here (its
    # pid file names it: a process this engine started, never one found by name).
    containerd = _pid_from(os.path.join(engine.root, "exec", "containerd", "containerd.pid"))
    if containerd is not None and _alive(containerd):
        with contextlib.suppress(OSError):
            with open(f"/proc/{containerd}/cmdline", "rb") as handle:
                ours = engine.root.encode() in handle.read()
            if ours:
                os.kill(containerd, signal.SIGKILL)
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


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A real dockerd for the whole session, with ``pycnm-busybox:test`` imported.

    Fails (never skips) when docker.io is missing: the tests that use it are part of the
    suite. Torn down at the end of the session, however the tests ended.
    """
    workdir = tempfile.mkdtemp(prefix="pycnm-dockerd-")
    try:
        engine = start_engine(workdir)
    except DockerError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    try:
        import_image(engine, workdir)
        yield engine
    finally:
        stop_engine(engine)
