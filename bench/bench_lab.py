"""N sandboxes on one switch, built and removed by pycnm's labs and by Mininet, in one run.

    sudo python3 bench/bench_lab.py [--sizes 50,200,1000] [--runs 3] [--large-runs 1]

The same topology on both sides: N hosts on one Linux bridge, each with its own network
namespace, a veth to the bridge and an address.

- **pycnm**: a lab file with one emulated host, a bridge network on it and N sandboxes
  attached to it; ``pycnm lab up FILE`` then ``pycnm lab down NAME``, each a process of
  its own (this tree's bin/pycnm, this interpreter), each timed.
- **Mininet 2.3**: ``mn --switch lxbr --controller none --topo single,N --test none``.
  It builds the network, then takes it down and exits; "up" is the time from the start
  to its first ``*** Stopping`` line, "down" from there to its exit (its output is read
  line by line as it comes). Mininet's switch and its ports live in the root namespace
  (``s1``, ``s1-ethK``): the benchmark refuses to start if any exists, and after each run
  checks that Mininet left none, nor a host shell (``mininet:hK``); what it finds it
  reports and removes by exact name (never ``mn -c``, which deletes by pattern).

Before each side's run the benchmark waits until the CPUs are idle again (90% idle over
a quarter of a second, at most 20 s; it says so if they were not): the kernel goes on
destroying the last run's namespaces after ``lab down`` or ``mn`` returned (a lab of 50
left ~50), and whichever side came next would pay for it. Runs alternate which side goes
first. ``--runs`` runs per N (``--large-runs`` for N >=
1000, where Mininet takes minutes). Prints median, min and max of every side and N, the
ratio Mininet / pycnm for up and for down, and the verdicts against issue 16's targets:
pycnm at least 3x faster at every N (up and down), and ``lab up`` of 1000 sandboxes under
10 s. Fails (exit 1) if a side measured nothing, a command failed, or Mininet is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import (  # noqa: E402
    REPO,
    compile_tree,
    footer,
    header,
    installed_env,
    summary,
)

LAUNCHER = str(REPO / "bin" / "pycnm")
MN = shutil.which("mn") or "/usr/bin/mn"
UP_TARGET_S = 10.0
RATIO_TARGET = 3.0


def lab_file(folder: Path, name: str, count: int) -> Path:
    """The single-switch topology as a pycnm lab: one host, one bridge network, N
    sandboxes (written as YAML by hand: a list of plain names, no input in it)."""
    lines = [f"name: {name}", f"description: {count} sandboxes on one bridge (bench_lab)",
             "hosts:", "  - name: host1", "networks:",
             "  - {name: sw, driver: bridge, host: host1, subnet: 10.0.0.0/16}", "sandboxes:"]
    lines += [f"  - {{name: h{i}, host: host1, networks: [sw]}}" for i in range(1, count + 1)]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pycnm_env() -> dict[str, str]:
    return installed_env(PYCNM_PYTHON=sys.executable)


def run_pycnm(folder: Path, count: int, tag: str) -> tuple[float, float]:
    name = f"bl{count}{tag}"[:12]
    path = lab_file(folder, name, count)
    env = pycnm_env()
    started = time.perf_counter()
    up = subprocess.run([LAUNCHER, "lab", "up", str(path)], capture_output=True, text=True,
                        env=env, timeout=1800)
    up_s = time.perf_counter() - started
    try:
        if up.returncode != 0:
            raise SystemExit(f"FAILED: pycnm lab up ({count}) exited {up.returncode}: "
                             f"{up.stderr.strip()[-800:]}")
        started = time.perf_counter()
        down = subprocess.run([LAUNCHER, "lab", "down", name], capture_output=True, text=True,
                              env=env, timeout=1800)
        down_s = time.perf_counter() - started
        if down.returncode != 0:
            raise SystemExit(f"FAILED: pycnm lab down ({count}) exited {down.returncode}: "
                             f"{down.stderr.strip()[-800:]}")
    finally:
        subprocess.run([LAUNCHER, "lab", "down", name], capture_output=True, env=env,
                       timeout=1800)
    left = [ns for ns in _netns() if name in ns]
    if left:
        raise SystemExit(f"FAILED: pycnm lab down left namespaces: {left[:5]}")
    return up_s, down_s


def _netns() -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return os.listdir("/run/netns")
    return []


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _mininet_names(count: int) -> tuple[set[str], set[str]]:
    """The root-namespace interfaces and host shells one ``single,N`` run makes."""
    links = {"s1"} | {f"s1-eth{i}" for i in range(1, count + 1)}
    shells = {f"mininet:h{i}" for i in range(1, count + 1)} | {"mininet:s1"}
    return links, shells


def _shells(wanted: set[str]) -> dict[int, str]:
    """Processes whose command line ends with one of ``wanted`` (Mininet's host shells
    are ``bash ... mininet:hK``)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            words = [a.decode(errors="replace") for a in argv if a]
            if words and words[-1] in wanted and "bash" in words[0]:
                found[int(entry)] = words[-1]
    return found


