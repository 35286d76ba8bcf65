"""Throwaway network namespaces for tests and labs, and the pytest plugin that hands them
out (``netns_fixtures.plugin``, registered as a pytest11 entry point).

Who does what: ``netns`` makes and removes namespaces, wires them and sends bounded test
traffic (a library of its own, usable without pytest); ``leaks`` lists what pycnm (or the
fixtures) left in the kernel; ``plugin`` gives tests fixtures that always clean up and
fails the session on a leak; ``docker`` and ``etcd`` start real servers for a session.
"""

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

__all__ = ["Host", "Namespace", "Outside", "add_route", "bridge", "enable_forwarding",
           "unique_name", "veth", "wire_outside"]
