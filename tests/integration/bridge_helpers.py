"""Small traffic helpers for the bridge tests: everything bounded in count and time."""

from __future__ import annotations

import subprocess
import textwrap
import uuid

SERVER = textwrap.dedent(
    """
    import socket, sys
    srv = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(8)
    srv.settimeout(float(sys.argv[3]))
    print('ready', flush=True)
    try:
        for _ in range(int(sys.argv[4])):
            conn, peer = srv.accept()
            conn.sendall(('from ' + peer[0] + '\\n').encode())
            conn.close()
    except socket.timeout:
        pass
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(200).decode().strip())
    """
)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def in_ns(netns_name: str, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", netns_name, *argv],
        capture_output=True, text=True, timeout=timeout,
    )


def ping(netns_name: str, address: str, count: int = 1, wait: int = 1) -> bool:
    flag = ["-6"] if ":" in address else []
    result = in_ns(netns_name, ["ping", *flag, "-c", str(count), "-W", str(wait), address])
    return result.returncode == 0


def ping_eventually(netns_name: str, address: str, attempts: int = 5) -> bool:
    """A first packet can be lost while neighbours resolve; bounded retries."""
    return any(ping(netns_name, address) for _ in range(attempts))


class TcpServer:
    """A one-shot-per-connection server in a namespace that tells each client its address."""

    def __init__(self, netns_name: str, address: str, port: int, connections: int = 1,
                 timeout: float = 15) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns_name, "python3", "-c", SERVER, address, str(port),
             str(timeout), str(connections)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"test server did not start: {self.proc.stderr.read()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_hello(netns_name: str, address: str, port: int, timeout: float = 3) -> str | None:
    """Connect and return the server's line ("from <client address>"), or None."""
    result = in_ns(netns_name, ["python3", "-c", CLIENT, address, str(port), str(timeout)],
                   timeout=timeout + 10)
    return result.stdout.strip() if result.returncode == 0 else None
