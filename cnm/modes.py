"""Sandbox network modes, as Docker's ``--network host|none|container:OTHER``.

- ``default``: a namespace of the sandbox's own that networks are attached to.
- ``host``: the host's own namespace (the one pycnm acts on as the host). Nothing in it is
  pycnm's: it cannot be attached to networks, and removing the sandbox removes only
  pycnm's record of it.
- ``none``: a namespace of its own with loopback only, never attached to a network.
- ``container:OTHER``: OTHER's namespace, interfaces, files and names. The namespace stays
  OTHER's: OTHER cannot be removed while others share it, and sharers are never attached
  to networks themselves (attach OTHER instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cnm.errors import InvalidOption

Kind = Literal["default", "host", "none", "container"]
KINDS: tuple[Kind, ...] = ("default", "host", "none", "container")
FORMS = "default, host, none or container:OTHER (OTHER: a sandbox's name or id)"
_MODE_RE = re.compile(r"(default|host|none)|container:([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")


@dataclass(frozen=True)
class Mode:
    kind: Kind = "default"
    other: str | None = None  # container mode: the sandbox named by the user

    def __str__(self) -> str:
        return f"container:{self.other}" if self.kind == "container" else self.kind

    @property
    def own_namespace(self) -> bool:
        """Whether the sandbox gets a namespace of its own (default and none)."""
        return self.kind in ("default", "none")


def parse(text: str | None) -> Mode:
    """``host`` -> Mode("host"); ``container:web`` -> Mode("container", "web")."""
    if text is None or text == "":
        return Mode()
    match = _MODE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidOption(f"sandbox mode {text!r} is invalid: use {FORMS}")
    if match.group(1):
        return Mode(match.group(1))  # type: ignore[arg-type]
    return Mode("container", match.group(2))
