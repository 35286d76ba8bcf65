"""Why a veth costs more as sandboxes pile up: the same request with and without a bridge.

    sudo python3 bench/bench_veth_growth.py [--count 1000]

bench_attach.py shows the kernel floor's "veth on a bridge" growing with the number of
sandboxes already attached. This run tells what the growth belongs to: the same
RTM_NEWLINK as that floor (a veth whose peer is born in a new namespace, host end up,
IPv6 link-local off) made ``--count`` times, each time with one more namespace alive, in
three variants one after another in one throwaway host namespace:

- **bridge**: the host end enslaved to a bridge with its own MAC (as pycnm's bridges);
- **bridge, no multicast snooping**: the same with ``mcast_snooping 0`` on the bridge;
- **no bridge**: the host end enslaved to nothing.

The variants take turns going first from one run to the next (``--runs``). For each it
prints the median over all veths with p10 and p90, the medians of the first and the last
100, and their ratio (the growth within one variant, seconds apart, which the machine's
drift hardly enters). Fails (exit 1) if a variant measured nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import footer, header, rotated, summary  # noqa: E402
from cnm.osl import light_pyroute2  # noqa: E402

light_pyroute2.install()

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

from cnm.osl.links import no_link_local_request, random_mac, require_index  # noqa: E402
from cnm.osl.netns import (  # noqa: E402
    NetlinkHandle,
    create_named_netns,
    delete_named_netns,
    iproute,
)
from cnm.osl.rtnl import CREATE, RTM_NEWLINK, Request  # noqa: E402

SETTLE_S = 5.0
VARIANTS = ("bridge", "bridge, no multicast snooping", "no bridge")


def veth_request(name: str, master: int | None, peer_fd: int) -> Request:
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = 1  # IFF_UP
    attrs: list[tuple[str, object]] = [("IFLA_IFNAME", name)]
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    attrs.append(("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
            ("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", peer_fd)]})]}),
    ]}))
    msg["attrs"] = attrs
    return Request(msg, RTM_NEWLINK, CREATE, f"create veth {name}")


def one_variant(host_name: str, variant: str, count: int, tag: str) -> list[float]:
    """Seconds per veth, in the order made."""
    host = f"/run/netns/{host_name}"
    spaces = [f"pg{tag}{i}" for i in range(count)]
    bridge = f"pg{tag}br"
    samples: list[float] = []
    made: list[str] = []
    try:
        with iproute(host) as handle:
            master = None
            if variant != "no bridge":
                handle.link("add", ifname=bridge, kind="bridge", address=random_mac())
                if variant == "bridge, no multicast snooping":
                    subprocess.run(["ip", "-n", host_name, "link", "set", bridge, "type",
                                    "bridge", "mcast_snooping", "0"], check=True)
                master = require_index(handle, bridge)
                handle.link("set", index=master, state="up")
            for i, space in enumerate(spaces):
                create_named_netns(space)
                made.append(space)
                fd = os.open(f"/run/netns/{space}", os.O_RDONLY)
                try:
                    request = veth_request(f"pg{tag}v{i}", master, fd)
                    start = time.perf_counter()
                    make_veth(handle, request, f"pg{tag}v{i}")
                    samples.append(time.perf_counter() - start)
                finally:
                    os.close(fd)
            if master is not None:
                handle.link("del", index=master)
    finally:
        for space in made:
            delete_named_netns(space)  # the kernel takes the veths with the namespaces
    return samples


def make_veth(handle: NetlinkHandle, create: Request, name: str) -> None:
    """As bench_attach's floor: the veth, then its host end's IPv6 link-local off."""
    handle.rtnl.run([create])
    handle.rtnl.run([no_link_local_request(require_index(handle, name))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if args.count < 200:
        parser.error("--count must be at least 200 (first and last 100)")
    tag = uuid.uuid4().hex[:4]
    host_name = f"ptveth{tag}"
    create_named_netns(host_name)
    results: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    try:
        header(f"{args.count} veths per variant, {args.runs} run(s)")
        for run in range(args.runs):
            for variant in rotated(VARIANTS, run):
                results[variant].append(one_variant(host_name, variant, args.count,
                                                    f"{tag}{run % 10}"))
                time.sleep(SETTLE_S)  # the kernel dismantles the namespaces meanwhile
        print(f"\n{'veth creation, ms':32}{'median':>8}{'p10':>8}{'p90':>8}"
              f"{'first 100':>11}{'last 100':>10}{'growth':>8}")
        for variant in VARIANTS:
            everything = [s * 1000 for run in results[variant] for s in run]
            med, p10, p90 = summary(everything, variant)
            firsts = [s * 1000 for run in results[variant] for s in run[:100]]
            lasts = [s * 1000 for run in results[variant] for s in run[-100:]]
            first, last = summary(firsts, variant)[0], summary(lasts, variant)[0]
            print(f"{variant:32}{med:8.2f}{p10:8.2f}{p90:8.2f}{first:11.2f}{last:10.2f}"
                  f"{last / first:7.2f}x")
        footer()
    finally:
        delete_named_netns(host_name)
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces and links need it")
    sys.exit(main())
