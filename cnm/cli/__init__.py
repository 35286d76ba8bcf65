"""``pycnm``: the command line, shaped like ``docker network`` so Docker users feel at home.

Each sub-command lives in its own module with a ``register(subparsers)`` function; this
module only builds the parser, hands the request to the host's running pycnm process when
one serves it (``cnm.cli.handoff``), else runs it here, and turns errors into one line.

Why it is built this way (issue 16; figures in docs/cli.md): a CLI call used to cost
~165-190 ms, of which the work was ~4 ms. The rest was starting Python and importing:
every command module (and through them pyroute2, the plugin server, the lab loader) just
to build the parser. So:

- the parser imports only the module of the command being run; the others appear in
  ``--help`` from ``COMMANDS`` below (a test keeps that table equal to what the modules
  register);
- a command that only reads or changes the store and the kernel (``HANDOFF``) is sent to
  the host's running ``pycnm agent`` or ``pycnm plugin serve`` over a root-only Unix socket
  when one serves the same store and host, as the docker CLI hands its work to dockerd;
  the daemon runs the very same handler, and the output, errors and exit code come back
  unchanged. Without a daemon the CLI does the work itself, as before.
"""

from __future__ import annotations

import os
import sys

# Every CLI call imports this module; one handed to a daemon needs nothing more than
# cnm.cli.handoff, so argparse (and what it imports: re, enum, gettext...) and typing are
# imported where they are used. For type checkers only:
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

# Every sub-command: (module, {command: the help line ``pycnm --help`` shows}), in the
# order of ``pycnm --help``. Only the chosen command's module is imported; the others are
# shown from this table. A module that registers a command must list it here
# (tests/unit/test_cli_parser.py checks the two agree).
COMMANDS: list[tuple[str, dict[str, str]]] = [
    ("cnm.cli.network", {"network": "manage networks"}),
    ("cnm.cli.sandbox", {"sandbox": "manage sandboxes (network namespaces)"}),
    ("cnm.cli.endpoint", {
        "endpoint": "manage endpoints",
        "attach": "connect a sandbox to a network (new endpoint)",
        "detach": "disconnect a sandbox from a network",
    }),
    ("cnm.cli.service", {"service": "manage load-balanced services"}),
    ("cnm.cli.maintenance", {
        "cleanup": "remove every kernel object pycnm made (links, namespaces, nft tables)",
        "reconcile": "rebuild missing kernel state from the store",
    }),
    ("cnm.cli.agent", {
        "agent": "run this host's background work (overlay lease, watches, VTEP entries, "
                 "load balancers, DNS) until SIGTERM",
    }),
    ("plugin_server.cli", {"plugin": "the Docker network plugin"}),
    ("netns_fixtures.lab.cli", {"lab": "lab exercises in network namespaces (topology files)"}),
]
COMMAND_MODULES = [module for module, _ in COMMANDS]
# The top-level packages of the front ends besides cnm's own: a build may leave them out
FRONT_ENDS = tuple(sorted({m.partition(".")[0] for m in COMMAND_MODULES} - {"cnm"}))

DESCRIPTION = ("Container networking (Docker's CNM) in Python: networks, sandboxes, "
               "endpoints, a Docker network plugin and labs.")


