"""``pycnm lab ...``: labs from the command line.

    pycnm lab up labs/01-bridge/lab.yaml      build it, one progress line per step
    pycnm lab ls                              labs on this machine
    pycnm lab exec c1 -- ip route             run a command in a node (no shell)
    pycnm lab check                           the reachability matrix, a pass/fail table
    pycnm lab graph -o /tmp                   SVG and PNG of the live kernel state
    pycnm lab capture r1 eth2 -c 10           pcap plus one decoded line per packet
    pycnm lab netem h1 eth0 --delay 50ms      impair an interface (--reset; show)
    pycnm lab link h1:eth0 down               take an interface down (up again)
    pycnm lab apply lab.yaml [--dry-run]      change the running lab to match the file
    pycnm lab inspect [--json]                what the kernel has, node by node
    pycnm lab pingall / iperf c1 c2           reachability matrix / throughput
    pycnm lab graph --serve                   a live picture on http://127.0.0.1:50080/
    pycnm lab down bridge                     remove it (also after a crash)

Who does what: this module only maps arguments onto ``handle``, ``realise``, ``check``,
``graph`` and ``capture`` and prints their results; ``LAB`` may be a lab name or its
topology file, and may be left out when exactly one lab is up.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator

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
    _json_flag(up)
    up.set_defaults(handler=_up)

    down = cmds.add_parser("down", help="remove a lab, also one left half-built by a crash")
    down.add_argument("lab", metavar="FILE|NAME")
    _json_flag(down)
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
    _json_flag(check)
    check.set_defaults(handler=_check)

    graph = cmds.add_parser("graph", help="draw the lab's live kernel state (SVG and PNG), "
                            "or serve a live page with --serve")
    graph.add_argument("lab", nargs="?", metavar="LAB", help="lab name or file")
    graph.add_argument("-o", "--outdir", default=".", help="folder for NAME.svg/.png/.dot")
    graph.add_argument("--serve", action="store_true", help="serve a page on loopback that "
                       "draws the running lab and redraws when it changes")
    graph.add_argument("--port", type=int, default=None,
                       help="port for --serve (default 50080; 0: any free port)")
    _json_flag(graph)
    graph.set_defaults(handler=_graph)

    netem = cmds.add_parser("netem", help="impair a node's interface (tc netem), or show "
                            "impairments", description="pycnm lab netem NODE IFACE --delay "
                            "50ms --loss 1%%  |  NODE IFACE --reset  |  show [NODE]")
    netem.add_argument("--lab", help="lab name or file (default: the only lab up)")
    netem.add_argument("target", nargs="+", metavar="NODE IFACE | show [NODE]")
    netem.add_argument("--delay", help="e.g. 50ms (units: us, ms, s)")
    netem.add_argument("--jitter", help="e.g. 5ms: the delay varies by this much")
    netem.add_argument("--loss", help="e.g. 1%%: packets dropped")
    netem.add_argument("--rate", help="e.g. 10mbit (units: bit, kbit, mbit, gbit)")
    netem.add_argument("--corrupt", help="e.g. 0.1%%: packets with a flipped bit")
    netem.add_argument("--duplicate", help="e.g. 1%%: packets sent twice")
    netem.add_argument("--reorder", help="e.g. 25%%: packets sent ahead of delayed ones")
    netem.add_argument("--reset", action="store_true", help="remove the impairment")
    _json_flag(netem)
    netem.set_defaults(handler=_netem)

    link = cmds.add_parser("link", help="take a node's interface down or bring it up")
    link.add_argument("--lab", help="lab name or file (default: the only lab up)")
    link.add_argument("end", metavar="NODE:IFACE")
    link.add_argument("state", choices=("down", "up"))
    _json_flag(link)
    link.set_defaults(handler=_link)

    apply = cmds.add_parser("apply", help="change a running lab in place to match its "
                            "(edited) topology file")
    apply.add_argument("file", help="the topology file (YAML)")
    apply.add_argument("--lab", help="the running lab to change (default: the file's name)")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _json_flag(apply)
    apply.set_defaults(handler=_apply)

    inspect = cmds.add_parser("inspect", help="nodes, interfaces, addresses, links and "
                              "networks, read from the kernel")
    inspect.add_argument("lab", nargs="?", metavar="LAB", help="lab name or file")
    _json_flag(inspect)
    inspect.set_defaults(handler=_inspect)

    pingall = cmds.add_parser("pingall", help="ping from every sandbox to every other")
    pingall.add_argument("lab", nargs="?", metavar="LAB", help="lab name or file")
    _json_flag(pingall)
    pingall.set_defaults(handler=_pingall)

    iperf = cmds.add_parser("iperf", help="TCP throughput from node A to node B (iperf3)")
    iperf.add_argument("--lab", help="lab name or file (default: the only lab up)")
    iperf.add_argument("src", metavar="A")
    iperf.add_argument("dst", metavar="B")
    iperf.add_argument("-t", "--time", type=int, default=3,
                       help="whole seconds, 1 to 60 (default 3)")
    _json_flag(iperf)
    iperf.set_defaults(handler=_iperf)

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


def _json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json`` after the command too (``pycnm --json lab ...`` also works)."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of tables")


def _say(line: str) -> None:
    print(line, flush=True)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines go to stdout, or with --json to stderr: stdout holds the JSON alone."""
    if getattr(args, "json", False):
        return lambda line: print(line, file=sys.stderr, flush=True)
    return _say


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off for a lab's build or removal in this CLI
    process: what a build allocates is freed by reference counting, yet every 700 new
    objects started a collection; 50 sandboxes took 60-70 of them, 40-55 ms of the two
    builders' CPU (gc.callbacks). A CLI process ends soon after; memory held by cycles
    goes with it. So the objects left then are frozen (``gc.freeze``, as bin/pycnm does
    before it exits) before the collector is on again: the first collection after it
    otherwise walked every object the build had made, 12-14 ms of ``lab up`` and ``lab
    down`` of 50 (gc.callbacks)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()


