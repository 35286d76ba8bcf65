"""DNS expectations of a lab: ``dig`` inside a node, compared with what the file says.

``{from: client, resolve: web, answer: [web1, web2], rotates: true}`` asks ``client``'s
resolver (its resolv.conf: 127.0.0.11 for a sandbox pycnm's resolver serves) for ``web``:
the answer must be exactly the live addresses of the targets; with ``rotates``, each of
them must also come first in at least one of ``ROTATION_TRIES`` replies (round robin).
``expect: nxdomain`` or ``servfail`` checks the status instead. A name from another host
may take a moment to arrive (the overlay's convergence): a mismatch is asked again, for
at most ``SETTLE`` seconds. Every dig is bounded in time.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import TYPE_CHECKING

from netns_fixtures.lab.model import Expectation

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab

DIG_TIMEOUT = 5  # seconds dig waits for a reply (the resolver forwards within 4)
SETTLE = 8.0  # seconds a name may take to arrive from another host
ROTATION_TRIES = 30


def _dig(lab: Lab, node: str, name: str, rdtype: str) -> tuple[str, list[str]]:
    argv = ["dig", "+tries=1", f"+time={DIG_TIMEOUT}", "+noall", "+comments", "+answer",
            name, rdtype]
    try:
        out = lab.exec(node, argv, timeout=DIG_TIMEOUT * 3).stdout
    except subprocess.TimeoutExpired:
        return "no reply", []
    status = re.search(r"status: (\w+)", out)
    found = [line.split()[-1] for line in out.splitlines()
             if line and not line.startswith(";") and line.split()[3:4] == [rdtype]]
    return (status.group(1) if status else "no reply"), found


def run(lab: Lab, exp: Expectation) -> tuple[str, str, str]:
    """(got, what was answered, detail) for one DNS expectation."""
    name = str(exp.dst.address)
    wanted = sorted(filter(None, (lab.address(t) for t in exp.answer)))
    deadline = time.monotonic() + SETTLE
    while True:
        status, found = _dig(lab, exp.src, name, exp.rdtype)
        got = {"NOERROR": "resolves" if found else "nodata", "NXDOMAIN": "nxdomain",
               "SERVFAIL": "servfail"}.get(status, status.lower())
        shown = " ".join(found) or status
        settled = got == exp.expect and (not wanted or sorted(found) == wanted)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if got != exp.expect:
        return got, shown, f"{name} {exp.rdtype}: {status}" + (f" {found}" if found else "")
    if wanted and sorted(found) != wanted:
        return "error", shown, f"{name} answered {', '.join(found)}, not {', '.join(wanted)}"
    detail = f"{name} {exp.rdtype}: {status}" + (f", {', '.join(found)}" if found else "")
    if exp.rotates:
        firsts = set()
        for _ in range(ROTATION_TRIES):
            status, again = _dig(lab, exp.src, name, exp.rdtype)
            if sorted(again) != wanted:
                return "error", shown, f"{name} answered {', '.join(again)} once, not " \
                       f"{', '.join(wanted)}"
            firsts.add(again[0])
        if firsts != set(wanted):
            return "error", shown, f"round robin: only {', '.join(sorted(firsts))} ever " \
                   f"came first in {ROTATION_TRIES} replies"
        detail += f"; each came first at least once in {ROTATION_TRIES} replies (round robin)"
    return got, shown, detail
