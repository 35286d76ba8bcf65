"""A picture of a lab as the kernel has it right now (SVG and PNG through graphviz).

Who does what: ``scan`` reads every namespace of the lab (``ip -json``: links with their
kind, master, peer and VXLAN details, addresses, default route, and each VTEP's flood
entries) into plain records; ``to_dot`` draws them, one box per namespace, sandboxes and
overlay namespaces inside the box of the host they run on; ``draw`` writes
``NAME.dot``, ``NAME.svg`` and ``NAME.png``. What the picture shows is what is there, so a
missing veth or a VTEP without peers shows up as such, whatever the file said.

Edges: a veth pair is a thick line, a bridge port a dashed orange arrow to its bridge, a
macvlan child a dotted green arrow to its parent, a VTEP a dotted purple arrow to the
underlay interface that carries its UDP, and a purple double line joins VTEPs that send to
each other (their flood entries).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnm import names
from cnm.errors import CNMError
from cnm.osl.netns import named_netns_path, read_sysctl
from netns_fixtures.lab import kernel
from netns_fixtures.lab.model import lab_netns_prefix
from netns_fixtures.lab.netem import Netem

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab

COLOURS = {"veth": "#dbeafe", "bridge": "#fde68a", "vxlan": "#f5d0fe", "macvlan": "#bbf7d0"}
ROLE_ORDER = {"switch": 0, "router": 1, "host": 2, "server": 3, "overlay": 4, "sandbox": 5}
CLUSTER = {"host": "#f3f4f6", "router": "#fef3c7", "switch": "#fef9c3", "server": "#e0f2fe",
           "sandbox": "#ffffff", "overlay": "#faf5ff"}


@dataclass
class Iface:
    ns: str
    name: str
    ifindex: int
    kind: str
    up: bool
    mac: str = ""
    addresses: list[str] = field(default_factory=list)
    master: str | None = None
    peer: tuple[str, int] | None = None  # (namespace, ifindex) of a veth peer or a parent
    parent_name: str | None = None  # a macvlan parent in the same namespace
    mode: str = ""  # macvlan mode
    vni: int | None = None
    local: str | None = None  # a VTEP's underlay address
    port: int | None = None
    remotes: list[str] = field(default_factory=list)  # VTEPs this one floods to
    peers: list[str] = field(default_factory=list)  # "ip at mac via vtep" it answers for
    mtu: int | None = None
    carrier: bool = True
    netem: Netem | None = None  # filled in by ``live.with_netem``

    @property
    def key(self) -> str:
        return f"{self.ns}/{self.name}"


@dataclass
class NsView:
    name: str
    role: str  # host, router, switch, server, sandbox or overlay
    label: str  # the lab's name for it
    owner: str | None  # the host node a sandbox or overlay namespace runs on
    ifaces: list[Iface]
    routes: list[str] = field(default_factory=list)  # routes through a gateway
    forwarding: bool = False
    rules: list[str] = field(default_factory=list)  # pycnm's nft NAT and drop rules


@dataclass
class GraphFiles:
    dot: Path
    svg: Path
    png: Path
    namespaces: int
    interfaces: int


def _namespaces(lab: Lab) -> list[tuple[str, str, str, str | None]]:
    """(namespace, role, label, owner) for every namespace of the lab that exists."""
    from cnm.osl.netns import list_named_netns

    topo = lab.topology
    present = set(list_named_netns())
    found: list[tuple[str, str, str, str | None]] = [
        (topo.netns(h.name), h.kind, h.name, None) for h in topo.hosts]
    # One box per namespace: sandboxes that share another's (or the host's) are named in
    # its label instead.
    sharers: dict[str, list[str]] = {}
    for s in topo.sandboxes:
        if not s.own_namespace:
            sharers.setdefault(topo.netns(s.name), []).append(s.name)
    found = [(ns, role, label + "".join(f" +{n}" for n in sharers.get(ns, [])), owner)
             for ns, role, label, owner in found]
    found += [(topo.netns(s.name), "sandbox",
               s.name + "".join(f" +{n}" for n in sharers.get(topo.netns(s.name), [])), s.host)
              for s in topo.sandboxes if s.own_namespace]
    prefix = lab_netns_prefix(topo.name)
    overlay = re.compile(rf"^{names.OVERLAY_NETNS_PREFIX}(\d+)-{re.escape(prefix)}(.+)$")
    for ns in sorted(present):
        match = overlay.match(ns)
        if match:
            found.append((ns, "overlay", f"overlay VNI {match[1]}", match[2]))
    return [item for item in found if item[0] in present]


def scan(lab: Lab) -> list[NsView]:
    """The lab's namespaces and interfaces as the kernel has them now."""
    views = []
    for ns, role, label, owner in _namespaces(lab):
        nsids = kernel.peer_namespaces(ns)
        addrs = kernel.addresses(ns)
        ifaces = []
        for link in kernel.links(ns):
            if link.get("ifname") in (None, "lo"):
                continue
            ifaces.append(_iface(ns, link, nsids, addrs))
        for iface in ifaces:
            if iface.kind == "vxlan":
                fdb = _fdb(ns, iface.name)
                iface.remotes = sorted({e["dst"] for e in fdb if e.get("dst")
                                        and e.get("mac") == "00:00:00:00:00:00"})
                where = {e.get("mac"): e.get("dst") for e in fdb if e.get("dst")}
                iface.peers = [f"{n['dst']} at {n['lladdr']} via {where.get(n['lladdr'], '?')}"
                               for n in kernel.ip_json(ns, "neigh", "show", "dev", iface.name)
                               if n.get("lladdr")]
        routes = [f"{r.get('dst')} via {r['gateway']}"
                  for r in kernel.ip_json(ns, "-4", "route", "show") if r.get("gateway")]
        forwarding = read_sysctl(named_netns_path(ns), "net/ipv4/ip_forward") == "1"
        rules = _nft_rules(ns) if role == "host" else []
        views.append(NsView(ns, role, label, owner, ifaces, routes, forwarding, rules))
    return views


