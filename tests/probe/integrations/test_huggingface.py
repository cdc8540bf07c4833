"""CurvscopeTrainer on tiny randomly initialised transformers models (CPU, no downloads).

A GPT-2 language model and a BERT sequence classifier are built from configs and trained
for a few steps, with the probe streaming to a real server, next to the plain Trainer from
the same initialisation: the training must be the plain Trainer's, and each stored
snapshot that of :func:`compute_snapshot` on the batch and the parameters of its step.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from curvscope.probe import ConfigError, Snapshot, TransportOptions, ViViTConfig, compute_snapshot
from curvscope.probe.huggingface import CurvscopeTrainer
from curvscope.probe.stream.spool import Spool
from curvscope.server.protocol import EventMessage, SnapshotMessage
from tests.helpers.server_process import ServerProcess, running_server

FAST = {"transport_options": TransportOptions(connect_timeout=2.0, ack_timeout=5.0)}
LM_CONFIG = ViViTConfig(curvature="mc", mc_samples=1, seed=0)  # exact: T·V columns a sequence

hf_logging.set_verbosity_error()


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def _token_data(n: int, length: int = 16) -> list[dict[str, Tensor]]:
    """Random sequences; each has a different number of leading ignored labels, so that
    micro-batches differ in their number of target tokens."""
    gen = torch.Generator().manual_seed(0)
    data = []
    for i in range(n):
        ids = torch.randint(0, 64, (length,), generator=gen)
        labels = ids.clone()
        labels[: i % 7] = -100
        data.append({"input_ids": ids, "labels": labels})
    return data


def _class_data(n: int, length: int = 12) -> list[dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(0, 64, (length,), generator=gen),
            "attention_mask": torch.ones(length, dtype=torch.long),
            "labels": torch.randint(0, 3, (), generator=gen),
        }
        for _ in range(n)
    ]


def _args(out: Path, steps: int, accumulate: int = 1, **kwargs: Any) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        **kwargs,
    )


class RecordingTrainer(CurvscopeTrainer):
    """Keeps a copy of the model and the batch of each step's first micro-batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: dict[int, tuple[nn.Module, dict[str, Tensor]]] = {}

    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        step = self.state.global_step
        if step not in self.recorded:
            batch = {k: v.clone() for k, v in inputs.items()}
            net = copy.deepcopy(self.model)
            net.__dict__.pop("forward", None)  # not accelerate's autocast wrapper (bf16=True)
            self.recorded[step] = (net, batch)
        return super().training_step(model, inputs, *args, **kwargs)


def _stored(server: ServerProcess, run: str, what: str = "snapshots") -> list[dict[str, Any]]:
    response = httpx.get(server.url(f"/api/runs/{run}/{what}"), timeout=10)
    response.raise_for_status()
    return response.json()


def _losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _assert_matches(stored: dict[str, Any], expected: Snapshot, rtol: float) -> None:
    assert stored["loss"] == pytest.approx(expected.loss, rel=rtol)
    (group,) = stored["groups"]
    (ref,) = expected.groups
    eigvals = torch.tensor(group["eigvals"], dtype=torch.float64)
    assert eigvals.shape == ref.eigvals.shape
    assert torch.allclose(eigvals, ref.eigvals.double(), rtol=rtol, atol=rtol * 1e-3)
    assert group["grad_norm_sq"] == pytest.approx(ref.grad_norm_sq, rel=rtol)
    for field in ("gamma", "snr_gamma", "snr_lambda", "grad_overlap"):
        assert all(map(torch.isfinite, torch.tensor(group[field]))), field


def _lm_reference(model: nn.Module, batch: dict[str, Tensor], config: ViViTConfig) -> Snapshot:
    """The probe's loss by hand: next-token cross-entropy on [N, V, T-1]."""
    return compute_snapshot(
        model,
        nn.CrossEntropyLoss(ignore_index=-100),
        batch,
        batch["labels"][:, 1:],
        config,
        outputs=lambda out: out.logits[:, :-1].transpose(1, 2),
    )


