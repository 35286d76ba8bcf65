"""A handle on a lab that is up: run things in its nodes, find addresses, check, draw,
capture, take it down.

Who does what: ``Lab`` joins a ``Topology`` (what was asked for) to its ``LabState``
(what was made); every question about addresses is answered from the live kernel. ``find``
turns what a user typed (a lab name, a topology file, or nothing when one lab is up) into a
``Lab``. The CLI and the pytest fixture both go through here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnm.errors import NotFound
from netns_fixtures.lab import kernel, realise
from netns_fixtures.lab.loader import load
from netns_fixtures.lab.model import Target, Topology, TopologyError, validate
from netns_fixtures.lab.state import UP, LabState, all_states
from netns_fixtures.netns import Namespace


class Lab:
    """A lab as built: its topology, its state, and the live kernel behind them."""

    def __init__(self, topology: Topology, state: LabState) -> None:
        self.topology = topology
        self.state = state

    def __repr__(self) -> str:
        return f"<Lab {self.name} ({self.state.status})>"

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def store_url(self) -> str:
        return self.state.store

    def netns(self, node: str) -> str:
        """The namespace of ``node`` (``pclab-<lab>-<node>`` or ``pcsb-<lab>-<node>``)."""
        try:
            return self.topology.netns(node)
        except KeyError as exc:
            raise NotFound(str(exc.args[0])) from None

    def namespace(self, node: str) -> Namespace:
        return Namespace(self.netns(node), create=False)

    def exec(self, node: str, argv: Sequence[str], *, check: bool = False,
             timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (a list, never a shell string) inside ``node``; text output."""
        return self.namespace(node).run(list(argv), check=check, timeout=timeout, **kwargs)

    def address(self, target: Target | str) -> str | None:
        """The live IPv4 address of a node (a sandbox's eth0, a host's first addressed
        link), of ``NODE:IFACE``, or a bare address as it is."""
        if isinstance(target, str):
            node, _, part = target.partition(":")
            target = Target(node, part or None)
        if target.service is not None:
            return self.service_vip(target.service)
        if target.node is None:
            return target.address
        iface = target.iface or self.default_iface(target.node)
        if iface is None:
            return None
        return kernel.first_ipv4(self.netns(target.node), iface)

    def service_vip(self, name: str) -> str | None:
        """A service's virtual IP, from the store (None: it has none)."""
        spec = self.topology.service(name)
        net = self.topology.network(spec.network) if spec is not None else None
        if spec is None or net is None:
            raise NotFound(f"lab {self.name} has no service {name!r}")
        with self.controller(net.hosts[0]) as ctl:
            vip = ctl.service(name, spec.network).vip
        return str(vip) if vip is not None else None

    def default_iface(self, node: str) -> str | None:
        spec = self.topology.sandbox(node)
        if spec is not None:
            if spec.mode == "host":
                return self.default_iface(spec.host)
            if spec.shares is not None:
                return self.default_iface(spec.shares)
            return "eth0" if spec.mode == "default" else None
        ends = [e for e in self.topology.ends_of(node) if e.address]
        return ends[0].iface if ends else None

    def iface(self, node: str, iface: str) -> tuple[str, str]:
        """(namespace path, interface) of ``NODE``'s ``IFACE``, both checked: the node is
        one of the lab's, the name a valid interface name."""
        from cnm import names
        from cnm.errors import InvalidOption
        from cnm.osl.netns import named_netns_path

        ns = self.netns(node)
        if not names.is_valid_ifname(iface):
            raise InvalidOption(f"{iface!r} is not an interface name (1-15 letters, digits, "
                                "'_', '.', ':' or '-')")
        return named_netns_path(ns), iface

    def netem(self, node: str, iface: str, netem: Any) -> None:
        """Impair ``node``'s ``iface`` with a ``Netem`` (an empty one removes it)."""
        from netns_fixtures.lab import tc

        where = self.iface(node, iface)
        tc.require()
        try:
            tc.apply(*where, netem)
        except NotFound:
            raise NotFound(f"{node} has no interface {iface!r}") from None

    def netem_reset(self, node: str, iface: str) -> bool:
        from netns_fixtures.lab import tc

        where = self.iface(node, iface)
        try:
            return tc.reset(*where)
        except NotFound:
            raise NotFound(f"{node} has no interface {iface!r}") from None

    def netem_all(self) -> dict[str, dict[str, Any]]:
        """node -> interface -> ``Netem``, for every impaired interface, live."""
        from cnm.osl.netns import list_named_netns, named_netns_path
        from netns_fixtures.lab import tc

        present = set(list_named_netns())
        found: dict[str, dict[str, Any]] = {}
        for node in self.topology.node_names():
            spec = self.topology.sandbox(node)
            if spec is not None and not spec.own_namespace:
                continue  # the host's or another sandbox's namespace: listed under it
            if self.netns(node) in present:
                impaired = tc.read_all(named_netns_path(self.netns(node)))
                if impaired:
                    found[node] = impaired
        return found

    def set_link(self, node: str, iface: str, up: bool) -> None:
        """Bring ``node``'s ``iface`` down or up (a veth's peer then loses its carrier)."""
        from netns_fixtures.lab import linkstate

        where = self.iface(node, iface)
        try:
            linkstate.set_state(*where, up)
        except NotFound:
            raise NotFound(f"{node} has no interface {iface!r}") from None

    def problems(self) -> list[str]:
        """What is broken in the lab's interfaces right now, one sentence each."""
        from netns_fixtures.lab import linkstate

        return linkstate.problems(self.topology)

    def controller(self, host: str) -> Any:
        """A pycnm Controller for lab host ``host`` (close it, or use it in ``with``)."""
        from cnm.controller import Controller
        from netns_fixtures.lab.model import host_netns

        ns = host_netns(self.name, host)
        return Controller(self.store_url, local_store=self.state.local_store,
                          host_ns=f"/run/netns/{ns}", host_id=ns, reconcile=False)

    def check(self, progress: Any = None) -> list[Any]:
        from netns_fixtures.lab.check import run_checks

        return run_checks(self, progress=progress)

    def graph(self, outdir: str | Path = ".", basename: str | None = None) -> Any:
        from netns_fixtures.lab.graph import draw

        return draw(self, Path(outdir), basename or self.name)

    def capture(self, node: str, iface: str, **kwargs: Any) -> Any:
        from netns_fixtures.lab.capture import Capture

        self.iface(node, iface)  # an interface name, never a path (it names the pcap file)
        return Capture(self.netns(node), iface, **kwargs)

    def apply(self, path: str | Path, *, dry_run: bool = False, progress: Any = print,
              detach: bool = True) -> Any:
        """Change this running lab in place to match the topology file at ``path``; with
        ``dry_run`` only return the plan (see ``netns_fixtures.lab.apply``)."""
        from netns_fixtures.lab import apply as changes

        the_plan = changes.plan(self, load(path), detach=detach)
        if dry_run:
            the_plan.builder.close()
            return the_plan
        self.state.source = str(Path(path).absolute())  # readable from any folder
        changes.run(self, the_plan, progress)
        return the_plan

    def inspect(self, networks: bool = True) -> dict[str, Any]:
        """Nodes, interfaces, addresses, links and networks, read from the kernel now."""
        from netns_fixtures.lab.live import snapshot

        return snapshot(self, networks=networks)

    def down(self, progress: Any = None) -> list[str]:
        return realise.down(self.name, progress=progress or realise._quiet)


