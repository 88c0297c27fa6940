"""`omniq dashboard` as a user runs it, and the core install without the web extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.dashboard_server import ENV, dashboard_process, status_of


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
