"""The VM itself: Debian's stock kernel under QEMU's software emulation, through virtme-ng.

``scripts/setup.sh`` caches what it needs in ``/var/lib/pycnm/vm`` (``PYCNM_VM_DIR``):
the kernel package unpacked into ``kernel-VERSION/`` (``boot/vmlinuz-VERSION`` and its
``lib/modules/VERSION``, which virtme-ng finds beside the image) and virtme-ng in
``venv/``. Not under /var/cache: virtme-ng mounts an empty tmpfs there inside the guest,
and the guest must see the modules.

Facts of this machine that shape ``boot`` (see the project's environment notes):
``/dev/kvm`` cannot run an unmodified kernel, so the VM runs under TCG
(``--disable-kvm``); Debian 12's virtiofsd refuses virtme-ng's arguments
(``--force-9p``); without udev on the host, ``vng`` exits 255 and loses the command's
output and exit code, so the guest command writes both into the writable results folder,
and that file, not vng's exit code, is the result. The guest has no NIC.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

VM_DIR = Path(os.environ.get("PYCNM_VM_DIR", "/var/lib/pycnm/vm"))
LOCK = Path("/tmp/pycnm-locks/vm.lock")  # one VM at a time on this machine
CPUS = 2
MEMORY = "2G"
GUEST_LOG = "guest.log"  # the guest command's stdout and stderr
EXIT_CODE = "exit-code"  # the guest command's exit code, written by the guest
BOOT_LOG = "vng.log"  # virtme-ng's and QEMU's console, written on the host
_VMLINUZ_RE = re.compile(r"vmlinuz-(?P<version>[0-9][A-Za-z0-9.+_-]*)")


class VmUnavailable(RuntimeError):
    """The VM cannot be booted; the message says why and what to run."""


@dataclass(frozen=True)
class Tools:
    vng: Path
    kernel: Path  # boot/vmlinuz-VERSION inside the unpacked package

    @property
    def version(self) -> str:
        match = _VMLINUZ_RE.fullmatch(self.kernel.name)
        return match["version"] if match else self.kernel.name


@dataclass(frozen=True)
class Run:
    exit_code: int | None  # the guest command's; None if it never wrote one
    seconds: float  # from the start of the boot to the VM's exit
    lock_wait: float
    timed_out: bool  # or stopped
    boot_log: Path

    def tail(self, lines: int = 30) -> str:
        """The end of the console log, for a message about a VM run that went wrong."""
        try:
            text = self.boot_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])


def find_tools(vm_dir: Path = VM_DIR) -> Tools:
    """The cached virtme-ng and kernel, or VmUnavailable saying how to get them."""
    vng = vm_dir / "venv" / "bin" / "vng"
    kernels = sorted(vm_dir.glob("kernel-*/boot/vmlinuz-*"))
    if not vng.exists() or not kernels:
        what = " and ".join(w for w, gone in (("virtme-ng", not vng.exists()),
                                              ("Debian's kernel", not kernels)) if gone)
        raise VmUnavailable(
            f"{what} not found in {vm_dir}: run scripts/setup.sh (as root) to fetch them"
        )
    return Tools(vng=vng, kernel=kernels[-1])


@contextlib.contextmanager
def _locked(deadline: float) -> Iterator[float]:
    """Hold the machine's VM lock (the same one ``flock /tmp/pycnm-locks/vm.lock`` takes);
    yield how long we waited. Bounded: another engineer's VM may be running."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(LOCK, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VmUnavailable(
                        f"another VM held {LOCK} for {time.monotonic() - started:.0f} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield time.monotonic() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def boot(tools: Tools, results: Path, argv: Sequence[str], *, timeout: float,
         stop: threading.Event | None = None) -> Run:
    """Boot the VM once and run ``argv`` in it as root, with ``results`` writable (at the
    same path) and the rest of this machine's file system read-only. ``timeout`` bounds
    the whole (lock wait, boot, run): on expiry, or when ``stop`` is set, the VM is
    killed."""
    results = results.resolve()
    # The guest's shell runs this line; every piece is quoted (our own paths and argv).
    command = (f"{shlex.join(argv)} >{shlex.quote(str(results / GUEST_LOG))} 2>&1; "
               f"echo $? >{shlex.quote(str(results / EXIT_CODE))}")
    vng = [str(tools.vng), "--disable-kvm", "--force-9p", "--cpus", str(CPUS),
           "-m", MEMORY, "--run", str(tools.kernel), "--rwdir", str(results),
           # Debian's kernel starts AppArmor, whose profiles dockerd would then have to
           # load with a parser this machine does not have: the VM runs without it.
           "--append", "apparmor=0",
           "--exec", command]
    env = {**os.environ, "PATH": f"{tools.vng.parent}:{os.environ.get('PATH', '')}"}
    (results / EXIT_CODE).unlink(missing_ok=True)
    boot_log = results / BOOT_LOG
    deadline = time.monotonic() + timeout
    with _locked(deadline) as waited:
        started = time.monotonic()
        timed_out = False
        with open(boot_log, "wb") as log:
            proc = subprocess.Popen(vng, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            while proc.poll() is None:
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    timed_out = True
                    # vng and the QEMU it started are our own process group.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.5)
        seconds = time.monotonic() - started
    return Run(exit_code=_read_exit_code(results / EXIT_CODE), seconds=seconds,
               lock_wait=waited, timed_out=timed_out, boot_log=boot_log)


def _read_exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
