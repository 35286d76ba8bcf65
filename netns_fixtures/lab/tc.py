"""tc netem in a lab node's namespace, through pyroute2: put a ``Netem`` on an interface
(``tc qdisc replace dev IFACE root netem ...``), take it off, and read back what the kernel
really has, so ``pycnm lab netem show``, ``inspect`` and the pictures report live state.

A kernel built without the netem qdisc (CONFIG_NET_SCH_NETEM) refuses it: that is
reported as ``KernelFeatureMissing`` in one sentence (``available`` asks the kernel
first, on a scratch interface of its own, so nothing of the lab is touched).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import threading
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import KernelError, KernelFeatureMissing, NotFound
from netns_fixtures.lab.netem import Netem

if TYPE_CHECKING:
    from netns_fixtures.lab.model import Link, Topology

ROOT_HANDLE = 0x10000  # 1:
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
NOT_BUILT = ("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is not set), so links "
             "cannot be impaired here; Debian's stock kernel has it (module sch_netem)")
CLONE_NEWNET = 0x40000000


@functools.cache
def available() -> bool:
    """Whether this kernel has the netem qdisc: a netem on the loopback of a namespace
    made for the question alone (a thread of ours unshares into it; the namespace goes
    with the thread), so no lab and no host interface is touched."""
    answer: dict[str, bool] = {}

    def probe() -> None:
        from pyroute2 import IPRoute

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            answer["ok"] = True  # cannot ask: let the real request say what is wrong
            return
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "netem", 1, ROOT_HANDLE, delay=1000)
                answer["ok"] = True
            except NetlinkError:
                answer["ok"] = False

    worker = threading.Thread(target=probe, name="pycnm-netem-probe", daemon=True)
    worker.start()
    worker.join(timeout=10)
    return answer.get("ok", True)


def require() -> None:
    """Raise ``KernelFeatureMissing`` (one sentence) when this kernel has no netem."""
    if not available():
        raise KernelFeatureMissing(NOT_BUILT)


def _index(ipr: Any, ns: str, iface: str) -> int:
    found = ipr.link_lookup(ifname=iface)
    if not found:
        raise NotFound(f"{ns} has no interface {iface!r}")
    return int(found[0])


def _feature_error(exc: NetlinkError, what: str) -> Exception:
    """The kernel answers ENOENT for a qdisc kind it was built without."""
    if exc.code == errno.ENOENT and not available():
        return KernelFeatureMissing(NOT_BUILT)
    return KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


def _qdisc_request(index: int, handle: int, options: Any | None, msg_type: int,
                   flags: int, what: str) -> Any:
    from pyroute2.netlink.rtnl import TC_H_ROOT
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    from cnm.osl.rtnl import Request

    msg = tcmsg()
    msg["index"], msg["handle"], msg["parent"] = index, handle, TC_H_ROOT
    msg["attrs"] = [["TCA_KIND", "netem"]]
    if options is not None:
        msg["attrs"].append(["TCA_OPTIONS", options])
    return Request(msg, msg_type, flags, what)


def apply(ns_path: str, iface: str, netem: Netem) -> None:
    """Replace the root qdisc of ``iface`` with netem (or remove it when empty).

    The request is built from pyroute2's message classes and sent on the handle's plain
    rtnetlink channel: pyroute2's ``tc()`` would also read a ``rate`` keyword as the
    qdisc's own TCA_RATE attribute and fail to encode it."""
    from pyroute2.netlink.rtnl.tcmsg import sched_netem

    from cnm.osl.netns import iproute
    from cnm.osl.rtnl import REPLACE, RequestFailed

    if netem.empty():
        reset(ns_path, iface)
        return
    params: dict[str, Any] = {"delay": netem.delay_us, "jitter": netem.jitter_us,
                              "loss": netem.loss, "duplicate": netem.duplicate}
    if netem.reorder:
        params["prob_reorder"] = netem.reorder
    if netem.corrupt:
        params["prob_corrupt"] = netem.corrupt
    if netem.rate_bps is not None:
        params["rate"] = netem.rate_bps // 8  # netem counts bytes per second
    with iproute(ns_path) as ipr:
        index = _index(ipr, ns_path, iface)
        request = _qdisc_request(index, ROOT_HANDLE, sched_netem.get_parameters(params),
                                 RTM_NEWQDISC, REPLACE, f"netem on {iface}")
        try:
            ipr.rtnl.run([request])
        except RequestFailed as exc:
            raise _feature_error(exc, f"netem on {iface}") from None


