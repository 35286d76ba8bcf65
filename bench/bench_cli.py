"""What one ``pycnm`` command costs from a shell, against the tools it replaces, in one run.

    sudo python3 bench/bench_cli.py [--count 60]

Three sides, each in a host namespace of the benchmark's own (never the machine's
interfaces), one command at a time, the sides' order rotating from one item to the next:

- **pycnm, daemon**: ``pycnm agent --no-dns`` serves host namespace A and store A; each
  CLI call hands its command to it (``cnm.cli.handoff``), as the docker CLI hands to
  dockerd. Without DNS, as the other sides have none (``--agent-dns`` adds its resolver).
- **pycnm, alone**: host namespace B, store B, no daemon: each CLI call does the work in
  its own process.
- **references**: ``ip netns add`` / ``ip netns delete``, and Debian's CNI ``bridge``
  plugin (containernetworking-plugins, host-local IPAM) called as a runtime calls it:
  CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH in the environment, the
  network config on stdin, run from host namespace C.

Each pycnm command is this tree's ``bin/pycnm`` (what pip installs as ``pycnm``), which
starts Python with -S (see it for why) and with this interpreter (PYCNM_PYTHON). For
scale: ``python3 -c pass`` and ``python3 -S -c pass`` (the interpreter's own start with
and without site's .pth hooks), and ``python3 -m cnm.cli network ls`` (the same command
with the hooks).

Phases, ``--count`` items each: sandbox create | ip netns add; attach | CNI ADD; network
ls, --help and ``python3 -c pass`` (the interpreter's own start, the floor of any Python
CLI); detach | CNI DEL; sandbox rm | ip netns delete. Times are wall clock around the
whole process, as a shell sees it. Bytecode caches are written first and used, as in an
installed pycnm (``benchlib.installed_env``).

Prints median, p10 and p90 of every side, the ratio to the reference, and the verdict
against issue 16's target (each of these commands <= 30 ms, median, with the daemon).
Fails (exit 1) if any side measured nothing or any command failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import (  # noqa: E402
    REPO,
    compile_tree,
    footer,
    header,
    installed_env,
    rotated,
    spread,
    summary,
    timed_ms,
)
from tests.integration.cli_agent import running_agent  # noqa: E402

CNI_PLUGIN = "/usr/lib/cni/bridge"
CNI_PATH = "/usr/lib/cni"
TARGET_MS = 30.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# A CLI call that says, after its own output, whether it imported the Controller.
REPORTING = ("import sys\nfrom cnm.cli import main\ncode = main(sys.argv[1:])\n"
             "sys.stderr.write('controller imported: %s\\n' % "
             "('cnm.controller' in sys.modules))\nsys.exit(code)\n")


class Failed(SystemExit):
    def __init__(self, what: str, result: subprocess.CompletedProcess[bytes]) -> None:
        super().__init__(f"FAILED: {what} exited {result.returncode}: "
                         f"{result.stderr.decode(errors='replace').strip()[-800:]}")


def run(argv: list[str], what: str, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> float:
    """Run ``argv`` to its end; its wall time in ms; Failed on a non-zero exit."""
    result: subprocess.CompletedProcess[bytes] | None = None

    def call() -> None:
        nonlocal result
        result = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=120)

    took = timed_ms(call)
    assert result is not None
    if result.returncode != 0:
        raise Failed(what, result)
    return took


@contextlib.contextmanager
def in_namespace(path: str) -> Iterator[None]:
    """This thread in the network namespace at ``path`` (the CNI plugin, which acts on
    the namespace it runs in, is started from here), then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise SystemExit("could not return to the bench's own namespace")
        os.close(target)
        os.close(home)


class Cni:
    """Debian's bridge plugin with host-local IPAM, on a bridge in host namespace
    ``host``."""

    def __init__(self, host: str, tag: str, workdir: str) -> None:
        self.host = f"/run/netns/{host}"
        self.config = json.dumps({
            "cniVersion": "1.0.0", "name": f"bench{tag}", "type": "bridge",
            "bridge": f"cnibr{tag}", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.212.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"{workdir}/cni-ipam"},
        }).encode()

    def call(self, command: str, container: str, netns: str) -> float:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": CNI_PATH, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with in_namespace(self.host):
            return run([CNI_PLUGIN], f"CNI {command} {container}", stdin=self.config, env=env)


LAUNCHER = str(REPO / "bin" / "pycnm")


