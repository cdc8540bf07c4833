"""Smoke run of ``benchmarks/noisy_quadratic.py`` and its maths on the noise-free problem."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "noisy_quadratic.py"
KEYS = {"median", "q25", "q75", "max"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_noisy_quadratic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_smoke_run_writes_the_table_json_and_figure(bench, tmp_path, capsys) -> None:
    out_json, out_html = tmp_path / "nq.json", tmp_path / "nq.html"
    argv = ["--seeds", "4", "--steps", "3", "--json", str(out_json), "--html", str(out_html)]
    bench.main(argv)
    table = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert set(data) == {"methods"}
    methods = data["methods"]
    assert set(methods) == set(bench.method_names())
    assert any("0.0001" in name for name in methods) and "bootstrap" in methods
    for name, stats in methods.items():
        assert name in table
        assert set(stats) == {"final_distance", "final_loss"}
        for summary in stats.values():
            assert set(summary) == KEYS
            assert summary["q25"] <= summary["median"] <= summary["q75"] <= summary["max"]
    html = out_html.read_text()
    assert "<html>" in html and "Plotly.newPlot" in html
    assert 'src="http' not in html  # self-contained: plotly.js is inlined
    assert "relative damping" in html


def test_noise_free_runs_follow_the_closed_form(bench, tmp_path) -> None:
    # without noise every method is a deterministic linear recursion per coordinate:
    # SGD multiplies θ_k by (1 − lr·2k²), damped Newton by δ/(2k² + δ); the bootstrap sees
    # identical samples and picks its smallest candidate, 1e-3
    steps = 3
    out = tmp_path / "exact.json"
    argv = ["--seeds", "2", "--steps", str(steps), "--sigma-gamma", "0", "--sigma-lambda", "0"]
    bench.main([*argv, "--json", str(out)])
    methods = json.loads(out.read_text())["methods"]

    def expected_distance(factor) -> float:
        return math.sqrt(sum((100.0 * factor(k) ** steps) ** 2 for k in range(1, 21)))

    cases = {
        "sgd": lambda k: 1 - bench.SGD_LR * 2 * k * k,
        "const δ=1": lambda k: 1.0 / (2 * k * k + 1.0),
        "bootstrap": lambda k: 1e-3 / (2 * k * k + 1e-3),
    }
    for name, factor in cases.items():
        got = methods[name]["final_distance"]
        assert got["median"] == pytest.approx(expected_distance(factor), rel=1e-9)
        assert got["max"] == pytest.approx(got["q25"], rel=1e-12)  # all seeds agree
