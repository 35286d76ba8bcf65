"""What a lab has made so far, on disk, so that a lab can always be removed.

Who does what: the realiser writes a ``LabState`` to ``<labs dir>/<lab>/state.json``
*before* each namespace it makes (write-ahead: a crash between the note and the object
leaves a note about nothing, which removal tolerates, never an object without a note), and
each process it starts as soon as it has a pid (a process whose pid never reached the file
is found by a marker in its command line: the lab's folder or namespace prefix).
``lab down`` reads it, and also sweeps by the lab's own name prefix, so a lab killed at
any point is removed completely. The lab's store (SQLite file or etcd data) lives in the
same folder and goes with it.

The labs dir is ``/run/pycnm/labs`` (``$PYCNM_LAB_DIR`` overrides it): a tmpfs, so state
and namespaces vanish together at reboot.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnm.errors import InvalidOption
from netns_fixtures.lab.model import LAB_NAME_RE

DEFAULT_LABS_DIR = "/run/pycnm/labs"
STATE_FILE = "state.json"
BUILDING, UP, REMOVING = "building", "up", "removing"


def labs_dir() -> Path:
    return Path(os.environ.get("PYCNM_LAB_DIR", DEFAULT_LABS_DIR))


def lab_dir(name: str) -> Path:
    """The folder of lab ``name``: the name is checked to be a lab's name (never a path),
    and the folder it resolves to to lie directly inside the labs dir. Every path made from
    a name a user typed goes through here (``lab down`` removes this folder)."""
    if not isinstance(name, str) or not LAB_NAME_RE.fullmatch(name):
        raise InvalidOption(f"{name!r} is not a lab name (a lower-case letter, then at most 11 "
                            "lower-case letters and digits)")
    base = labs_dir().resolve()
    folder = (base / name).resolve()
    if folder.parent != base:
        raise InvalidOption(f"lab {name}: its folder {folder} is not inside {base}")
    return folder


@dataclass
class Process:
    """A long-running process the lab started (etcd, a host's agent). ``marker`` is a
    string its command line must contain for it to be ours (a pid may be reused)."""

    role: str
    pid: int
    marker: str


@dataclass
class LabState:
    name: str
    source: str | None = None  # the topology file it was built from
    data: dict[str, Any] = field(default_factory=dict)  # the topology, as parsed
    status: str = BUILDING
    store: str = ""
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def local_store(self) -> str | None:
        """Beside an etcd, where the lab hosts' own records live: a file of the lab's."""
        return f"sqlite:///{self.dir}/local.db" if self.store.startswith("etcd") else None

    def save(self) -> None:
        """Write atomically: a reader sees the old state or the new one, never half."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        os.replace(tmp, self.dir / STATE_FILE)

    def note_namespace(self, name: str) -> None:
        self.note_namespaces([name])

    def note_namespaces(self, names: list[str]) -> None:
        """Note namespaces about to be made, in one write (a lab of 1000 sandboxes would
        otherwise rewrite its whole state 1000 times)."""
        known = set(self.namespaces)
        new = [n for n in dict.fromkeys(names) if n not in known]
        if new:
            self.namespaces.extend(new)
            self.save()

    def note_process(self, role: str, pid: int, marker: str) -> None:
        self.processes.append(Process(role, pid, marker))
        self.save()

    def set_status(self, status: str) -> None:
        self.status = status
        self.save()

    @classmethod
    def load(cls, name: str) -> LabState | None:
        """The state of lab ``name``, or None if it has none (never built, or removed)."""
        path = lab_dir(name) / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return cls(name=name, status=REMOVING)  # unreadable: only removal makes sense
        raw["processes"] = [Process(**p) for p in raw.get("processes", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in known})


def all_states() -> list[LabState]:
    """Every lab with a state folder, by name."""
    try:
        entries = sorted(labs_dir().iterdir())
    except FileNotFoundError:
        return []
    states = []
    for entry in entries:
        if entry.is_dir() and LAB_NAME_RE.fullmatch(entry.name):
            state = LabState.load(entry.name)
            states.append(state or LabState(name=entry.name, status=REMOVING))
    return states


# --- processes -----------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def is_ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and its command line contains ``marker`` (a zombie, whose
    command line is empty, counts as gone)."""
    return pid > 0 and marker in _cmdline(pid)


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains ``marker``, an exact lab-specific string (the
    lab's folder or namespace prefix): how a process started just before a crash, whose
    pid never reached the state file, is still found."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and \
                marker in _cmdline(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def stop(pid: int, marker: str, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True if the process was running."""
    if not is_ours(pid, marker):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_ours(pid, marker):
                return True
            time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    """Collect our own child's exit status, if it is our child (else nothing to do)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
