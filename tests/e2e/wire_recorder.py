"""Record every call a real dockerd makes of a network + IPAM plugin: the golden payloads
of tests/data/docker-wire-*.jsonl.

    flock /tmp/pycnm-locks/docker.lock \\
        python3 -m tests.e2e.wire_recorder --engine 26.1 --out tests/data/docker-wire-26.1.jsonl

A recording proxy listens where Docker finds a legacy plugin named ``capnet``
(/run/docker/plugins/capnet.sock) and forwards each request, unchanged, to a real
``pycnm plugin serve`` on a private socket with a throwaway store; one JSON object a line
holds the ``call``, the ``request`` exactly as Docker sent it (only SandboxKey's folder
rewritten to Docker's default, /var/run/docker/netns) and what pycnm ``answered`` (which
Docker accepted). The scenario is the one recorded from Docker 20.10: networks with every
``docker network create`` flag, containers with published ports, a fixed address and MAC,
an internal dual-stack network joined with ``network connect --driver-opt``, networks with
``--ipam-driver capnet`` (pycnm's IPAM), then removal of all. No packet is sent: the
containers only sleep.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import socketserver
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netns_fixtures.docker import DockerEngine, running_engine
from tests.e2e.plugin_process import Plugin, UnixHTTP

NAME = "capnet"
SOCKET = f"/run/docker/plugins/{NAME}.sock"
DOCKER_NETNS = "/var/run/docker/netns"


class Recorder:
    """The calls seen so far, in the order Docker made them."""

    def __init__(self, backend: str, netns_dir: str) -> None:
        self.backend = backend
        self.netns_dir = netns_dir
        self.run = "A"
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def forward(self, call: str, body: bytes) -> tuple[int, bytes]:
        conn = UnixHTTP(self.backend, timeout=120)
        try:
            conn.request("POST", f"/{call}", body=body,
                         headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def record(self, call: str, body: bytes, status: int, answer: bytes) -> None:
        request = json.loads(body) if body.strip() else None
        if isinstance(request, dict) and isinstance(request.get("SandboxKey"), str):
            key = request["SandboxKey"]
            if key.startswith(self.netns_dir + "/"):
                request["SandboxKey"] = DOCKER_NETNS + key[len(self.netns_dir):]
        with self.lock:
            entry: dict[str, Any] = {"seq": len(self.calls) + 1, "run": self.run,
                                     "call": call, "request": request,
                                     "answered": json.loads(answer or b"{}")}
            if status != 200:
                entry["status"] = status
            self.calls.append(entry)


def handler_for(recorder: Recorder) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            call = self.path.lstrip("/")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = recorder.forward(call, body)
            recorder.record(call, body, status, answer)
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def recording_proxy(recorder: Recorder) -> Iterator[None]:
    os.makedirs(os.path.dirname(SOCKET), exist_ok=True)
    if os.path.exists(SOCKET):
        raise SystemExit(f"{SOCKET} exists: another recorder runs, or remove it")
    server = UnixServer(SOCKET, handler_for(recorder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET)


def scenario(engine: DockerEngine, recorder: Recorder) -> None:
    """Docker commands covering the protocol, as run A and run B of the 20.10 recording."""
    def docker(*args: str) -> str:
        return engine.docker(*args, timeout=180).stdout.strip()

    run = ("run", "-d", "--dns", "127.0.0.1")
    image = (engine.image, "sleep", "600")
    try:
        # Run A: Docker's IPAM and pycnm's (--ipam-driver), connect/disconnect.
        docker("network", "create", "-d", NAME, "--subnet", "10.90.0.0/24", "capA")
        docker(*run, "--name", "capc1", "--network", "capA", *image)
        docker("network", "create", "-d", NAME, "--internal", "--ipv6",
               "--subnet", "10.91.0.0/24", "--subnet", "fd00:91::/64", "capB")
        docker("network", "connect", "--driver-opt", "foo=bar", "--ip", "10.91.0.50",
               "capB", "capc1")
        docker("network", "disconnect", "capB", "capc1")
        docker("network", "create", "-d", NAME, "--ipam-driver", NAME, "capC")
        docker("network", "create", "-d", NAME, "--ipam-driver", NAME,
               "--subnet", "10.92.0.0/24", "capD")
        docker(*run, "--name", "capc2", "--network", "capD", *image)
        docker("rm", "-f", "capc1", "capc2")
        docker("network", "rm", "capA", "capB", "capC", "capD")
        # Run B: every flag of network create and run.
        recorder.run = "B"
        docker("network", "create", "-d", NAME, "--subnet", "10.90.0.0/24",
               "--gateway", "10.90.0.1", "--ip-range", "10.90.0.128/25",
               "--aux-address", "host1=10.90.0.5", "-o", "com.docker.network.driver.mtu=1400",
               "-o", "driver=bridge", "capA")
        docker(*run, "--name", "capc3", "--network", "capA", "-p", "18080:80",
               "-p", "5353:53/udp", "--expose", "9000", "--ip", "10.90.0.200",
               "--mac-address", "02:42:aa:bb:cc:dd", *image)
        docker(*run, "--name", "capc4", "--network", "capA", *image)
        docker("network", "create", "-d", NAME, "--internal", "--ipv6",
               "--subnet", "10.91.0.0/24", "--subnet", "fd00:91::/64", "capB")
        docker("network", "connect", "capB", "capc4")
        docker("network", "disconnect", "capB", "capc4")
        docker("rm", "-f", "capc3", "capc4")
        docker("network", "rm", "capA", "capB")
    finally:
        engine.docker("rm", "-f", "capc1", "capc2", "capc3", "capc4", check=False)
        for net in ("capA", "capB", "capC", "capD"):
            engine.docker("network", "rm", net, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="26.1", help="20.10 or 26.1")
    parser.add_argument("--out", required=True, help="the .jsonl file to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pycnm-wire-") as work, \
            running_engine(args.engine) as engine:
        reported = engine.docker("version", "--format", "{{.Server.Version}} API "
                                 "{{.Server.APIVersion}}").stdout.strip()
        backend = os.path.join(work, "pycnm.sock")
        plugin = Plugin(f"sqlite://{work}/state.db", Path(work) / "plugin.log", socket=backend)
        recorder = Recorder(backend, engine.netns_dir)
        with plugin.serving(), recording_proxy(recorder):
            scenario(engine, recorder)
        failed = [c for c in recorder.calls if c.get("status", 200) != 200]
        if failed:
            print(f"calls that failed: {json.dumps(failed, indent=1)}", file=sys.stderr)
            return 1
    with open(args.out, "w") as out:
        out.write(f"# Recorded from a real dockerd {reported} ({args.engine}: "
                  f"netns_fixtures.docker) by tests/e2e/wire_recorder.py: requests exactly "
                  f"as Docker sent them to a plugin named {NAME}; answers from pycnm.\n")
        for call in recorder.calls:
            out.write(json.dumps(call) + "\n")
    print(f"{len(recorder.calls)} calls written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
