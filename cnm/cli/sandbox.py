"""``pycnm sandbox create|ls|inspect|rm|exec``."""

from __future__ import annotations

import argparse
import os

from cnm.cli import open_controller, remove_each
from cnm.cli.network import key_values
from cnm.cli.output import emit


def register(sub: argparse._SubParsersAction) -> None:
    sb = sub.add_parser("sandbox", help="manage sandboxes (network namespaces)")
    cmds = sb.add_subparsers(dest="sandbox_command", metavar="COMMAND")
    cmds.required = True
    create = cmds.add_parser("create", help="create a sandbox")
    create.add_argument("name")
    create.add_argument("--mode", default=None, metavar="host|none|container:OTHER",
                        help="share the host's namespace, have loopback only, or share "
                        "sandbox OTHER's namespace (default: a namespace of its own)")
    create.add_argument("--netns", help="adopt this existing namespace (e.g. /proc/PID/ns/net)")
    create.add_argument("--hostname")
    create.add_argument("--dns", action="append", default=[])
    create.add_argument("--dns-search", action="append", default=[])
    create.add_argument("--dns-option", action="append", default=[])
    create.add_argument("--add-host", action="append", default=[], metavar="NAME=IP")
    create.add_argument("--ip-forward", action="store_true",
                        help="let the sandbox route between its networks (a router)")
    create.set_defaults(handler=_create)
    ls = cmds.add_parser("ls", help="list sandboxes")
    ls.set_defaults(handler=_ls)
    inspect = cmds.add_parser("inspect", help="show a sandbox")
    inspect.add_argument("names", nargs="+")
    inspect.set_defaults(handler=_inspect)
    rm = cmds.add_parser("rm", help="remove sandboxes (and their endpoints)")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(handler=_rm)
    run = cmds.add_parser("exec", help="run a command inside a sandbox")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    run.set_defaults(handler=_exec)


def _create(args: argparse.Namespace) -> int:
    hosts = key_values(args.add_host, "--add-host")
    with open_controller(args) as ctl:
        sb = ctl.new_sandbox(
            args.name, mode=args.mode, netns_path=args.netns, hostname=args.hostname,
            dns=args.dns, dns_search=args.dns_search, dns_options=args.dns_option,
            extra_hosts=hosts, ip_forward=args.ip_forward,
        )
        if args.json:
            emit(True, sb.inspect())
        else:
            print(sb.id)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        items = [s.inspect() for s in ctl.sandboxes()]
    rows = [
        (s["Id"][:12], s["Name"], s["Mode"], s["NetnsName"] or s["SandboxKey"],
         ", ".join(f"{i}={e['IPv4Address'] or e['IPv6Address']}"
                   for i, e in s["Interfaces"].items()))
        for s in items
    ]
    emit(args.json, items, ("SANDBOX ID", "NAME", "MODE", "NAMESPACE", "INTERFACES"), rows)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        emit(True, [ctl.sandbox(n).inspect() for n in args.names])
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        return remove_each(args.names, lambda name: ctl.sandbox(name).delete(), args)


def _exec(args: argparse.Namespace) -> int:
    from cnm.errors import InvalidOption

    argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidOption("give the command to run, e.g. pycnm sandbox exec web -- ip addr")
    with open_controller(args) as ctl:
        sb = ctl.sandbox(args.name)
        name = sb.netns_name
    if name:  # ip netns exec also bind-mounts the sandbox's resolv.conf and hosts
        os.execvp("ip", ["ip", "netns", "exec", name, *argv])
    os.execvp("nsenter", ["nsenter", f"--net={sb.netns_path}", "--", *argv])
    return 0