def run_mininet(count: int) -> tuple[float, float, list[str]]:
    links, shells = _mininet_names(count)
    clash = (links & _links()) | set(_shells(shells).values())
    if clash:
        raise SystemExit(f"FAILED: Mininet's names are taken already ({sorted(clash)[:5]}): "
                         "another Mininet may be running; not starting a second one")
    argv = [MN, "--switch", "lxbr", "--controller", "none", "--topo", f"single,{count}",
            "--test", "none"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    stopping = None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tempfile.gettempdir())
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if stopping is None and line.startswith("*** Stopping"):
            stopping = time.perf_counter()
        tail = (tail + [line])[-20:]
    code = proc.wait()
    ended = time.perf_counter()
    removed = _sweep_mininet(links, shells)
    if code != 0 or stopping is None:
        raise SystemExit(f"FAILED: mn single,{count} exited {code}"
                         f"{'' if stopping else ' without stopping'}: {''.join(tail)}")
    return stopping - started, ended - stopping, removed


def _sweep_mininet(links: set[str], shells: set[str]) -> list[str]:
    """What one Mininet run left behind, removed by exact name; the list of it."""
    removed = []
    for name in sorted(links & _links()):
        subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
        removed.append(f"link {name}")
    for pid, name in _shells(shells).items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"process {pid} ({name})")
    return removed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--runs", type=int, default=3, help="runs per N below 1000")
    parser.add_argument("--large-runs", type=int, default=1, help="runs per N >= 1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not os.path.exists(MN):
        raise SystemExit("FAILED: Mininet's mn is not installed (apt-get install mininet)")
    shown = subprocess.run([MN, "--version"], capture_output=True, text=True)
    version = (shown.stdout or shown.stderr).strip()  # Mininet 2.3 prints it on stderr
    header(f"Mininet {version}; sizes {sizes}; {args.runs} runs per N "
           f"({args.large_runs} for N >= 1000)")
    compile_tree()  # bytecode caches, as an installed pycnm has them
    tag = uuid.uuid4().hex[:4]
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    leftovers: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pycnm-bench-lab-") as tmp:
        for n_index, count in enumerate(sizes):
            runs = args.large_runs if count >= 1000 else args.runs
            for run in range(runs):
                order = ["pycnm", "mininet"] if (run + n_index) % 2 == 0 else ["mininet", "pycnm"]
                for side in order:
                    settled = wait_idle()
                    if settled is not None:
                        print(f"  (the CPUs were still busy after {settled:.0f} s: "
                              "this run started anyway)", flush=True)
                    if side == "pycnm":
                        up, down = run_pycnm(Path(tmp), count, f"{tag}{run}")
                    else:
                        up, down, removed = run_mininet(count)
                        leftovers += [f"N={count}: {r}" for r in removed]
                    cell = results.setdefault((side, count), {"up": [], "down": []})
                    cell["up"].append(up)
                    cell["down"].append(down)
                    print(f"  N={count} run {run + 1}/{runs} {side:8} up {up:7.2f} s  "
                          f"down {down:7.2f} s", flush=True)
    return report(sizes, results, leftovers)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def wait_idle(idle: float = 0.9, window: float = 0.25, limit: float = 20.0) -> float | None:
    """Wait until the CPUs were ``idle`` idle over one ``window``; None once they were,
    else the seconds waited (``limit``)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle:
            return None
    return limit


def report(sizes: list[int], results: dict[tuple[str, int], dict[str, list[float]]],
           leftovers: list[str]) -> int:
    print(f"\n{'N':>6} {'phase':6} {'pycnm s: median (min-max)':>28} "
          f"{'Mininet s: median (min-max)':>30} {'Mininet/pycnm':>14}")
    verdicts = []
    for count in sizes:
        for phase in ("up", "down"):
            cells = []
            medians = []
            for side in ("pycnm", "mininet"):
                samples = results.get((side, count), {}).get(phase, [])
                med = summary(samples, f"{side} {phase} N={count}")[0]
                medians.append(med)
                cells.append(f"{med:.2f} ({min(samples):.2f}-{max(samples):.2f}) n={len(samples)}")
            ratio = medians[1] / medians[0]
            verdicts.append((f"N={count} {phase}: Mininet/pycnm >= {RATIO_TARGET:g}",
                             f"{ratio:.1f}x", ratio >= RATIO_TARGET))
            if count >= 1000 and phase == "up":
                verdicts.append((f"N={count} pycnm lab up < {UP_TARGET_S:g} s",
                                 f"{medians[0]:.2f} s", medians[0] < UP_TARGET_S))
            print(f"{count:>6} {phase:6} {cells[0]:>28} {cells[1]:>30} {ratio:>13.1f}x")
    print("\nMininet left behind (removed by exact name): " + (
        "; ".join(leftovers) if leftovers else "nothing"))
    print("\ntargets:")
    for what, figure, ok in verdicts:
        print(f"  {what:40} {figure:>9}  {'met' if ok else 'NOT met'}")
    footer()
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces, bridges and Mininet need it")
    sys.exit(main())
