"""The OS layer (libnetwork's ``osl``): the only part of the core that talks to the kernel.

Every function takes ``ns``: the path of a network namespace file (``/run/netns/NAME``,
``/proc/PID/ns/net``) or None for the namespace this process runs in. Drivers share these
helpers; nothing above this package imports pyroute2.
"""

from cnm.osl import light_pyroute2

light_pyroute2.install()  # before the first pyroute2 import below: see its docstring

from cnm.osl.netns import (  # noqa: E402
    NETNS_RUN_DIR,
    create_named_netns,
    delete_named_netns,
    in_netns,
    iproute,
    named_netns_path,
    netns_exists,
)

__all__ = [
    "NETNS_RUN_DIR",
    "create_named_netns",
    "delete_named_netns",
    "in_netns",
    "iproute",
    "named_netns_path",
    "netns_exists",
]
