"""Bringing a lab up and taking it down: the object that realises a ``Topology``.

Who does what: ``up`` turns the pure data of a topology into kernel state as a queue of
small named steps (namespaces, links, routes, the cluster store and agents if an overlay
needs them, networks, sandboxes, then a wait until every VTEP knows its peers), printing
one progress line per step. Each host of kind ``host`` gets its own pycnm Controller,
acting on that host's namespace (``host_ns``) with the lab's own store: a SQLite file in
the lab's folder, or an etcd the lab starts on loopback (every pycnm process of the lab
keeps its sockets in the root namespace and reaches the hosts through netlink); with the
file's ``etcd: {tls, auth}``, over TLS with certificates from a CA the lab makes, and with
user ``pycnm``'s password in a file of the lab's (the store URL names the file). ``up``
notes each namespace in the lab's state file before making it, and each process as soon
as it has a pid (one whose pid never reached the file is still found by its lab-specific
command line); if a step fails, ``up`` removes everything and re-raises.

``down`` removes a lab whatever state it is in (up, half-built by a killed process, half
removed): it stops the lab's processes, asks pycnm to remove what it made (the orderly
way: leave, delete endpoints, delete networks) when the lab was complete, then deletes
every namespace the state file names or whose name carries the lab's own prefix, and
finally the lab's folder. Removing a lab that is not there is success.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from cnm import names
from cnm.errors import CNMError, Conflict, KernelError, KernelFeatureMissing
from cnm.osl.netns import (
    create_named_netns,
    delete_named_netns,
    list_named_netns,
    named_netns_path,
)
from netns_fixtures.lab import kernel, split, tc
from netns_fixtures.lab.model import (
    SWITCH_BRIDGE,
    Topology,
    TopologyError,
    host_netns,
    lab_netns_prefix,
    sandbox_name,
    validate,
)
from netns_fixtures.lab.state import (
    REMOVING,
    UP,
    LabState,
    is_ours,
    lab_dir,
    processes_with,
    stop,
)
from netns_fixtures.netns import Namespace, add_route, bridge, veth
from netns_fixtures.orphans import die_with_parent

Progress = Callable[[str], None]
OVERLAY_HOSTS_KEY = "global/drivers/overlay/hosts/"
AGENT_TIMEOUT = 20.0  # for an agent to register its host in etcd
LAB_DOMAIN = "lab.example"  # the names a lab host's own DNS server knows
LAB_DOMAIN_ADDRESS = "203.0.113.53"
PEERS_TIMEOUT = 20.0  # for every VTEP to learn the other hosts' endpoints
# From how many sandboxes in a row a lab builds them on two cores (netns_fixtures.lab.split):
# below, the fork and the second process's own store and netlink handles cost more than
# the second core saves.
SPLIT_MIN = 16
# The child's share: this process also makes every endpoint (~1.3 ms each, against ~8 ms
# for a sandbox), so the child takes more than half and both end together.
SPLIT_CHILD_SHARE = 0.58
ENDPOINT_TIMEOUT = 60.0  # for the other builder to make an endpoint a sandbox joins


def _quiet(_line: str) -> None:
    pass


class LabBuildError(CNMError):
    """A step of ``up`` failed; the lab was removed again."""


@dataclass
class Step:
    """One named piece of work; ``action`` returns a detail for the progress line.
    ``sandbox``: the spec of a sandbox that a run of its like may build on two cores
    (``_Builder.splittable``)."""

    text: str
    action: Callable[[], str | None]
    sandbox: Any = None


class _Builder:
    """Plans and runs the steps of one ``up``; holds the Controllers while it runs."""

    def __init__(self, topo: Topology, state: LabState, detach: bool) -> None:
        self.topo = topo
        self.state = state
        self.detach = detach
        self.controllers: dict[str, Any] = {}
        self.endpoint_ips: dict[tuple[str, str], list[str]] = {}  # (network, host) -> IPs
        self.vteps: dict[tuple[str, str], tuple[str, int]] = {}  # (network, host) -> (ns, vni)

    def ns(self, node: str) -> Namespace:
        return Namespace(self.topo.netns(node), create=False)

    def controller(self, host: str) -> Any:
        if host not in self.controllers:
            from cnm.controller import Controller

            ns = host_netns(self.topo.name, host)
            self.controllers[host] = Controller(self.state.store,
                                                local_store=self.state.local_store,
                                                host_ns=named_netns_path(ns), host_id=ns,
                                                reconcile=False)
        return self.controllers[host]

    def close(self) -> None:
        for ctl in self.controllers.values():
            with contextlib.suppress(Exception):
                ctl.close()
        self.controllers.clear()

    # --- the plan ---------------------------------------------------------------------

    def steps(self) -> list[Step]:
        topo = self.topo
        steps = [Step(f"{h.kind} {h.name}", partial(self.make_node, h.name, h.kind))
                 for h in topo.hosts]
        steps += [Step(f"link {lk.a.node}:{lk.a.iface} <-> {lk.b.node}:{lk.b.iface}",
                       partial(self.make_link, lk)) for lk in topo.links]
        impaired = [lk for lk in topo.links if lk.netem]
        if impaired:
            tc.require()  # one sentence, before anything is built, if the kernel lacks netem
        steps += [Step(f"netem on {lk.key()}", partial(tc.impair, topo, lk))
                  for lk in impaired]
        steps += [Step(f"route on {h.name}: {r.to} via {r.via}",
                       partial(self.make_route, h.name, r.to, r.via))
                  for h in topo.hosts for r in h.routes]
        if topo.needs_etcd():
            steps.append(Step("etcd", self.start_etcd))
        else:
            self.state.store = f"sqlite:///{self.state.dir}/store.db"
            self.state.save()
        if topo.uses_dns():
            steps += [Step(f"DNS server of {h.name}", partial(self.start_host_dns, h.name))
                      for h in topo.pycnm_hosts()]
        steps += [Step(f"agent on {h}", partial(self.start_agent, h))
                  for h in topo.agent_hosts()]
        steps += [Step(f"network {n.name} on {h}", partial(self.make_network, n, h))
                  for n in topo.networks for h in n.hosts]
        steps += [Step(f"service {svc.name} on {h}", partial(self.make_service, svc, h))
                  for svc in topo.services for h in self.service_hosts(svc)]
        steps += [Step(f"sandbox {s.name} on {s.host}", partial(self.make_sandbox, s),
                       sandbox=s if self.splittable(s) else None)
                  for s in sorted(topo.sandboxes, key=self._sharing_depth)]
        # Every sandbox's namespace noted ahead, in one write of the state (write-ahead
        # holds for each; one write per sandbox made a large lab's up quadratic).
        self.state.note_namespaces([names.sandbox_netns(sandbox_name(topo.name, s.name))
                                    for s in topo.sandboxes if s.own_namespace])
        if any(n.driver == "overlay" for n in topo.networks) and topo.sandboxes:
            steps.append(Step("overlay peers", self.wait_for_peers))
        return steps

    # --- underlay -----------------------------------------------------------------------

    def make_node(self, node: str, kind: str) -> str:
        name = self.topo.netns(node)
        self.state.note_namespace(name)
        # Made as pycnm makes a sandbox's (loopback up, forwarding set, in one thread's
        # visit): no `ip` processes, which a lab's start would otherwise wait for.
        create_named_netns(name, loopback_up=True,
                           forwarding=True if kind in ("host", "router") else None)
        ns = Namespace(name, create=False)
        if kind == "switch":
            bridge(ns, SWITCH_BRIDGE)
        what = {"host": "forwarding on, runs pycnm", "router": "forwarding on",
                "switch": f"bridge {SWITCH_BRIDGE}", "server": "an ordinary machine"}[kind]
        return f"namespace {name} ({what})"

    def make_link(self, link: Any) -> str:
        a, b = link.a, link.b
        veth(self.ns(a.node), a.iface, self.ns(b.node), b.iface, a.address, b.address,
             mtu=link.mtu)
        for end in (a, b):
            if end.mtu is not None:  # one end differs (a lab may be broken on purpose)
                self.ns(end.node).run(["ip", "link", "set", "dev", end.iface, "mtu",
                                       str(end.mtu)])
        for end in (a, b):
            if self.topo.host(end.node).kind == "switch":  # type: ignore[union-attr]
                subprocess.run(["ip", "-n", self.topo.netns(end.node), "link", "set", end.iface,
                                "master", SWITCH_BRIDGE], check=True, capture_output=True,
                               timeout=30)
                if link.vlan is not None or link.trunk:
                    return self.switch_vlans(end.node, end.iface, link.vlan, link.trunk)
        return f"veth {a.address or '(port)'} <-> {b.address or '(port)'}"

    def switch_vlans(self, switch: str, port: str, vlan: int | None,
                     trunk: tuple[int, ...]) -> str:
        """Make the switch VLAN-aware (bridge VLAN filtering) and ``port`` an access port
        of ``vlan`` (untagged) or a trunk of ``trunk`` (tagged), out of the default VLAN."""
        ns = self.topo.netns(switch)

        def run(*argv: str) -> None:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise KernelError(f"{' '.join(argv)}: {done.stderr.strip()}")

        filtering = subprocess.run(
            ["ip", "-n", ns, "link", "set", SWITCH_BRIDGE, "type", "bridge", "vlan_filtering",
             "1"], capture_output=True, text=True, timeout=30)
        if "not supported" in filtering.stderr:
            raise KernelFeatureMissing(
                f"this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING is "
                f"not set), so switch {switch} cannot have VLAN ports ({switch}:{port}); "
                "Debian's stock kernel has it")
        if filtering.returncode != 0:
            raise KernelError(f"VLAN filtering on switch {switch}: {filtering.stderr.strip()}")
        run("bridge", "-n", ns, "vlan", "del", "dev", port, "vid", "1")
        if vlan is not None:
            run("bridge", "-n", ns, "vlan", "add", "dev", port, "vid", str(vlan), "pvid",
                "untagged")
            return f"{switch}:{port} is an access port of VLAN {vlan}"
        for vid in trunk:
            run("bridge", "-n", ns, "vlan", "add", "dev", port, "vid", str(vid))
        return f"{switch}:{port} is a trunk of VLANs {', '.join(map(str, trunk))} (tagged)"

    def make_route(self, node: str, to: str, via: str) -> None:
        add_route(self.ns(node), to, via)

    # --- the cluster store and the agents (overlay labs) --------------------------------

    def start_etcd(self) -> str:
        import secrets

        from netns_fixtures.etcd import EtcdTLS, enable_auth, start_etcd, store_url

        spec = self.topo.etcd
        workdir = self.state.dir / "etcd"
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)  # keys and the password file: root's only
        tls = EtcdTLS.create(workdir / "pki") if spec.tls else None
        server = start_etcd(workdir, die_with_parent=not self.detach, tls=tls)
        assert server.proc is not None
        self.state.note_process("etcd", server.proc.pid, str(workdir / "data"))
        url, how = server.url, ["TLS with client certificates"] if tls else []
        if spec.auth:
            password = workdir / "pycnm.password"
            fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(18) + "\n")
            enable_auth(server, {"pycnm": (password.read_text().strip(), "/pycnm/")},
                        root_password=secrets.token_urlsafe(18))
            # The password stays in its file: the URL (in the state file and every agent's
            # command line) names the file only.
            url = store_url([server.endpoint], tls,
                            {"user": "pycnm", "password_file": str(password)})
            how.append("user/password auth")
        self.state.store = url
        self.state.save()
        extra = f", {' and '.join(how)}" if how else ""
        return f"{server.client_url} (pid {server.proc.pid}){extra}, the overlay's shared store"

    def start_agent(self, host: str) -> str:
        ns = host_netns(self.topo.name, host)
        local = ["--local-store", self.state.local_store] if self.state.local_store else []
        argv = [sys.executable, "-m", "cnm.cli", "--store", self.state.store, *local,
                "--host-ns", ns, "--host-id", ns, "-v", "agent"]
        log_path = self.state.dir / f"agent-{host}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv if self.detach else die_with_parent(argv),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=self.detach)
        self.state.note_process(f"agent {host}", proc.pid, f"--host-ns {ns} ")
        ctl = self.controller(host)
        deadline = time.monotonic() + AGENT_TIMEOUT
        # Registered for the overlay (in the cluster store), and (when the lab uses names)
        # serving DNS (its claim is a record of the host's own, in the local store):
        # sandboxes made next are then taken over as they are made.
        wanted = [(ctl.store, f"{OVERLAY_HOSTS_KEY}{ns}")]
        if self.topo.uses_dns():
            wanted.append((ctl.local_store, f"local/{ns}/dns/resolver"))
        while any(store.get(key) is None for store, key in wanted):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-1500:]
                raise LabBuildError(f"the pycnm agent of {host} did not start (see "
                                    f"{log_path}): {tail}")
            time.sleep(0.05)
        work = ["lease and watches, VTEP entries from the store"]
        if self.topo.uses_dns():
            work.append("the resolver at 127.0.0.11 of its sandboxes")
        return f"pycnm agent (pid {proc.pid}): {'; '.join(work)}"

    def start_host_dns(self, host: str) -> str:
        """The host's own DNS server, what its resolv.conf names: a dnsmasq on the host's
        loopback that knows ``*.lab.example`` and answers NXDOMAIN for every other name.
        pycnm's resolver forwards the names it does not know there (from the host's
        namespace), and no lab query ever leaves for a real server."""
        ns = host_netns(self.topo.name, host)
        folder = os.path.join("/etc/netns", ns)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "resolv.conf"), "w") as handle:
            handle.write("# the lab host's own DNS server (dnsmasq on its loopback)\n"
                         "nameserver 127.0.0.1\n")
        marker = str(self.state.dir / f"dns-{host}.pid")
        argv = ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
                f"--address=/{LAB_DOMAIN}/{LAB_DOMAIN_ADDRESS}", "--address=/#/",
                f"--pid-file={marker}", "--user=root"]
        proc = subprocess.Popen(argv if self.detach else die_with_parent(argv),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                start_new_session=self.detach)
        self.state.note_process(f"dns {host}", proc.pid, marker)
        return (f"dnsmasq (pid {proc.pid}) on {host}'s 127.0.0.1:53: *.{LAB_DOMAIN} is "
                f"{LAB_DOMAIN_ADDRESS}, every other name NXDOMAIN")

    # --- pycnm objects ----------------------------------------------------------------

    def make_network(self, net: Any, host: str) -> str:
        ctl = self.controller(host)
        network = ctl.new_network(net.name, net.driver, subnet=net.subnet, gateway=net.gateway,
                                  ip_range=net.ip_range, internal=net.internal,
                                  options=dict(net.options))
        pool = network.record.pools(4)[0]
        gateway = pool.gateway.split("/")[0] if pool.gateway else "none"
        return f"{net.driver} {pool.subnet}, gateway {gateway}"

    def service_hosts(self, svc: Any) -> tuple[str, ...]:
        """Where to create a service: an overlay's services are the cluster's (one host
        makes it, the others' agents follow); a bridge network is each host's own."""
        net = self.topo.network(svc.network)
        assert net is not None
        return net.hosts[:1] if net.driver == "overlay" else net.hosts

    def make_service(self, svc: Any, host: str) -> str:
        ctl = self.controller(host)
        service = ctl.new_service(svc.name, svc.network, list(svc.ports), vip=svc.vip,
                                  mode=svc.mode, balance=svc.balance,
                                  publish=list(svc.publish) or None)
        info = service.inspect()
        where = f"VIP {info['VirtualIP']}" if info["VirtualIP"] else "no VIP (dnsrr)"
        balancer = info["LoadBalancer"].get("Namespace")
        return f"{where}, ports {', '.join(info['Ports'])}" + (
            f", load balancer {balancer}" if balancer else "") + (
            f", published {', '.join(info['Publish'])}" if info["Publish"] else "")

    def _sharing_depth(self, spec: Any) -> int:
        """How many sandboxes stand between ``spec`` and a namespace of its own: an owner
        is made before those that share it."""
        depth = 0
        while spec.shares is not None:
            depth, spec = depth + 1, self.topo.sandbox(spec.shares)
        return depth

    def splittable(self, spec: Any) -> bool:
        """Whether ``spec`` may be built beside others of its kind in a second process
        (``make_sandboxes``): a namespace of its own, on bridge networks only, nothing
        that involves the host's agents (names, services) or the host's ports."""
        if spec.mode != "default" or spec.ports or self.topo.uses_dns() \
                or self.topo.agent_hosts():
            return False
        for att in spec.networks:
            net = self.topo.network(att.network)
            if net is None or net.driver != "bridge" or att.aliases or att.services:
                return False
        return True

    def make_sandboxes(self, specs: list[Any], report: Callable[[int, str | None], None]
                       ) -> None:
        """Build the sandboxes ``specs`` (all ``splittable``) on two cores
        (``split.run_split``): the endpoints are made here, one after the other as
        ``make_sandbox`` would make them (so each gets the address it would get there),
        under ids chosen before the fork, while the forked child starts on its share of
        the sandboxes (each of its joins waits for its endpoint); then this process builds
        the rest. The child takes the larger share, as this process makes the endpoints
        too. ``report(i, detail)`` in order."""
        ends = [[(att.network, names.new_id()) for att in spec.networks] for spec in specs]

        def make_endpoints() -> None:
            for position, spec in enumerate(specs):
                try:
                    ctl = self.controller(spec.host)
                    for att, (_, eid) in zip(spec.networks, ends[position], strict=True):
                        ctl.network(att.network).create_endpoint(spec.name, ip=att.ip,
                                                                 endpoint_id=eid)
                except BaseException as exc:
                    raise split.SplitFailed(position, exc) from exc

        jobs = [partial(self.make_sandbox, spec, made) for spec, made in zip(specs, ends,
                                                                             strict=True)]
        split.run_split(jobs, report, before_fork=self.close, child_done=self.close,
                        parent_first=make_endpoints, child_share=SPLIT_CHILD_SHARE)

    def make_sandbox(self, spec: Any, endpoints: list[tuple[str, str]] | None = None) -> str:
        """Build sandbox ``spec``: its namespace, an endpoint on each of its networks
        (``endpoints``: (network name, endpoint id) of ones ``make_sandboxes`` makes in
        the other process, waited for) joined to it, its routes."""
        from cnm.cli.endpoint import parse_publish
        from cnm.driverapi import OPT_PORTMAP
        from cnm.endpoint import Endpoint

        ctl = self.controller(spec.host)
        name = sandbox_name(self.topo.name, spec.name)
        if not spec.own_namespace:
            mode = spec.mode if spec.shares is None else \
                f"container:{sandbox_name(self.topo.name, spec.shares)}"
            ctl.new_sandbox(name, mode=mode)
            return f"mode {spec.mode}: uses the namespace of " + (
                spec.host if spec.mode == "host" else spec.shares)
        self.state.note_namespace(names.sandbox_netns(name))
        sandbox = ctl.new_sandbox(name, ip_forward=spec.ip_forward, mode=spec.mode)
        details = [names.sandbox_netns(name)] + (["loopback only"] if spec.mode == "none"
                                                  else [])
        for i, att in enumerate(spec.networks):
            options = {}
            if i == 0 and spec.ports:
                options[OPT_PORTMAP] = parse_publish(list(spec.ports))
            net = ctl.network(att.network)
            if endpoints:
                endpoint = Endpoint(ctl, net.id, endpoints[i][1])
                _wait_for_endpoint(ctl, endpoint)
            else:
                endpoint = net.create_endpoint(spec.name, ip=att.ip, options=options,
                                               aliases=list(att.aliases),
                                               services=list(att.services))
            ifname = endpoint.join(sandbox)
            address = endpoint.record.address or "no address"
            notes = ([f"also {', '.join(att.aliases)}"] if att.aliases else []) + (
                [f"backs {', '.join(att.services)}"] if att.services else [])
            details.append(f"{ifname} {address} on {att.network}" + (
                f" ({'; '.join(notes)})" if notes else ""))
            if net.record.driver == "overlay":
                info = endpoint.operational_info()
                self.vteps[(att.network, spec.host)] = (info["Namespace"], int(info["VNI"]))
            self.endpoint_ips.setdefault((att.network, spec.host), []).append(
                address.split("/")[0])
        for route in spec.routes:
            add_route(self.ns(spec.name), route.to, route.via)
            details.append(f"route {route.to} via {route.via}")
        if spec.ports:
            details.append(f"publishes {', '.join(spec.ports)}")
        if spec.ip_forward:
            details.append("forwards (a router)")
        return ", ".join(details)

    def wait_for_peers(self) -> str:
        """Until each host's VTEP has a neighbour entry for every endpoint on the other
        hosts (programmed by the agents from etcd), so a check right after ``up`` passes."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for (network, host), _ in self.vteps.items():
            wanted[(network, host)] = {ip for (n, h), ips in self.endpoint_ips.items()
                                       if n == network and h != host for ip in ips}
        deadline = time.monotonic() + PEERS_TIMEOUT
        while True:
            missing = {key: want - kernel.neighbour_ips(ns, f"{names.VXLAN_PREFIX}{vni}")
                       for key, want in wanted.items()
                       for ns, vni in [self.vteps[key]]}
            missing = {k: v for k, v in missing.items() if v}
            if not missing:
                break
            if time.monotonic() > deadline:
                text = "; ".join(f"{h} on {n} lacks {', '.join(sorted(ips))}"
                                 for (n, h), ips in missing.items())
                raise LabBuildError(f"VTEPs did not learn their peers in {PEERS_TIMEOUT:g} s: "
                                    f"{text}")
            time.sleep(0.1)
        return "; ".join(f"{h}'s VTEP ({self.vteps[(n, h)][0]}, VNI {self.vteps[(n, h)][1]}) "
                         f"knows {', '.join(sorted(ips)) or 'no remote endpoint'}"
                         for (n, h), ips in sorted(wanted.items()))


# --- up -------------------------------------------------------------------------------------


def leftovers(name: str) -> list[str]:
    """Namespaces that carry lab ``name``'s own prefix (ours alone: lab names have no '-')."""
    prefix = lab_netns_prefix(name)
    overlay = re.compile(rf"^(?:{names.OVERLAY_NETNS_PREFIX}\d+|"
                         rf"{names.LB_NETNS_PREFIX}[0-9A-Za-z]+)-{re.escape(prefix)}")
    return [ns for ns in list_named_netns() if ns.startswith(prefix) or overlay.match(ns)]


def up(topo: Topology, *, source: str | None = None, progress: Progress = print,
       detach: bool = True) -> LabState:
    """Build ``topo``; return its state. ``detach``: the lab's processes (etcd, agents)
    outlive this one (the CLI); otherwise they die with it (pytest).

    A lab already up with the same topology is left as it is; one left half-built by a
    killed process is removed first; on any failure everything is removed again."""
    existing = LabState.load(topo.name)
    if existing is not None and existing.status == UP and not _missing(existing):
        if existing.data == dict(topo.data):
            progress(f"lab {topo.name} is already up")
            return existing
        raise Conflict(f"lab {topo.name} is up with a different topology (from "
                       f"{existing.source}): run 'pycnm lab down {topo.name}' first")
    if existing is not None or leftovers(topo.name):
        progress(f"lab {topo.name}: removing what an earlier run left behind")
        down(topo.name, progress=progress)
    state = LabState(name=topo.name, source=source, data=dict(topo.data))
    state.save()
    builder = _Builder(topo, state, detach)
    started = time.monotonic()
    progress(f"lab {topo.name}: building from {source or 'a topology'} "
             f"(state in {state.dir})")
    steps: list[Step] = []
    index = 0

    def report(number: int, detail: str | None) -> None:
        progress(f"[{number:>2}/{len(steps)}] {steps[number - 1].text}" + (
            f": {detail}" if detail else ""))

    def report_from(first: int, position: int, detail: str | None) -> None:
        report(first + position, detail)

    try:
        steps = builder.steps()
        while index < len(steps):
            run = _sandbox_run(steps, index)
            if len(run) >= SPLIT_MIN:
                first = index + 1
                try:
                    builder.make_sandboxes(run, partial(report_from, first))
                except split.SplitFailed as failed:
                    index = first + failed.position  # the progress says which one failed
                    raise failed.error from None
                index += len(run)
                continue
            index += 1
            report(index, steps[index - 1].action())
        state.set_status(UP)
    except BaseException as exc:
        builder.close()
        what = steps[index - 1].text if 0 < index <= len(steps) else "planning"
        progress(f"lab {topo.name}: {what} failed ({_one_line(exc)}); removing what was built")
        with contextlib.suppress(Exception):
            down(topo.name, progress=_quiet)
        if isinstance(exc, CNMError | KeyboardInterrupt):
            raise
        raise LabBuildError(f"lab {topo.name}: {what} failed: {_one_line(exc)}") from exc
    finally:
        builder.close()
    progress(f"lab {topo.name} is up in {time.monotonic() - started:.1f} s: "
             f"{len(state.namespaces)} namespaces; try 'pycnm lab check {topo.name}'")
    return state


def _wait_for_endpoint(ctl: Any, endpoint: Any) -> None:
    """Until ``endpoint`` is in the store (made by the other builder process, in order:
    its record is written last). It comes in about a millisecond a sandbox; the bound
    only ends a wait on a process that died (whose failure stops this one anyway)."""
    deadline = time.monotonic() + ENDPOINT_TIMEOUT
    key = f"endpoints/{endpoint.network_id}/{endpoint.id}"
    while ctl.local.get(key) is None:
        if time.monotonic() > deadline:
            raise LabBuildError(f"endpoint {endpoint.id[:12]} was not made in "
                                f"{ENDPOINT_TIMEOUT:g} s")
        time.sleep(0.001)


def _sandbox_run(steps: list[Step], start: int) -> list[Any]:
    """The specs of the run of splittable sandbox steps that starts at ``start``."""
    end = start
    while end < len(steps) and steps[end].sandbox is not None:
        end += 1
    return [step.sandbox for step in steps[start:end]]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _missing(state: LabState) -> list[str]:
    present = set(list_named_netns())
    return [ns for ns in state.namespaces if ns not in present]


# --- down -----------------------------------------------------------------------------------


def down(name: str, *, progress: Progress = print) -> list[str]:
    """Remove lab ``name`` completely; return what was removed. Idempotent. ``name`` must
    be a lab's name (InvalidOption otherwise): it makes a path that is removed."""
    folder = lab_dir(name)
    state = LabState.load(name)
    found = leftovers(name)
    if state is None and not found and not folder.exists():
        progress(f"lab {name} is not up: nothing to remove")
        return []
    removed: list[str] = []
    topo = None
    if state is not None:
        with contextlib.suppress(TopologyError):
            topo = validate(state.data) if state.data else None
        was_up = state.status == UP
        state.set_status(REMOVING)
    else:
        was_up = False
        state = LabState(name=name, status=REMOVING)
    prefix = lab_netns_prefix(name)
    for proc in state.processes:
        if proc.role.startswith("agent") and stop(proc.pid, proc.marker):
            removed.append(f"process {proc.role} ({proc.pid})")
    for pid in processes_with(f"--host-ns {prefix}"):
        if stop(pid, f"--host-ns {prefix}"):
            removed.append(f"process agent ({pid})")
    if was_up and topo is not None:
        removed += _orderly(topo, state, progress)
    etcd_marker = str(folder / "etcd" / "data")
    for proc in state.processes:
        if proc.role.startswith("dns ") and stop(proc.pid, proc.marker):
            removed.append(f"process {proc.role} ({proc.pid})")
    for pid in processes_with(str(folder / "dns-")):
        if stop(pid, str(folder / "dns-")):
            removed.append(f"process dns ({pid})")
    for proc in state.processes:
        if proc.role == "etcd" and stop(proc.pid, proc.marker):
            removed.append(f"process etcd ({proc.pid})")
    for pid in processes_with(etcd_marker):
        if stop(pid, etcd_marker):
            removed.append(f"process etcd ({pid})")
    doomed = sorted(set(state.namespaces) | set(leftovers(name)), key=_removal_order)
    present = set(list_named_netns())
    for ns in doomed:
        delete_named_netns(ns)  # also its /etc/netns files; a namespace gone is success
        if ns in present:
            removed.append(f"namespace {ns}")
    shutil.rmtree(folder, ignore_errors=True)
    gone = [r.split(" ", 1)[1] for r in removed if r.startswith(("namespace ", "process "))]
    progress(f"lab {name} removed" + (f" ({', '.join(gone)})" if gone else ""))
    return removed


def _removal_order(ns: str) -> tuple[int, str]:
    """Sandboxes first, then overlay namespaces, then the hosts they hang off."""
    for rank, prefix in enumerate((names.SANDBOX_NETNS_PREFIX, names.LB_NETNS_PREFIX,
                                   names.OVERLAY_NETNS_PREFIX)):
        if ns.startswith(prefix):
            return rank, ns
    return 3, ns


def _orderly(topo: Topology, state: LabState, progress: Progress) -> list[str]:
    """pycnm removes what it made on each host (sandboxes leave and go, endpoints and
    networks are deleted): the CNM life cycle backwards. Failures fall through to the
    sweep by name."""
    from cnm.controller import Controller

    if topo.needs_etcd() and not any(p.role == "etcd" and is_ours(p.pid, p.marker)
                                     for p in state.processes):
        return []  # the store is gone: nothing to ask pycnm, sweep instead
    done = []
    for host in topo.pycnm_hosts():
        ns = host_netns(topo.name, host.name)
        if ns not in list_named_netns():
            continue
        opened = partial(Controller, state.store, local_store=state.local_store,
                         host_ns=named_netns_path(ns), host_id=ns, reconcile=False)
        try:
            with opened() as ctl:
                sandboxes = ctl.sandboxes()
                counts = (len(sandboxes), len(ctl.networks()))
                split_ids = [sb.id for sb in sandboxes] if len(sandboxes) >= SPLIT_MIN and \
                    all(_splittable_removal(topo, sb.record) for sb in sandboxes) else []
            if split_ids:  # then what is left (the networks) while the child closes
                _remove_sandboxes_split(opened, split_ids, then=lambda ctl: ctl.cleanup_all())
            else:
                with opened() as ctl:
                    ctl.cleanup_all()  # (what is left:) sandboxes, endpoints, networks
            done.append(f"pycnm objects on {host.name}")
            progress(f"host {host.name}: {counts[0]} sandboxes and {counts[1]} networks "
                     "removed through pycnm")
        except Exception as exc:  # noqa: BLE001 - the sweep below removes the rest
            progress(f"host {host.name}: orderly removal stopped ({_one_line(exc)}); "
                     "sweeping by name")
    return done


def _splittable_removal(topo: Topology, record: Any) -> bool:
    """Whether a sandbox may be removed beside others in a second process: one of the
    lab's with a namespace of its own (nobody shares it) in a lab whose hosts run no
    agent (no names, no overlay, no services to follow)."""
    return record.mode == "default" and not record.shared_by and not topo.agent_hosts() \
        and not topo.uses_dns() and not topo.services


def _remove_sandboxes_split(opened: Callable[[], Any], ids: list[str],
                            then: Callable[[Any], None]) -> None:
    """Delete the sandboxes ``ids`` on two cores (``split.run_split``): each process with
    a Controller of its own, opened after the fork and closed (its queued link deletions
    done) before it ends; then ``then(controller)`` here, with this process's Controller,
    while the child is still closing (its link deletions, ~20-50 ms of kernel work, and
    the bridge's removal ~40 ms, run side by side). A failure (of a removal or of
    ``then``) leaves the rest to the sweep."""
    from cnm.sandbox import Sandbox

    mine: list[Any] = []

    def controller() -> Any:
        if not mine:
            mine.append(opened())
        return mine[0]

    def close() -> None:
        while mine:
            mine.pop().close()

    def remove(sid: str) -> None:
        Sandbox(controller(), sid).delete()

    try:
        split.run_split([partial(remove, sid) for sid in ids], lambda _i, _detail: None,
                        before_fork=close, child_done=close,
                        parent_last=lambda: then(controller()))
    finally:
        close()
