"""The step-trust fields of the wire protocol: optional, shape-checked, omitted when absent."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from curvscope.server.protocol import GroupPayload, SnapshotMessage, parse_ingest_message
from tests.helpers.messages import make_group, make_snapshot

# make_group(): K = K' = 3 directions
TRUST = {
    "trust_damping": [0.01, None, 2.5],
    "trust_bound": [0.25, -0.125, 0.0],
    "newton_reduction": 0.75,
}


def test_trust_fields_travel_and_round_trip() -> None:
    message = parse_ingest_message(
        make_snapshot(config={"step_trust": True}) | {"groups": [make_group() | TRUST]}
    )
    assert isinstance(message, SnapshotMessage) and message.config.step_trust is True
    group = message.groups[0]
    assert group.trust_damping == [0.01, None, 2.5]
    assert group.trust_bound == [0.25, -0.125, 0.0]
    assert group.newton_reduction == 0.75
    dumped = json.loads(message.model_dump_json())
    assert dumped["groups"][0]["trust_damping"] == [0.01, None, 2.5]
    assert parse_ingest_message(dumped) == message


def test_without_trust_messages_serialise_as_before_the_fields() -> None:
    raw = make_snapshot()
    message = parse_ingest_message(raw)
    dumped = json.loads(message.model_dump_json())
    assert "step_trust" not in dumped["config"]
    assert set(dumped["groups"][0]) == set(raw["groups"][0]) | {"directions", "gammas", "lambdas"}
    # an explicit step_trust=False, or null trust fields, serialise the same way
    explicit = make_snapshot(config={"curvature": "exact", "step_trust": False})
    explicit["groups"] = [
        make_group() | {"trust_damping": None, "trust_bound": None, "newton_reduction": None}
    ]
    explicit["wall_time"] = raw["wall_time"]
    assert parse_ingest_message(explicit).model_dump_json() == message.model_dump_json()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"trust_damping": [0.1, None, 2.0]}, "come together"),
        ({"trust_bound": [0.1, -0.1, 2.0]}, "come together"),
        ({"trust_damping": [0.1, None], "trust_bound": [0.1, -0.1]}, "trust_damping has 2"),
        (
            {"trust_damping": [0.1, None, 0.2], "trust_bound": [0.1, -0.1, 0.2, 0.3]},
            "trust_bound has 4",
        ),
        (
            {"trust_damping": [0.1, 0.5, 0.2], "trust_bound": [0.1, -0.1, 0.2]},
            "null exactly where",
        ),
        (
            {"trust_damping": [None, None, 0.2], "trust_bound": [0.1, -0.1, 0.2]},
            "null exactly where",
        ),
        ({"trust_damping": [0.0, None, 0.2], "trust_bound": [0.1, -0.1, 0.2]}, "greater than 0"),
        (
            {"trust_damping": [float("inf"), None, 0.2], "trust_bound": [0.1, -0.1, 0.2]},
            "finite",
        ),
        ({"trust_damping": [0.1, None, 0.2], "trust_bound": [0.1, float("nan"), 0.2]}, "finite"),
        ({"newton_reduction": -0.5}, "greater than or equal to 0"),
        ({"newton_reduction": float("inf")}, "finite"),
    ],
)
def test_invalid_trust_fields_are_refused(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        GroupPayload.model_validate(make_group() | overrides)


def test_trust_follows_the_statistics_directions() -> None:
    # K = 5 eigenvalues, K' = 2 with statistics: the trust has K' entries
    group = make_group(k=5, k_stats=2) | {"trust_damping": [0.5, None], "trust_bound": [1.0, -1.0]}
    assert GroupPayload.model_validate(group).trust_bound == [1.0, -1.0]
    with pytest.raises(ValidationError, match="gamma has 2"):
        GroupPayload.model_validate(
            group | {"trust_damping": [0.5, None, 1.0], "trust_bound": [1.0, -1.0, 2.0]}
        )
