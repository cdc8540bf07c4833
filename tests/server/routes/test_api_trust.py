"""The step trust in the run exports: per direction in the CSV, as sent in the JSON."""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient

from curvscope.server.routes.api import CSV_COLUMNS
from tests.helpers.messages import make_group, make_snapshot
from tests.server.routes.test_api import ingest


def test_export_carries_the_step_trust(client: TestClient) -> None:
    # K = 4 eigenvalues, statistics (and trust) for the selected directions 1 and 3
    trusted = make_group("g", k=4, k_stats=2) | {
        "directions": [1, 3],
        "trust_damping": [None, 0.5],
        "trust_bound": [-0.25, 0.125],
        "newton_reduction": 0.0625,
    }
    plain = make_group("h", k=1)
    ingest(
        client, make_snapshot("t", 1, config={"step_trust": True}) | {"groups": [trusted, plain]}
    )
    rows = list(csv.DictReader(io.StringIO(client.get("/api/runs/t/export?format=csv").text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert CSV_COLUMNS.index("backend") == 15  # earlier columns keep their positions
    g = [r for r in rows if r["group"] == "g"]
    assert [r["trust_damping"] for r in g] == ["", "", "", "0.5"]  # direction 1: no trust
    assert [r["trust_bound"] for r in g] == ["", "-0.25", "", "0.125"]
    assert [r["newton_reduction"] for r in g] == ["0.0625"] * 4
    h = [r for r in rows if r["group"] == "h"]
    assert [(r["trust_damping"], r["trust_bound"], r["newton_reduction"]) for r in h] == [
        ("", "", "")
    ]
    exported = client.get("/api/runs/t/export?format=json").json()
    group = exported["snapshots"][0]["groups"][0]
    assert group["trust_damping"] == [None, 0.5] and group["newton_reduction"] == 0.0625
