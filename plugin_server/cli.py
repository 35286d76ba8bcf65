"""``pycnm plugin serve``: run the Docker network plugin in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from plugin_server.server import DEFAULT_SOCKET, DEFAULT_THREADS, ServeOptions, check_options


def register(sub: argparse._SubParsersAction) -> None:
    plugin = sub.add_parser("plugin", help="the Docker network plugin")
    cmds = plugin.add_subparsers(dest="plugin_command", metavar="COMMAND")
    cmds.required = True
    serve = cmds.add_parser(
        "serve", help="serve Docker's network and IPAM driver calls until SIGTERM",
        description="Serve Docker's remote network driver and IPAM protocols on a Unix "
        "socket (docker network create -d pycnm [--ipam-driver pycnm]). Runs in the "
        "foreground and logs every call with its duration.",
    )
    serve.add_argument("--socket", default=DEFAULT_SOCKET,
                       help=f"Unix socket Docker finds the plugin by (default {DEFAULT_SOCKET};"
                       " its file name is the driver's name)")
    # SUPPRESS: without the flag, pycnm's global --store (or $PYCNM_STORE) stays in force.
    serve.add_argument("--store", default=argparse.SUPPRESS,
                       help="state store URL (as pycnm --store)")
    serve.add_argument("--tcp", metavar="HOST:PORT", default=None,
                       help="also listen on TCP, on a loopback address only (the protocol "
                       "has no authentication)")
    serve.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help=f"worker threads (default {DEFAULT_THREADS})")
    serve.add_argument("--no-background", action="store_true",
                       help="do not start the drivers' background work (overlay agent) nor "
                       "the DNS resolver of pycnm's own sandboxes")
    serve.add_argument("--dns-gateway", action="store_true",
                       help="answer on port 53 of each network's gateway address with that "
                       "network's names, pycnm's and other hosts': Docker's embedded DNS can "
                       "forward there (docker run --dns GATEWAY; docs/dns.md)")
    serve.add_argument("--no-dns", action="store_true",
                       help="serve no DNS to pycnm's own sandboxes (Docker's containers "
                       "always keep Docker's)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="log level (default info: one line per call)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from cnm.cli import daemon, open_controller
    from plugin_server.server import serve

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    options = ServeOptions(socket_path=args.socket, tcp=args.tcp, threads=max(1, args.threads),
                           background=not args.no_background,
                           background_config={"dns": not args.no_dns,
                                              "dns_gateway": args.dns_gateway})
    check_options(options)  # before the Controller restores anything
    with open_controller(args, reconcile=True) as ctl:
        for problem in ctl.last_reconcile:
            print(f"reconcile: {problem}", file=sys.stderr)
        with daemon.serving(ctl, args):  # CLI calls on this host and store run here
            serve(ctl, options)
    return 0