def up(path: str | Path, *, name: str | None = None, progress: Any = print,
       detach: bool = True) -> Lab:
    """Load the topology at ``path`` (renamed to ``name`` if given) and bring it up."""
    topology = load(path)
    if name is not None and name != topology.name:
        topology = topology.with_name(name)
    state = realise.up(topology, source=str(Path(path).absolute()), progress=progress,
                       detach=detach)
    return Lab(topology, state)


def find(what: str | None) -> Lab:
    """The lab named ``what``, or built from the file ``what``; with None, the only lab
    that is up."""
    if what is None:
        running = [s for s in all_states() if s.status == UP]
        if len(running) == 1:
            return _from_state(running[0])
        if not running:
            raise NotFound("no lab is up: start one with 'pycnm lab up FILE'")
        raise NotFound(f"several labs are up ({', '.join(s.name for s in running)}): "
                       "say which")
    name = what
    if Path(what).is_file():
        name = load(what).name
    state = LabState.load(name)
    if state is None:
        raise NotFound(f"lab {name} is not up (labs up: "
                       f"{', '.join(s.name for s in all_states()) or 'none'})")
    return _from_state(state)


def _from_state(state: LabState) -> Lab:
    try:
        topology = validate(state.data)
    except TopologyError as exc:
        raise NotFound(f"lab {state.name} has no usable topology in its state "
                       f"({exc}); remove it with 'pycnm lab down {state.name}'") from None
    return Lab(topology, state)
