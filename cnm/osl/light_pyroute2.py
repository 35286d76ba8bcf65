"""pyroute2's message classes without the rest of pyroute2.

``import pyroute2.netlink.rtnl.ifinfmsg`` runs ``pyroute2/__init__.py`` first, and that
imports every public class of the library: NDB, IPDB, conntrack, ethtool, nl80211, plan9,
IPVS... ~85 ms on this machine (measured with ``python -X importtime``; docs/cli.md),
half of a CLI call, for the three message classes and the netlink socket a CLI attach
uses.

``install()`` registers the ``pyroute2`` package without running its ``__init__``:
importing a submodule (``pyroute2.netlink.rtnl.ifinfmsg``, ``pyroute2.iproute.linux``)
then costs only that submodule and what it imports itself. The first time anyone asks
the package for a name it has not got yet (``from pyroute2 import NDB``,
``pyroute2.IPRoute``, ``from pyroute2 import *``), ``__init__`` runs after all, in the
same module object, and the name is there, so code elsewhere in the process (tests,
labs) sees the whole library as usual. Does nothing if pyroute2 is imported already.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import types
from typing import Any

_lock = threading.RLock()


def install() -> None:
    """Make ``pyroute2`` importable cheaply (see the module's docstring)."""
    with _lock:
        if "pyroute2" in sys.modules:
            return
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.loader is None:
            return  # not installed: the first real import says so
        package = importlib.util.module_from_spec(spec)
        state = {"loaded": False, "loading": False}

        def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562
            if _is_submodule(package, name):  # from pyroute2 import netlink: just that
                return importlib.import_module(f"pyroute2.{name}")
            with _lock:
                if not state["loaded"] and not state["loading"] and (
                        not name.startswith("__") or name in ("__all__", "__version__")):
                    state["loading"] = True
                    try:
                        assert spec.loader is not None
                        spec.loader.exec_module(package)
                        state["loaded"] = True
                    finally:
                        state["loading"] = False
                if name in package.__dict__:
                    return package.__dict__[name]
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")

        package.__getattr__ = __getattr__  # type: ignore[method-assign]
        sys.modules["pyroute2"] = package


def _is_submodule(package: types.ModuleType, name: str) -> bool:
    if not name.isidentifier():
        return False
    return any(os.path.exists(os.path.join(folder, name, "__init__.py"))
               or os.path.exists(os.path.join(folder, f"{name}.py"))
               for folder in getattr(package, "__path__", ()))


def fully_loaded(package: types.ModuleType | None = None) -> bool:
    """Whether pyroute2's ``__init__`` has run in this process (for tests)."""
    package = package or sys.modules.get("pyroute2")
    return package is not None and "IPRoute" in package.__dict__