def _up(args: argparse.Namespace) -> int:
    with _no_cyclic_gc():
        return _up_now(args)


def _up_now(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import up
    from netns_fixtures.lab.loader import LabFileError
    from netns_fixtures.lab.model import TopologyError

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM like Ctrl-C: up removes what it built

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        lab = up(args.file, name=args.name, progress=_progress(args), detach=True)
    except LabFileError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return 2
    except TopologyError as exc:  # --name
        print(str(exc).replace("topology: name:", "--name:"), file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        state = lab.state
        _print_json({"Name": state.name, "Status": state.status, "File": state.source or "",
                     "Store": state.store, "Namespaces": state.namespaces})
    return 0


def _down(args: argparse.Namespace) -> int:
    with _no_cyclic_gc():
        return _down_now(args)


def _down_now(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.realise import down

    name = args.lab
    if os.path.isfile(name):
        from netns_fixtures.lab.loader import LabFileError, load  # (YAML: only for a file)

        try:
            name = load(name).name
        except LabFileError as exc:
            print(f"{exc.messages[0]}\n(give the lab's name instead)", file=sys.stderr)
            return 2
    removed = down(name, progress=_progress(args))
    if args.json:
        _print_json({"Name": name, "Removed": removed})
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

    def say(line: str) -> None:  # with --json, stdout holds the JSON alone
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.lab and os.path.isfile(args.lab) and _changed(args.lab, lab.state.data):
        say(f"note: {args.lab} changed since lab {lab.name} was built; checking the lab as "
            f"built ('pycnm lab apply {args.lab}' changes the lab to match the file)")
    if not lab.topology.expect:
        if args.json:
            emit(True, [])
        else:
            print(f"lab {lab.name} has no 'expect' matrix to check")
        return 0
    say(f"lab {lab.name}: checking {len(lab.topology.expect)} expectations")
    outcomes = lab.check(progress=lambda o: say(
        f"  {o.index}. {o.expectation.src} -> {o.expectation.dst}: "
        f"{'PASS' if o.passed else 'FAIL'}"))
    if args.json:
        emit(True, [{"index": o.index, "from": o.expectation.src, "to": str(o.expectation.dst),
                     "address": o.target, "proto": o.expectation.proto,
                     "port": o.expectation.port, "expect": o.expectation.expect,
                     "got": o.got, "passed": o.passed, "detail": o.detail} for o in outcomes])
    else:
        print(table(outcomes))
        broken = lab.problems()
        if broken:
            print("what is broken:")
            for line in broken:
                print(f"  {line}")
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
    if args.serve:
        from netns_fixtures.lab.serve import DEFAULT_PORT

        return _serve(lab, DEFAULT_PORT if args.port is None else args.port)
    if args.port is not None:
        print("Error: --port goes with --serve", file=sys.stderr)
        return 2
    files = lab.graph(args.outdir)
    if args.json:
        _print_json({"Name": lab.name, "Namespaces": files.namespaces,
                     "Interfaces": files.interfaces, "Svg": str(files.svg),
                     "Png": str(files.png), "Dot": str(files.dot)})
        return 0
    print(f"lab {lab.name}: {files.namespaces} namespaces, {files.interfaces} interfaces "
          "read from the kernel")
    for path in (files.svg, files.png, files.dot):
        print(path)
    return 0


def _capture(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find

    lab = find(args.lab)
    lab.iface(args.node, args.iface)  # both checked before they name the pcap file
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


def _serve(lab: object, port: int) -> int:
    from netns_fixtures.lab.serve import LiveServer

    server = LiveServer(lab, port)  # type: ignore[arg-type]

    def stopped(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stopped)
    _say(f"lab {server.watcher.lab.name}: serving a live picture at {server.url} "
         "(loopback only; Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


NETEM_FLAGS = ("delay", "jitter", "loss", "rate", "corrupt", "duplicate", "reorder")


def _netem(args: argparse.Namespace) -> int:
    from cnm.errors import InvalidOption
    from netns_fixtures.lab.handle import find
    from netns_fixtures.lab.netem import parse

    given = {k: getattr(args, k) for k in NETEM_FLAGS if getattr(args, k) is not None}
    if args.target[0] == "show":
        if given or args.reset or len(args.target) > 2:
            raise InvalidOption("netem show takes at most a node: pycnm lab netem show [NODE]")
        return _netem_show(find(args.lab), args.target[1] if len(args.target) > 1 else None,
                           args.json)
    if len(args.target) != 2:
        raise InvalidOption("give a node and an interface: pycnm lab netem NODE IFACE "
                            "--delay 50ms (or: pycnm lab netem show)")
    node, iface = args.target
    lab = find(args.lab)
    if args.reset:
        if given:
            raise InvalidOption("--reset removes the impairment: give it without --delay, "
                                "--loss and the like")
        removed = lab.netem_reset(node, iface)
        print(f"{node}:{iface}: " + ("netem removed" if removed else "had no netem"))
        return 0
    if not given:
        return _netem_show(lab, node, args.json, iface)
    netem = parse(given)
    lab.netem(node, iface, netem)
    print(f"{node}:{iface}: netem {netem.describe()}")
    return 0


def _netem_show(lab: object, node: str | None, as_json: bool, iface: str | None = None) -> int:
    found = lab.netem_all()  # type: ignore[attr-defined]
    if node is not None:
        lab.netns(node)  # type: ignore[attr-defined] # an unknown node: one sentence
        found = {node: found.get(node, {})}
    items = [{"Node": n, "Interface": i, "Netem": ne.to_dict()}
             for n, ifaces in found.items() for i, ne in sorted(ifaces.items())
             if iface is None or i == iface]
    rows = [(i["Node"], i["Interface"], " ".join(f"{k} {v}" for k, v in i["Netem"].items()))
            for i in items]
    if not items and not as_json:
        print("no interface of the lab is impaired" if node is None
              else f"{node}{':' + iface if iface else ''} has no netem")
        return 0
    emit(as_json, items, ("NODE", "INTERFACE", "NETEM"), rows)
    return 0


def _link(args: argparse.Namespace) -> int:
    from cnm.errors import InvalidOption
    from netns_fixtures.lab.handle import find

    node, sep, iface = args.end.partition(":")
    if not sep or not node or not iface:
        raise InvalidOption(f"{args.end!r} must be NODE:IFACE, e.g. h1:eth0")
    lab = find(args.lab)
    lab.set_link(node, iface, args.state == "up")
    if args.json:
        _print_json({"Lab": lab.name, "Node": node, "Interface": iface, "State": args.state})
        return 0
    print(f"{node}:{iface} is {args.state}" + (
        "; 'pycnm lab check' shows what that broke" if args.state == "down" else ""))
    return 0


def _apply(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find
    from netns_fixtures.lab.loader import LabFileError, load

    try:
        name = args.lab or load(args.file).name
    except LabFileError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return 2
    lab = find(name)
    try:
        plan = lab.apply(args.file, dry_run=args.dry_run, progress=_progress(args))
    except LabFileError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return 2
    if args.json:
        _print_json({"Name": lab.name, "DryRun": bool(args.dry_run),
                     "Changes": [str(change) for change in plan.changes]})
    elif args.dry_run:
        print(plan)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find

    data = find(args.lab).inspect()
    if args.json:
        emit(True, data)
        return 0
    print(f"lab {data['name']} ({data['status']}): {data['description']}")
    print(f"  store {data['store']}, from {data['source']}")
    for node in data["nodes"]:
        owner = f" on {node['host']}" if node["host"] else ""
        if "mode" in node:
            print(f"{node['name']}: {node['kind']}{owner}, mode {node['mode']}: uses the "
                  f"namespace of {node['uses']} ({node['namespace']})")
            continue
        extra = ", forwarding" if node["forwarding"] else ""
        extra += "".join(f", shared by {n}" for n in node["shared_by"])
        print(f"{node['name']}: {node['kind']}{owner} ({node['namespace']}{extra})")
        for i in node["interfaces"]:
            state = i["state"] if i["carrier"] or i["state"] != "up" else "no-carrier"
            bits = [i["kind"], state, f"mtu {i['mtu']}", *i["addresses"]]
            if i["peer"]:
                bits.append(f"peer {i['peer']}")
            if i["master"]:
                bits.append(f"master {i['master']}")
            if i.get("vni") is not None:
                bits.append(f"VNI {i['vni']} local {i['local']} to {', '.join(i['remotes'])}")
            if i["netem"]:
                bits.append("netem " + " ".join(f"{k} {v}" for k, v in i["netem"].items()))
            print(f"  {i['name']}: " + ", ".join(str(b) for b in bits))
        for route in node["routes"]:
            print(f"  route {route}")
    for node in data["missing"]:
        print(f"{node['name']}: MISSING (no namespace {node['namespace']})")
    if data["links"]:
        print("links:")
        for link in data["links"]:
            netem = "".join(f", netem at {k}: {v}" for k, v in link["netem"].items())
            print(f"  {link['a']} <-> {link['b']}: {link['state']}{netem}")
    if data["networks"]:
        print("networks:")
        for net in data["networks"]:
            if "error" in net:
                print(f"  {net['name']} on {net['host']}: {net['error']}")
                continue
            eps = ", ".join(f"{e['name']} {e['address']}" for e in net["endpoints"])
            print(f"  {net['name']} on {net['host']}: {net['driver']} {net['subnet']}, "
                  f"gateway {net['gateway'] or 'none'}, id {net['id'][:12]}; "
                  f"endpoints: {eps or 'none'}")
    return 0


def _pingall(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find
    from netns_fixtures.lab.traffic import matrix, pingall

    lab = find(args.lab)
    if len(lab.topology.sandboxes) < 2:
        print(f"lab {lab.name} has fewer than two sandboxes: nothing to ping")
        return 0
    pings = pingall(lab)
    if args.json:
        emit(True, [{"from": p.src, "to": p.dst, "address": p.address,
                     "reached": p.reached} for p in pings])
    else:
        print(matrix(pings))
    return 0 if all(p.reached for p in pings) else 1


def _iperf(args: argparse.Namespace) -> int:
    from netns_fixtures.lab.handle import find
    from netns_fixtures.lab.traffic import human_bps, iperf

    lab = find(args.lab)
    result = iperf(lab, args.src, args.dst, seconds=args.time,
                   starting=None if args.json else _say)
    if args.json:
        emit(True, result.__dict__)
        return 0
    retrans = f", {result.retransmits} retransmits" if result.retransmits is not None else ""
    print(f"{result.src} -> {result.dst} ({result.address}): sent "
          f"{human_bps(result.sent_bps)}, received {human_bps(result.received_bps)} over "
          f"{result.seconds:.1f} s{retrans}")
    return 0