def _iface(ns: str, link: dict[str, Any], nsids: dict[int, str],
           addrs: dict[str, list[str]]) -> Iface:
    info = link.get("linkinfo", {})
    data = info.get("info_data", {}) or {}
    kind = info.get("info_kind", "") or link.get("link_type", "")
    iface = Iface(ns=ns, name=link["ifname"], ifindex=int(link.get("ifindex", 0)), kind=kind,
                  up="UP" in link.get("flags", []), mac=link.get("address", ""),
                  addresses=addrs.get(link["ifname"], []), master=link.get("master"),
                  mtu=link.get("mtu"), carrier="NO-CARRIER" not in link.get("flags", []))
    if "link_index" in link:
        peer_ns = nsids.get(link["link_netnsid"]) if "link_netnsid" in link else ns
        if peer_ns is not None:
            iface.peer = (peer_ns, int(link["link_index"]))
    if kind == "macvlan":
        iface.mode = data.get("mode", "")
        if "link_netnsid" not in link and link.get("link"):
            iface.parent_name = link["link"]
    if kind == "vxlan":
        iface.vni, iface.local, iface.port = data.get("id"), data.get("local"), data.get("port")
    return iface


def _nft_rules(ns: str) -> list[str]:
    """The NAT and drop rules of pycnm's nft table in ``ns`` (one per line)."""
    result = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet",
                             names.NFT_TABLE], capture_output=True, text=True,
                            timeout=kernel.TIMEOUT)
    rules: list[str] = []
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        text = line.strip()
        if any(word in text.split() for word in ("masquerade", "dnat", "snat", "drop")) \
                and text not in rules:
            rules.append(text)
    return rules


