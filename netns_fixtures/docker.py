"""A real Docker engine for a test session: its own dockerd, data root and socket.

Debian's docker.io (Docker 20.10) runs here with the vfs storage driver. No image can be
pulled, so the fixture builds one from busybox-static. Docker's own bridge and iptables
stay out of the way (``--bridge=none --iptables=false``); its embedded DNS still works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client matches the 20.10 daemon (a newer one refuses
# --mac-address against it)
BUSYBOX = "/bin/busybox"
IMAGE = "pycnm-busybox:test"
APPLETS = ("sh", "ip", "ping", "ping6", "nc", "wget", "sleep", "cat", "hostname", "ifconfig",
           "route", "nslookup", "echo", "ls", "true", "udhcpc", "httpd", "grep", "seq", "timeout")


@dataclass
class DockerEngine:
    host: str  # DOCKER_HOST url
    root: str
    image: str = IMAGE
    process: subprocess.Popen | None = None

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Run Debian's docker client against this engine."""
        result = subprocess.run(
            [DOCKER, *args], capture_output=True, text=True, timeout=timeout, input=input,
            env={**os.environ, "DOCKER_HOST": self.host},
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result


def _busybox_binary() -> str:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    pytest.fail("busybox-static not installed: run scripts/setup.sh", pytrace=False)


def _import_image(engine: DockerEngine, workdir: str) -> None:
    rootfs = os.path.join(workdir, "image")
    os.makedirs(os.path.join(rootfs, "bin"))
    os.makedirs(os.path.join(rootfs, "etc"))
    os.makedirs(os.path.join(rootfs, "tmp"))
    shutil.copy2(_busybox_binary(), os.path.join(rootfs, "bin", "busybox"))
    for applet in APPLETS:
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
    result = subprocess.run([DOCKER, "import", "-", engine.image], stdin=tar.stdout,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DOCKER_HOST": engine.host})
    tar.wait(timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"docker import failed: {result.stderr.strip()}")


def start_engine(workdir: str) -> DockerEngine:
    """Start dockerd with everything under ``workdir``; wait until it answers."""
    if not os.path.exists(DOCKERD):
        pytest.fail("docker.io not installed: run scripts/setup.sh", pytrace=False)
    sock = os.path.join(workdir, "docker.sock")
    engine = DockerEngine(host=f"unix://{sock}", root=workdir)
    log = open(os.path.join(workdir, "dockerd.log"), "w")  # noqa: SIM115 - lives with dockerd
    engine.process = subprocess.Popen(
        [DOCKERD, "--data-root", os.path.join(workdir, "root"),
         "--exec-root", os.path.join(workdir, "exec"), "-H", engine.host,
         "--pidfile", os.path.join(workdir, "docker.pid"), "--storage-driver=vfs",
         "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            with open(os.path.join(workdir, "dockerd.log")) as handle:
                tail = handle.read()[-2000:]
            raise RuntimeError(f"dockerd exited at start:\n{tail}")
        if engine.docker("version", check=False, timeout=10).returncode == 0:
            break
        time.sleep(0.2)
    else:
        stop_engine(engine)
        raise RuntimeError("dockerd did not answer within 90 s")
    return engine


def stop_engine(engine: DockerEngine) -> None:
    """Remove containers, stop dockerd, unmount what it mounted, delete its files."""
    with contextlib.suppress(Exception):
        ids = engine.docker("ps", "-aq", check=False, timeout=30).stdout.split()
        if ids:
            engine.docker("rm", "-f", *ids, check=False, timeout=120)
    with contextlib.suppress(Exception):
        engine.docker("network", "prune", "-f", check=False, timeout=60)
    if engine.process is not None and engine.process.poll() is None:
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(timeout=20)
    # Unmount whatever is still mounted below the work dir, deepest first.
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts if line.split()[4].startswith(engine.root)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    shutil.rmtree(engine.root, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A real dockerd for the whole session, with the busybox image imported."""
    workdir = tempfile.mkdtemp(prefix="pycnm-dockerd-")
    engine = start_engine(workdir)
    try:
        _import_image(engine, workdir)
        yield engine
    finally:
        stop_engine(engine)
