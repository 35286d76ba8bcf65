"""What runs inside the VM: ``python .../netns_fixtures/vm/guest.py RESULTS``.

A script run by its path, importing nothing of the package: under emulation importing
``netns_fixtures`` (and so pyroute2) costs seconds, and pytest pays that once anyway.

RESULTS/spec.json (written by the host's plugin) names the checkout, the tests, the
features they need and those some of them need *absent*. Tests that need a feature absent
run first, with ``install MODULE /bin/false`` in modprobe's configuration so that the
kernel cannot load it (Debian builds these features as modules, none is loaded yet);
then the block goes, the needed modules are loaded and the other tests run. Each phase is
one pytest process whose reports go, one JSON line each, to RESULTS/reports.jsonl (see
``netns_fixtures.vm.plugin``). The exit code is the worst of the phases'.

The VM is fresh and runs nothing else, so the leak check is always on here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SPEC = "spec.json"
REPORTS = "reports.jsonl"
BLOCK_FILE = Path("/etc/modprobe.d/pycnm-vm-block.conf")  # /etc is writable in the VM
TIME_FACTOR = "8"  # start-up deadlines stretch by this much under emulation
PER_TEST_TIMEOUT = 720  # seconds, setup + call + teardown of one test
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MODULE_RE = re.compile(r"[a-z0-9_]{1,32}")  # a module name, before it goes into a file line


def check_names(modules: list[str]) -> list[str]:
    """The host names known features only; this keeps anything else out of modprobe.d."""
    for module in modules:
        if not _MODULE_RE.fullmatch(module):
            raise ValueError(f"not a kernel module name: {module!r}")
    return modules


def _say(text: str) -> None:
    print(f"[guest {time.monotonic():8.1f}] {text}", flush=True)


def _pytest(spec: dict, results: Path, nodeids: list[str]) -> int:
    env = {**os.environ, "PATH": PATH, "PYTHONPATH": spec["rootdir"],
           "PYTHONDONTWRITEBYTECODE": "1", "PYCNM_IN_VM": "1", "PYCNM_LEAK_CHECK": "1",
           "PYCNM_VM_REPORT": str(results / REPORTS),
           "PYCNM_TIME_FACTOR": TIME_FACTOR}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
            "--rootdir", spec["rootdir"], "--basetemp", "/run/pycnm-vm-pytest",
            # pytest-timeout's per-test bound: a hung test fails with every thread's stack
            # and the others still run (the slowest, the first Docker test with its
            # engine's start, takes 300 s at most; 8 x 300 s let one hang eat the VM's
            # whole time bound once, and left no trace of where it hung)
            "-o", f"timeout={PER_TEST_TIMEOUT}",
            "-rfE", *spec.get("pytest_args", []), "--", *nodeids]
    _say(f"pytest on {len(nodeids)} tests")
    return subprocess.run(argv, cwd=spec["rootdir"], env=env, timeout=spec["timeout"]).returncode


def main(results: Path) -> int:
    spec = json.loads((results / SPEC).read_text())
    absent = check_names(spec.get("absent", []))
    needed = check_names(spec.get("needed", []))
    _say(f"kernel {os.uname().release}; needed {needed}, absent {absent}")
    status = 0
    if spec.get("absent_tests"):
        BLOCK_FILE.write_text("".join(f"install {m} /bin/false\n" for m in absent))
        try:
            status = max(status, _pytest(spec, results, spec["absent_tests"]))
        finally:
            BLOCK_FILE.unlink()
    for module in needed:
        done = subprocess.run(["modprobe", module], capture_output=True, text=True)
        _say(f"modprobe {module}: {'ok' if done.returncode == 0 else done.stderr.strip()}")
    if spec.get("tests"):
        status = max(status, _pytest(spec, results, spec["tests"]))
    _say(f"done, exit code {status}")
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