def _fdb(ns: str, dev: str) -> list[dict[str, Any]]:
    result = subprocess.run(["bridge", "-json", "-n", ns, "fdb", "show", "dev", dev],
                            capture_output=True, text=True, timeout=kernel.TIMEOUT)
    try:
        data = json.loads(result.stdout) if result.returncode == 0 else []
    except ValueError:
        return []
    return [e for e in data if isinstance(e, dict)]


# --- drawing ---------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(iface: Iface) -> str:
    lines = [f"<b>{html.escape(iface.name)}</b>"]
    kind = iface.kind or "link"
    if iface.kind == "vxlan":
        kind = f"VTEP vxlan, VNI {iface.vni}"
    elif iface.kind == "macvlan":
        kind = f"macvlan {iface.mode}"
    small = html.escape(f"{kind}  {iface.mac}" if iface.mac else kind)
    state = "" if iface.up and iface.carrier else "  DOWN" if not iface.up else "  NO-CARRIER"
    lines.append(f'<font point-size="9">{small}{state}</font>')
    if iface.netem is not None:
        lines.append(f'<font point-size="9" color="#b91c1c">netem '
                     f'{html.escape(iface.netem.describe())}</font>')
    if iface.kind == "vxlan" and iface.local:
        lines.append(f'<font point-size="9">local {html.escape(iface.local)} '
                     f'UDP {iface.port}</font>')
        lines += [f'<font point-size="9">{html.escape(p)}</font>' for p in iface.peers]
    lines += [html.escape(a) for a in iface.addresses]
    return "<" + "<br/>".join(lines) + ">"


def to_dot(title: str, views: list[NsView]) -> str:
    """Graphviz source for the scanned namespaces."""
    out = ["digraph lab {", "  compound=true; rankdir=LR; newrank=true;",
           f"  labelloc=t; fontname=Helvetica; label={_q(title)};",
           "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=11];",
           "  edge [fontname=Helvetica, fontsize=9];"]
    owned: dict[str, list[NsView]] = {}
    for view in views:
        if view.owner:
            owned.setdefault(view.owner, []).append(view)
    for view in views:
        if not view.owner:
            # the host's label may name host-mode sandboxes after it ("h1 +tools")
            out += _cluster(view, owned.get(view.label.split(" +")[0], []), "  ")
    out += _edges(views)
    out.append("}")
    return "\n".join(out) + "\n"


def _cluster(view: NsView, inner: list[NsView], indent: str) -> list[str]:
    role = {"sandbox": "sandbox", "overlay": ""}.get(view.role, view.role)
    title = f"{role} {view.label}".strip() + f"\n{view.name}"
    if view.role in ("host", "router", "sandbox"):
        title += "\nip_forward " + ("on" if view.forwarding else "off")
    for route in view.routes:
        title += f"\n{route}"
    for rule in view.rules:
        title += f"\nnft: {rule}"
    lines = [f"{indent}subgraph {_q('cluster_' + view.name)} {{",
             f"{indent}  label={_q(title)}; style=\"rounded,filled\"; "
             f"fillcolor={_q(CLUSTER.get(view.role, '#ffffff'))}; color=\"#6b7280\";"]
    for iface in view.ifaces:
        colour = COLOURS.get(iface.kind, "#ffffff")
        lines.append(f"{indent}  {_q(iface.key)} [label={_label(iface)}, "
                     f"fillcolor={_q(colour)}];")
    if not view.ifaces:
        lines.append(f"{indent}  {_q(view.name + '/')} [label=\"(no interfaces)\", "
                     "style=dashed];")
    for child in inner:
        lines += _cluster(child, [], indent + "  ")
    lines.append(f"{indent}}}")
    return lines


