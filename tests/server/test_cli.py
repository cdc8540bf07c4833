"""The curvscope CLI: lazy subcommands, clear messages, refusal of unsafe serve settings."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from curvscope.server import cli
from curvscope.server.cli import COMMANDS, Command, main
from tests.helpers.server_process import free_port, running_server


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("serve", "report", "upload", "demo"))


def test_no_subcommand_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_missing_module_gives_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(COMMANDS, "ghost", Command("curvscope.server.no_such_module", "x"))
    assert main(["ghost"]) == 2
    assert "curvscope ghost: not available" in capsys.readouterr().err


def test_missing_dependency_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "needs_dep_cmd.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "dep", Command("needs_dep_cmd", "x", extra="probe"))
    assert main(["dep"]) == 2
    err = capsys.readouterr().err
    assert "no_such_dependency_xyz" in err and "curvscope[probe]" in err


def test_registered_module_gets_its_arguments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "echo_cmd.py").write_text(
        "def add_parser(sub):\n"
        "    p = sub.add_parser('echo')\n"
        "    p.add_argument('--times', type=int)\n"
        "    p.set_defaults(func=lambda args: args.times)\n"
        "    return p\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "echo", Command("echo_cmd", "x"))
    assert main(["echo", "--times", "7"]) == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without a token"),
        (["--protect-reads"], "--protect-reads needs a token"),
        (["--max-message-bytes", "10"], "max_message_bytes"),
        (["--port", "99999"], "port"),
        (["--workers", "2"], "--workers 2 needs a PostgreSQL database"),
    ],
)
def test_serve_refuses_unsafe_or_invalid_settings(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["serve", "--db", str(tmp_path / "x.sqlite"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


def test_token_from_the_environment_satisfies_the_public_host_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CURVSCOPE_TOKEN", "from-env")
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(kw))
    assert main(["serve", "--host", "0.0.0.0", "--port", "1", "--db", str(tmp_path / "d")]) == 0
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 1)


def test_serve_never_imports_torch(tmp_path: Path) -> None:
    argv = ["serve", "--port", str(free_port()), "--db", str(tmp_path / "d.sqlite")]
    code = (
        "import sys, uvicorn\n"
        "uvicorn.run = lambda *a, **k: None\n"
        "from curvscope.server.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "import curvscope.server.app\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_real_server_starts_and_stops_cleanly(tmp_path: Path) -> None:
    with running_server(tmp_path / "db.sqlite") as server:
        assert httpx.get(server.url("/api/runs")).json() == []
        assert httpx.get(server.url("/")).status_code == 200
    assert server.proc is not None and server.proc.returncode in (0, -15)  # SIGTERM
    assert not (tmp_path / "db.sqlite-wal").exists(), "the store was not closed on shutdown"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("curvscope")
    if not script.exists():
        pytest.skip("no console script next to this interpreter")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "serve" in result.stdout


def test_module_docstring_documents_the_contract() -> None:
    assert "add_parser" in (cli.__doc__ or "")


def _serve_parser() -> argparse.ArgumentParser:
    subparsers = argparse.ArgumentParser(prog="curvscope").add_subparsers()
    cli.add_parser(subparsers)
    return subparsers.choices["serve"]


def test_every_serve_option_states_its_default() -> None:
    options = [a for a in _serve_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 11
    missing = [a.option_strings[0] for a in options if "default" not in (a.help or "")]
    assert not missing, f"--help of these options does not state the default: {missing}"


def test_serve_on_a_busy_port_fails_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve", "--port", str(port), "--db", str(tmp_path / "d.sqlite")]
        result = subprocess.run(
            [sys.executable, "-m", "curvscope.server.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"curvscope serve: port {port} on 127.0.0.1 is already in use (another curvscope "
        "serve?); pick another with --port"
    )
    assert not (tmp_path / "d.sqlite").exists(), "the database was opened before the check"
