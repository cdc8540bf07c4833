"""Run identity against a real server: a run belongs to one probe instance; a second
process either resumes it explicitly or is refused, and nothing is silently merged."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from curvscope.probe import Probe, TransportOptions
from curvscope.probe.stream.upload import upload
from tests.helpers.server_process import ServerProcess, running_server

FAST = TransportOptions(queue_size=64, connect_timeout=2.0, ack_timeout=5.0, backoff_max=0.2)


def _train(probe: Probe, seed: int, steps: range) -> None:
    """The README's loop on a model and data drawn from ``seed``."""
    model = probe.model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    for step in steps:
        x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        loss = probe.loss_fn(model(x), y)
        with probe(step):
            loss.backward()
        opt.step()


def _probe(seed: int, run: str, url: str, spool: Path, resume: bool = False) -> Probe:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return Probe(
        model,
        nn.CrossEntropyLoss(),
        run=run,
        url=url,
        every=2,
        spool_dir=spool,
        transport_options=FAST,
        resume=resume,
    )


def _stored(server: ServerProcess, run: str) -> dict[int, float]:
    response = httpx.get(server.url(f"/api/runs/{run}/snapshots"), timeout=10)
    if response.status_code == 404:
        return {}
    return {s["step"]: s["loss"] for s in response.json()}


def _events(server: ServerProcess, run: str) -> list[dict]:
    return httpx.get(server.url(f"/api/runs/{run}/events"), timeout=10).json()


def test_a_second_process_on_the_same_run_name_is_refused_not_merged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The README snippet run twice with ``run="my-run"`` and different seeds: the first
    run's numbers stay; the second is refused by name, keeps its snapshots in its spool and
    says how to send them under another name (was: its snapshots acked and dropped)."""
    with running_server(tmp_path / "db.sqlite") as server:
        first = _probe(0, "my-run", server.url(), tmp_path / "spool1")
        _train(first, seed=0, steps=range(6))
        assert first.close().delivered == 3
        stored = _stored(server, "my-run")
        assert sorted(stored) == [0, 2, 4]

        second = _probe(1, "my-run", server.url(), tmp_path / "spool2")
        with caplog.at_level(logging.ERROR):
            _train(second, seed=1, steps=range(6))
            report = second.close(timeout=30)
        assert (report.delivered, report.spooled) == (0, 3)
        assert "belongs to another probe" in caplog.text and "resume=True" in caplog.text
        assert _stored(server, "my-run") == stored  # the first run's numbers, untouched

        sent = upload(tmp_path / "spool2", server.url(), run="my-run-2")
        assert (sent.acked, sent.rejected, sent.left) == (3, 0, 0)
        assert sorted(_stored(server, "my-run-2")) == [0, 2, 4]
        assert _stored(server, "my-run-2") != stored  # other seed, other numbers


def test_resume_continues_the_run_and_reports_repeated_steps(tmp_path: Path) -> None:
    """``resume=True`` (a restart from a checkpoint): new steps join the run; a step the run
    already has with other numbers is kept as stored, set aside here and reported as a
    warning event (was: acknowledged as a duplicate and dropped)."""
    with running_server(tmp_path / "db.sqlite") as server:
        first = _probe(0, "resumed", server.url(), tmp_path / "spool1")
        _train(first, seed=0, steps=range(6))
        first.close()
        before = _stored(server, "resumed")

        again = _probe(1, "resumed", server.url(), tmp_path / "spool2", resume=True)
        _train(again, seed=1, steps=range(4, 10))  # restarted from a checkpoint of step 4
        report = again.close(timeout=30)
        assert (report.delivered, report.rejected, report.spooled) == (3, 1, 0)
        after = _stored(server, "resumed")
        assert sorted(after) == [0, 2, 4, 6, 8]
        assert {s: after[s] for s in before} == before
        (rejected,) = (tmp_path / "spool2" / "rejected").iterdir()
        assert "0000000000000000004" in rejected.name
        warnings = [e for e in _events(server, "resumed") if e["level"] == "warning"]
        assert [e["step"] for e in warnings] == [4]
        assert "already has a different snapshot" in warnings[0]["message"]
