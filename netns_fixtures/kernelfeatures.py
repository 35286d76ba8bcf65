"""Which networking features this kernel has, found by trying them.

A feature is what a test asks for with ``@pytest.mark.kernel("8021q")``: the name of the
kernel module that provides it. Each probe makes the real object in a throwaway namespace
(a VLAN on a veth, an ipvlan on a veth, a dummy) and deletes the namespace again, so a
module that is built in, loadable or missing is told apart the only way that counts: by
the kernel accepting the object. Results are cached for the process.

    has("8021q")          # False on this project's test machines, True in the VM
    missing(["8021q", "ipvlan"])
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable

# feature -> (what it gives, the link it makes on a veth called "pr0" in the probe's
# namespace; None: the feature is no link kind, see _probe)
FEATURES: dict[str, tuple[str, list[str] | None]] = {
    "8021q": ("802.1q VLAN sub-interfaces",
              ["link", "add", "link", "pr0", "name", "pr0.7", "type", "vlan", "id", "7"]),
    "ipvlan": ("ipvlan interfaces",
               ["link", "add", "link", "pr0", "name", "pr1", "type", "ipvlan", "mode", "l2"]),
    "dummy": ("dummy interfaces", ["link", "add", "pr1", "type", "dummy"]),
    "macvlan": ("macvlan interfaces",
                ["link", "add", "link", "pr0", "name", "pr1", "type", "macvlan"]),
    "vxlan": ("VXLAN devices",
              ["link", "add", "pr1", "type", "vxlan", "id", "7", "dstport", "4789"]),
    "ip_vs": ("IPVS (the kernel's load balancer)", None),
    "sch_netem": ("the netem qdisc (tc netem: delay, loss, rate)", None),
}


class UnknownFeature(ValueError):
    pass


def describe(feature: str) -> str:
    return f"{feature} ({FEATURES[feature][0]})" if feature in FEATURES else feature


def check_names(features: Iterable[str]) -> list[str]:
    """The features as a list; an unknown name is an error naming the known ones."""
    names = list(features)
    unknown = [f for f in names if f not in FEATURES]
    if unknown:
        raise UnknownFeature(
            f"unknown kernel feature {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(FEATURES))}"
        )
    return names


def _ip(*args: str) -> bool:
    done = subprocess.run(["ip", *args], capture_output=True, timeout=30)
    return done.returncode == 0


def _probe(feature: str) -> bool:
    if feature == "ip_vs":
        # IPVS is no link kind: its proc file appears once the module is in.
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, timeout=30)
        return os.path.exists("/proc/net/ip_vs")
    from netns_fixtures.netns import unique_name  # pyroute2 is slow to import in the VM

    ns = unique_name()
    if not _ip("netns", "add", ns):
        raise RuntimeError(f"cannot probe kernel feature {feature}: 'ip netns add' failed "
                           "(run as root)")
    try:
        _ip("-n", ns, "link", "add", "pr0", "type", "veth", "peer", "name", "pr0p")
        if feature == "sch_netem":  # a qdisc, not a link: tc asks for it
            done = subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "pr0", "root",
                                   "netem", "delay", "1ms"], capture_output=True, timeout=30)
            return done.returncode == 0
        command = FEATURES[feature][1]
        assert command is not None
        return _ip("-n", ns, *command)
    finally:
        _ip("netns", "delete", ns)


@functools.cache
def has(feature: str) -> bool:
    """Whether this kernel provides ``feature`` (tried once per process)."""
    check_names([feature])
    return _probe(feature)


def missing(features: Iterable[str]) -> list[str]:
    """The ones of ``features`` this kernel lacks, in order."""
    return [f for f in check_names(features) if not has(f)]
