"""nftables, in tables of pycnm's own only.

We never touch another table: every ruleset we load names its table, and "replace" is a
delete of that one table followed by its new contents, in one atomic transaction. Rules
go to nft as JSON built by ``cnm.osl.nftjson`` from typed values (``nft -j -f -``), never
as text, so no string from a request can become nft syntax.
The nft child process inherits the namespace of the thread that forks it, so running it
from ``in_netns`` puts it in the right namespace without nsenter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cnm.errors import Conflict, KernelError, KernelFeatureMissing
from cnm.osl import nftjson
from cnm.osl.netns import in_netns, open_netns
from cnm.osl.nftjson import Command, Family

LOCK_DIR = "/run/pycnm"


def _nft_binary() -> str:
    path = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if path is None:
        raise KernelFeatureMissing("nftables is not installed: install the 'nftables' package")
    return path


def load(ns: str | None, commands: Sequence[Command], *, what: str) -> None:
    """Load ``commands`` (nft JSON, see ``cnm.osl.nftjson``) with ``nft -j -f -`` inside
    ``ns`` as one atomic transaction; raise with nft's own words on error."""
    document = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}},
                                        *commands]})
    result = _nft(ns, ["-j", "-f", "-"], document)
    if result.returncode != 0:
        detail = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise KernelError(f"{what}: nft refused the rules: {detail[0] if detail else 'no reason'}")


def load_many(jobs: Sequence[tuple[str | None, Sequence[Command], str]]) -> None:
    """``load`` for several namespaces at once, ``(ns, commands, what)`` each: one nft
    process per namespace, run side by side (a change that touches two namespaces then
    takes about the time of one). Each transaction is atomic; together they are not. The
    first error is raised once every process has ended."""
    errors: list[BaseException] = []

    def run(job: tuple[str | None, Sequence[Command], str]) -> None:
        try:
            load(job[0], job[1], what=job[2])
        except BaseException as exc:  # raised by the caller, after the others ended
            errors.append(exc)

    others = [threading.Thread(target=run, args=(job,), name="pycnm-nft", daemon=True)
              for job in jobs[1:]]
    for thread in others:
        thread.start()
    if jobs:
        run(jobs[0])
    for thread in others:
        thread.join()
    if errors:
        raise errors[0]


def _nft(ns: str | None, args: list[str], stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    nft = _nft_binary()
    return in_netns(ns, lambda: subprocess.run(
        [nft, *args], input=stdin, text=True, capture_output=True, timeout=30))


def list_tables(ns: str | None) -> list[tuple[str, str]]:
    """(family, name) of every table in ``ns``."""
    result = _nft(ns, ["-j", "list", "tables"])
    if result.returncode != 0:
        raise KernelError(f"nft list tables: {result.stderr.strip() or 'failed'}")
    items = json.loads(result.stdout or "{}").get("nftables", [])
    return [(t["table"]["family"], t["table"]["name"]) for t in items if "table" in t]


def list_table(ns: str | None, family: str, name: str) -> list[dict[str, Any]]:
    """The objects of one table as nft's JSON (empty when the table is not there)."""
    if (family, name) not in list_tables(ns):
        return []
    result = _nft(ns, ["-j", "list", "table", family, name])
    if result.returncode != 0:
        raise KernelError(f"nft list table {family} {name}: {result.stderr.strip()}")
    return [i for i in json.loads(result.stdout or "{}").get("nftables", [])
            if "metainfo" not in i]


def replace_table(ns: str | None, family: Family, name: str, chains: Sequence[nftjson.Chain],
                  sets: Sequence[nftjson.NamedSet] = (), *, what: str,
                  fresh: bool = False) -> None:
    """Make table ``family name`` hold exactly ``chains`` (and ``sets``), atomically.
    ``fresh``: the table is most likely not there yet; it is then created, without the
    replace's delete (a transaction that deletes a table waits ~13 ms in the kernel's
    commit here, one that only adds ~2 ms), and replaced only if it was there after all
    (the create then fails whole, nothing changed)."""
    if fresh:
        try:
            load(ns, nftjson.create_table(family, name, chains, sets), what=what)
            return
        except KernelError:
            pass
    load(ns, nftjson.replace_table(family, name, chains, sets), what=what)


def delete_table(ns: str | None, family: Family, name: str) -> None:
    """Delete our table; a table already gone is success. One ``nft`` run: the
    transaction adds the table before deleting it, so it holds either way (a look with
    ``nft list tables`` first cost a second run, ~5-10 ms, whenever the table was there)."""
    load(ns, nftjson.delete_table(family, name), what=f"delete table {family} {name}")


def _key(ns: str | None) -> str:
    return "root" if ns is None else str(os.stat(ns).st_ino)


_held = threading.local()  # per thread: the namespaces (dev, inode) whose lock it holds


@contextmanager
def ruleset_lock(ns: str | None) -> Iterator[None]:
    """Serialise read-state-then-render across processes acting on one namespace.

    Without it two pycnm processes could each render from a state that lacks the other's
    change and the later load would drop it. The lock is taken on the namespace's own
    file (nsfs supports flock): every path to one namespace is one inode, and no lock
    file is left behind per namespace ever used. A thread that holds it may take it again
    (the load balancers hold it while the bridge driver, which takes it too, makes their
    leg); other threads and processes wait.
    """
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY) if ns is None else open_netns(ns)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        held: set[tuple[int, int]] = _held.__dict__.setdefault("keys", set())
        if key in held:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _owner_path(ns: str | None) -> str:
    return os.path.join(LOCK_DIR, f"nft-{_key(ns)}.owner")


def _recorded_owner(ns: str | None) -> str:
    try:
        with open(_owner_path(ns)) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


def other_owner(ns: str | None, family: str, name: str, owner: str) -> str | None:
    """The store (``url host ID``) other than ``owner`` whose rules the loaded table
    holds, or None: the table is ``owner``'s, nobody's, or not loaded (a namespace may
    reuse the number of a dead one, so a record alone proves nothing). Call with
    ``ruleset_lock`` held; costs an ``nft`` run only when another owner is recorded."""
    return _other(ns, family, name, owner, _recorded_owner(ns))


def _other(ns: str | None, family: str, name: str, owner: str, recorded: str) -> str | None:
    if recorded in ("", owner) or (family, name) not in list_tables(ns):
        return None
    return recorded


def claim_table(ns: str | None, family: str, name: str, owner: str) -> bool:
    """Record ``owner`` as the store whose rules the table holds, before loading them
    (``ruleset_lock`` held). True if no pycnm process had loaded it in this namespace
    (the table is most likely not there: ``replace_table``'s ``fresh``).

    A table is rendered whole from one store: a pycnm process on another store would
    replace the first one's rules with its own, so that is refused while the other's
    table is loaded.
    """
    recorded = _recorded_owner(ns)
    current = _other(ns, family, name, owner, recorded)
    if current is not None:
        raise Conflict(
            f"table {family} {name} here holds the rules of pycnm's store {current}; pycnm on "
            f"another store ({owner}) would overwrite them: use that store (--store or "
            "PYCNM_STORE, and its --host-id), or remove its networks first"
        )
    if recorded != owner:
        os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
        with open(_owner_path(ns), "w") as handle:
            handle.write(owner + "\n")
    return not recorded


def release_table(ns: str | None) -> None:
    """Forget the table's owner once the table is gone (``ruleset_lock`` held)."""
    with contextlib.suppress(OSError):
        os.unlink(_owner_path(ns))
