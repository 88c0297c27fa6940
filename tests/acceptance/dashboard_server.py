"""`omniq dashboard` started as a user starts it, for the acceptance tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEADLINE = 30.0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def status_of(url: str) -> int | None:
    """The HTTP status of GET ``url`` (None: nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class Served:
    """A running `omniq dashboard`: its base URL, process and log file."""

    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base = base
        self.proc = proc
        self.log = log
        #: The exit code once stopped (Ctrl+C).
        self.code: int | None = None


def omniq_cli(tmp_path: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `python -m omniq ARGS` in ``tmp_path``; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        check=check,
        timeout=DEADLINE,
    )


def create_database(tmp_path: Path, url: str) -> None:
    """Create and migrate the database at ``url`` (the dashboard refuses a missing file)."""
    omniq_cli(tmp_path, "db", "upgrade", "--url", url, check=True)


@contextmanager
def dashboard_process(tmp_path: Path, url: str) -> Iterator[Served]:
    """Run `omniq dashboard --url url` on a free port until the block ends (then Ctrl+C)."""
    port = free_port()
    log = tmp_path / "dashboard.log"
    create_database(tmp_path, url)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniq", "dashboard", "--url", url, "--port", str(port)],
            cwd=tmp_path,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        served = Served(f"http://127.0.0.1:{port}", proc, log)
        try:
            deadline = time.monotonic() + DEADLINE
            while status_of(served.base + "/tasks") != 200:
                assert proc.poll() is None, log.read_text()
                if time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not answer within {DEADLINE:g}s")
                time.sleep(0.05)
            yield served
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                served.code = proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
