"""``pycnm service create|ls|inspect|rm``: load-balanced services (docs/services.md)."""

from __future__ import annotations

import argparse

from cnm.cli import open_controller, remove_each
from cnm.cli.output import emit


def register(sub: argparse._SubParsersAction) -> None:
    svc = sub.add_parser("service", help="manage load-balanced services")
    cmds = svc.add_subparsers(dest="service_command", metavar="COMMAND")
    cmds.required = True

    create = cmds.add_parser("create", help="create a service (backends join with "
                             "'pycnm attach NET SB --service NAME')")
    create.add_argument("name")
    create.add_argument("--network", required=True, help="the network it serves on")
    create.add_argument("--port", action="append", default=[], metavar="PORT[/PROTO]",
                        help="a port of the service, as 80/tcp or 53/udp (repeatable)")
    create.add_argument("--vip", help="its virtual IP (default: the network's IPAM picks one)")
    create.add_argument("--mode", default="vip", help="vip (default) or dnsrr")
    create.add_argument("--balance", help="rr (default), random or source-hash")
    create.add_argument("--publish", action="append", default=[], metavar="HOSTPORT:PORT[/PROTO]",
                        help="publish a port on every host's addresses (repeatable)")
    create.set_defaults(handler=_create)

    ls = cmds.add_parser("ls", help="list services")
    ls.set_defaults(handler=_ls)
    inspect = cmds.add_parser("inspect", help="show services")
    inspect.add_argument("names", nargs="+")
    inspect.add_argument("--network", help="the service's network (if its name is on several)")
    inspect.set_defaults(handler=_inspect)
    rm = cmds.add_parser("rm", help="remove services (their backends stay attached)")
    rm.add_argument("names", nargs="+")
    rm.add_argument("--network", help="the service's network (if its name is on several)")
    rm.set_defaults(handler=_rm)


def _create(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        service = ctl.new_service(args.name, args.network, args.port, vip=args.vip,
                                  mode=args.mode, balance=args.balance,
                                  publish=args.publish or None)
        info = service.inspect()
    emit(True, info) if args.json else print(f"{info['Name']} {info['VirtualIP'] or '-'}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        items = [s.inspect() for s in ctl.services()]
    rows = [(i["Name"], i["Network"], i["Mode"], i["Balance"] or "-", i["VirtualIP"] or "-",
             ",".join(i["Ports"]), ",".join(i["Publish"]) or "-", len(i["Backends"]))
            for i in items]
    emit(args.json, items, ("NAME", "NETWORK", "MODE", "BALANCE", "VIP", "PORTS", "PUBLISH",
                            "BACKENDS"), rows)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        items = [ctl.service(name, args.network).inspect() for name in args.names]
    emit(True, items)
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        return remove_each(args.names, lambda name: ctl.service(name, args.network).delete(),
                           args)
