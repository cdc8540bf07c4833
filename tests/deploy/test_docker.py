"""The Dockerfile and docker-compose.yml: linted, validated, and their commands run here.

No Docker engine runs on our machines, so the images are not built; instead hadolint lints
the Dockerfile, docker-compose validates the compose file, and the exact commands and
environment the images use are run in the test venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.server_process import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_paths()["scripts"])
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is missing in CI (.ci/run installs it)")
        pytest.skip(f"{name} not installed here")
    return found


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _check(tool: str, *args: str) -> None:
    """Run ``tool`` on the repository's files; it must exit 0."""
    proc = subprocess.run(
        [_tool(tool), *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_passes() -> None:
    _check("hadolint", "--failure-threshold", "info", "Dockerfile")


def test_compose_file_is_valid() -> None:
    _check("docker-compose", "-f", "docker-compose.yml", "config", "-q")


def test_compose_wiring() -> None:
    services = _compose()["services"]
    server, demo = services["server"], services["demo"]
    assert server["ports"] == ["127.0.0.1:8000:8000"]
    assert any(v.startswith("curvscope-data:") for v in server["volumes"])
    assert demo["depends_on"]["server"]["condition"] == "service_healthy"
    assert "http://server:8000" in demo["command"]
    assert (server["build"]["target"], demo["build"]["target"]) == ("server", "demo")


def test_server_image_runs_as_non_root_without_torch() -> None:
    stage = _dockerfile().split("FROM base AS server", 1)[1]
    assert re.search(r"^USER 10001:10001$", stage, re.M)
    assert 'pip install ".[server,postgres]"' in stage and "torch" not in stage.split("USER")[
        0
    ].replace('! python -c "import torch"', "")
    assert "HEALTHCHECK" in stage and "/api/health" in stage


def _healthcheck_code() -> str:
    match = re.search(r'HEALTHCHECK.*?CMD \["python", "-c", "(.*?)"\]', _dockerfile(), re.S)
    assert match, "no python HEALTHCHECK in the Dockerfile"
    return match.group(1)


def test_server_command_and_healthcheck_work(tmp_path: Path) -> None:
    """``curvscope serve`` configured by the image's environment, probed by its HEALTHCHECK."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        CURVSCOPE_HOST="127.0.0.1",  # the image says 0.0.0.0; tests stay on loopback
        CURVSCOPE_PORT=str(port),
        CURVSCOPE_DB=str(tmp_path / "data" / "curvscope.sqlite"),
        CURVSCOPE_TOKEN="",  # what docker-compose passes when no token is set
        CURVSCOPE_INSECURE="true",
    )
    (tmp_path / "data").mkdir()
    server = ServerProcess(db=tmp_path / "data" / "curvscope.sqlite", port=port, env=env)
    server.command = lambda: [sys.executable, "-m", "curvscope.server.cli", "serve"]  # type: ignore[method-assign]
    server.start()
    try:
        code = _healthcheck_code().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
        assert httpx.get(server.url("/api/runs")).status_code == 200
    finally:
        server.stop()
    assert (tmp_path / "data" / "curvscope.sqlite").exists()


def test_public_bind_without_token_is_refused(tmp_path: Path) -> None:
    env = dict(os.environ, CURVSCOPE_HOST="0.0.0.0", CURVSCOPE_DB=str(tmp_path / "x.sqlite"))
    env.pop("CURVSCOPE_TOKEN", None)
    env.pop("CURVSCOPE_INSECURE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "curvscope.server.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "without a token" in proc.stdout + proc.stderr


def test_team_profile_wiring() -> None:
    """``--profile team``: PostgreSQL (health-checked, on a volume), two server workers on
    it, and a demo streaming into them; the default services stay on SQLite."""
    services = _compose()["services"]
    assert "profiles" not in services["server"] and "profiles" not in services["demo"]
    postgres, server, demo = services["postgres"], services["team-server"], services["team-demo"]
    assert all(s["profiles"] == ["team"] for s in (postgres, server, demo))
    assert any(v.startswith("curvscope-pg:") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = server["environment"]
    assert (
        env["CURVSCOPE_DB"].startswith("postgresql://") and "@postgres:5432/" in env["CURVSCOPE_DB"]
    )
    assert env["CURVSCOPE_WORKERS"] == "2"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "http://team-server:8000" in demo["command"]
    assert "team-server" in env["CURVSCOPE_ALLOWED_HOSTS"]
    assert services["server"]["environment"].get("CURVSCOPE_DB") is None  # the image's SQLite


def test_team_server_environment_serves_two_workers(postgres_url: str, tmp_path: Path) -> None:
    """The team-server's environment (its database URL swapped for the test database),
    run as the image runs it, passes the image's HEALTHCHECK."""
    port = free_port()
    team = {k: str(v) for k, v in _compose()["services"]["team-server"]["environment"].items()}
    env = dict(os.environ)
    env.update(team)
    env.update(
        CURVSCOPE_HOST="127.0.0.1",
        CURVSCOPE_PORT=str(port),
        CURVSCOPE_DB=postgres_url,
        CURVSCOPE_TOKEN="",
        CURVSCOPE_INSECURE="true",
    )
    server = ServerProcess(db=tmp_path / "unused", port=port, env=env)
    server.command = lambda: [sys.executable, "-m", "curvscope.server.cli", "serve"]  # type: ignore[method-assign]
    server.start()
    try:
        code = _healthcheck_code().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
        health = httpx.get(server.url("/api/health")).json()
        assert health["store"] == "PostgresStore" and health["status"] == "ok"
    finally:
        server.stop()
