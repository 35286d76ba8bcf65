"""What every benchmark here prints and how it summarises: the commit and the command it
measured, the machine and its load, median over all runs with the spread, and a loud
failure when a side measured nothing."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class MeasuredNothing(SystemExit):
    """A benchmark without samples for something it claims to measure."""

    def __init__(self, what: str) -> None:
        super().__init__(f"FAILED: {what}: no samples, so there is no figure to report")


def installed_env(**extra: str) -> dict[str, str]:
    """The environment for the pycnm processes a benchmark starts: this tree on
    PYTHONPATH, and Python's bytecode caches used as an installed pycnm uses them (pip
    compiles them at install time; PYTHONDONTWRITEBYTECODE, set in some sessions, would
    make every process compile pycnm's sources again). ``compile_tree`` writes them."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_tree() -> None:
    """Write the bytecode caches of this tree's packages (as pip does on install)."""
    folders = [str(REPO / p) for p in ("cnm", "drivers", "plugin_server", "netns_fixtures")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True,
                   env=installed_env())


def commit() -> str:
    """HEAD's short id, with "+dirty" when the work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def header(extra: str = "") -> None:
    """The first lines of every report: what ran, where, at which commit."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# command: {shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}")
    print(f"# commit {commit()}; {time.strftime('%Y-%m-%d %H:%M:%S %z')}; kernel "
          f"{os.uname().release}; {os.cpu_count()} cpus; load average {load} at the start"
          + (f"; {extra}" if extra else ""), flush=True)


def footer() -> None:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# load average {load} at the end", flush=True)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(samples: Sequence[float], what: str) -> tuple[float, float, float]:
    """Median, p10 and p90 over all runs; MeasuredNothing if there are none."""
    if not samples:
        raise MeasuredNothing(what)
    return statistics.median(samples), percentile(samples, 0.1), percentile(samples, 0.9)


def spread(samples: Sequence[float], what: str, unit: str = "ms", digits: int = 1) -> str:
    med, p10, p90 = summary(samples, what)
    return f"{med:.{digits}f} {unit} (p10 {p10:.{digits}f}, p90 {p90:.{digits}f}, n={len(samples)})"


def timed_ms(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def rotated(sides: Sequence[str], i: int) -> list[str]:
    """The order of the sides in round ``i``: each goes first in turn, so that the
    machine's drift and any warm cache favour none of them."""
    k = i % len(sides)
    return [*sides[k:], *sides[:k]]
