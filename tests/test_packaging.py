"""A non-editable ``pip install .`` lays out one ``curvscope`` namespace, and sides stay apart."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_SITE = sysconfig.get_paths()["purelib"]


def _run(*cmd: object) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with the curvscope wheel installed (no deps; deps come from the dev venv)."""
    tmp = tmp_path_factory.mktemp("pkg")
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        tmp / "wheels",
        REPO,
    )
    wheel = next((tmp / "wheels").glob("curvscope-*.whl"))
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel)
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    return python, site


def test_only_the_curvscope_namespace_is_installed(installed: tuple[Path, Path]) -> None:
    _, site = installed
    top = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    top.discard("__pycache__")
    assert top == {"curvscope"}
    for sub in ("probe", "server"):
        assert (site / "curvscope" / sub / "__init__.py").is_file()
    assert (site / "curvscope" / "web").is_dir()


def test_installed_packages_import_from_the_install(installed: tuple[Path, Path]) -> None:
    python, site = installed
    code = (
        f"import sys; sys.path.append({DEV_SITE!r}); "
        "import curvscope.probe, curvscope.server, curvscope.server.protocol; "
        "print(curvscope.probe.__file__); print(curvscope.server.__file__)"
    )
    paths = _run(python, "-c", code).split()
    assert all(p.startswith(str(site)) for p in paths), paths


def test_server_side_imports_without_torch(installed: tuple[Path, Path]) -> None:
    python, _ = installed
    modules = sorted(
        f"curvscope.server.{p.stem}" for p in (REPO / "server").glob("*.py") if p.stem != "__init__"
    )
    code = (
        f"import sys; sys.path.append({DEV_SITE!r}); sys.modules['torch'] = None; "
        f"import importlib; [importlib.import_module(m) for m in {modules!r}]; "
        "print('torch' in sys.modules and sys.modules['torch'] is not None)"
    )
    assert _run(python, "-c", code).strip() == "False"


def test_probe_package_does_not_import_fastapi() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None; "
        "import curvscope.probe; print('ok')"
    )
    assert _run(sys.executable, "-c", code).strip() == "ok"
