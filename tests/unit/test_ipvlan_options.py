"""Ipvlan option parsing (no kernel): Docker's names, aliases, defaults, refusals."""

from __future__ import annotations

import pytest

from cnm.errors import InvalidOption
from drivers.ipvlan.options import parse
from drivers.parent import split_vlan


def test_defaults_and_aliases() -> None:
    o = parse({"parent": "eth1"})
    assert (o.parent, o.mode, o.flag, o.mtu, o.internal) == ("eth1", "l2", "bridge", None,
                                                              False)
    o = parse({"parent": "eth1.20", "mode": "L3S", "flag": "private", "mtu": "1400"})
    assert (o.mode, o.flag, o.mtu, o.mode_key) == ("l3s", "private", 1400, "l3s private")
    assert split_vlan(o.parent) == ("eth1", 20)


@pytest.mark.parametrize(("options", "mentions"), [
    ({}, "-o parent=IFACE"),
    ({"parent": "eth1", "ipvlan_mode": "l4"}, "l2, l3, l3s"),
    ({"parent": "eth1", "ipvlan_flag": "open"}, "bridge, private, vepa"),
    ({"parent": "pcv-0123456789a"}, "interface pycnm made"),
    ({"parent": "eth1", "macvlan_mode": "bridge"}, "macvlan_mode"),
    ({"parent": "eth1.5000"}, "between 1 and 4094"),
])
def test_bad_options_are_one_sentence(options: dict[str, str], mentions: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        o = parse(options)
        split_vlan(o.parent)
    assert mentions in str(caught.value) and "\n" not in str(caught.value)
