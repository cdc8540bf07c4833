"""Snapshots encoded as wire messages, validated by the server's own protocol module."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from curvscope.probe import ViViTConfig, compute_snapshot
from curvscope.probe.loop.wire import WireError, encode_event, encode_snapshot
from curvscope.server.protocol import EventMessage, SnapshotMessage, parse_ingest_message


def _snapshot(config: ViViTConfig):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    return compute_snapshot(model, nn.CrossEntropyLoss(), x, y, config)


def _roundtrip(message: SnapshotMessage) -> SnapshotMessage:
    parsed = parse_ingest_message(json.loads(message.model_dump_json()))
    assert isinstance(parsed, SnapshotMessage)
    return parsed


def test_statistics_travel_without_per_sample_matrices() -> None:
    config = ViViTConfig(param_groups="layer", top_k=2)
    snap = _snapshot(config)
    msg = _roundtrip(
        encode_snapshot(snap, run="r-1", step=40, config=config, mode="in-loop", wall_time=12.5)
    )
    assert (msg.run, msg.step, msg.wall_time, msg.batch_size) == ("r-1", 40, 12.5, 6)
    assert msg.loss == pytest.approx(snap.loss, rel=0, abs=0)
    assert msg.config.mode == "in-loop" and msg.config.top_k == 2
    assert msg.config.param_groups == "layer"
    assert [g.name for g in msg.groups] == [g.name for g in snap.groups] == ["0", "2"]
    for wire, group in zip(msg.groups, snap.groups, strict=True):
        assert wire.num_params == sum(p.numel() for p in group.params)
        assert wire.eigvals == group.eigvals.tolist()
        assert wire.gamma == group.gammas.mean(0).tolist()
        assert wire.snr_gamma == group.snr_gamma.tolist()
        assert wire.snr_lambda == group.snr_lambda.tolist()
        assert wire.grad_overlap == group.grad_overlap.tolist()
        assert wire.grad_norm_sq == group.grad_norm_sq
        assert len(wire.gamma) == 2 <= len(wire.eigvals)
        assert wire.gammas is None and wire.lambdas is None


def test_per_sample_matrices_only_when_asked() -> None:
    config = ViViTConfig(per_sample=True, subsample=4)
    snap = _snapshot(config)
    msg = _roundtrip(encode_snapshot(snap, run="r", step=0, config=config, mode="held-out"))
    group, wire = snap.groups[0], msg.groups[0]
    assert wire.gammas == group.gammas.tolist() and len(wire.gammas) == 6
    assert wire.lambdas == group.lambdas.tolist() and len(wire.lambdas) == 4
    assert msg.config.subsample == [0, 1, 2, 3] and msg.config.mode == "held-out"


def test_training_loss_replaces_the_batch_loss() -> None:
    config = ViViTConfig()
    msg = encode_snapshot(
        _snapshot(config), run="r", step=3, config=config, mode="in-loop", loss=0.25
    )
    assert msg.loss == 0.25


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    config = ViViTConfig()
    snap = _snapshot(config)
    with pytest.raises(WireError, match="loss"):
        encode_snapshot(snap, run="r", step=0, config=config, mode="in-loop", loss=bad)
    snap.groups[0].snr_lambda[0] = bad
    with pytest.raises(WireError, match=r"snr_lambda\[0\]"):
        encode_snapshot(snap, run="r", step=0, config=config, mode="in-loop")


def test_invalid_key_is_a_wire_error() -> None:
    config = ViViTConfig()
    with pytest.raises(WireError):
        encode_snapshot(_snapshot(config), run="no spaces", step=0, config=config, mode="in-loop")


def test_event() -> None:
    event = encode_event("r", "x" * 20_000, step=5, level="warning", wall_time=1.0)
    parsed = parse_ingest_message(json.loads(event.model_dump_json()))
    assert isinstance(parsed, EventMessage)
    assert (parsed.step, parsed.level, len(parsed.message)) == (5, "warning", 10_000)


def test_hessian_fields_travel_only_when_computed() -> None:
    config = ViViTConfig(param_groups="layer", hessian_top_k=2, hessian_slq_probes=2, seed=0)
    snap = _snapshot(config)
    msg = _roundtrip(encode_snapshot(snap, run="r", step=2, config=config, mode="in-loop"))
    assert msg.config.hessian_top_k == 2
    for wire, group in zip(msg.groups, snap.groups, strict=True):
        assert group.hessian_eigvals is not None and group.hessian_density is not None
        assert wire.hessian_eigvals == group.hessian_eigvals.tolist()
        assert wire.hessian_min == group.hessian_min
        assert wire.hessian_density is not None
        assert wire.hessian_density.nodes == group.hessian_density[0].tolist()
        assert wire.hessian_density.weights == group.hessian_density[1].tolist()
    plain = ViViTConfig(param_groups="layer")
    msg = _roundtrip(
        encode_snapshot(_snapshot(plain), run="r", step=3, config=plain, mode="in-loop")
    )
    assert msg.config.hessian_top_k == 0
    assert all(g.hessian_eigvals is None and g.hessian_density is None for g in msg.groups)
    assert "hessian" not in msg.model_dump_json()


@pytest.mark.parametrize("field", ["hessian_eigvals", "hessian_min", "nodes"])
def test_non_finite_hessian_values_are_refused(field: str) -> None:
    config = ViViTConfig(hessian_top_k=2, hessian_slq_probes=1, seed=0)
    snap = _snapshot(config)
    group = snap.groups[0]
    assert group.hessian_eigvals is not None and group.hessian_density is not None
    if field == "hessian_eigvals":
        group.hessian_eigvals[1] = math.nan
    elif field == "hessian_min":
        group.hessian_min = math.inf
    else:
        group.hessian_density[0][0, 0] = -math.inf
    with pytest.raises(WireError, match=field):
        encode_snapshot(snap, run="r", step=0, config=config, mode="in-loop")


def test_gradient_noise_spectrum_travels_only_when_computed() -> None:
    config = ViViTConfig(param_groups="layer", gradient_spectrum=True)
    snap = _snapshot(config)
    msg = _roundtrip(encode_snapshot(snap, run="r", step=4, config=config, mode="in-loop"))
    assert msg.config.gradient_spectrum is True
    for wire, group in zip(msg.groups, snap.groups, strict=True):
        assert group.gradient_eigvals is not None and group.gradient_moment_eigvals is not None
        assert wire.gradient_eigvals == group.gradient_eigvals.tolist()
        assert wire.gradient_moment_eigvals == group.gradient_moment_eigvals.tolist()
        assert 0 < len(wire.gradient_eigvals) <= 5  # N - 1 for N = 6
    plain = ViViTConfig(param_groups="layer")
    msg = _roundtrip(
        encode_snapshot(_snapshot(plain), run="r", step=5, config=plain, mode="in-loop")
    )
    assert msg.config.gradient_spectrum is False
    assert "gradient_" not in msg.model_dump_json()


def test_non_finite_gradient_noise_is_refused() -> None:
    config = ViViTConfig(gradient_spectrum=True)
    snap = _snapshot(config)
    assert snap.groups[0].gradient_eigvals is not None
    snap.groups[0].gradient_eigvals[0] = math.inf
    with pytest.raises(WireError, match="gradient_eigvals"):
        encode_snapshot(snap, run="r", step=0, config=config, mode="in-loop")


def test_gradient_subsampling_travels_in_the_config() -> None:
    config = ViViTConfig(subsample_grad=[4, 1], per_sample=True)
    snap = _snapshot(config)
    msg = _roundtrip(encode_snapshot(snap, run="r", step=1, config=config, mode="in-loop"))
    assert msg.config.subsample_grad == [4, 1]
    (group,) = msg.groups
    assert group.gammas is not None and len(group.gammas) == 2  # the subset's rows
    assert group.gamma == snap.groups[0].gamma.tolist()  # the batch's γ_k
    plain = ViViTConfig()
    dumped = encode_snapshot(_snapshot(plain), run="r", step=2, config=plain, mode="in-loop")
    assert "subsample_grad" not in dumped.model_dump_json()


def test_sub_samplings_travel_as_the_indices_used() -> None:
    """Was: an int k travelled as 0..k-1 whatever the batch, so ``subsample_grad=2_000_000``
    put 2 M indices (16 MB) into every snapshot's config, above the server's message limit."""
    config = ViViTConfig(subsample=100, subsample_grad=2_000_000)
    msg = _roundtrip(
        encode_snapshot(_snapshot(config), run="r", step=0, config=config, mode="function")
    )
    assert msg.config.subsample == [0, 1, 2, 3, 4, 5]  # the batch of 6, all of it
    assert msg.config.subsample_grad is None  # the whole batch: no gradient sub-sampling
    config = ViViTConfig(subsample=4, subsample_grad=3)
    msg = _roundtrip(
        encode_snapshot(_snapshot(config), run="r", step=0, config=config, mode="function")
    )
    assert msg.config.subsample == [0, 1, 2, 3] and msg.config.subsample_grad == [0, 1, 2]
