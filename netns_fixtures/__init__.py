"""Throwaway network namespaces for tests and labs, and the pytest plugin that hands them
out (``netns_fixtures.plugin``, registered as a pytest11 entry point).

Who does what: ``netns`` makes and removes namespaces, wires them and sends bounded test
traffic (a library of its own, usable without pytest); ``leaks`` lists what pycnm (or the
fixtures) left in the kernel; ``plugin`` gives tests fixtures that always clean up and
fails the session on a leak; ``docker`` and ``etcd`` start real servers for a session.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["Host", "Namespace", "Outside", "add_route", "bridge", "enable_forwarding",
           "unique_name", "veth", "wire_outside"]

if TYPE_CHECKING:
    from netns_fixtures.netns import (
        Host,
        Namespace,
        Outside,
        add_route,
        bridge,
        enable_forwarding,
        unique_name,
        veth,
        wire_outside,
    )


def __getattr__(name: str) -> Any:
    """The names above, imported on first use: ``pycnm lab ...`` imports modules of this
    package without needing ``netns`` itself (a CLI call is short; see cnm/cli)."""
    if name in __all__:
        from netns_fixtures import netns

        return getattr(netns, name)
    raise AttributeError(f"module 'netns_fixtures' has no attribute {name!r}")
