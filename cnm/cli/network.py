"""``pycnm network create|ls|inspect|rm``: the flags of ``docker network create``."""

from __future__ import annotations

import argparse

from cnm.cli import open_controller, remove_each
from cnm.cli.output import emit
from cnm.errors import InvalidOption

# The form a pair flag's error names: the metavar its --help shows.
PAIR_FORMS = {"--add-host": "NAME=IP", "--aux-address": "NAME=IP"}


def key_values(pairs: list[str], flag: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidOption(f"{flag} needs {PAIR_FORMS.get(flag, 'KEY=VALUE')}, "
                                f"got {pair!r}")
        result[key] = value
    return result


def register(sub: argparse._SubParsersAction) -> None:
    net = sub.add_parser("network", help="manage networks")
    cmds = net.add_subparsers(dest="network_command", metavar="COMMAND")
    cmds.required = True

    create = cmds.add_parser("create", help="create a network")
    create.add_argument("name")
    create.add_argument("-d", "--driver", default="bridge",
                        help="bridge, macvlan, ipvlan or overlay")
    create.add_argument("--subnet", action="append", default=[], help="CIDR (repeatable)")
    create.add_argument("--gateway", action="append", default=[])
    create.add_argument("--ip-range", action="append", default=[])
    create.add_argument("--aux-address", action="append", default=[], metavar="NAME=IP")
    create.add_argument("--ipv6", action="store_true")
    create.add_argument("--internal", action="store_true")
    create.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.set_defaults(handler=_create)

    ls = cmds.add_parser("ls", help="list networks")
    ls.set_defaults(handler=_ls)
    inspect = cmds.add_parser("inspect", help="show a network")
    inspect.add_argument("names", nargs="+")
    inspect.set_defaults(handler=_inspect)
    rm = cmds.add_parser("rm", help="remove networks")
    rm.add_argument("names", nargs="+")
    rm.add_argument("-f", "--force", action="store_true", help="also remove its endpoints")
    rm.set_defaults(handler=_rm)


def _create(args: argparse.Namespace) -> int:
    options = key_values(args.opt, "-o/--opt")
    aux = key_values(args.aux_address, "--aux-address")
    labels = key_values(args.label, "--label")
    with open_controller(args) as ctl:
        net = ctl.new_network(
            args.name, args.driver, subnet=args.subnet, gateway=args.gateway,
            ip_range=args.ip_range, aux_addresses=aux, ipv6=args.ipv6,
            internal=args.internal, options=options, labels=labels,
        )
        if args.json:
            emit(True, net.inspect())
        else:
            print(net.id)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        nets = [n.inspect() for n in ctl.networks()]
    rows = [
        (n["Id"][:12], n["Name"], n["Driver"],
         ", ".join(c["Subnet"] for c in n["IPAM"]["Config"]), len(n["Endpoints"]))
        for n in nets
    ]
    emit(args.json, nets, ("NETWORK ID", "NAME", "DRIVER", "SUBNETS", "ENDPOINTS"), rows)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        emit(True, [ctl.network(name).inspect() for name in args.names])
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        return remove_each(args.names, lambda name: ctl.network(name).delete(force=args.force),
                           args)
