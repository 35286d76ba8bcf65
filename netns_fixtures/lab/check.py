"""The reachability matrix: run every expectation of a lab and tabulate pass and fail.

Who does what: each expectation sends a little real traffic from one node's namespace to
an address looked up live (ping for icmp; for tcp, a short-lived server on the listening
node and one connection), and compares what happened with what the file expects. Every
probe is bounded: a blocked path costs about a second, a reachable one a few
milliseconds. Traffic goes only between the lab's own namespaces.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netns_fixtures.lab.linkstate import missing_namespace
from netns_fixtures.lab.model import Expectation, Topology

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab

REACH_TRIES = 3  # a first packet may wait for ARP; retry before calling a path blocked
PROBE_TIMEOUT = 1.0  # seconds a single ping or connect waits for an answer
SERVER_LIFETIME = 15.0  # a TCP check's server exits by itself after this long


@dataclass
class Outcome:
    """What one expectation found: ``got`` is reach, blocked or error."""

    index: int
    expectation: Expectation
    target: str  # the address probed
    got: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.got == self.expectation.expect


def run_checks(lab: Lab, progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run the lab's whole matrix, in file order."""
    outcomes = []
    for index, exp in enumerate(lab.topology.expect, 1):
        started = time.monotonic()
        gone = _gone(lab.topology, exp)
        if gone:
            outcome = Outcome(index, exp, "?", "error", gone, 0.0)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
            continue
        if exp.proto == "dns":
            from netns_fixtures.lab import dnscheck

            got, answered, detail = dnscheck.run(lab, exp)
            outcome = Outcome(index, exp, answered, got, detail, time.monotonic() - started)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
            continue
        address = lab.address(exp.dst)
        if address is None:
            outcome = Outcome(index, exp, "?", "error", f"{exp.dst} has no IPv4 address",
                              0.0)
        elif exp.spread:
            got, detail = _spread(lab, exp, address)
            outcome = Outcome(index, exp, address, got, detail, time.monotonic() - started)
        elif exp.proto == "icmp":
            got, detail = _icmp(lab, exp, address)
            outcome = Outcome(index, exp, address, got, detail, time.monotonic() - started)
        else:
            got, detail = _tcp(lab, exp, address)
            outcome = Outcome(index, exp, address, got, detail, time.monotonic() - started)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes


def _gone(topo: Topology, exp: Expectation) -> str | None:
    """Why ``exp`` cannot be probed at all: a namespace of a node it names is gone."""
    nodes = [exp.src, *(t.node for t in (exp.dst, exp.seen_as, *exp.answer)
                        if t is not None and t.node is not None),
             *([exp.listen[0]] if exp.listen else []), *exp.spread]
    for node in dict.fromkeys(nodes):
        if topo.sandbox(node) is None and topo.host(node) is None:
            continue  # a bare name a DNS check asks for, not a node
        why = missing_namespace(topo, node)
        if why:
            return why
    return None


def _icmp(lab: Lab, exp: Expectation, address: str) -> tuple[str, str]:
    source = lab.namespace(exp.src)
    tries = REACH_TRIES if exp.expect == "reach" else 1
    sized = f" to {exp.size} bytes, unfragmented" if exp.size is not None else ""
    for _ in range(tries):
        if exp.size is None and source.ping(address, count=1, timeout=PROBE_TIMEOUT):
            return "reach", f"{address} answered"
        if exp.size is not None and _ping_sized(lab, exp.src, address, exp.size):
            return "reach", f"{address} answered{sized}"
    return "blocked", f"no echo reply from {address}{sized}"


