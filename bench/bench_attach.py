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
import ipaddress
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

from bench.benchlib import footer, header, summary  # noqa: E402
from cnm.controller import Controller  # noqa: E402
from cnm.osl.links import (  # noqa: E402
    address_request,
    no_link_local_request,
    random_mac,
    require_index,
    route_request,
)
from cnm.osl.netns import (  # noqa: E402
    NetlinkHandle,
    create_named_netns,
    delete_named_netns,
    iproute,
)
from cnm.osl.rtnl import CREATE, RTM_NEWLINK, SET, Request  # noqa: E402

SETTLE_S = 5.0


def stats(samples: list[float], what: str = "a measure") -> tuple[float, float, float]:
    """Median, p10 and p90 in milliseconds; fails loudly if there is no sample."""
    med, p10, p90 = summary(samples, what)
    return med * 1000, p10 * 1000, p90 * 1000


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _veth_request(name: str, master: int, peer_fd: int) -> Request:
    """One RTM_NEWLINK: a veth whose peer is born in the namespace open on ``peer_fd`` and
    whose host end is enslaved to ``master`` and up (pyroute2's message, no bookkeeping)."""
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = 1  # IFF_UP
    msg["attrs"] = [
        ("IFLA_IFNAME", name), ("IFLA_MASTER", master),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                ("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", peer_fd)]})]}),
        ]}),
    ]
    return Request(msg, RTM_NEWLINK, CREATE, f"create veth {name}")


def kernel_floor(host: str, count: int, tag: str) -> dict[str, list[float]]:
    """What any tool must pay for the kernel state pycnm makes, in netlink requests on
    sockets already open and no bookkeeping: a namespace; a veth whose peer is born inside
    it and whose host end is enslaved to a bridge (with its own MAC, as pycnm's) and up,
    then that end's IPv6 link-local turned off; inside, the same for the peer, its address,
    link up and default route, in one datagram; deleting the veth."""
    out: dict[str, list[float]] = {"netns": [], "veth": [], "inside": [], "veth delete": []}
    names = [f"pf{tag}{i}" for i in range(count)]
    bridge = f"pf{tag}br"
    try:
        with iproute(host) as handle:
            handle.link("add", ifname=bridge, kind="bridge", address=random_mac())
            master = require_index(handle, bridge)
            handle.link("set", index=master, state="up")
            for i, name in enumerate(names):
                out["netns"].append(timed(lambda n=name: create_named_netns(n)))
                fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
                request = _veth_request(f"pf{tag}v{i}", master, fd)
                out["veth"].append(timed(lambda i=i, r=request: _make_veth(handle, r, i, tag)))
                os.close(fd)
                with iproute(f"/run/netns/{name}") as inside:
                    index = require_index(inside, "eth0")
                    batch = _inside_requests(index, i)
                    out["inside"].append(timed(lambda b=batch: inside.rtnl.run(b)))
            for i in range(count):
                out["veth delete"].append(
                    timed(lambda i=i: handle.link("del", ifname=f"pf{tag}v{i}")))
            handle.link("del", ifname=bridge)
    finally:
        for name in names:
            delete_named_netns(name)
    return out


def _make_veth(handle: NetlinkHandle, create: Request, i: int, tag: str) -> None:
    """The veth, then its host end's IPv6 link-local address turned off while it has no
    carrier yet (the peer is down): without it every later attach floods (see
    docs/bridge.md), which is the very cost this floor must not carry."""
    handle.rtnl.run([create])
    handle.rtnl.run([no_link_local_request(require_index(handle, f"pf{tag}v{i}"))])