def _class_reference(model: nn.Module, batch: dict[str, Tensor], config: ViViTConfig) -> Snapshot:
    """The probe's loss by hand: cross-entropy on the [N, C] logits."""
    return compute_snapshot(
        model, nn.CrossEntropyLoss(), batch, batch["labels"], config, outputs=lambda o: o.logits
    )


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gpt2_trains_as_the_plain_trainer_and_streams_its_snapshots(
    tmp_path: Path, accumulate: int
) -> None:
    """Causal LM: snapshots at steps 0 and 2 of 4 (every=2), each that of the step's first
    micro-batch (the func backend: GPT-2's Conv1D is an addmm); the training equals the
    plain Trainer's, also under gradient accumulation, where transformers normalises the
    loss by the target tokens of all micro-batches (num_items_in_batch)."""
    data = _token_data(32)
    plain_model, model = _gpt2(), _gpt2()
    plain = Trainer(
        model=plain_model, args=_args(tmp_path / "plain", 4, accumulate), train_dataset=data
    )
    plain.train()
    with running_server(tmp_path / "db.sqlite") as server:
        trainer = RecordingTrainer(
            model=model,
            args=_args(tmp_path / "probed", 4, accumulate),
            train_dataset=data,
            curvscope_run="gpt2",
            curvscope_url=server.url(),
            curvscope_every=2,
            curvscope_config=LM_CONFIG,
            curvscope_probe_kwargs=FAST,
        )
        trainer.train()
        snaps = _stored(server, "gpt2")
        events = _stored(server, "gpt2", "events")
    assert trainer.curvscope_run_url == f"{server.url()}/runs/gpt2"
    assert [s["step"] for s in snaps] == [0, 2]
    assert [e for e in events if e["level"] != "info"] == []
    for snap in snaps:
        assert snap["config"]["backend"] == "func" and snap["config"]["mode"] == "in-loop"
        assert snap["batch_size"] == 4
        net, batch = trainer.recorded[snap["step"]]
        _assert_matches(snap, _lm_reference(net, batch, LM_CONFIG), 1e-4)
    assert _losses(trainer) == pytest.approx(_losses(plain), rel=1e-5)
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_bert_classifier_is_bit_for_bit_the_plain_trainer(tmp_path: Path) -> None:
    """Sequence classification with gradient accumulation: the probe's CrossEntropyLoss on
    [N, C] is BERT's own loss (r = 1), so the training, and the evaluation, are bit for
    bit the plain Trainer's; the exact curvature of each measured step matches."""
    data, held_out = _class_data(24), _class_data(8)
    plain_model, model = _bert(), _bert()
    plain = Trainer(
        model=plain_model,
        args=_args(tmp_path / "plain", 3, accumulate=2),
        train_dataset=data,
        eval_dataset=held_out,
    )
    plain.train()
    config = ViViTConfig()
    with running_server(tmp_path / "db.sqlite") as server:
        trainer = RecordingTrainer(
            model=model,
            args=_args(tmp_path / "probed", 3, accumulate=2),
            train_dataset=data,
            eval_dataset=held_out,
            curvscope_run="bert",
            curvscope_url=server.url(),
            curvscope_every=1,
            curvscope_config=config,
            curvscope_probe_kwargs=FAST,
        )
        trainer.train()
        snaps = _stored(server, "bert")
    assert [s["step"] for s in snaps] == [0, 1, 2]
    for snap in snaps:
        net, batch = trainer.recorded[snap["step"]]
        expected = _class_reference(net, batch, config)
        _assert_matches(snap, expected, 1e-4)
        assert len(snap["groups"][0]["eigvals"]) <= 4 * 3  # N·C
        # the Trainer's optimizer (optim="sgd", constant 0.5), read through accelerate's wrapper
        optimizer = snap["optimizer"]
        assert (optimizer["name"], optimizer["lr"], optimizer["adaptive"]) == ("SGD", 0.5, False)
    assert _losses(trainer) == _losses(plain)
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert trainer.evaluate()["eval_loss"] == plain.evaluate()["eval_loss"]


def test_bf16_steps_are_measured_in_float32(tmp_path: Path) -> None:
    """bf16=True (accelerate's autocast inside the model's forward): the snapshot is that
    of the float32 pass on the same batch and parameters."""
    data = _class_data(8)
    config = ViViTConfig()
    trainer = RecordingTrainer(
        model=_bert(),
        args=_args(tmp_path / "probed", 2, bf16=True),
        train_dataset=data,
        curvscope_run="bert-bf16",
        curvscope_url=None,
        curvscope_every=1,
        curvscope_config=config,
        curvscope_probe_kwargs={"spool_dir": tmp_path / "spool"},
    )
    trainer.train()
    spool = Spool(tmp_path / "spool")
    sent = [spool.read(p) for p in spool.pending()]
    snaps = sorted((m for m in sent if isinstance(m, SnapshotMessage)), key=lambda m: m.step)
    events = [m for m in sent if isinstance(m, EventMessage)]
    assert [s.step for s in snaps] == [0, 1]
    assert any("float32" in e.message for e in events)
    for snap in snaps:
        net, batch = trainer.recorded[snap.step]
        expected = _class_reference(net, batch, config)
        _assert_matches(snap.model_dump(), expected, 1e-4)


def test_a_trainer_loss_that_is_not_the_probes_is_refused(tmp_path: Path) -> None:
    """A compute_loss_func adding a penalty: the Trainer's loss is not r × the probe's,
    which the first measured step finds out (rather than training on another loss)."""

    def penalised(outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        logits = outputs.logits
        return nn.functional.cross_entropy(logits, labels) + 0.1 * logits.pow(2).mean()

    trainer = CurvscopeTrainer(
        model=_bert(),
        args=_args(tmp_path / "probed", 2),
        train_dataset=_class_data(8),
        compute_loss_func=penalised,
        curvscope_run="penalised",
        curvscope_url=None,
        curvscope_probe_kwargs={"spool_dir": tmp_path / "spool"},
    )
    with pytest.raises(ConfigError, match="not a multiple of the probe's loss"):
        trainer.train()
    assert trainer.curvscope_probe is not None
    assert not any(m._forward_pre_hooks for m in trainer.model.modules())  # closed
