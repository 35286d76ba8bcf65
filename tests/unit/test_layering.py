"""The layering the design promises, checked by reading imports (no kernel needed).

- Only ``cnm/osl/`` and the drivers talk netlink: the rest of the core never imports
  pyroute2 (as libnetwork's core imports only driverapi, ipamapi, datastore and osl).
- No HTTP below the front ends: neither the core nor the drivers import Flask or the
  plugin server.
- The core knows drivers only through the registry the Controller loads them from.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def top(module: str) -> str:
    return module.split(".")[0]


def outside(folder: str, paths: list[Path]) -> list[Path]:
    return [p for p in paths if (REPO / folder) not in p.parents]


def test_the_import_reader_sees_module_and_function_level_imports() -> None:
    assert "pyroute2" in {top(m) for m in imported_modules(REPO / "cnm/osl/links.py")}
    # cnm/endpoint.py imports cnm.errors at the top and cnm.sandbox inside a method.
    seen = imported_modules(REPO / "cnm/endpoint.py")
    assert {"cnm.errors", "cnm.sandbox"} <= seen


@pytest.mark.parametrize("path", outside("cnm/osl", sources("cnm")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_core_outside_osl_never_imports_pyroute2(path: Path) -> None:
    assert "pyroute2" not in {top(m) for m in imported_modules(path)}


# The CLI is a front end (`pycnm plugin serve` starts the server), so it may.
@pytest.mark.parametrize("path", outside("cnm/cli", sources("cnm", "drivers")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_http_below_the_front_ends(path: Path) -> None:
    assert not {"flask", "werkzeug", "plugin_server"} & {top(m) for m in imported_modules(path)}


def test_the_core_reaches_drivers_only_through_the_registry() -> None:
    users = sorted(str(p.relative_to(REPO)) for p in sources("cnm")
                   if any(top(m) == "drivers" for m in imported_modules(p)))
    assert users == ["cnm/controller.py"]
