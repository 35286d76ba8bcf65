"""Stored records (cnm/records.py): their dicts are what ``dataclasses.asdict`` gives, deep
copies that a caller may change without changing the record, and ``from_dict`` ignores
fields a newer pycnm added."""

from __future__ import annotations

import dataclasses
from typing import Any

from cnm.records import EndpointRecord, NetworkRecord, PoolRecord, SandboxRecord


def _records() -> list[Any]:
    return [
        EndpointRecord(id="e" * 64, name="web", network_id="n" * 64, address="10.0.0.2/24",
                       options={"com.docker.network.portmap": [{"Proto": 6, "Port": 80}],
                                "nested": {"a": [1, {"b": (2, 3)}]}},
                       static_routes=[{"destination": "10.1.0.0/16", "type": 0,
                                       "next_hop": None}],
                       aliases=["www"], services=["s1"]),
        SandboxRecord(id="s" * 64, name="box", netns_path="/run/netns/box",
                      interfaces={"eth0": "n/e"}, extra_hosts={"db": "10.0.0.9"},
                      dns_servers=["1.1.1.1"], shared_by=["x"]),
        NetworkRecord(id="n" * 64, name="net", driver="bridge", options={"mtu": 1400},
                      ipv4_pools=[{"subnet": "10.0.0.0/24", "aux_addresses": {"r": "10.0.0.3"}}],
                      labels={"k": "v"}),
        PoolRecord(subnet="10.0.0.0/24", aux_addresses={"r": "10.0.0.3"}),
    ]


def test_to_dict_is_what_asdict_gives() -> None:
    for record in _records():
        assert record.to_dict() == dataclasses.asdict(record)


def test_changing_the_dict_leaves_the_record_alone() -> None:
    for record in _records():
        before = dataclasses.asdict(record)
        data = record.to_dict()
        for value in data.values():
            if isinstance(value, dict):
                value["added"] = 1
                for inner in value.values():
                    if isinstance(inner, list):
                        inner.append("added")
            elif isinstance(value, list):
                value.append("added")
                for inner in value:
                    if isinstance(inner, dict):
                        inner["added"] = 1
        assert dataclasses.asdict(record) == before


def test_from_dict_round_trips_and_ignores_unknown_fields() -> None:
    for record in _records():
        data = {**record.to_dict(), "field_of_a_newer_pycnm": True}
        assert type(record).from_dict(data) == record
