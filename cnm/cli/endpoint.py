"""``pycnm endpoint create|ls|rm`` and ``pycnm attach|detach``."""

from __future__ import annotations

import argparse
import re

from cnm.cli import open_controller, remove_each
from cnm.cli.output import emit


def register(sub: argparse._SubParsersAction) -> None:
    ep = sub.add_parser("endpoint", help="manage endpoints")
    cmds = ep.add_subparsers(dest="endpoint_command", metavar="COMMAND")
    cmds.required = True
    create = cmds.add_parser("create", help="create an endpoint on a network")
    create.add_argument("network")
    create.add_argument("name", nargs="?")
    _address_flags(create)
    create.set_defaults(handler=_create)
    ls = cmds.add_parser("ls", help="list endpoints")
    ls.add_argument("--network", help="only this network's")
    ls.set_defaults(handler=_ls)
    rm = cmds.add_parser("rm", help="remove endpoints (NETWORK/NAME or id)")
    rm.add_argument("names", nargs="+")
    rm.add_argument("-f", "--force", action="store_true", help="detach first if attached")
    rm.set_defaults(handler=_rm)

    attach = sub.add_parser("attach", help="connect a sandbox to a network (new endpoint)")
    attach.add_argument("network")
    attach.add_argument("sandbox")
    attach.add_argument("--name", help="endpoint name (default: the sandbox's name)")
    attach.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="be a backend of this load-balanced service of the network "
                        "(repeatable)")
    _address_flags(attach)
    attach.set_defaults(handler=_attach)
    detach = sub.add_parser("detach", help="disconnect a sandbox from a network")
    detach.add_argument("network")
    detach.add_argument("sandbox")
    detach.add_argument("--drain", type=float, default=None, metavar="SECONDS",
                        help="a service backend's open connections may take this long to "
                        "finish once it gets no new ones (default 10)")
    detach.set_defaults(handler=_detach)


def _address_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip", help="static IPv4 address")
    parser.add_argument("--ip6", help="static IPv6 address")
    parser.add_argument("--mac-address")
    parser.add_argument("-p", "--publish", action="append", default=[],
                        metavar="[HOSTIP:]HOSTPORT:PORT[/PROTO]")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME",
                        help="another DNS name for this endpoint on the network (repeatable)")


_NUMBER = re.compile(r"[0-9]{1,5}")


def parse_publish(specs: list[str]) -> list[dict[str, object]]:
    """Docker's -p syntax, ``[HOSTIP:][HOSTPORT[-END]:]PORT[/PROTO]`` (an IPv6 HOSTIP in
    brackets), -> portmap entries; the driver checks the values themselves."""
    from cnm.errors import InvalidOption

    result: list[dict[str, object]] = []
    for spec in specs:
        body, _, proto = spec.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidOption(f"-p {spec!r}: the protocol must be tcp, udp or sctp")
        parts = body.rsplit(":", 2)
        host_ip, host_port, port = [""] * (3 - len(parts)) + parts
        if host_ip.startswith("[") and host_ip.endswith("]"):
            host_ip = host_ip[1:-1]
        low, dash, high = host_port.partition("-")
        numbers = [port, *([low] if low else []), *([high] if dash else [])]
        if not all(_NUMBER.fullmatch(n) for n in numbers):
            raise InvalidOption(f"-p {spec!r}: ports must be numbers, as in "
                                "[HOSTIP:]HOSTPORT:PORT[/tcp|udp|sctp]")
        result.append({
            "Proto": {"tcp": 6, "udp": 17, "sctp": 132}[proto], "Port": int(port),
            "HostIP": host_ip, "HostPort": int(low) if low else 0,
            "HostPortEnd": int(high) if high else 0,
        })
    return result


def _options(args: argparse.Namespace) -> dict[str, object]:
    from cnm.driverapi import OPT_PORTMAP

    ports = parse_publish(args.publish)
    return {OPT_PORTMAP: ports} if ports else {}


def _create(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        ep = ctl.network(args.network).create_endpoint(
            args.name, ip=args.ip, ipv6_address=args.ip6, mac=args.mac_address,
            options=_options(args), aliases=args.alias,
        )
        emit(True, ep.inspect()) if args.json else print(ep.id)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        eps = ctl.network(args.network).endpoints() if args.network else ctl.endpoints()
        names = {n.id: n.name for n in ctl.networks()}
        items = [e.inspect() for e in eps]
    rows = [
        (i["EndpointID"][:12], i["Name"], names.get(i["NetworkID"], "?"), i["IPv4Address"],
         i["IPv6Address"], i["MacAddress"], i["SandboxID"][:12])
        for i in items
    ]
    emit(args.json, items, ("ENDPOINT ID", "NAME", "NETWORK", "IPV4", "IPV6", "MAC", "SANDBOX"),
         rows)
    return 0


def _rm(args: argparse.Namespace) -> int:
    with open_controller(args) as ctl:
        return remove_each(args.names, lambda name: ctl.endpoint(name).delete(force=args.force),
                           args)


def _attach(args: argparse.Namespace) -> int:
    import contextlib

    with open_controller(args) as ctl:
        net = ctl.network(args.network)
        sb = ctl.sandbox(args.sandbox)
        sb.refuse_attach()  # before an endpoint (and an address) is made for nothing
        with contextlib.ExitStack() as undo:
            ep = net.create_endpoint(
                args.name or sb.name, ip=args.ip, ipv6_address=args.ip6,
                mac=args.mac_address, options=_options(args), aliases=args.alias,
                services=args.service,
            )
            undo.callback(ep.delete)
            ifname = ep.join(sb)
            undo.pop_all()
        info = ep.inspect()
        if args.json:
            emit(True, info)
        else:
            addrs = " ".join(a for a in (info["IPv4Address"], info["IPv6Address"]) if a)
            print(f"{sb.name} {ifname} {addrs}")
    return 0


def _detach(args: argparse.Namespace) -> int:
    from cnm.errors import InvalidOption, NotFound

    if args.drain is not None and not 0 <= args.drain <= 3600:
        raise InvalidOption(f"--drain must be a number of seconds from 0 to 3600, not "
                            f"{args.drain}")
    with open_controller(args) as ctl:
        net = ctl.network(args.network)
        sb = ctl.sandbox(args.sandbox)
        for ep in sb.endpoints():
            if ep.network_id == net.id:
                ep.leave(drain=args.drain)
                ep.delete()
                return 0
        raise NotFound(f"sandbox {sb.name} is not attached to network {net.name}")