def _global_options(parser: argparse.ArgumentParser,
                    env: Mapping[str, str] | None = None) -> None:
    """The options before the sub-command; their defaults come from ``env`` (the
    environment, or in the daemon the client's)."""
    env = os.environ if env is None else env
    parser.add_argument("--store", default=env.get("PYCNM_STORE"),
                        help="state store URL (default: $PYCNM_STORE or "
                        "sqlite:///var/lib/pycnm/state.db); etcd://HOST:PORT for clusters")
    parser.add_argument("--local-store", default=env.get("PYCNM_LOCAL_STORE"),
                        help="with a cluster store (etcd), where this host's own records "
                        "live (default: $PYCNM_LOCAL_STORE or "
                        "sqlite:///var/lib/pycnm/state.db)")
    parser.add_argument("--host-ns", default=env.get("PYCNM_HOST_NS"),
                        help="act on this network namespace (name or path) as the host")
    parser.add_argument("--host-id", default=env.get("PYCNM_HOST_ID"),
                        help="this host's name in a shared store")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error, print its traceback too")


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (its first word after the global options), or None.
    A cheap first pass: the real parse follows, with every rule and message of argparse."""
    import argparse

    scout = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    _global_options(scout)
    try:
        _, rest = scout.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return None  # the real parse says what is wrong
    for word in rest:  # in the order typed: a help flag before any command asks for the list
        if word in ("-h", "--help"):
            return None  # pycnm --help ...: the whole list
        if not word.startswith("-"):
            return word  # pycnm network create --help: that command's own help
    return None


def build_parser(argv: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``pycnm`` parser. With ``argv`` naming a command, only that command's module is
    imported and registered (argparse's messages about it read the same: its usage line
    names no sibling). With ``argv`` naming none (``pycnm --help``, a typo), every command
    is a placeholder showing its help line from ``COMMANDS``. Without ``argv``, every
    module is registered. Each parser costs argparse a few gettext look-ups: made only
    when needed. ``env``: where the global options' defaults come from (os.environ)."""
    import argparse

    parser = argparse.ArgumentParser(prog="pycnm", description=DESCRIPTION)
    _global_options(parser, env)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = chosen_command(argv) if argv is not None else None
    known = any(wanted in commands for _, commands in COMMANDS)
    import importlib

    for module_name, commands in COMMANDS:
        if not _available(module_name):
            continue
        if argv is None or wanted in commands:
            importlib.import_module(module_name).register(sub)
            _accept_json_after(sub, list(commands))
        elif not known:
            for name, help_line in commands.items():
                sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _available(module_name: str) -> bool:
    """Whether this build ships the front end (its top-level package); the package itself
    is not imported (``netns_fixtures`` would bring pyroute2 along)."""
    top = module_name.partition(".")[0]
    if top == "cnm" or top in sys.modules:
        return True
    import importlib.util

    return importlib.util.find_spec(top) is not None


def _accept_json_after(sub: argparse._SubParsersAction, names: list[str]) -> None:
    """``--json`` after the sub-command too (``pycnm endpoint ls --json``, as people type
    ``docker ... --format json``), on every leaf command of ``names``; SUPPRESS keeps a
    ``pycnm --json endpoint ls`` from being reset by the leaf's default. A command that
    takes the rest of the line as a command to run (``sandbox exec``) is left alone."""
    import argparse
    import contextlib

    todo = [sub.choices[name] for name in names if name in sub.choices]
    while todo:
        parser = todo.pop()
        children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if children:
            for action in children:
                todo.extend(action.choices.values())
            continue
        if any(a.nargs == argparse.REMAINDER for a in parser._actions):
            continue
        with contextlib.suppress(argparse.ArgumentError):  # unless it has one of its own
            parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                help="print JSON instead of tables")


def open_controller(args: argparse.Namespace, reconcile: bool = False) -> Any:
    """The Controller a command works with: inside the daemon that serves this request,
    its own (left open after the command); otherwise a new one from the flags.
    ``reconcile`` (the long-running front ends, at start): first make sure a cluster store
    accepts this host, then restore the kernel."""
    daemon = sys.modules.get("cnm.cli.daemon")  # loaded only in a daemon
    served = daemon.current_controller() if daemon is not None else None
    if served is not None:
        return served
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
    words = list(sys.argv[1:] if argv is None else argv)
    if words in (["--help"], ["-h"]):
        from cnm.cli import help_text

        if help_text.matches_argparse(FRONT_ENDS):
            sys.stdout.write(help_text.TEXT)
            return 0
    from cnm.cli import handoff

    answered = handoff.send(words)  # the host's daemon does it, if one serves us
    if answered is not None:
        return answered
    args = build_parser(words).parse_args(words)  # help and usage errors end here
    complete_site()
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return dispatch(args)


def complete_site() -> None:
    """Run what Python's ``site`` skipped when the launcher (bin/pycnm) started it with
    -S: the .pth hooks of site-packages (some installs and tools rely on them), before
    this process does a command itself. A command handed to a daemon never needs them."""
    if not sys.flags.no_site:
        return
    import site

    if site.ENABLE_USER_SITE is None:  # site.main() has not run in this process yet
        site.main()


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; every error becomes one line on stderr and an exit code.
    The daemon runs requests handed to it through here too."""
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    from cnm.errors import CNMError

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


def remove_each(names: list[str], remove: Callable[[str], None],
                args: argparse.Namespace) -> int:
    """``rm NAME...`` as Docker's: each name on its own; one that cannot go is an error
    line and the others still go. The exit code is the worst error's (0: all went)."""
    from cnm.errors import CNMError

    code = 0
    for name in names:
        try:
            remove(name)
        except CNMError as exc:
            _error(str(exc), args)
            code = max(code, exc.exit_code)
            continue
        print(name, flush=True)
    return code


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no message"


def _error(message: str, args: argparse.Namespace) -> None:
    """``Error: message`` on stderr; with --debug, the traceback of the error being
    handled first."""
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc()
    print(f"Error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
