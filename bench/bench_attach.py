"""Attach cost on one bridge network as the number of sandboxes grows.

    sudo python3 bench/bench_attach.py [--sizes 10,100,1000] [--store sqlite|memory]

For each N it creates N sandboxes, attaches each (create endpoint + join), then detaches
and deletes them, timing every operation; it prints median and p90 per operation and how
the median grows with N. In the same run it measures the references: the kernel floor
(namespace creation and a veth pair with its peer born in the namespace, no bookkeeping)
and the naive pyroute2 way (pyroute2.netns.create and IPRoute(netns=...) per call).
Everything happens inside a throwaway "host" namespace, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnm.controller import Controller  # noqa: E402
from cnm.osl.netns import create_named_netns, delete_named_netns, iproute  # noqa: E402

SETTLE_S = 5.0


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1000, p90 * 1000


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def kernel_floor(host: str, count: int, tag: str) -> dict[str, list[float]]:
    """What any tool must pay, in one netlink request each and no bookkeeping: a
    namespace, then a veth whose peer is born up inside it and whose host end is enslaved
    to a bridge and up (as pycnm's attach does), then deleting it."""
    out: dict[str, list[float]] = {"netns": [], "veth": [], "veth delete": []}
    names = [f"pf{tag}{i}" for i in range(count)]
    bridge = f"pf{tag}br"
    try:
        with iproute(host) as ipr:
            ipr.link("add", ifname=bridge, kind="bridge", state="up")
            master = ipr.link_lookup(ifname=bridge)[0]
            for i, name in enumerate(names):
                out["netns"].append(timed(lambda n=name: create_named_netns(n)))
                fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
                out["veth"].append(timed(lambda i=i, fd=fd: ipr.link(
                    "add", ifname=f"pf{tag}v{i}", kind="veth", master=master, state="up",
                    peer={"ifname": "eth0", "net_ns_fd": fd, "state": "up"})))
                os.close(fd)
            for i in range(count):
                out["veth delete"].append(
                    timed(lambda i=i: ipr.link("del", ifname=f"pf{tag}v{i}")))
            ipr.link("del", ifname=bridge)
    finally:
        for name in names:
            delete_named_netns(name)
    return out


def naive_pyroute2(host_name: str, count: int, tag: str) -> list[float]:
    """pyroute2 used plainly: netns.create and a new IPRoute(netns=...) for each step."""
    from pyroute2 import IPRoute, netns

    samples = []
    names: list[str] = []
    try:
        for i in range(count):
            name = f"pn{tag}{i}"
            start = time.perf_counter()
            netns.create(name)
            names.append(name)
            with IPRoute(netns=host_name) as ipr:
                ipr.link("add", ifname=f"pn{tag}v{i}", kind="veth",
                         peer={"ifname": f"pn{tag}p{i}"})
                idx = ipr.link_lookup(ifname=f"pn{tag}p{i}")[0]
                ipr.link("set", index=idx, net_ns_fd=name, ifname="eth0")
            with IPRoute(netns=name) as ipr:
                idx = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=idx, address=f"10.250.{i // 250}.{i % 250 + 2}",
                         prefixlen=16)
                ipr.link("set", index=idx, state="up")
            samples.append(time.perf_counter() - start)
    finally:
        for name in names:
            netns.remove(name)
    return samples


def pycnm_run(host: str, store: str, count: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sandbox": [], "attach": [], "detach": [], "rm": []}
    with Controller(store, host_ns=host) as ctl:
        net = ctl.new_network(f"bench{count}", subnet="10.240.0.0/16")
        boxes = []
        try:
            for i in range(count):
                start = time.perf_counter()
                sb = ctl.new_sandbox(f"b{uuid.uuid4().hex[:6]}{i}")
                mid = time.perf_counter()
                ep = net.create_endpoint()
                ep.join(sb)
                end = time.perf_counter()
                out["sandbox"].append(mid - start)
                out["attach"].append(end - mid)
                boxes.append((sb, ep))
            for sb, ep in boxes:
                start = time.perf_counter()
                ep.leave()
                ep.delete()
                mid = time.perf_counter()
                sb.delete()
                out["detach"].append(mid - start)
                out["rm"].append(time.perf_counter() - mid)
            boxes.clear()
        finally:
            for sb, _ep in boxes:
                sb.delete()
            net.delete()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--naive", type=int, default=50, help="samples of the naive way")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tag = uuid.uuid4().hex[:4]
    host_name = f"ptbench{tag}"
    host = create_named_netns(host_name)
    tmp = tempfile.mkdtemp(prefix="pycnm-bench-")
    try:
        print(f"{'what':<38}{'N':>6}{'median ms':>12}{'p90 ms':>10}")
        naive = naive_pyroute2(host_name, args.naive, tag)
        print(f"{'naive pyroute2: sandbox+attach':<38}{args.naive:>6}{stats(naive)[0]:>12.2f}"
              f"{stats(naive)[1]:>10.2f}")
        medians: dict[str, list[float]] = {}
        for n in sizes:
            # The kernel floor at the same N, in the same run: what growth the kernel itself
            # shows with N namespaces and veths alive.
            floor = kernel_floor(host, n, f"{tag}{n}")
            # The kernel dismantles deleted namespaces in the background: let it finish
            # before timing pycnm, or pycnm's figures carry the floor's clean-up.
            time.sleep(SETTLE_S)
            for key in ("netns", "veth", "veth delete"):
                med, p90 = stats(floor[key])
                medians.setdefault(f"floor {key}", []).append(med)
                print(f"{'kernel floor: ' + key:<38}{n:>6}{med:>12.2f}{p90:>10.2f}")
            from cnm.store.memory import MemoryStore

            store = MemoryStore() if args.store == "memory" else \
                f"sqlite:///{tmp}/bench-{n}.db"
            result = pycnm_run(host, store, n)
            for key, label in (("sandbox", "pycnm: sandbox create"),
                               ("attach", "pycnm: attach (endpoint+join)"),
                               ("detach", "pycnm: detach (leave+delete ep)"),
                               ("rm", "pycnm: sandbox delete")):
                med, p90 = stats(result[key])
                medians.setdefault(key, []).append(med)
                print(f"{label:<38}{n:>6}{med:>12.2f}{p90:>10.2f}")
        if len(sizes) > 1:
            for key, values in medians.items():
                print(f"growth of median {key} from N={sizes[0]} to N={sizes[-1]}: "
                      f"x{values[-1] / values[0]:.2f}")
    finally:
        delete_named_netns(host_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
