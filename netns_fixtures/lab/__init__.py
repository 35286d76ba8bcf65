"""Labs: container-networking exercises built from topology files, in network namespaces.

Who does what (a topology is pure data; separate objects realise it, as in Mininet):

- ``model``: the topology as frozen dataclasses; ``validate``: plain data checked into one,
  every problem with its field's path;
- ``loader``: YAML in, errors out as ``file:line: field: problem``;
- ``realise``: ``up`` builds a topology step by step (each host runs its own pycnm
  Controller on its namespace), ``down`` removes a lab in any state; ``state`` keeps the
  write-ahead record that makes removal after a crash complete;
- ``handle``: ``Lab``, a handle on a lab that is up (exec, addresses, check, graph,
  capture, down), and ``find``/``up`` for front ends;
- ``check``: the reachability matrix; ``graph``: pictures of live kernel state;
  ``capture``: pcap with VXLAN decoded; ``kernel``: read-only ``ip -json`` queries;
- ``cli``: ``pycnm lab ...``; ``fixture``: the pytest ``lab`` fixture.

    from netns_fixtures.lab import up
    lab = up("labs/01-bridge/lab.yaml")
    print(lab.exec("c1", ["ip", "route"]).stdout)
    assert all(o.passed for o in lab.check())
    lab.down()
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab, find, up
    from netns_fixtures.lab.loader import LabFileError, load, load_text
    from netns_fixtures.lab.realise import down

__all__ = ["Lab", "LabFileError", "down", "find", "load", "load_text", "up"]
_HOMES = {"Lab": "handle", "find": "handle", "up": "handle", "LabFileError": "loader",
          "load": "loader", "load_text": "loader", "down": "realise"}


def __getattr__(name: str) -> Any:
    """The names above, imported on first use: ``pycnm lab down`` (and every other lab
    command) imports only the modules it needs, not the YAML loader and the whole
    package (a CLI call is short; see cnm/cli)."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"netns_fixtures.lab.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'netns_fixtures.lab' has no attribute {name!r}")
