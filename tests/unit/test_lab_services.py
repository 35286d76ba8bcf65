"""Lab files' services: checked with pycnm's own service checks, every problem named with
its field (no kernel needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from netns_fixtures.lab.model import TopologyError, validate

LAB6 = Path(__file__).resolve().parents[2] / "labs" / "06-load-balancing" / "lab.yaml"


def lab6() -> dict[str, Any]:
    return yaml.safe_load(LAB6.read_text())


def test_lab6_is_valid_and_carries_its_services() -> None:
    topo = validate(lab6())
    api = topo.service("api")
    assert api is not None and api.vip == "10.6.0.100" and api.publish == ("8080:80/tcp",)
    b1 = topo.sandbox("b1")
    assert b1 is not None and b1.networks[0].services == ("api", "sticky")
    spread = topo.expect[0]
    assert spread.dst.service == "api" and spread.spread == ("b1", "b2", "b3")
    assert spread.count == 300 and not spread.sticky and topo.expect[2].sticky


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["services"][0].update(name="tasks.api"), "services[0]: service name"),
    (lambda d: d["services"][0].update(ports=["80/icmp"]), "protocol"),
    (lambda d: d["services"][0].update(vip="10.9.9.9"), "services[0].vip: 10.9.9.9 is not in"),
    (lambda d: d["services"][0].update(network="nope"), "services[0].network: unknown network"),
    (lambda d: d["services"][0].update(balance="weighted"), "services[0].balance"),
    (lambda d: d["services"][0].update(mode="dnsrr"), "a dnsrr service has no virtual IP"),
    (lambda d: d["services"][0].update(publish=["8080:81"]), "not one of the service's"),
    (lambda d: d["services"][1].update(name="api"), "declared twice"),
    (lambda d: d["services"][0].update(name="c1"), "already a node's"),
    (lambda d: d["sandboxes"][0]["networks"][0].update(services=["nope"]),
     "sandboxes[0].networks[0].services[0]: 'nope' is not a service of network 'web'"),
    (lambda d: d["expect"][0].update(port=81), "expect[0].port: must be one of service"),
    (lambda d: d["expect"][0].update(spread=["outside"]), "is not a sandbox of this lab"),
    (lambda d: d["expect"][0].update(count=1), "expect[0].count"),
    (lambda d: d["expect"][0].update(listen="b1:80"), "has no 'listen'"),
    (lambda d: d["expect"][3].update(spread=["b1"]), "only a check whose 'to' is a service"),
])
def test_bad_services_are_named_with_their_field(change: Any, message: str) -> None:
    data = lab6()
    change(data)
    with pytest.raises(TopologyError) as info:
        validate(data)
    assert message in str(info.value), str(info.value)
