"""`omniq dashboard` as a user runs it, and the core install without the web extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.dashboard_server import (
    ENV,
    create_database,
    dashboard_process,
    omniq_cli,
    status_of,
)


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_core_imports_without_the_web_packages(tmp_path: Path) -> None:
    proc = _python(
        "import sys\n"
        "for name in ('starlette', 'jinja2', 'uvicorn'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "import omniq, omniq.cli\n"
        "from omniq import OmniQ\n"
        "print('ok')\n",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_dashboard_without_the_web_extra_says_how_to_install_it(tmp_path: Path) -> None:
    proc = _python(
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "from omniq.cli import main\n"
        f"sys.exit(main(['dashboard', '--url', 'sqlite+aiosqlite:///{tmp_path}/x.db']))\n",
        tmp_path,
    )
    assert proc.returncode == 1
    assert 'pip install "omniq[web]"' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.db").exists()


def test_dashboard_serves_on_loopback_by_default_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason='needs the web extra: "omniq[web]"')
    url = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    with dashboard_process(tmp_path, url) as served:
        assert status_of(served.base + "/tasks/nope") == 404
        assert status_of(served.base + "/static/omniq.js") == 200
    text = served.log.read_text()
    assert f"Uvicorn running on {served.base}" in text
    assert served.code == 130, text  # like every `omniq` command stopped by Ctrl+C
    assert "Traceback" not in text


def test_dashboard_help_names_the_defaults(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "omniq", "dashboard", "--help"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "default 127.0.0.1" in proc.stdout and "default 8080" in proc.stdout


@pytest.mark.parametrize("port", ["99999", "-5", "busy"])
def test_a_port_it_cannot_listen_on_is_one_line_and_exit_2(tmp_path: Path, port: str) -> None:
    """`--port 99999` printed a 41-line traceback and exited 1; a port in use exited 3
    (the code of `result --wait` timing out) after uvicorn's own log lines."""
    pytest.importorskip("uvicorn", reason='needs the web extra: "omniq[web]"')
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        if port == "busy":
            port = str(taken.getsockname()[1])
        url = f"sqlite+aiosqlite:///{tmp_path}/d.db"
        create_database(tmp_path, url)
        proc = omniq_cli(tmp_path, "dashboard", "--port", port, "--url", url)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omniq: error: "), proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["dashboard", "--port", "0"],
        ["metrics", "--port", "0"],
        ["cancel", "some-id"],
        ["requeue", "some-id"],
        ["schedule", "pause", "some-id"],
        ["queue", "pause", "emails"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_commands_that_act_on_what_is_stored_create_no_database(
    tmp_path: Path, command: list[str]
) -> None:
    """A mistyped path made `omniq metrics`, `dashboard`, `cancel`, `queue pause`...
    create and migrate a new database (and `queue pause` paused a queue in it)."""
    if command[0] == "dashboard":
        pytest.importorskip("uvicorn", reason='needs the web extra: "omniq[web]"')
    if command[0] == "metrics":
        pytest.importorskip("prometheus_client", reason="needs the metrics extra")
    missing = tmp_path / "typo" / "omniq.db"
    proc = omniq_cli(tmp_path, *command, "--url", f"sqlite+aiosqlite:///{missing}")
    assert proc.returncode == 1, proc.stderr
    assert "there is no OmniQ database" in proc.stderr and "Traceback" not in proc.stderr
    assert not missing.parent.exists()
