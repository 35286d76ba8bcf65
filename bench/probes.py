"""Measuring helpers shared by the benchmarks: a raw-socket ICMP prober that times the
first reply from an address, one iperf3 TCP stream between two network namespaces, and
percentiles."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

from cnm.osl.netns import in_netns


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- ICMP probe ---------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"pycnm-overlay-bench"
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


class Prober:
    """A raw ICMP socket inside a network namespace (a path: a sandbox's, or a
    container's /proc/PID/ns/net)."""

    def __init__(self, netns_path: str) -> None:
        self.sock = in_netns(netns_path, lambda: socket.socket(
            socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        self.ident = (os.getpid() + id(self)) & 0xFFFF

    def first_reply(self, address: str, timeout: float = 10.0, every: float = 0.002) -> float:
        """Send echoes every ``every`` s until one is answered; return the time of the
        reply (time.perf_counter) or raise TimeoutError after ``timeout``."""
        deadline = time.perf_counter() + timeout
        seq = 0
        while time.perf_counter() < deadline:
            seq = (seq + 1) & 0xFFFF
            with contextlib.suppress(OSError):  # EHOSTUNREACH while ARP fails: go on
                self.sock.sendto(_echo(self.ident, seq), (address, 0))
            send_deadline = time.perf_counter() + every
            while (left := send_deadline - time.perf_counter()) > 0:
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    break
                packet, (source, _) = self.sock.recvfrom(2048)
                header_len = (packet[0] & 0x0F) * 4
                kind, _, _, ident, _ = struct.unpack("!BBHHH", packet[header_len:header_len + 8])
                if source == address and kind == 0 and ident == self.ident:
                    return time.perf_counter()
        raise TimeoutError(f"no reply from {address} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


# --- iperf3 -------------------------------------------------------------------------------


def iperf(server: list[str], client: list[str], address: str, seconds: int, port: int,
          processes: list[Any] | None = None, extra: tuple[str, ...] = ()) -> float:
    """Gbit/s received by one iperf3 TCP stream from the client to ``address``; ``server``
    and ``client`` are command prefixes that enter their namespaces (``ip netns exec NS``,
    ``nsenter --net=PATH``). The server process is added to ``processes`` (for a caller's
    clean-up) and ends after one test."""
    server_proc = subprocess.Popen([*server, "iperf3", "-s", "-1", "-p", str(port), "-B",
                                    address], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
    if processes is not None:
        processes.append(server_proc)
    try:
        deadline = time.monotonic() + 10
        while True:  # the server may not listen yet: retried, bounded
            result = subprocess.run([*client, "iperf3", "-c", address, "-p", str(port), "-t",
                                     str(seconds), "-J", *extra],
                                    capture_output=True, text=True, timeout=seconds + 30)
            report = json.loads(result.stdout or "{}")
            if "Connection refused" in str(report.get("error")) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if result.returncode != 0 or "sum_received" not in report.get("end", {}):
                raise RuntimeError(f"iperf3 to {address} failed: "
                                   f"{report.get('error') or result.stderr}")
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server_proc.poll() is None:
            server_proc.kill()
        server_proc.wait(timeout=10)
