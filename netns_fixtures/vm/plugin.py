"""The pytest side of kernel-feature tests: ``@pytest.mark.kernel(...)``.

    @pytest.mark.kernel("8021q")                 # needs 802.1q VLANs
    @pytest.mark.kernel("ipvlan", "8021q")       # needs both
    @pytest.mark.kernel(absent="ipvlan")         # needs a kernel WITHOUT ipvlan (a refusal)

On a kernel that fits, a marked test runs here like any other. The others are moved to
the end of the run, and the VM boots once as the run starts (Debian's stock kernel, see
``machine``), in the background, running all of them together with this machine's Python
on this checkout while the other tests run here; when the first of them comes up, it
waits for the VM to finish, then each of them reports, as its own outcome in this run,
the setup, call and teardown reports it had in the VM (serialised with pytest's own
report hooks, as pytest-xdist does), so its failure, its traceback and its captured
output show here as if it had run here. A test that skipped in the VM, or never reported
(the VM died or timed out), fails: nothing is skipped for a missing kernel feature. A
failure of the VM's session itself (its leak check) fails the last of them.

Inside the VM (``PYCNM_IN_VM=1``) the same plugin runs every marked test directly, failing
one whose kernel still does not fit, and writes each report to ``PYCNM_VM_REPORT``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import pytest

from netns_fixtures import kernelfeatures
from netns_fixtures.vm import guest, machine

MARKER = ("kernel(*features, absent=()): needs these kernel features (module names: "
          f"{', '.join(sorted(kernelfeatures.FEATURES))}), or with absent= a kernel without "
          "them; runs here when this kernel fits, otherwise in one VM boot under Debian's "
          "stock kernel")
TIMEOUT = float(os.environ.get("PYCNM_VM_TIMEOUT", "2400"))  # the whole VM part, seconds
_UNFIT = pytest.StashKey[str]()


def wanted(item: pytest.Item) -> tuple[list[str], list[str]] | None:
    """(needed, absent) features of a marked test, or None for an unmarked one."""
    marks = list(item.iter_markers("kernel"))
    if not marks:
        return None
    needed: list[str] = []
    absent: list[str] = []
    for mark in marks:
        needed += mark.args
        extra = mark.kwargs.get("absent", ())
        absent += [extra] if isinstance(extra, str) else list(extra)
    return kernelfeatures.check_names(needed), kernelfeatures.check_names(absent)


def unfit(needed: list[str], absent: list[str]) -> str | None:
    """Why this kernel does not fit a test, or None if it does."""
    lacking = kernelfeatures.missing(needed)
    present = [f for f in absent if kernelfeatures.has(f)]
    why = []
    if lacking:
        why.append("lacks " + ", ".join(map(kernelfeatures.describe, lacking)))
    if present:
        why.append("has " + ", ".join(map(kernelfeatures.describe, present))
                   + " (the test needs a kernel without it)")
    return f"kernel {os.uname().release} " + " and ".join(why) if why else None


class KernelFeatureTests:
    """Registered by ``netns_fixtures.plugin``; see the module notes."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.in_vm = os.environ.get("PYCNM_IN_VM") == "1"
        self.report_to = os.environ.get("PYCNM_VM_REPORT") if self.in_vm else None
        self.vm_items: dict[str, pytest.Item] = {}
        self.absent_ids: list[str] = []
        self.features: tuple[set[str], set[str]] = (set(), set())
        self.results: dict[str, list[dict[str, Any]]] | None = None
        self.run: machine.Run | None = None
        self.tools: machine.Tools | None = None
        self.folder: Path | None = None
        self.problem: str | None = None  # why the VM's session failed as a whole
        self.failed = False
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    # --- routing ----------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if os.geteuid() != 0:
            return  # skipped as root tests (probing needs root, so does the VM)
        here: list[pytest.Item] = []
        there: list[pytest.Item] = []
        for item in items:
            wants = wanted(item)
            why = unfit(*wants) if wants else None
            if why is None:
                here.append(item)
            elif self.in_vm:
                item.stash[_UNFIT] = f"in the VM, {why}"
                here.append(item)
            else:
                assert wants is not None
                there.append(item)
                self.features[0].update(wants[0])
                self.features[1].update(wants[1])
                if wants[1]:
                    self.absent_ids.append(item.nodeid)
                # The VM has its own time bound; the first of these tests waits for it.
                item.add_marker(pytest.mark.timeout(0))
        items[:] = here + there
        self.vm_items = {item.nodeid: item for item in there}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if _UNFIT in item.stash:
            pytest.fail(item.stash[_UNFIT] + ": it cannot test what it is for", pytrace=False)

    # --- the VM run -------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Start the VM as the run starts, so it works while the other tests run here."""
        if not self.vm_items or session.config.option.collectonly:
            return
        try:
            self.tools = machine.find_tools()
        except machine.VmUnavailable as exc:
            self.problem = str(exc)
            self.results = {}
            return
        self.folder = Path(tempfile.mkdtemp(prefix="pycnm-vm-"))
        needed, absent = self.features
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"kernel {os.uname().release} lacks {', '.join(sorted(needed | absent))}: "
                f"{len(self.vm_items)} tests run in one VM under Linux {self.tools.version}, "
                f"in the background (results in {self.folder})")
        self.thread = threading.Thread(target=self._run_vm, name="pycnm-vm", daemon=True)
        self.thread.start()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> bool | None:
        if item.nodeid not in self.vm_items:
            return None
        if self.thread is not None:
            self.thread.join()
        if self.results is None:
            self.results = {}
            self.problem = self.problem or "the VM run did not start"
        self._replay(item, last=nextitem is None or nextitem.nodeid not in self.vm_items)
        return True

    def _run_vm(self) -> None:
        """The background thread: boot, run, collect the reports (no terminal output
        here: the main thread owns it)."""
        try:
            self.results = self._boot_and_collect()
        except Exception as exc:  # noqa: BLE001 - reported on the VM's tests instead
            self.problem = f"the VM run failed: {type(exc).__name__}: {exc}"
            self.results = {}

    def _boot_and_collect(self) -> dict[str, list[dict[str, Any]]]:
        assert self.tools is not None and self.folder is not None
        needed, absent = self.features
        normal = [n for n in self.vm_items if n not in self.absent_ids]
        spec = {"rootdir": str(self.config.rootpath), "tests": normal,
                "absent_tests": self.absent_ids, "needed": sorted(needed),
                "absent": sorted(absent), "timeout": TIMEOUT}
        (self.folder / guest.SPEC).write_text(json.dumps(spec, indent=1))
        argv = [sys.executable, guest.__file__, str(self.folder)]
        try:
            self.run = machine.boot(self.tools, self.folder, argv, timeout=TIMEOUT,
                                    stop=self.stop)
        except machine.VmUnavailable as exc:
            self.problem = str(exc)
            return {}
        results: dict[str, list[dict[str, Any]]] = {}
        reports = self.folder / guest.REPORTS
        if reports.exists():
            for line in reports.read_text().splitlines():
                data = json.loads(line)
                results.setdefault(data["nodeid"], []).append(data)
        if self.run.timed_out:
            self.problem = f"the VM run was stopped after {TIMEOUT:.0f} s (PYCNM_VM_TIMEOUT)"
        elif self.run.exit_code is None:
            self.problem = "the VM ended without writing the tests' exit code"
        elif self.run.exit_code != 0:
            self.problem = f"pytest in the VM exited with code {self.run.exit_code}"
        return results

    def _guest_log_tail(self, lines: int = 40) -> str:
        if self.folder is None:
            return ""
        path = self.folder / machine.GUEST_LOG
        text = path.read_text(errors="replace") if path.exists() else "(no guest log)"
        tail = "\n".join(text.splitlines()[-lines:])
        console = self.run.tail() if self.run is not None else ""
        return f"--- guest log ({path}) ---\n{tail}\n--- VM console ---\n{console}"

    def _failure(self, item: pytest.Item, when: Literal["call", "teardown"], text: str
                 ) -> pytest.TestReport:
        self.failed = True
        return pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords},
                                 "failed", text, when, [], 0.0)

    def _replay(self, item: pytest.Item, *, last: bool) -> None:
        hook = item.ihook
        hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        assert self.results is not None
        datas = self.results.get(item.nodeid, [])
        if not datas:
            why = self.problem or "the VM's pytest did not run it"
            reports = [self._failure(item, "call",
                                     f"did not report from the VM: {why}\n"
                                     + self._guest_log_tail())]
        else:
            reports = [self._from_vm(item, data) for data in datas]
        for report in reports:
            hook.pytest_runtest_logreport(report=report)
        if last and self.problem and not self.failed:
            # Every test passed but the VM's session failed (its leak check, say).
            hook.pytest_runtest_logreport(report=self._failure(
                item, "teardown", f"the VM's test session failed: {self.problem}\n"
                + self._guest_log_tail()))
        hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _from_vm(self, item: pytest.Item, data: dict[str, Any]) -> Any:
        report = self.config.hook.pytest_report_from_serializable(config=self.config,
                                                                  data=data)
        if report.outcome == "skipped":
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            report.outcome = "failed"
            report.longrepr = (f"skipped in the VM ({reason}): a test sent to the VM must "
                               "run there")
        if report.outcome == "failed":
            self.failed = True
        report.sections.append(("kernel", f"ran in a VM under Linux "
                                f"{self.tools.version if self.tools else '?'}"))
        return report

    # --- inside the VM: every report to the results folder ----------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.report_to is None:
            return
        data = self.config.hook.pytest_report_to_serializable(config=self.config,
                                                              report=report)
        with open(self.report_to, "a") as out:
            out.write(json.dumps(data) + "\n")

    # --- the record -------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.vm_items or self.results is None:
            return
        run = self.run
        if run is None:
            terminalreporter.write_line(f"kernel-feature tests: no VM: {self.problem}",
                                        red=True)
            return
        terminalreporter.write_line(
            f"kernel-feature tests: {len(self.vm_items)} ran in one VM under Linux "
            f"{self.tools.version if self.tools else '?'}: {run.seconds:.1f} s for boot and "
            f"run (waited {run.lock_wait:.1f} s for {machine.LOCK})")

    def pytest_sessionfinish(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.stop.set()  # the run ended early (-x, Ctrl-C): no VM outlives it
            self.thread.join(timeout=60)
        if self.folder is not None and not self.failed and not self.problem:
            shutil.rmtree(self.folder, ignore_errors=True)
