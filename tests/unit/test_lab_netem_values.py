"""netem values as users write them (a lab file's ``netem:``, ``pycnm lab netem`` flags)
become typed numbers, or one sentence naming the field; what the kernel is told and what
``show`` prints come from those numbers only."""

from __future__ import annotations

import pytest

from cnm.errors import InvalidOption
from netns_fixtures.lab.netem import Netem, parse


def test_every_setting_is_parsed_into_numbers_and_back() -> None:
    netem = parse({"delay": "50ms", "jitter": "500us", "loss": "1%", "rate": "10mbit",
                   "corrupt": 0.5, "duplicate": "0.1%", "reorder": "25%"})
    assert netem == Netem(delay_us=50_000, jitter_us=500, loss=1.0, rate_bps=10_000_000,
                          corrupt=0.5, duplicate=0.1, reorder=25.0)
    assert netem.to_dict() == {"delay": "50ms", "jitter": "500us", "loss": "1%",
                               "rate": "10mbit", "corrupt": "0.5%", "duplicate": "0.1%",
                               "reorder": "25%"}
    assert parse(netem.to_dict()) == netem
    assert netem.describe() == ("delay 50ms jitter 500us loss 1% corrupt 0.5% duplicate 0.1% "
                                "reorder 25% rate 10mbit")


@pytest.mark.parametrize(("given", "expected"), [
    ({"delay": "1.5ms"}, Netem(delay_us=1500)),
    ({"delay": "2s"}, Netem(delay_us=2_000_000)),
    ({"delay": " 50 ms "}, Netem(delay_us=50_000)),
    ({"loss": 3}, Netem(loss=3.0)),
    ({"rate": "1gbit"}, Netem(rate_bps=10**9)),
    ({"rate": "64000bit"}, Netem(rate_bps=64_000)),
    ({"delay": None, "loss": None}, Netem()),
])
def test_units_and_empty_settings(given: dict, expected: Netem) -> None:
    assert parse(given) == expected
    assert parse({}).empty()


@pytest.mark.parametrize(("given", "message"), [
    ({"delay": "50"}, "netem delay must be a time with a unit (us, ms or s), such as 50ms, "
                      "not '50'"),
    ({"delay": "50ms; rm -rf /"}, "netem delay must be a time with a unit"),
    ({"delay": "61s"}, "netem delay must be at most 60s"),
    ({"delay": True}, "netem delay must be a time such as 50ms, not True"),
    ({"loss": "101%"}, "netem loss must be between 0% and 100%"),
    ({"loss": "-1%"}, "netem loss must be a percentage such as 1% or 0.5%"),
    ({"corrupt": "lots"}, "netem corrupt must be a percentage"),
    ({"rate": "10mbps"}, "netem rate must be a rate with a unit (bit, kbit, mbit or gbit)"),
    ({"rate": "40gbit"}, "netem rate must be between 8bit and 34gbit"),
    ({"jitter": "5ms"}, "netem jitter varies the delay: give a delay as well"),
    ({"reorder": "5%"}, "netem reorder sends some packets ahead of delayed ones: give a "
                        "delay as well"),
    ({"lose": "1%"}, "netem has no setting 'lose' (known: delay, jitter, loss, rate, corrupt, "
                     "duplicate, reorder)"),
])
def test_bad_values_are_one_sentence(given: dict, message: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        parse(given)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidOption, match="netem must be a mapping"):
        parse("delay 50ms")  # type: ignore[arg-type]