def _ping_sized(lab: Lab, node: str, address: str, size: int) -> bool:
    """One echo request of ``size`` payload bytes with "don't fragment" set: a path whose
    MTU is smaller drops it (or says so), so a mismatch shows."""
    argv = ["ping", "-4", "-n", "-q", "-c", "1", "-W", str(PROBE_TIMEOUT), "-M", "do",
            "-s", str(size), address]
    try:
        return lab.exec(node, argv, timeout=PROBE_TIMEOUT + 10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _tcp(lab: Lab, exp: Expectation, address: str) -> tuple[str, str]:
    assert exp.listen is not None and exp.port is not None
    node, port = exp.listen
    source = lab.namespace(exp.src)
    where = f"{address}:{exp.port}" + (f" (served by {node}:{port})"
                                       if (node, port) != (exp.dst.node, exp.port) else "")
    with lab.namespace(node).tcp_server(port, reply=b"{peer}", connections=REACH_TRIES,
                                        timeout=SERVER_LIFETIME):
        tries = REACH_TRIES if exp.expect == "reach" else 1
        for _ in range(tries):
            answer = source.tcp_connect(address, exp.port, timeout=PROBE_TIMEOUT)
            if answer:
                break
        else:
            return "blocked", f"no connection to {where}"
    peer = answer.decode(errors="replace")
    detail = f"connected to {where}; the server saw the client as {peer}"
    if exp.seen_as is not None:
        wanted = lab.address(exp.seen_as)
        if peer != wanted:
            return "error", f"{detail}, not as {wanted} ({exp.seen_as})"
    return "reach", detail


_COUNTING_CLIENT = """
import collections, json, socket, sys
address, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
seen = collections.Counter()
for _ in range(count):
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        seen[data.decode(errors="replace").strip() or "<empty>"] += 1
    except OSError as exc:
        seen["<" + type(exc).__name__ + ">"] += 1
print(json.dumps(seen))
"""
SPREAD_SHARE = 0.7  # each backend must get at least this part of an even share


def _spread(lab: Lab, exp: Expectation, address: str) -> tuple[str, str]:
    """``count`` connections to the service's VIP; each backend's own short-lived server
    answers with the backend's name, and the names are counted."""
    import contextlib
    import json

    assert exp.port is not None and exp.count is not None
    lifetime = SERVER_LIFETIME + exp.count * 0.05
    with contextlib.ExitStack() as servers:
        for node in exp.spread:
            servers.enter_context(lab.namespace(node).tcp_server(
                exp.port, reply=node.encode(), connections=exp.count, timeout=lifetime))
        result = lab.exec(exp.src, ["python3", "-c", _COUNTING_CLIENT, address, str(exp.port),
                                    str(exp.count), str(PROBE_TIMEOUT)],
                          timeout=lifetime + 30)
    try:
        counts: dict[str, int] = json.loads(result.stdout)
    except ValueError:
        return "error", f"the client failed: {(result.stderr or result.stdout).strip()[:200]}"
    shown = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    answered = sum(n for name, n in counts.items() if name in exp.spread)
    if answered == 0:
        return "blocked", f"no backend answered at {address}:{exp.port} ({shown})"
    strangers = [name for name in counts if name not in exp.spread]
    if exp.sticky:
        if len(counts) != 1 or strangers:
            return "error", (f"{exp.count} connections to {address}:{exp.port} should all "
                             f"reach one backend: {shown}")
        return "reach", f"{exp.count} connections to {address}:{exp.port}, all to {shown}"
    share = exp.count / len(exp.spread)
    uneven = [name for name in exp.spread if counts.get(name, 0) < SPREAD_SHARE * share]
    if uneven or strangers:
        return "error", (f"{exp.count} connections to {address}:{exp.port}: {shown}; "
                         f"uneven or unexpected: {', '.join(uneven + strangers)}")
    return "reach", f"{exp.count} connections to {address}:{exp.port}: {shown}"


def table(outcomes: list[Outcome]) -> str:
    """A pass/fail table, one row per expectation, and a summary line."""
    from cnm.cli.output import table as render

    rows = []
    for o in outcomes:
        exp = o.expectation
        proto = exp.proto if exp.port is None else f"{exp.proto}/{exp.port}"
        if exp.proto == "dns":
            proto = f"dns {exp.rdtype}"
        if exp.count is not None:
            proto += f" x{exp.count}"
        if exp.size is not None:
            proto += f" {exp.size}B"
        rows.append((o.index, exp.src, f"{exp.dst} ({o.target})", proto, exp.expect, o.got,
                     "PASS" if o.passed else "FAIL", o.detail))
    text = render(("#", "FROM", "TO", "PROTO", "EXPECT", "GOT", "RESULT", "DETAIL"), rows)
    failed = sum(not o.passed for o in outcomes)
    summary = (f"{len(outcomes) - failed}/{len(outcomes)} passed"
               + (f", {failed} FAILED" if failed else ""))
    return f"{text}\n{summary}"
