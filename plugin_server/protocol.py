"""Reading Docker's requests at the boundary.

Every field a handler uses is read through ``Body``, which checks its type and shape and
otherwise raises ``BadRequest`` with one sentence naming the call, the field and what was
expected, so nothing half-valid reaches the Controller.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from cnm.driverapi import INTERNAL_PREFIX
from cnm.errors import InvalidOption
from cnm.inputs import address_text, shown

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_BODY = 1 << 20  # 1 MiB: Docker's largest real request is a few kB

# Docker's object ids are 64 hex digits; we accept any 12-64 letters and digits (they end
# up in store keys and, shortened, in interface names, so nothing else may appear).
_ID_RE = re.compile(r"[0-9A-Za-z]{12,64}")
_MAC_RE = re.compile(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}")


class BadRequest(InvalidOption):
    """A request Docker (or whoever wrote to the socket) should not have sent."""


def decode(raw: bytes, call: str) -> dict[str, Any]:
    """The body as a JSON object, whatever the headers say; empty or ``null`` is ``{}``."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{call}: the request body is not valid JSON ({_short(exc)})") from None
    except RecursionError:
        raise BadRequest(f"{call}: the request body nests JSON too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{call}: the request body must be a JSON object, "
                         f"not {type(value).__name__}")
    return value


def _name(field: str) -> str:
    """A field name for a message: as it is when printable and short (Docker's own names),
    else quoted (a name from the request must not add a line or a page)."""
    return field if field.isprintable() and 0 < len(field) <= 64 else shown(field)


def _not_json(name: str) -> Any:
    """NaN and Infinity: Python's json reads them, JSON has no such values."""
    raise ValueError(f"{name} is not a JSON value")


def _plain(text: str) -> str:
    """``text`` if only address characters make it up (no IPv6 zone: ipaddress would keep
    whatever follows a '%', newlines too), else a ValueError."""
    plain = address_text(text)
    if plain is None:
        raise ValueError(text)
    return plain


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]


class Body:
    """Typed access to one request's fields, with Docker's field names."""

    def __init__(self, call: str, data: Mapping[str, Any]) -> None:
        self.call = call
        self.data = data

    def _bad(self, field: str, wanted: str, value: Any) -> BadRequest:
        try:
            text = json.dumps(value)
        except (ValueError, RecursionError):
            text = type(value).__name__
        if len(text) > 80:
            text = text[:77] + "..."
        return BadRequest(f"{self.call}: field {_name(field)} must be {wanted}, not {text}")

    def id(self, field: str) -> str:
        """A required object id (``NetworkID``, ``EndpointID``)."""
        value = self.data.get(field)
        if value is None or value == "":
            raise BadRequest(f"{self.call}: the request has no {field}")
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            raise self._bad(field, "an id of 12 to 64 letters and digits", value)
        return value

    def string(self, field: str, required: bool = False) -> str:
        value = self.data.get(field)
        if value is None or value == "":
            if required:
                raise BadRequest(f"{self.call}: the request has no {field}")
            return ""
        if not isinstance(value, str):
            raise self._bad(field, "a string", value)
        return value

    def flag(self, field: str) -> bool:
        value = self.data.get(field)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(field, "true or false", value)
        return value

    def mapping(self, field: str) -> dict[str, Any]:
        value = self.data.get(field)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(field, "a JSON object", value)
        return value

    def objects(self, field: str) -> list[dict[str, Any]]:
        value = self.data.get(field)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._bad(field, "a list of JSON objects", value)
        return value

    def options(self, field: str) -> dict[str, Any]:
        """An ``Options`` object from Docker: keys pycnm sets itself (``pycnm.*``, such as
        the name of the interface to make inside the sandbox) are refused."""
        value = self.mapping(field)
        internal = sorted(str(k) for k in value if str(k).startswith(INTERNAL_PREFIX))
        if internal:
            raise BadRequest(f"{self.call}: {field} key {_name(internal[0])} is pycnm's own: "
                             "a request may not set it")
        return value

    def sub(self, field: str) -> Body:
        return Body(f"{self.call} ({_name(field)})", self.mapping(field))

    def items(self, field: str) -> list[Body]:
        return [Body(f"{self.call} ({field}[{i}])", v) for i, v in enumerate(self.objects(field))]

    # --- values with a shape ------------------------------------------------------------

    def cidr_network(self, field: str, required: bool = False) -> str:
        text = self.string(field, required)
        if not text:
            return ""
        try:
            return str(ipaddress.ip_network(_plain(text), strict=True))
        except ValueError:
            raise self._bad(field, "a subnet in CIDR form (e.g. 10.1.0.0/24)", text) from None

    def cidr_interface(self, field: str) -> str:
        """An address with its prefix length, as Docker sends them (``10.1.0.5/24``)."""
        text = self.string(field)
        if not text:
            return ""
        if "/" not in text:
            raise self._bad(field, "an address with its prefix length (e.g. 10.1.0.2/24)", text)
        try:
            return str(ipaddress.ip_interface(_plain(text)))
        except ValueError:
            raise self._bad(field, "an address with its prefix length (e.g. 10.1.0.2/24)",
                            text) from None

    def address(self, field: str) -> str:
        """A plain address; a prefix length, if Docker adds one, is dropped."""
        text = self.string(field)
        if not text:
            return ""
        try:
            return str(ipaddress.ip_address(_plain(text).split("/")[0]))
        except ValueError:
            raise self._bad(field, "an IP address", text) from None

    def mac(self, field: str) -> str:
        text = self.string(field)
        if text and not _MAC_RE.fullmatch(text):
            raise self._bad(field, "a MAC address (e.g. 02:42:ac:11:00:02)", text)
        return text.replace("-", ":").lower()

    def base64_mac(self, field: str) -> str:
        """Docker's ``com.docker.network.endpoint.macaddress``: the 6 bytes in base64."""
        value = self.data.get(field)
        if value in (None, ""):
            return ""
        try:
            raw = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not isinstance(value, str) or len(raw) != 6:
            raise self._bad(field, "a MAC address in base64 (e.g. AkKsEQAC)", value)
        return ":".join(f"{b:02x}" for b in raw)