def reset(ns_path: str, iface: str) -> bool:
    """Remove a netem root qdisc from ``iface``; False if it had none."""
    from cnm.osl.netns import iproute
    from cnm.osl.rtnl import SET, RequestFailed

    with iproute(ns_path) as ipr:
        index = _index(ipr, ns_path, iface)
        qdisc = _netem_qdisc(ipr, index)
        if qdisc is None:
            return False
        request = _qdisc_request(index, qdisc["handle"], None, RTM_DELQDISC, SET,
                                 f"removing netem from {iface}")
        request.tolerated = frozenset({errno.ENOENT})
        try:
            ipr.rtnl.run([request])
        except RequestFailed as exc:
            raise KernelError(f"removing netem from {iface}: {exc.args[1]}") from None
    return True


def read(ns_path: str, iface: str) -> Netem | None:
    """The netem of ``iface`` as the kernel has it, or None (no netem qdisc)."""
    from cnm.osl.netns import iproute

    with iproute(ns_path) as ipr:
        qdisc = _netem_qdisc(ipr, _index(ipr, ns_path, iface))
    return None if qdisc is None else decode(qdisc)


def read_all(ns_path: str) -> dict[str, Netem]:
    """Interface name -> netem, for every interface of a namespace that has one."""
    from cnm.osl.netns import iproute

    result: dict[str, Netem] = {}
    with iproute(ns_path) as ipr:
        names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for qdisc in ipr.get_qdiscs():
            if qdisc.get_attr("TCA_KIND") == "netem" and qdisc["index"] in names:
                result[names[qdisc["index"]]] = decode(qdisc)
    return result


def _netem_qdisc(ipr: Any, index: int) -> Any:
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc.get_attr("TCA_KIND") == "netem" and qdisc["index"] == index:
            return qdisc
    return None


def decode(qdisc: Any) -> Netem:
    """A netem qdisc message -> ``Netem`` (ticks to microseconds, u32 to percent)."""
    from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

    opts = qdisc.get_attr("TCA_OPTIONS")

    def pct(value: int) -> float:
        return round(value * 100 / (2**32 - 1), 4)

    def us(ticks: int) -> int:
        return round(ticks / tick_in_usec)

    reorder = opts.get_attr("TCA_NETEM_REORDER")
    corrupt = opts.get_attr("TCA_NETEM_CORRUPT")
    rate = opts.get_attr("TCA_NETEM_RATE")
    return Netem(delay_us=us(opts["delay"]), jitter_us=us(opts["jitter"]),
                 loss=pct(opts["loss"]), duplicate=pct(opts["duplicate"]),
                 reorder=pct(reorder["prob_reorder"]) if reorder else 0.0,
                 corrupt=pct(corrupt["prob_corrupt"]) if corrupt else 0.0,
                 rate_bps=rate["rate"] * 8 if rate and rate["rate"] else None)


def impair(topo: Topology, link: Link, netem: Netem | None = None) -> str:
    """Put ``netem`` (default: the link's own) on both ends of a lab link."""
    from cnm.osl.netns import named_netns_path

    wanted = netem if netem is not None else link.netem or Netem()
    for end in (link.a, link.b):
        apply(named_netns_path(topo.netns(end.node)), end.iface, wanted)
    return f"{wanted.describe()} on {link.a.node}:{link.a.iface} and {link.b.node}:{link.b.iface}"
