"""`omniq dashboard` as a user runs it, and the core install without the web extra."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEADLINE = 30.0


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def test_dashboard_serves_on_loopback_by_default_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason='needs the web extra: "omniq[web]"')
    port = _free_port()
    url = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniq", "dashboard", "--url", url, "--port", str(port)],
            cwd=tmp_path,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + DEADLINE
            while _status(base + "/tasks") != 200:
                assert proc.poll() is None, log.read_text()
                if time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not answer within {DEADLINE:g}s")
                time.sleep(0.05)
            assert _status(base + "/tasks/nope") == 404
            assert _status(base + "/static/omniq.js") == 200
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=DEADLINE)
    text = log.read_text()
    assert f"http://127.0.0.1:{port}" in text
    assert code == 130, text  # like every `omniq` command stopped by Ctrl+C
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
