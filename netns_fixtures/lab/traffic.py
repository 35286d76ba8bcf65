"""Reachability at a glance and a bandwidth test: ``pycnm lab pingall`` and ``lab iperf``.

Who does what: ``pingall`` pings from every sandbox to every other (one echo request,
retried once, each bounded by a second; a few pairs at a time) and returns a matrix, as
Mininet's ``pingall`` does; the address pinged is the target's address on a network the
two share, else the target's ``eth0``. ``iperf`` runs iperf3's server in one node (one
test, then it exits) and its client in another for a bounded time, and returns iperf3's
own figures. Traffic goes only between the lab's namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnm.errors import CNMError, InvalidOption
from netns_fixtures.lab import kernel

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab

PING_TRIES = 2
PING_WAIT = 1  # seconds per echo request
PARALLEL = 4
IPERF_PORT = 5201
IPERF_MAX_SECONDS = 60
IPERF_READY_TIMEOUT = 10.0


@dataclass
class Ping:
    src: str
    dst: str
    address: str | None
    reached: bool


def _target_address(lab: Lab, src: str, dst: str) -> str | None:
    """``dst``'s address on a network it shares with ``src``, else its usual one (a
    host-mode sandbox's is its host's, a sharer's its owner's; none-mode has none)."""
    topo = lab.topology
    source, target = topo.sandbox(src), topo.sandbox(dst)
    assert source is not None and target is not None
    mine = {a.network for a in source.networks}
    ns = lab.netns(dst)
    for i, att in enumerate(target.networks):
        if att.network in mine:
            found = kernel.first_ipv4(ns, f"eth{i}")
            if found:
                return found
    return lab.address(dst)


def pingall(lab: Lab) -> list[Ping]:
    """Every sandbox to every other sandbox, in file order."""
    names = [s.name for s in lab.topology.sandboxes]
    pairs = [(a, b) for a in names for b in names if a != b]

    def probe(pair: tuple[str, str]) -> Ping:
        src, dst = pair
        address = _target_address(lab, src, dst)
        reached = address is not None and any(
            lab.namespace(src).ping(address, count=1, timeout=PING_WAIT)
            for _ in range(PING_TRIES))
        return Ping(src, dst, address, reached)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(probe, pairs))


def matrix(pings: list[Ping]) -> str:
    """Mininet's shape: ``c1 -> c2 c3 X`` per source, then a summary line."""
    lines = []
    sources = list(dict.fromkeys(p.src for p in pings))
    for src in sources:
        row = [p.dst if p.reached else "X" for p in pings if p.src == src]
        lines.append(f"{src} -> {' '.join(row)}")
    dropped = sum(not p.reached for p in pings)
    share = 100 * dropped / len(pings) if pings else 0
    lines.append(f"*** Results: {share:.0f}% dropped ({len(pings) - dropped}/{len(pings)} "
                 "received)")
    return "\n".join(lines)


@dataclass
class IperfResult:
    src: str
    dst: str
    address: str
    seconds: float
    sent_bps: float
    received_bps: float
    retransmits: int | None


def iperf(lab: Lab, src: str, dst: str, seconds: int = 3,
          port: int = IPERF_PORT, starting: Callable[[str], None] | None = None
          ) -> IperfResult:
    """TCP from ``src`` to ``dst`` for ``seconds`` (bounded), iperf3's figures.
    ``starting`` hears one line once the request is found valid, before traffic flows."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) \
            or not 1 <= seconds <= IPERF_MAX_SECONDS:
        raise InvalidOption(f"iperf time must be a whole number of seconds between 1 and "
                            f"{IPERF_MAX_SECONDS}, not {seconds!r}")
    if not 1 <= port <= 65535:
        raise InvalidOption(f"iperf port must be between 1 and 65535, not {port}")
    lab.netns(src), lab.netns(dst)  # an unknown node is named as one, before anything starts
    address = lab.address(dst)
    if address is None:
        raise CNMError(f"{dst} has no IPv4 address to send to")
    if starting is not None:
        starting(f"iperf3 from {src} to {dst} ({address}) for {seconds} s")
    server = lab.namespace(dst).popen(["iperf3", "--server", "--one-off", "--port",
                                       str(port), "--bind", address],
                                      stdout=subprocess.DEVNULL)
    try:
        _wait_listening(lab, dst, port, server)
        try:
            client = lab.exec(src, ["iperf3", "--client", address, "--port", str(port),
                                    "--time", str(seconds), "--json", "--connect-timeout",
                                    "3000"], timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise CNMError(f"iperf3 from {src} to {dst} ({address}) did not finish in "
                           f"{seconds + 30} s") from None
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    try:
        report = json.loads(client.stdout)
    except ValueError:
        raise CNMError(f"iperf3 from {src} to {dst} failed: "
                       f"{(client.stderr or client.stdout).strip()[:300]}") from None
    if "error" in report:
        raise CNMError(f"iperf3 from {src} to {dst} ({address}) failed: {report['error']}")
    end = report.get("end", {})
    sent, received = end.get("sum_sent", {}), end.get("sum_received", {})
    return IperfResult(src, dst, address, float(sent.get("seconds", seconds)),
                       float(sent.get("bits_per_second", 0.0)),
                       float(received.get("bits_per_second", 0.0)),
                       sent.get("retransmits"))


def _wait_listening(lab: Lab, node: str, port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + IPERF_READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CNMError(f"iperf3's server in {node} exited: "
                           f"{(server.stderr.read() if server.stderr else '').strip()[:300]}")
        listening = lab.exec(node, ["ss", "-Hltn", f"sport = :{port}"]).stdout
        if listening.strip():
            return
        time.sleep(0.05)
    raise CNMError(f"iperf3's server in {node} did not listen on port {port} within "
                   f"{IPERF_READY_TIMEOUT:g} s")


def human_bps(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.2f} {unit}"
    return f"{bps:.0f} bit/s"
