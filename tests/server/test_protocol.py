"""Wire protocol: top-k shapes (K' <= K), sentinels, finiteness, key."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from curvscope.server.protocol import (
    DEFAULT_BACKEND,
    SNR_UNDEFINED,
    ConfigPayload,
    GroupPayload,
    SnapshotMessage,
    parse_ingest_message,
)
from tests.helpers.messages import make_group, make_snapshot


@pytest.mark.parametrize(("k", "k_stats"), [(3, 3), (5, 2), (4, 0), (0, 0)])
def test_statistics_may_cover_the_top_k_directions_only(k: int, k_stats: int) -> None:
    group = GroupPayload.model_validate(make_group(k=k, k_stats=k_stats))
    assert len(group.eigvals) == k and len(group.gamma) == k_stats


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"gamma": [1.0] * 4}, "more than the K = 3 eigvals"),
        ({"grad_overlap": [1.0] * 2}, "grad_overlap has 2 entries, gamma has 3"),
        ({"lambdas": [[1.0, 2.0, 3.0], [1.0]]}, "lambdas row 1 has 1 entries"),
        ({"eigvals": [1.0, -2.0, 0.5]}, "eigvals must be positive"),
        ({"snr_gamma": [1.0, -0.5, 2.0]}, "snr_gamma must be >= 0 or the sentinel"),
        ({"directions": [0, 1]}, "directions has 2 entries, gamma has 3"),
        ({"directions": [0, 2, 1]}, "ascending distinct indices"),
        ({"directions": [0, 1, 3]}, "ascending distinct indices into the 3 eigvals"),
    ],
)
def test_invalid_groups_say_what_is_wrong(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        GroupPayload.model_validate(make_group() | overrides)


def test_the_snr_sentinel_is_allowed() -> None:
    group = GroupPayload.model_validate(make_group() | {"snr_lambda": [SNR_UNDEFINED] * 3})
    assert group.snr_lambda == [-1.0, -1.0, -1.0]


def test_parse_dispatches_on_type_and_exposes_the_key() -> None:
    message = parse_ingest_message(make_snapshot("r", 4))
    assert isinstance(message, SnapshotMessage) and message.key == ("r", 4)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_numbers_must_be_finite(value: float) -> None:
    with pytest.raises(ValidationError):
        parse_ingest_message(make_snapshot() | {"loss": value})


def test_backend_is_backpack_unless_the_probe_says_otherwise() -> None:
    assert ConfigPayload().backend == DEFAULT_BACKEND == "backpack"
    old = parse_ingest_message(make_snapshot(config={"curvature": "exact"}))
    assert old.config.backend == "backpack"  # a probe from before the field
    new = parse_ingest_message(make_snapshot(config={"backend": "func"}))
    assert new.config.backend == "func"
    assert '"backend":"func"' in new.model_dump_json()
    with pytest.raises(ValidationError, match="backend"):
        parse_ingest_message(make_snapshot(config={"backend": "jax"}))


def test_selected_directions_travel_as_indices() -> None:
    group = GroupPayload.model_validate(make_group(k=5, k_stats=2) | {"directions": [3, 4]})
    assert group.directions == [3, 4]
    assert GroupPayload.model_validate(make_group(k=5, k_stats=2)).directions is None


HESSIAN = {
    "hessian_eigvals": [2.5, 0.5, -0.25],
    "hessian_min": -1.5,
    "hessian_density": {"nodes": [[-1.5, 0.0, 2.5], [-1.0, 1.0, 2.0]], "weights": [[0.2] * 3] * 2},
}


def test_hessian_fields_travel_and_round_trip() -> None:
    message = parse_ingest_message(
        make_snapshot(config={"hessian_top_k": 3}) | {"groups": [make_group() | HESSIAN]}
    )
    assert isinstance(message, SnapshotMessage) and message.config.hessian_top_k == 3
    group = message.groups[0]
    assert group.hessian_eigvals == [2.5, 0.5, -0.25] and group.hessian_min == -1.5
    assert group.hessian_density is not None
    assert group.hessian_density.nodes == [[-1.5, 0.0, 2.5], [-1.0, 1.0, 2.0]]
    again = parse_ingest_message(json.loads(message.model_dump_json()))
    assert again == message


def test_without_hessian_payloads_serialise_as_before_the_fields() -> None:
    message = parse_ingest_message(make_snapshot())
    dumped = json.loads(message.model_dump_json())
    assert "hessian_top_k" not in dumped["config"]
    assert all(not any(k.startswith("hessian") for k in g) for g in dumped["groups"])
    assert message.config.hessian_top_k == 0 and message.groups[0].hessian_eigvals is None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"hessian_eigvals": [1.0, 2.0]}, "hessian_eigvals must be descending"),
        ({"hessian_eigvals": [1.0, float("nan")]}, "finite"),
        ({"hessian_min": float("inf")}, "finite"),
        (
            {"hessian_density": {"nodes": [[1.0, 2.0]], "weights": [[0.5]]}},
            "nodes and weights must have equal shapes",
        ),
        (
            {"hessian_density": {"nodes": [[1.0]], "weights": [[0.5], [0.5]]}},
            "nodes and weights must have equal shapes",
        ),
        (
            {"hessian_density": {"nodes": [[1.0, 2.0]], "weights": [[1.5, -0.5]]}},
            "greater than or equal to 0",
        ),
        ({"hessian_density": {"nodes": [[1.0]]}}, "weights"),
    ],
)
def test_invalid_hessian_fields_are_refused(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        GroupPayload.model_validate(make_group() | overrides)


def test_hessian_top_k_must_not_be_negative() -> None:
    with pytest.raises(ValidationError, match="hessian_top_k"):
        parse_ingest_message(make_snapshot(config={"hessian_top_k": -1}))


def test_gradient_noise_fields_round_trip_and_are_omitted_when_absent() -> None:
    noise = {"gradient_eigvals": [3.0, 1.0, 0.5], "gradient_moment_eigvals": [4.0, 1.0, 0.5, 0.1]}
    message = parse_ingest_message(
        make_snapshot(config={"gradient_spectrum": True}) | {"groups": [make_group() | noise]}
    )
    assert isinstance(message, SnapshotMessage) and message.config.gradient_spectrum is True
    assert message.groups[0].gradient_eigvals == [3.0, 1.0, 0.5]
    assert parse_ingest_message(json.loads(message.model_dump_json())) == message
    plain = json.loads(parse_ingest_message(make_snapshot()).model_dump_json())
    assert "gradient_spectrum" not in plain["config"]
    assert not any(k.startswith("gradient_") for g in plain["groups"] for k in g)


@pytest.mark.parametrize("field", ["gradient_eigvals", "gradient_moment_eigvals"])
@pytest.mark.parametrize(
    "values", [[1.0, 2.0], [1.0, -0.5], [1.0, float("nan")]], ids=["ascending", "negative", "nan"]
)
def test_invalid_gradient_noise_is_refused(field: str, values: list[float]) -> None:
    with pytest.raises(ValidationError, match=f"{field}|finite"):
        GroupPayload.model_validate(make_group() | {field: values})
