"""``pycnm lab ...``: labs from the command line.

    pycnm lab up labs/01-bridge/lab.yaml      build it, one progress line per step
    pycnm lab ls                              labs on this machine
    pycnm lab exec c1 -- ip route             run a command in a node (no shell)
    pycnm lab check                           the reachability matrix, a pass/fail table
    pycnm lab graph -o /tmp                   SVG and PNG of the live kernel state
    pycnm lab capture r1 eth2 -c 10           pcap plus one decoded line per packet
    pycnm lab down bridge                     remove it (also after a crash)

Who does what: this module only maps arguments onto ``handle``, ``realise``, ``check``,
``graph`` and ``capture`` and prints their results; ``LAB`` may be a lab name or its
topology file, and may be left out when exactly one lab is up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from cnm.cli.output import emit


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="lab exercises in network namespaces (topology files)",
                         description="Build, inspect, check, draw and remove labs described "
                         "by topology files (see labs/ for examples).")
    cmds = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    cmds.required = True

    up = cmds.add_parser("up", help="build a lab from a topology file")
    up.add_argument("file", help="the topology file (YAML)")
    up.add_argument("--name", help="build it under another lab name")
    up.set_defaults(handler=_up)

    down = cmds.add_parser("down", help="remove a lab, also one left half-built by a crash")
    down.add_argument("lab", metavar="FILE|NAME")
    down.set_defaults(handler=_down)

    ls = cmds.add_parser("ls", help="list labs on this machine")
    ls.set_defaults(handler=_ls)

    run = cmds.add_parser("exec", help="run a command inside a lab node (no shell)")
    run.add_argument("--lab", help="lab name or file (default: the only lab up)")
    run.add_argument("node")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    run.set_defaults(handler=_exec)

    check = cmds.add_parser("check", help="run the lab's reachability matrix")
    check.add_argument("lab", nargs="?", metavar="LAB", help="lab name or file")
    check.set_defaults(handler=_check)

    graph = cmds.add_parser("graph", help="draw the lab's live kernel state (SVG and PNG)")
    graph.add_argument("lab", nargs="?", metavar="LAB", help="lab name or file")
    graph.add_argument("-o", "--outdir", default=".", help="folder for NAME.svg/.png/.dot")
    graph.set_defaults(handler=_graph)

    capture = cmds.add_parser("capture", help="capture packets on a node's interface; "
                              "decodes VXLAN")
    capture.add_argument("--lab", help="lab name or file (default: the only lab up)")
    capture.add_argument("node")
    capture.add_argument("iface")
    capture.add_argument("-c", "--count", type=int, default=20, help="stop after N packets")
    capture.add_argument("-t", "--seconds", type=float, default=10.0,
                         help="stop after S seconds")
    capture.add_argument("-w", "--write", help="pcap file (default LAB-NODE-IFACE.pcap)")
    capture.add_argument("-f", "--filter", help="a tcpdump filter, e.g. 'udp port 4789'")
    capture.set_defaults(handler=_capture)


def _say(line: str) -> None:
    print(line, flush=True)


def _up(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import up
    from netns_fixtures.lab.loader import LabFileError
    from netns_fixtures.lab.model import TopologyError

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM like Ctrl-C: up removes what it built

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        up(args.file, name=args.name, progress=_say, detach=True)
    except LabFileError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return 2
    except TopologyError as exc:  # --name
        print(str(exc).replace("topology: name:", "--name:"), file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _down(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.loader import LabFileError, load
    from netns_fixtures.lab.realise import down

    name = args.lab
    if os.path.isfile(name):
        try:
            name = load(name).name
        except LabFileError as exc:
            print(f"{exc.messages[0]}\n(give the lab's name instead)", file=sys.stderr)
            return 2
    down(name, progress=_say)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from cnm.osl.netns import list_named_netns
    from netns_fixtures.lab.state import all_states

    states = all_states()
    present = set(list_named_netns())
    items = []
    for state in states:
        alive = [ns for ns in state.namespaces if ns in present]
        items.append({"Name": state.name, "Status": state.status, "Namespaces": len(alive),
                      "Store": state.store, "Source": state.source or ""})
    known = {s.name for s in states}
    prefix = "pclab-"
    orphans = sorted({ns[len(prefix):].split("-", 1)[0] for ns in present
                      if ns.startswith(prefix)} - known)
    items += [{"Name": name, "Status": "leftovers (no state)", "Namespaces": sum(
        ns.startswith(f"{prefix}{name}-") for ns in present), "Store": "", "Source": ""}
        for name in orphans]
    rows = [(i["Name"], i["Status"], i["Namespaces"], i["Source"], i["Store"]) for i in items]
    emit(args.json, items, ("NAME", "STATUS", "NAMESPACES", "FILE", "STORE"), rows)
    return 0


def _exec(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("Error: give a command after --, e.g. pycnm lab exec c1 -- ip addr",
              file=sys.stderr)
        return 2
    ns = find(args.lab).netns(args.node)
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])  # no shell; its exit code is ours
    return 0  # not reached


def _check(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.check import table
    from netns_fixtures.lab.handle import find

    lab = find(args.lab)
    if args.lab and os.path.isfile(args.lab) and _changed(args.lab, lab.state.data):
        _say(f"note: {args.lab} changed since lab {lab.name} was built; checking the lab as "
             "built (pycnm lab down, then up, to use the new file)")
    if not lab.topology.expect:
        print(f"lab {lab.name} has no 'expect' matrix to check")
        return 0
    _say(f"lab {lab.name}: checking {len(lab.topology.expect)} expectations")
    outcomes = lab.check(progress=lambda o: _say(
        f"  {o.index}. {o.expectation.src} -> {o.expectation.dst}: "
        f"{'PASS' if o.passed else 'FAIL'}"))
    if args.json:
        emit(True, [{"index": o.index, "from": o.expectation.src, "to": str(o.expectation.dst),
                     "address": o.target, "proto": o.expectation.proto,
                     "port": o.expectation.port, "expect": o.expectation.expect,
                     "got": o.got, "passed": o.passed, "detail": o.detail} for o in outcomes])
    else:
        print(table(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


def _changed(path: str, built: dict[str, object]) -> bool:
    from netns_fixtures.lab.loader import LabFileError, load

    try:
        return {**load(path).data, "name": built.get("name")} != built  # --name aside
    except LabFileError:
        return True


def _graph(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find

    lab = find(args.lab)
    files = lab.graph(args.outdir)
    print(f"lab {lab.name}: {files.namespaces} namespaces, {files.interfaces} interfaces "
          "read from the kernel")
    for path in (files.svg, files.png, files.dot):
        print(path)
    return 0


def _capture(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find

    lab = find(args.lab)
    pcap = args.write or f"{lab.name}-{args.node}-{args.iface}.pcap"
    cap = lab.capture(args.node, args.iface, count=args.count, seconds=args.seconds,
                      pcap=pcap, bpf=args.filter, on_line=_say)
    cap.start()
    _say(f"capturing on {args.node} {args.iface} ({lab.netns(args.node)}): up to "
         f"{cap.count} packets or {cap.seconds:g} s")
    try:
        cap.wait()
    except KeyboardInterrupt:
        cap.stop()
    print(f"{cap.packets} packets written to {pcap}")
    return 0