class Pycnm:
    """The pycnm CLI for one host namespace and store, started as the ``pycnm`` command
    is: this tree's bin/pycnm, with this interpreter."""

    def __init__(self, host: str, store: str) -> None:
        self.host, self.store = host, store
        self.env = installed_env(PYCNM_PYTHON=sys.executable)

    def argv(self, *args: str, launcher: list[str] | None = None) -> list[str]:
        return [*(launcher or [LAUNCHER]), "--store", self.store, "--host-ns", self.host,
                *args]

    def via_module(self, *args: str) -> float:
        """The same command through ``python3 -m cnm.cli`` (Python's site hooks run)."""
        argv = self.argv(*args, launcher=[sys.executable, "-m", "cnm.cli"])
        return run(argv, f"python3 -m cnm.cli {' '.join(args)}", env=self.env)

    def __call__(self, *args: str) -> float:
        return run(self.argv(*args), f"pycnm {' '.join(args)}", env=self.env)

    def imports_controller(self, *args: str) -> bool:
        result = subprocess.run(
            [sys.executable, "-c", REPORTING, "--store", self.store, "--host-ns", self.host,
             *args], capture_output=True, env=self.env, timeout=120)
        if result.returncode != 0:
            raise Failed(f"pycnm {' '.join(args)}", result)
        return result.stderr.decode().strip().endswith("imported: True")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60, help="sandboxes per side")
    parser.add_argument("--agent-dns", action="store_true",
                        help="let the daemon side's agent serve DNS too (its resolver's work "
                        "on each sandbox then counts; the other sides have none)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    tag = uuid.uuid4().hex[:6]
    hosts = {side: f"hcli{side[0]}{tag}" for side in ("daemon", "alone", "cni")}
    with tempfile.TemporaryDirectory(prefix="pycnm-bench-cli-") as work, \
            contextlib.ExitStack() as stack:
        for name in hosts.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
            stack.callback(subprocess.run, ["ip", "netns", "delete", name], check=False)
        daemon = Pycnm(hosts["daemon"], f"sqlite:///{work}/daemon.db")
        alone = Pycnm(hosts["alone"], f"sqlite:///{work}/alone.db")
        for side in (daemon, alone):
            stack.callback(subprocess.run, side.argv("cleanup"), env=side.env,
                           capture_output=True, check=False)
        cni = Cni(hosts["cni"], tag, work)
        netns_names: list[str] = []
        cni_attached: list[str] = []

        def undo_references() -> None:
            for name in cni_attached:
                with contextlib.suppress(SystemExit):
                    cni.call("DEL", name, name)
            for name in netns_names:
                subprocess.run(["ip", "netns", "delete", name], check=False)

        stack.callback(undo_references)
        agent = stack.enter_context(running_agent(
            daemon.store, daemon.host, work, *([] if args.agent_dns else ["--no-dns"])))
        return measure(args.count, tag, daemon, alone, cni, netns_names, cni_attached,
                       agent.proc)


def measure(count: int, tag: str, daemon: Pycnm, alone: Pycnm, cni: Cni,
            netns_names: list[str], cni_attached: list[str],
            agent: subprocess.Popen[bytes]) -> int:
    header(f"{count} sandboxes per side; python {sys.version.split()[0]} at {sys.executable}")
    compile_tree()
    for side in (daemon, alone):
        side("network", "create", "benchnet", "--subnet", "10.210.0.0/16")
    # The sides are what they claim: the daemon's CLI hands off, the other does not.
    if daemon.imports_controller("network", "ls"):
        raise SystemExit("FAILED: the daemon side ran its command in the CLI's process")
    if not alone.imports_controller("network", "ls"):
        raise SystemExit("FAILED: the alone side handed its command to a daemon")
    results: dict[str, list[float]] = {}

    def note(key: str, took: float) -> None:
        results.setdefault(key, []).append(took)

    sb = {side: [f"b{side[0]}{tag}{i}" for i in range(count)] for side in ("daemon", "alone")}
    refs = [f"cb{tag}{i}" for i in range(count)]
    for i in range(count):  # sandboxes | namespaces
        for side in rotated(("daemon", "alone", "ref"), i):
            if side == "ref":
                note("ip netns add", run(["ip", "netns", "add", refs[i]], "ip netns add"))
                netns_names.append(refs[i])
            else:
                cli = daemon if side == "daemon" else alone
                note(f"create {side}", cli("sandbox", "create", sb[side][i]))
    for i in range(count):  # attach | CNI ADD
        for side in rotated(("daemon", "alone", "ref"), i):
            if side == "ref":
                note("CNI ADD", cni.call("ADD", refs[i], refs[i]))
                cni_attached.append(refs[i])
            else:
                cli = daemon if side == "daemon" else alone
                note(f"attach {side}", cli("attach", "benchnet", sb[side][i]))
    for i in range(count):  # commands that change nothing, and the interpreter's floor
        for side in rotated(("daemon", "alone", "help", "python", "python -S", "module"), i):
            if side == "help":
                note("--help", run([LAUNCHER, "--help"], "--help", env=daemon.env))
            elif side == "python":
                note("python3 -c pass", run([sys.executable, "-c", "pass"], "python3 -c pass"))
            elif side == "python -S":
                note("python3 -S -c pass", run([sys.executable, "-S", "-c", "pass"],
                                               "python3 -S -c pass"))
            elif side == "module":
                note("ls module", daemon.via_module("network", "ls"))
            else:
                cli = daemon if side == "daemon" else alone
                note(f"ls {side}", cli("network", "ls"))
    for i in range(count):  # detach | CNI DEL
        for side in rotated(("daemon", "alone", "ref"), i):
            if side == "ref":
                note("CNI DEL", cni.call("DEL", refs[i], refs[i]))
                cni_attached.remove(refs[i])
            else:
                cli = daemon if side == "daemon" else alone
                note(f"detach {side}", cli("detach", "benchnet", sb[side][i]))
    for i in range(count):  # sandbox rm | ip netns delete
        for side in rotated(("daemon", "alone", "ref"), i):
            if side == "ref":
                note("ip netns delete", run(["ip", "netns", "delete", refs[i]],
                                            "ip netns delete"))
                netns_names.remove(refs[i])
            else:
                cli = daemon if side == "daemon" else alone
                note(f"rm {side}", cli("sandbox", "rm", sb[side][i]))
    if agent.poll() is not None:
        raise SystemExit("FAILED: the agent exited during the run")
    return report(results)


ROWS = [  # (pycnm command, its key, the reference, its key)
    ("sandbox create", "create", "ip netns add", "ip netns add"),
    ("attach NET SB", "attach", "CNI bridge ADD", "CNI ADD"),
    ("detach NET SB", "detach", "CNI bridge DEL", "CNI DEL"),
    ("sandbox rm", "rm", "ip netns delete", "ip netns delete"),
    ("network ls", "ls", None, None),
]


def report(results: dict[str, list[float]]) -> int:
    width = 16
    print(f"\n{'per call, ms: median (p10-p90)':32}{'pycnm, daemon':>{width}}"
          f"{'pycnm, alone':>{width}}{'reference':>{width}}  {'ratio daemon/ref':>16}"
          f"{'alone/ref':>10}  reference")

    def cell(key: str) -> str:
        med, p10, p90 = summary(results.get(key, []), key)
        return f"{med:.1f} ({p10:.0f}-{p90:.0f})"

    verdicts = []
    for label, key, ref_label, ref_key in ROWS:
        line = (f"{'pycnm ' + label:32}{cell(key + ' daemon'):>{width}}"
                f"{cell(key + ' alone'):>{width}}")
        if ref_key is not None:
            ref = summary(results.get(ref_key, []), ref_key)[0]
            d = summary(results[key + " daemon"], key)[0]
            a = summary(results[key + " alone"], key)[0]
            line += f"{cell(ref_key):>{width}}  {d / ref:>16.2f}{a / ref:>10.2f}  {ref_label}"
        print(line)
        verdicts.append((f"pycnm {label} (daemon)", summary(results[key + " daemon"], key)[0]))
    for key, label in (("--help", "pycnm --help"),
                       ("ls module", "python3 -m cnm.cli network ls, daemon"),
                       ("python3 -c pass", "python3 -c pass"),
                       ("python3 -S -c pass", "python3 -S -c pass")):
        print(f"{label:40}{spread(results.get(key, []), key)}")
    verdicts.append(("pycnm --help", summary(results["--help"], "--help")[0]))
    print(f"\ntarget: each of these <= {TARGET_MS:.0f} ms (median, with the host's daemon)")
    met = True
    for what, med in verdicts:
        ok = med <= TARGET_MS
        met &= ok
        print(f"  {what:34} {med:6.1f} ms  {'met' if ok else 'NOT met'}")
    print(f"  {'all met' if met else 'NOT all met'}")
    footer()
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces, links and the CNI plugin need it")
    sys.exit(main())
