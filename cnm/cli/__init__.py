"""``pycnm``: the command line, shaped like ``docker network`` so Docker users feel at home.

Each sub-command lives in its own module with a ``register(subparsers)`` function; this
module only builds the parser, opens the Controller and turns errors into one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from cnm.errors import CNMError

COMMAND_MODULES = [
    "cnm.cli.network",
    "cnm.cli.sandbox",
    "cnm.cli.endpoint",
    "cnm.cli.maintenance",
    "cnm.cli.agent",
    "plugin_server.cli",
    "netns_fixtures.lab.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycnm",
        description="Container networking (Docker's CNM) in Python: networks, sandboxes, "
        "endpoints, a Docker network plugin and labs.",
    )
    parser.add_argument("--store", default=os.environ.get("PYCNM_STORE"),
                        help="state store URL (default: $PYCNM_STORE or "
                        "sqlite:///var/lib/pycnm/state.db); etcd://HOST:PORT for clusters")
    parser.add_argument("--local-store", default=os.environ.get("PYCNM_LOCAL_STORE"),
                        help="with a cluster store (etcd), where this host's own records "
                        "live (default: $PYCNM_LOCAL_STORE or "
                        "sqlite:///var/lib/pycnm/state.db)")
    parser.add_argument("--host-ns", default=os.environ.get("PYCNM_HOST_NS"),
                        help="act on this network namespace (name or path) as the host")
    parser.add_argument("--host-id", default=os.environ.get("PYCNM_HOST_ID"),
                        help="this host's name in a shared store")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error, print its traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that front end is not part of this build
            raise
        module.register(sub)
    return parser


def open_controller(args: argparse.Namespace, reconcile: bool = False) -> Any:
    """The Controller the flags describe. ``reconcile`` (the long-running front ends, at
    start): first make sure a cluster store accepts this host, then restore the kernel."""
    from cnm.controller import Controller

    host_ns = args.host_ns
    if host_ns and "/" not in host_ns:
        host_ns = f"/run/netns/{host_ns}"
    ctl = Controller(args.store, local_store=args.local_store, host_ns=host_ns,
                     host_id=args.host_id, reconcile=False)
    if reconcile:
        try:
            ctl.check_cluster()
            ctl.last_reconcile = ctl.reconcile()
        except BaseException:
            ctl.close()
            raise
    return ctl


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return handler(args) or 0
    except CNMError as exc:
        _error(str(exc), args)
        return exc.exit_code
    except PermissionError as exc:
        _error(f"permission denied ({exc.filename or exc}): pycnm needs root", args)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}", args)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        _error(f"internal error ({type(exc).__name__}: {_first_line(exc)}); run again with "
               "--debug for the traceback", args)
        return 1


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no message"


def _error(message: str, args: argparse.Namespace) -> None:
    """``Error: message`` on stderr; with --debug, the traceback of the error being
    handled first."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"Error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
