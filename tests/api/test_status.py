"""Status: Kubernetes-style conditions and the per-node entries agents write."""

from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import pytest

from dmvpn.api import (
    CONDITION_READY,
    Condition,
    DMVPNHub,
    DMVPNSpoke,
    DMVPNSpokeStatus,
    NodeStatus,
    dump_object,
    find_condition,
    parse_object,
    set_condition,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_status_as_written_by_operator_and_agents(spoke: dict[str, Any]) -> None:
    spoke["status"] = {
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllNodesRegistered",
                "message": "",
                "lastTransitionTime": "2024-05-01T14:00:00+02:00",
                "observedGeneration": 2,
            }
        ],
        "nodes": {
            "node-a": {
                "role": "spoke",
                "nbma": "192.0.2.11",
                "tunnelAddress": "10.255.0.11/24",
                "nhsUp": ["10.255.0.1"],
                "registered": True,
                "peers": 3,
                "shortcuts": 1,
                "sas": 4,
                "lastUpdate": "2024-05-01T12:00:05Z",
                "futureField": "ignored by older readers",
            }
        },
        "allocations": {"node-a": "10.255.0.11/24"},
        "selectedNodes": 1,
        "readyNodes": 1,
        "hubsUp": 1,
        "shortcuts": 1,
    }
    parsed = parse_object(spoke)
    assert isinstance(parsed, DMVPNSpoke)
    status = parsed.status
    ready = status.condition(CONDITION_READY)
    assert ready is not None and ready.last_transition_time == T0
    node = status.nodes["node-a"]
    assert node.nhs_up == [IPv4Address("10.255.0.1")] and node.registered and node.sas == 4
    assert status.allocations == {"node-a": IPv4Interface("10.255.0.11/24")}
    wire = dump_object(parsed)["status"]
    assert wire["conditions"][0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    assert wire["nodes"]["node-a"]["tunnelAddress"] == "10.255.0.11/24"
    assert "futureField" not in wire["nodes"]["node-a"]


def test_hub_status(hub: dict[str, Any]) -> None:
    hub["status"] = {"nbma": "192.0.2.1", "registeredSpokes": 12, "readyNodes": 1}
    parsed = parse_object(hub)
    assert isinstance(parsed, DMVPNHub)
    assert parsed.status.nbma == IPv4Address("192.0.2.1") and parsed.status.registered_spokes == 12


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"status": "true"}, "status.conditions[0].status: must be 'True', 'False' or 'Unknown'"),
        ({"reason": "not camel"}, "status.conditions[0].reason: must be a CamelCase reason"),
        ({"reason": ""}, "status.conditions[0].reason: must be a CamelCase reason"),
        (
            {"lastTransitionTime": "2024-05-01T12:00:00"},
            "status.conditions[0].lastTransitionTime: must have timezone info",
        ),
        ({"message": None}, "status.conditions[0].message: must be a valid string"),
    ],
)
def test_condition_mistakes(hub: dict[str, Any], problems: Any, condition: dict[str, Any], expected: str) -> None:
    good = {
        "type": "Ready",
        "status": "True",
        "reason": "Up",
        "message": "",
        "lastTransitionTime": "2024-05-01T12:00:00Z",
    }
    hub["status"] = {"conditions": [{**good, **condition}]}
    assert any(expected in line for line in problems(hub)), problems(hub)


def test_condition_types_are_unique(hub: dict[str, Any], problems: Any) -> None:
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Up",
        "message": "",
        "lastTransitionTime": "2024-05-01T12:00:00Z",
    }
    hub["status"] = {"conditions": [condition, condition]}
    assert "DMVPNHub/hub-1: status.conditions[1].type: duplicate condition type Ready" in problems(hub)


def test_node_status_errors_name_the_node(spoke: dict[str, Any], problems: Any) -> None:
    spoke["status"] = {
        "nodes": {"node.example.com": {"role": "spoke", "lastUpdate": "2024-05-01T12:00:00Z", "peers": -1}}
    }
    assert 'DMVPNSpoke/branches: status.nodes["node.example.com"].peers: must be 0..4294967295, got -1' in problems(
        spoke
    )


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    conditions = set_condition([], "Ready", "False", "NoHub", "waiting for hub-1", now=T0, observed_generation=1)
    assert conditions == [
        Condition(
            type="Ready",
            status="False",
            reason="NoHub",
            message="waiting for hub-1",
            last_transition_time=T0,
            observed_generation=1,
        )
    ]
    later = T0 + timedelta(minutes=1)
    still = set_condition(conditions, "Ready", "False", "NoHub", "still waiting", now=later, observed_generation=2)
    assert still[0].last_transition_time == T0 and still[0].message == "still waiting"
    assert still[0].observed_generation == 2
    flipped = set_condition(still, "Ready", "True", "Registered", "", now=later)
    assert flipped[0].last_transition_time == later and flipped[0].status == "True"
    both = set_condition(flipped, "Degraded", "False", "AllHubsUp", "", now=later)
    assert [c.type for c in both] == ["Ready", "Degraded"]
    assert find_condition(both, "Degraded") is both[1] and find_condition(both, "Accepted") is None


def test_timestamps_are_rfc3339_utc_seconds() -> None:
    tz = timezone(timedelta(hours=-5))
    status = NodeStatus(role="hub", last_update=datetime(2024, 5, 1, 7, 0, 0, 999_999, tzinfo=tz))
    assert status.model_dump(mode="json")["lastUpdate"] == "2024-05-01T12:00:00Z"


def test_empty_status_is_valid() -> None:
    assert DMVPNSpokeStatus().model_dump(mode="json", exclude_none=True) == {
        "conditions": [],
        "nodes": {},
        "selectedNodes": 0,
        "readyNodes": 0,
        "hubsUp": 0,
        "shortcuts": 0,
        "allocations": {},
    }
