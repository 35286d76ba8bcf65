"""How to serve DNS to many sandboxes from one Python process: measured, not guessed.

A socket stays in the namespace it was opened in, so one process can hold a listening
socket in every sandbox. The question is how to drive them:

- ``loop``: one thread, one epoll set holding every sandbox's socket (pycnm's resolver);
- ``threads``: one thread per sandbox blocking in recvfrom (closest to Docker's one
  resolver per sandbox, in a Python process).

Each variant answers with the same cached reply (the resolver's hot path: a dictionary
lookup keyed by the query's bytes), so the figures compare the serving model only.
dnsperf runs in K sandboxes at once (K = 1 and 4) against N sandboxes served (N = 4 and
200); the process's resident memory is read with N sockets open.

    sudo python3 bench/bench_dns_design.py [--seconds 5] [--sandboxes 200]

Prints one table; fails loudly if a run answered nothing. The figures and the choice
they led to are in docs/dns.md.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import dns.message
import dns.rrset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchlib import footer, header  # noqa: E402
from cnm.osl.netns import create_named_netns, delete_named_netns, in_netns  # noqa: E402

NAME = "bench.example."


def answer_for(query: bytes, cache: dict[bytes, bytes]) -> bytes:
    body = cache.get(query[2:])
    if body is None:
        msg = dns.message.from_wire(query)
        reply = dns.message.make_response(msg)
        reply.answer.append(dns.rrset.from_text(msg.question[0].name, 600, "IN", "A",
                                                "10.0.0.2"))
        body = reply.to_wire()[2:]
        cache[query[2:]] = body
    return query[:2] + body


def open_socket(ns: str) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 53))
        return sock

    return in_netns(f"/run/netns/{ns}", make)


def serve_loop(socks: list[socket.socket], stop: threading.Event) -> None:
    ep = select.epoll()
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = (s, {})
    while not stop.is_set():
        for fd, _ in ep.poll(0.2):
            sock, cache = by_fd[fd]
            for _ in range(64):
                try:
                    data, peer = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                sock.sendto(answer_for(data, cache), peer)
    ep.close()


def serve_threads(socks: list[socket.socket], stop: threading.Event) -> None:
    def one(sock: socket.socket) -> None:
        sock.settimeout(0.2)
        cache: dict[bytes, bytes] = {}
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            sock.sendto(answer_for(data, cache), peer)

    workers = [threading.Thread(target=one, args=(s,), daemon=True) for s in socks]
    for w in workers:
        w.start()
    stop.wait()
    for w in workers:
        w.join()


def dnsperf(ns: str, seconds: float, datafile: str) -> tuple[float, int, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "dnsperf", "-s", "127.0.0.1", "-d",
                          datafile, "-l", str(seconds), "-c", "4", "-q", "100"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    return qps, sent, done


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(r"VmRSS:\s+(\d+)", handle.read()).group(1))


def run(model: Callable[[list[socket.socket], threading.Event], None], namespaces: list[str],
        clients: int, seconds: float, datafile: str) -> tuple[float, int, int]:
    socks = [open_socket(ns) for ns in namespaces]
    stop = threading.Event()
    server = threading.Thread(target=model, args=(socks, stop), daemon=True)
    server.start()
    time.sleep(0.2)
    rss = rss_kib()
    results: list[tuple[float, int, int]] = []
    loaders = [threading.Thread(target=lambda ns=ns: results.append(
        dnsperf(ns, seconds, datafile))) for ns in namespaces[:clients]]
    for t in loaders:
        t.start()
    for t in loaders:
        t.join()
    stop.set()
    server.join()
    for s in socks:
        s.close()
    qps = sum(r[0] for r in results)
    lost = sum(r[1] - r[2] for r in results)
    return qps, lost, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sandboxes", type=int, default=200)
    args = parser.parse_args()
    header()
    tag = uuid.uuid4().hex[:4]
    namespaces = [f"pcsb-dnsd{tag}{i}" for i in range(args.sandboxes)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as data:
        data.write(f"{NAME} A\n")
        data.flush()
        try:
            for ns in namespaces:
                create_named_netns(ns, loopback_up=True)
            rows = []
            base = rss_kib()
            for model in (serve_loop, serve_threads):
                for served, clients in ((4, 1), (4, 4), (args.sandboxes, 4)):
                    qps, lost, rss = run(model, namespaces[:served], clients, args.seconds,
                                         data.name)
                    if qps <= 0:
                        raise SystemExit(f"{model.__name__}: no answer at all")
                    rows.append((model.__name__, served, clients, qps, lost, rss - base))
        finally:
            for ns in namespaces:
                delete_named_netns(ns)
    print(f"{'model':<14}{'served':>7}{'loaded':>7}{'qps':>10}{'lost':>7}{'rss KiB':>9}")
    for model_name, served, clients, qps, lost, rss in rows:
        print(f"{model_name:<14}{served:>7}{clients:>7}{qps:>10.0f}{lost:>7}{rss:>9}")
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
