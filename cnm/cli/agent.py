"""``pycnm agent``: the long-running process of one host.

It opens the Controller (which reconciles the kernel with the store), starts the drivers'
background work (the overlay's lease, watches and VTEP entries), the services' load
balancers following the store (``cnm.services.agent``) and the embedded DNS resolver of
every sandbox (``cnm.dns``), serves the CLI calls handed to it (``cnm.cli.daemon``), and
runs until SIGTERM or SIGINT, then stops that work (sandboxes get their plain resolv.conf
back) and exits 0. The plugin server does the same in its own process; run one or the
other per host, not both.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from cnm.cli import daemon, open_controller

ENV_LEASE_TTL = "PYCNM_OVERLAY_LEASE_TTL"


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser(
        "agent", help="run this host's background work (overlay lease, watches, VTEP entries, "
        "load balancers, DNS) until SIGTERM",
    )
    agent.add_argument("--lease-ttl", type=float, default=os.environ.get(ENV_LEASE_TTL),
                       help="seconds a dead host's records outlive it (default 15; "
                       f"${ENV_LEASE_TTL})")
    agent.add_argument("--resync-interval", type=float, default=None,
                       help="seconds between full resyncs of the VTEP entries and names "
                       "(default 30)")
    agent.add_argument("--no-dns", action="store_true",
                       help="serve no DNS: sandboxes keep the host's servers and hosts file")
    agent.add_argument("--dns-gateway", action="store_true",
                       help="also answer on port 53 of each network's gateway address, with "
                       "that network's names (an upstream for Docker's DNS: docs/dns.md)")
    agent.add_argument("--dns-timeout", type=float, default=None,
                       help="seconds a forwarded query waits for the upstream servers, all "
                       "together, before SERVFAIL (default 4)")
    agent.set_defaults(handler=_agent)


def _agent(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    from cnm.errors import InvalidOption

    for flag, value in (("--lease-ttl", args.lease_ttl), ("--dns-timeout", args.dns_timeout),
                        ("--resync-interval", args.resync_interval)):
        if value is not None and not 0 < float(value) <= 3600:
            raise InvalidOption(f"{flag} must be a number of seconds above 0 and at most "
                                f"3600, not {value}")
    config = {k: v for k, v in (("lease_ttl", args.lease_ttl),
                                ("resync_interval", args.resync_interval),
                                ("dns_timeout", args.dns_timeout)) if v}
    config["dns"] = not args.no_dns
    config["dns_gateway"] = args.dns_gateway
    try:
        with open_controller(args, reconcile=True) as ctl:
            for problem in ctl.last_reconcile:
                print(f"reconcile: {problem}", file=sys.stderr)
            started = ctl.start_background(config)
            with daemon.serving(ctl, args):
                print(f"pycnm agent: host {ctl.host_id} running "
                      f"({', '.join(started) or 'no background work'})", flush=True)
                while not stop.wait(1.0):
                    pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("pycnm agent: stopped", flush=True)
    return 0