def _inside_requests(index: int, i: int) -> list[Request]:
    address = ipaddress.ip_interface(f"10.241.{i // 250}.{i % 250 + 2}/16")
    up = ifinfmsg()
    up["index"], up["flags"], up["change"] = index, 1, 1
    return [
        no_link_local_request(index),
        address_request(index, address),
        Request(up, RTM_NEWLINK, SET, "set eth0 up"),
        route_request(ipaddress.ip_network("0.0.0.0/0"),
                      gateway=ipaddress.ip_address("10.241.0.1"), oif=index, replace=True),
    ]


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
        header(f"sizes {sizes}, store {args.store}")
        print(f"{'what':<38}{'N':>6}{'median ms':>12}{'p10 ms':>10}{'p90 ms':>10}")
        naive = naive_pyroute2(host_name, args.naive, tag)
        med, p10, p90 = stats(naive, "naive pyroute2")
        print(f"{'naive pyroute2: sandbox+attach':<38}{args.naive:>6}{med:>12.2f}{p10:>10.2f}"
              f"{p90:>10.2f}")
        # Untimed warm-up: first-use costs (imports, caches) belong to no N.
        kernel_floor(host, 10, f"{tag}w")
        pycnm_run(host, f"sqlite:///{tmp}/warm-up.db", 20)
        medians: dict[str, list[float]] = {}
        for index, n in enumerate(sizes):
            from cnm.store.memory import MemoryStore

            store = MemoryStore() if args.store == "memory" else \
                f"sqlite:///{tmp}/bench-{n}.db"
            # The kernel floor at the same N, in the same run: what growth the kernel itself
            # shows with N namespaces and veths alive. Floor and pycnm take turns going
            # first from one N to the next; between them the kernel dismantles the first
            # one's namespaces in the background: let it finish, or the second one's
            # figures carry that clean-up.
            if index % 2 == 0:
                floor = kernel_floor(host, n, f"{tag}{n}")
                time.sleep(SETTLE_S)
                result = pycnm_run(host, store, n)
            else:
                result = pycnm_run(host, store, n)
                time.sleep(SETTLE_S)
                floor = kernel_floor(host, n, f"{tag}{n}")
            for key in ("netns", "veth", "inside", "veth delete"):
                med, p10, p90 = stats(floor[key], f"floor {key}")
                medians.setdefault(f"floor {key}", []).append(med)
                print(f"{'kernel floor: ' + key:<38}{n:>6}{med:>12.2f}{p10:>10.2f}{p90:>10.2f}")
            for key, label in (("sandbox", "pycnm: sandbox create"),
                               ("attach", "pycnm: attach (endpoint+join)"),
                               ("detach", "pycnm: detach (leave+delete ep)"),
                               ("rm", "pycnm: sandbox delete")):
                med, p10, p90 = stats(result[key], label)
                medians.setdefault(key, []).append(med)
                print(f"{label:<38}{n:>6}{med:>12.2f}{p10:>10.2f}{p90:>10.2f}")
            # What pycnm adds to the kernel's own work for an attach, at this N.
            above = medians["attach"][-1] - medians["floor veth"][-1] - medians["floor inside"][-1]
            medians.setdefault("attach above the floor", []).append(above)
            print(f"{'pycnm: attach above the kernel floor':<38}{n:>6}{above:>12.2f}")
            if n >= 200:
                # Within this one run: the first and the last 100, seconds apart, so the
                # machine's drift (which moves whole runs) hardly enters the comparison.
                print(f"  within N={n}: median of the first 100 -> the last 100")
                for label, samples in (("kernel floor: veth", floor["veth"]),
                                       ("kernel floor: inside", floor["inside"]),
                                       ("pycnm: attach", result["attach"])):
                    first, last = stats(samples[:100])[0], stats(samples[-100:])[0]
                    print(f"  {label:<36}{first:>8.2f} -> {last:.2f}  x{last / first:.2f}")
        if len(sizes) > 1:
            for key, values in medians.items():
                print(f"growth of median {key} from N={sizes[0]} to N={sizes[-1]}: "
                      f"x{values[-1] / values[0]:.2f}")
        footer()
    finally:
        delete_named_netns(host_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
