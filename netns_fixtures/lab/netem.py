"""Impaired links as typed values: delay, jitter, loss, rate, corruption, duplication and
reordering (tc netem), as Mininet's TCLink and containerlab's ``tools netem`` take them.

Who does what: ``parse`` turns what a user wrote (a lab file's ``netem:`` mapping, or the
flags of ``pycnm lab netem``) into a frozen ``Netem`` (whole microseconds, bits per second,
percentages as floats), or raises ``InvalidOption`` with one sentence naming the field, so
no text a user typed ever reaches the kernel. ``netns_fixtures.lab.tc`` puts a ``Netem``
on an interface and reads it back. Pure: nothing here touches the kernel.

netem shapes what an interface *sends*: a delay on both ends of a veth is paid once each
way, so a ping's round trip grows by twice the delay (Mininet's TCLink does the same).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnm.errors import InvalidOption

KEYS = ("delay", "jitter", "loss", "rate", "corrupt", "duplicate", "reorder")
MAX_DELAY_US = 60_000_000  # one minute: more is a typo, and netem holds every packet
MAX_RATE_BPS = (2**32 - 1) * 8  # netem's rate field is 32-bit bytes per second
MIN_RATE_BPS = 8
_TIME_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s)")
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%?")
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}
_RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}


@dataclass(frozen=True)
class Netem:
    """One interface's impairment; zero (or None for ``rate``) means "not impaired"."""

    delay_us: int = 0
    jitter_us: int = 0
    loss: float = 0.0  # percent
    rate_bps: int | None = None  # bits per second
    corrupt: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    def empty(self) -> bool:
        return self == Netem()

    def describe(self) -> str:
        """``delay 50ms jitter 5ms loss 1%``: tc's words, what the picture and show print."""
        parts = []
        if self.delay_us:
            parts.append(f"delay {_time(self.delay_us)}")
        if self.jitter_us:
            parts.append(f"jitter {_time(self.jitter_us)}")
        for name in ("loss", "corrupt", "duplicate", "reorder"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name} {value:g}%")
        if self.rate_bps is not None:
            parts.append(f"rate {_rate(self.rate_bps)}")
        return " ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        """What a lab file would say (``{"delay": "50ms", "loss": "1%"}``)."""
        out: dict[str, Any] = {}
        if self.delay_us:
            out["delay"] = _time(self.delay_us)
        if self.jitter_us:
            out["jitter"] = _time(self.jitter_us)
        for name in ("loss", "corrupt", "duplicate", "reorder"):
            if getattr(self, name):
                out[name] = f"{getattr(self, name):g}%"
        if self.rate_bps is not None:
            out["rate"] = _rate(self.rate_bps)
        return out


def _time(us: int) -> str:
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def _rate(bps: int) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        if bps % _RATE_UNITS[unit] == 0:
            return f"{bps // _RATE_UNITS[unit]}{unit}"
    return f"{bps}bit"


# --- parsing ---------------------------------------------------------------------------------


def parse_time(value: Any, field: str) -> int:
    """``50ms``, ``1.5ms``, ``200us``, ``1s`` -> whole microseconds."""
    text = _text(value, field, "a time such as 50ms")
    match = _TIME_RE.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidOption(f"netem {field} must be a time with a unit (us, ms or s), such "
                            f"as 50ms, not {text!r}")
    us = round(float(match[1]) * _TIME_UNITS[match[2]])
    if us > MAX_DELAY_US:
        raise InvalidOption(f"netem {field} must be at most 60s, not {text!r}")
    return us


def parse_percent(value: Any, field: str) -> float:
    """``1%``, ``0.5%`` or a bare number (percent) -> a float in [0, 100]."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        text = _text(value, field, "a percentage such as 1%")
        match = _PERCENT_RE.fullmatch(text.strip())
        if match is None:
            raise InvalidOption(f"netem {field} must be a percentage such as 1% or 0.5%, "
                                f"not {text!r}")
        number = float(match[1])
    if not 0 <= number <= 100:
        raise InvalidOption(f"netem {field} must be between 0% and 100%, not {value!r}")
    return number


def parse_rate(value: Any, field: str = "rate") -> int:
    """``10mbit``, ``500kbit``, ``1gbit``, ``64000bit`` -> bits per second."""
    text = _text(value, field, "a rate such as 10mbit")
    match = _RATE_RE.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidOption(f"netem {field} must be a rate with a unit (bit, kbit, mbit or "
                            f"gbit), such as 10mbit, not {text!r}")
    bps = round(float(match[1]) * _RATE_UNITS[match[2]])
    if not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:
        raise InvalidOption(f"netem {field} must be between 8bit and 34gbit, not {text!r}")
    return bps


def _text(value: Any, field: str, example: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidOption(f"netem {field} must be {example}, not {value!r}")
    return str(value)


def parse(data: Mapping[str, Any]) -> Netem:
    """A ``netem:`` mapping (lab file) or the CLI's flags -> ``Netem``; one sentence for
    the first problem. Keys left out (or None) are not impaired."""
    if not isinstance(data, Mapping):
        raise InvalidOption(f"netem must be a mapping such as {{delay: 50ms, loss: 1%}}, "
                            f"not {data!r}")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise InvalidOption(f"netem has no setting {unknown[0]!r} (known: {', '.join(KEYS)})")

    def given(key: str) -> bool:
        return data.get(key) is not None

    values: dict[str, Any] = {}
    if given("delay"):
        values["delay_us"] = parse_time(data["delay"], "delay")
    if given("jitter"):
        values["jitter_us"] = parse_time(data["jitter"], "jitter")
        if not values.get("delay_us"):
            raise InvalidOption("netem jitter varies the delay: give a delay as well")
    for key in ("loss", "corrupt", "duplicate", "reorder"):
        if given(key):
            values[key] = parse_percent(data[key], key)
    if values.get("reorder") and not values.get("delay_us"):
        raise InvalidOption("netem reorder sends some packets ahead of delayed ones: give a "
                            "delay as well")
    if given("rate"):
        values["rate_bps"] = parse_rate(data["rate"])
    return Netem(**values)