def _edges(views: list[NsView]) -> list[str]:
    by_index = {(i.ns, i.ifindex): i for v in views for i in v.ifaces}
    rank = {v.name: ROLE_ORDER.get(v.role, 9) for v in views}
    by_name = {(i.ns, i.name): i for v in views for i in v.ifaces}
    by_address = {a.split("/")[0]: i for v in views if v.role != "overlay"
                  for i in v.ifaces for a in i.addresses}
    vteps = {i.local: i for v in views for i in v.ifaces if i.kind == "vxlan" and i.local}
    lines: list[str] = []
    drawn: set[tuple[str, str]] = set()
    for view in views:
        for iface in view.ifaces:
            peer = by_index.get(iface.peer) if iface.peer else None
            if iface.kind == "veth" and peer is not None:
                # Switches and routers to the left, then hosts, servers and sandboxes.
                pair = tuple(k for _, k in sorted(((rank[iface.ns], iface.key),
                                                   (rank[peer.ns], peer.key))))
                if pair not in drawn:
                    drawn.add(pair)  # type: ignore[arg-type]
                    broken = not (iface.up and iface.carrier and peer.up and peer.carrier)
                    impaired = iface.netem is not None or peer.netem is not None
                    style = ("style=dashed, color=\"#dc2626\", label=\"veth DOWN\""
                             if broken else "color=\"#b91c1c\", label=\"veth netem\""
                             if impaired else "color=\"#1d4ed8\", label=\"veth\"")
                    lines.append(f"  {_q(pair[0])} -> {_q(pair[1])} [dir=none, penwidth=2.5, "
                                 f"{style}];")
            if iface.master and (iface.ns, iface.master) in by_name:
                master = by_name[(iface.ns, iface.master)]  # drawn bridge first: ports follow
                lines.append(f"  {_q(master.key)} -> {_q(iface.key)} [style=dashed, "
                             "color=\"#d97706\", arrowtail=dot, dir=back, arrowsize=0.6];")
            if iface.kind == "macvlan":
                parent = peer or by_name.get((iface.ns, iface.parent_name or ""))
                if parent is not None:
                    lines.append(f"  {_q(parent.key)} -> {_q(iface.key)} [dir=back, "
                                 "style=dotted, penwidth=2, color=\"#15803d\", "
                                 f"label={_q('macvlan')}];")
            if iface.kind == "vxlan" and iface.local in by_address:
                carrier = by_address[iface.local]
                lines.append(f"  {_q(carrier.key)} -> {_q(iface.key)} [dir=back, "
                             "style=dotted, penwidth=2, color=\"#7e22ce\", "
                             f"label={_q(f'UDP {iface.port or 4789}')}];")
            for remote in iface.remotes:
                other = vteps.get(remote)
                if other is None:
                    continue
                pair = tuple(sorted((iface.key, other.key)))
                if pair not in drawn:
                    drawn.add(pair)  # type: ignore[arg-type]
                    lines.append(f"  {_q(pair[0])} -> {_q(pair[1])} [dir=both, "
                                 "color=\"#7e22ce:#ffffff:#7e22ce\", constraint=false, "
                                 f"label={_q(f'VXLAN tunnel VNI {iface.vni}')}];")
    return lines


def draw(lab: Lab, outdir: Path, basename: str) -> GraphFiles:
    """Scan the lab and write ``basename``.dot, .svg and .png into ``outdir``."""
    if shutil.which("dot") is None:
        raise CNMError("graphviz's 'dot' is not installed (apt-get install graphviz)")
    from netns_fixtures.lab.live import with_netem

    views = with_netem(scan(lab))
    outdir.mkdir(parents=True, exist_ok=True)
    dot = outdir / f"{basename}.dot"
    title = f"lab {lab.name}" + (f": {lab.topology.description}"
                                 if lab.topology.description else "")
    dot.write_text(to_dot(title, views))
    files = {}
    for fmt, extra in (("svg", []), ("png", ["-Gdpi=96"])):
        target = outdir / f"{basename}.{fmt}"
        result = subprocess.run(["dot", f"-T{fmt}", *extra, "-o", str(target), str(dot)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise CNMError(f"dot failed on {dot}: {result.stderr.strip()}")
        files[fmt] = target
    return GraphFiles(dot, files["svg"], files["png"], len(views),
                      sum(len(v.ifaces) for v in views))
