"""Packet capture on one interface of a lab node, with a one-line decode per packet that
opens VXLAN up (outer addresses and UDP ports, VNI, then the inner frame).

Who does what: ``tcpdump`` runs inside the node's namespace (``ip netns exec``) and writes
pcap to a pipe, stopping after ``count`` packets or ``seconds`` (SIGINT, so it flushes);
a reader thread copies the bytes verbatim to the pcap file and splits them into records,
which ``describe`` (scapy) turns into lines as they arrive. The pcap opens in Wireshark.

    with lab.capture("r1", "eth2", count=6, seconds=5) as cap:
        lab.exec("c1", ["ping", "-c", "2", "10.0.0.4"])
    print("\\n".join(cap.lines))
"""

from __future__ import annotations

import contextlib
import select
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnm.errors import CNMError, InvalidOption

READY_TIMEOUT = 10.0  # for tcpdump to say it is listening
MAX_SECONDS = 86400.0  # a capture's time limit (a day): its timer must be a real number
_MAGIC = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}  # pcap magic -> timestamp unit


class CaptureError(CNMError):
    """tcpdump could not start (no such interface, not installed)."""


def describe(packet: Any) -> str:
    """One line for a decoded frame; VXLAN shows outer and inner headers."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    if packet.haslayer(VXLAN):
        outer, udp, vxlan = packet[IP], packet[UDP], packet[VXLAN]
        inner = vxlan.payload
        macs = (f"{inner.src} > {inner.dst} | " if isinstance(inner, Ether) else "")
        return (f"{outer.src}:{udp.sport} > {outer.dst}:{udp.dport} VXLAN vni {vxlan.vni} | "
                f"{macs}{_describe_inner(inner)}")
    return _describe_inner(packet)


def _describe_inner(frame: Any) -> str:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP

    if frame.haslayer(ARP):
        arp = frame[ARP]
        if arp.op == 1:
            return f"ARP who-has {arp.pdst} tell {arp.psrc}"
        return f"ARP {arp.psrc} is-at {arp.hwsrc}"
    ip = frame[IP] if frame.haslayer(IP) else frame[IPv6] if frame.haslayer(IPv6) else None
    if ip is None:
        return frame.summary()
    if ip.haslayer(ICMP):
        icmp = ip[ICMP]
        kind = {0: "echo-reply", 8: "echo-request", 3: "unreachable", 11: "time-exceeded"}
        return (f"{ip.src} > {ip.dst} ICMP {kind.get(icmp.type, f'type {icmp.type}')}"
                + (f" id {icmp.id} seq {icmp.seq}" if icmp.type in (0, 8) else ""))
    if ip.haslayer(TCP):
        tcp = ip[TCP]
        return f"{ip.src}:{tcp.sport} > {ip.dst}:{tcp.dport} TCP [{tcp.flags}]"
    if ip.haslayer(UDP):
        udp = ip[UDP]
        return f"{ip.src}:{udp.sport} > {ip.dst}:{udp.dport} UDP length {udp.len}"
    return f"{ip.src} > {ip.dst} {ip.payload.name}"


class _PcapSplitter:
    """Splits a pcap byte stream into (timestamp, link type, frame bytes) records."""

    def __init__(self) -> None:
        self.buffer = b""
        self.endian = ""
        self.unit = 1e-6
        self.linktype = 1

    def feed(self, data: bytes) -> list[tuple[float, int, bytes]]:
        self.buffer += data
        records = []
        if not self.endian:
            if len(self.buffer) < 24:
                return []
            for endian in ("<", ">"):
                magic = struct.unpack(endian + "I", self.buffer[:4])[0]
                if magic in _MAGIC:
                    self.endian, self.unit = endian, _MAGIC[magic]
            if not self.endian:
                raise CaptureError("tcpdump wrote something that is not pcap")
            self.linktype = struct.unpack(self.endian + "I", self.buffer[20:24])[0] & 0xFFFF
            self.buffer = self.buffer[24:]
        while len(self.buffer) >= 16:
            sec, frac, caplen, _ = struct.unpack(self.endian + "IIII", self.buffer[:16])
            if len(self.buffer) < 16 + caplen:
                break
            records.append((sec + frac * self.unit, self.linktype, self.buffer[16:16 + caplen]))
            self.buffer = self.buffer[16 + caplen:]
        return records


def _decode(linktype: int, frame: bytes) -> Any:
    from scapy.config import conf
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN  # noqa: F401 - binds UDP 4789 to VXLAN

    cls: Any = conf.l2types.get(linktype, Ether)
    return cls(frame)


class Capture:
    """A bounded capture; see the module docstring. ``start`` returns once tcpdump
    listens, so traffic sent after it is seen; ``wait`` returns the lines."""

    def __init__(self, netns: str, iface: str, *, count: int = 20, seconds: float = 10.0,
                 pcap: str | Path | None = None, bpf: str | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.netns = netns
        self.iface = iface
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidOption(f"a capture's count must be a whole number of packets, 1 or "
                                f"more, not {count!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 0 < seconds <= MAX_SECONDS:  # NaN fails this too
            raise InvalidOption(f"a capture's time must be a number of seconds above 0 and at "
                                f"most {MAX_SECONDS:g}, not {seconds!r}")
        self.count = count
        self.seconds = max(0.1, float(seconds))
        self.pcap = Path(pcap) if pcap else Path(f"{netns}-{iface}.pcap")
        self.bpf = bpf
        self.on_line = on_line
        self.lines: list[str] = []
        self.packets = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._first = 0.0
        self._errors = b""

    def start(self) -> Capture:
        # --immediate-mode: hand over each packet at once, or a SIGINT would drop the
        # packets still waiting in the kernel's capture buffer.
        argv = ["ip", "netns", "exec", self.netns, "tcpdump", "-i", self.iface, "-n",
                "--immediate-mode", "-U", "-c", str(self.count), "-w", "-",
                *(self.bpf.split() if self.bpf else [])]
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise CaptureError("tcpdump is not installed (apt-get install tcpdump)") from None
        self._wait_ready()
        self._timer = threading.Timer(self.seconds, self._interrupt)
        self._timer.daemon = True
        self._timer.start()
        self._reader = threading.Thread(target=self._read, name=f"capture {self.iface}",
                                        daemon=True)
        self._reader.start()
        return self

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 0.1)
            if ready:
                line = proc.stderr.readline()
                self._errors += line
                if b"listening on" in line:
                    return
                if not line:  # tcpdump exited
                    break
        self._interrupt()
        proc.wait(timeout=5)
        message = self._errors.decode(errors="replace").strip().splitlines()
        raise CaptureError(f"tcpdump on {self.netns} {self.iface} did not start: "
                           f"{message[-1] if message else 'no output'}")

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        splitter = _PcapSplitter()
        with open(self.pcap, "wb") as out:
            while True:
                chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                for stamp, linktype, frame in splitter.feed(chunk):
                    self._emit(stamp, linktype, frame)

    def _emit(self, stamp: float, linktype: int, frame: bytes) -> None:
        self.packets += 1
        if self.packets == 1:
            self._first = stamp
        try:
            text = describe(_decode(linktype, frame))
        except Exception as exc:  # noqa: BLE001 - a frame scapy cannot parse still counts
            text = f"({len(frame)} bytes, not decoded: {exc})"
        line = f"{self.packets:>3} {stamp - self._first:8.4f}  {text}"
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def _interrupt(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> list[str]:
        """Until ``count`` packets or ``seconds`` have passed; the decoded lines."""
        limit = (self.seconds + 10) if timeout is None else timeout
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._timer is not None:
            self._timer.cancel()
        if proc is not None and proc.stderr is not None:
            self._errors += proc.stderr.read()
            proc.stderr.close()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        return self.lines

    def stop(self) -> list[str]:
        """Stop now (SIGINT: tcpdump flushes what it has) and return the lines."""
        self._interrupt()
        return self.wait()

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:  # packets still in flight (a reply) get a moment to arrive
            self._finish_soon()
        self.stop()

    def _finish_soon(self, grace: float = 0.5) -> None:
        """Wait up to ``grace`` seconds for tcpdump to end by itself (count reached)."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=grace)
