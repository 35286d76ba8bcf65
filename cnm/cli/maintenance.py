"""``pycnm cleanup`` (like mininet's ``mn -c``) and ``pycnm reconcile``."""

from __future__ import annotations

import argparse

from cnm.cli import open_controller


def register(sub: argparse._SubParsersAction) -> None:
    cleanup = sub.add_parser(
        "cleanup", help="remove every kernel object pycnm made (links, namespaces, nft tables)"
    )
    cleanup.add_argument("--kernel-only", action="store_true",
                         help="keep the store's records (a later reconcile rebuilds them)")
    cleanup.set_defaults(handler=_cleanup)
    reconcile = sub.add_parser("reconcile", help="rebuild missing kernel state from the store")
    reconcile.set_defaults(handler=_reconcile)


def _cleanup(args: argparse.Namespace) -> int:
    from cnm import cleanup

    if not args.kernel_only:
        with open_controller(args) as ctl:
            try:  # the orderly way first: drivers undo what they made
                ctl.cleanup_all()
            except Exception as exc:  # noqa: BLE001 - the sweep below still runs
                print(f"orderly removal stopped ({exc}); sweeping by name")
            cleanup.forget_host(ctl)
    host_ns = args.host_ns
    if host_ns and "/" not in host_ns:
        host_ns = f"/run/netns/{host_ns}"
    for line in cleanup.remove_kernel_objects(host_ns, args.host_id):
        print(line)
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    with open_controller(args, reconcile=True) as ctl:
        for problem in ctl.last_reconcile:
            print(problem)
        return 1 if ctl.last_reconcile else 0
