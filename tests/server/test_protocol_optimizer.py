"""The optional ``optimizer`` field of snapshots (``Probe(optimizer=...)``): validated,
round-tripped, and left out of the JSON when absent, so older snapshots and their replays
serialise exactly as before the field existed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from curvscope.server.protocol import OptimizerPayload, SnapshotMessage, parse_ingest_message
from tests.helpers.messages import make_snapshot

SGD = {"name": "SGD", "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False}


def test_without_an_optimizer_the_json_has_the_fields_it_always_had() -> None:
    message = parse_ingest_message(make_snapshot())
    assert isinstance(message, SnapshotMessage) and message.optimizer is None
    assert list(json.loads(message.model_dump_json())) == [
        "type",
        "schema_version",
        "run",
        "step",
        "user_step",
        "instance",
        "resume",
        "wall_time",
        "loss",
        "batch_size",
        "config",
        "groups",
    ]
    text = message.model_dump_json()
    assert parse_ingest_message(json.loads(text)).model_dump_json() == text


def test_the_optimizer_round_trips() -> None:
    message = parse_ingest_message(make_snapshot(optimizer=SGD | {"adaptive": False}))
    assert isinstance(message, SnapshotMessage)
    assert message.optimizer == OptimizerPayload(name="SGD", lr=0.1, momentum=0.9)
    dumped = json.loads(message.model_dump_json())
    assert dumped["optimizer"] == SGD | {"adaptive": False}
    assert parse_ingest_message(dumped) == message
    adam = parse_ingest_message(
        make_snapshot(optimizer={"name": "Adam", "lr": 1e-3, "adaptive": True})
    )
    assert adam.optimizer is not None and adam.optimizer.momentum is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("optimizer", "fragment"),
    [
        ({"name": "SGD", "lr": -0.1}, "greater than or equal to 0"),
        ({"name": "SGD", "lr": float("nan")}, "finite"),
        ({"name": "SGD", "lr": float("inf")}, "finite"),
        ({"name": "SGD", "lr": "0.1"}, "valid number"),
        ({"name": "SGD"}, "lr"),
        ({"name": "", "lr": 0.1}, "at least 1 character"),
        ({"name": "SGD", "lr": 0.1, "momentum": -0.5}, "greater than or equal to 0"),
        ({"name": "SGD", "lr": 0.1, "dampening": 1.5}, "less than or equal to 1"),
        ({"name": "SGD", "lr": 0.1, "betas": [0.9, 0.99]}, "Extra inputs"),
    ],
)
def test_invalid_optimizers_are_refused(optimizer: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        parse_ingest_message(make_snapshot(optimizer=optimizer))
